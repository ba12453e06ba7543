"""From a training config to the two Ray Datasets a TorchTrainer reads ("train", "val").

On the driver: read the adapters' indexes, hold out the validation pairs (seeded, from the real
side when there is one so every mixing ratio is scored on the same pairs), choose the training
ids from the mix. In Ray Data tasks: read the chosen rows and preprocess them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from engine.core.errors import ConfigError
from train.data.mixing import choose_mix, seeded_sample, split_validation
from train.data.preprocess import preprocess_batch
from train.data.sources import Source, real_source, synthetic_source


@dataclass
class DataPlan:
    """The ids of one run, by source. Written to RUN/split.json so evaluation can exclude them."""

    train: dict[str, list[str]]
    val: dict[str, list[str]]
    skipped_index: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return sum(len(v) for v in self.train.values())

    @property
    def n_val(self) -> int:
        return sum(len(v) for v in self.val.values())

    def summary(self) -> dict:
        return {"train": {k: len(v) for k, v in self.train.items()},
                "val": {k: len(v) for k, v in self.val.items()},
                "skipped_while_indexing": self.skipped_index}


def load_sources(data_cfg, synthetic: Optional[str], real: Optional[str]) -> dict[str, Source]:
    sources = {}
    if synthetic:
        sources["synthetic"] = synthetic_source(synthetic)
    if real:
        sources["real"] = real_source(real, image_column=data_cfg.real_image_column,
                                      text_column=data_cfg.real_text_column)
    if not sources:
        raise ConfigError("no training data: give --synthetic DIR and/or --real SPEC (or data.synthetic / data.real)")
    return sources


def plan_data(cfg, sources: dict[str, Source]) -> DataPlan:
    """Validation first (fixed for a given source and seed), then the mix of what is left."""
    vcfg, mix = cfg.validation, cfg.data.mix
    val_side = vcfg.source if vcfg.source != "auto" else ("real" if "real" in sources else "synthetic")
    if val_side not in sources:
        raise ConfigError(f"validation.source {val_side!r}: no {val_side} data given")
    pools = {name: list(src.ids) for name, src in sources.items()}
    pools[val_side], val_ids = split_validation(pools[val_side], vcfg.size, cfg.data.seed)
    mode = mix.mode
    syn, real = choose_mix(pools.get("synthetic", []), pools.get("real", []), mode, mix.ratio, mix.total, cfg.data.seed)
    train = {"synthetic": syn, "real": real}
    if cfg.data.limit and len(syn) + len(real) > cfg.data.limit:
        tagged = [f"s:{i}" for i in syn] + [f"r:{i}" for i in real]
        kept = seeded_sample(tagged, cfg.data.limit, cfg.data.seed, "limit")
        train = {"synthetic": [t[2:] for t in kept if t[0] == "s"], "real": [t[2:] for t in kept if t[0] == "r"]}
    train = {k: v for k, v in train.items() if v}
    return DataPlan(train=train, val={val_side: val_ids},
                    skipped_index={n: s.skipped for n, s in sources.items() if s.skipped})


def _union(parts):
    ds = parts[0]
    return ds.union(*parts[1:]) if len(parts) > 1 else ds


def build_datasets(cfg, sources: dict[str, Source], plan: DataPlan, image_size: int, resize_to: int,
                   augment_settings: Optional[dict] = None):
    """(train_ds, val_ds): rows {sample_id, image float32[1,S,S], text, valid}. Augmentation:
    the model's own settings (its config's "augment"), with data.augment_settings on top."""
    d = cfg.data
    common = {"image_size": image_size, "resize_to": resize_to, "augment": d.augment,
              "augment_settings": {**(augment_settings or {}), **d.augment_settings},
              "random_sentence": d.random_sentence}
    train = _union([sources[name].to_ray(ids) for name, ids in plan.train.items()])
    # a shuffle of the row order each epoch (local, cheap) so a batch mixes both sources
    train = train.randomize_block_order(seed=cfg.seed).map_batches(
        preprocess_batch, batch_size=d.batch_size, num_cpus=d.num_cpus, batch_format="numpy",
        fn_kwargs={**common, "train": True})
    val = _union([sources[name].to_ray(ids) for name, ids in plan.val.items()])
    val = val.map_batches(preprocess_batch, batch_size=d.batch_size, num_cpus=d.num_cpus, batch_format="numpy",
                          fn_kwargs={**common, "train": False})
    return train, val


def training_texts(sources: dict[str, Source], plan: DataPlan) -> list[str]:
    """The training reports (the corpus a from-scratch tokenizer learns its vocabulary on)."""
    out = []
    for name, ids in plan.train.items():
        reports = sources[name].report_of()
        out.extend(reports[i] for i in ids)
    return out


def resolve_path(value: Optional[str], base: Optional[Path]) -> Optional[str]:
    """A data path from the config resolves against the config's folder; from the CLI, the cwd."""
    if value is None or base is None:
        return value
    kind, sep, rest = value.partition(":")
    if sep and kind in ("table", "mimic", "openi"):
        return f"{kind}:{resolve_path(rest, base)}"
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)
