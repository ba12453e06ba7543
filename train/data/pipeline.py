"""From a training config to the two Ray Datasets a TorchTrainer reads ("train", "val").

On the driver: read the adapters' indexes, hold out the validation pairs (seeded, from the real
side when there is one so every mixing ratio is scored on the same pairs), choose the training
ids from the mix. In Ray Data tasks: read the chosen rows and decode their images, once per run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from engine.core.errors import ConfigError
from train.data.mixing import choose_mix, seeded_sample, split_validation
from train.data.preprocess import decode_batch
from train.data.sources import REAL_KINDS, Source, real_source, synthetic_source


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


@dataclass
class DecodedData:
    """The run's rows decoded once (uint8 frames at the model's resize_to) and materialised in
    Ray's object store before any worker starts: `train` split into one dataset per worker (a
    fixed split, so a worker's rows do not depend on timing), `val` whole for rank 0."""

    train: list          # MaterializedDataset per worker
    val: object          # MaterializedDataset
    n_valid: int         # training rows whose image decoded
    n_invalid: int
    first_error: str     # of the first training row that did not decode ("" if none)
    val_invalid: int


def _decoded(ds, cfg, resize_to: int):
    return ds.map_batches(decode_batch, batch_size=cfg.data.batch_size, num_cpus=cfg.data.num_cpus,
                          batch_format="numpy", fn_kwargs={"resize_to": int(resize_to)}).materialize()


def _decoded_here(sources: dict[str, Source], ids_by_source: dict[str, list[str]], cfg, resize_to: int):
    """The same decoded rows as `_decoded`, decoded in this process and put in Ray's object store."""
    import ray.data
    from ray.data.block import BlockAccessor

    blocks = []
    for name, ids in ids_by_source.items():
        table = sources[name].to_arrow(ids)
        for start in range(0, table.num_rows, cfg.data.batch_size):
            batch = decode_batch(table.slice(start, cfg.data.batch_size).to_pydict(), int(resize_to))
            blocks.append(BlockAccessor.batch_to_block(batch))
    return ray.data.from_arrow(blocks).materialize()


def _invalid(mat) -> tuple[int, str]:
    """(rows that did not decode, the first one's error) of a decoded dataset."""
    errors = sorted(e for e in mat.select_columns(["error"]).to_pandas()["error"] if e)
    return len(errors), (errors[0] if errors else "")


def build_datasets(cfg, sources: dict[str, Source], plan: DataPlan, resize_to: int) -> DecodedData:
    """Decode every training and validation image once: Ray Data tasks of data.num_cpus each, or,
    for a run of at most data.inline_max_rows pairs, in this process (a few seconds where starting
    the decoding tasks would take tens)."""
    n_rows = sum(map(len, plan.train.values())) + sum(map(len, plan.val.values()))
    if n_rows <= cfg.data.inline_max_rows:
        train, val = (_decoded_here(sources, ids, cfg, resize_to) for ids in (plan.train, plan.val))
    else:
        train = _decoded(_union([sources[name].to_ray(ids) for name, ids in plan.train.items()]), cfg, resize_to)
        val = _decoded(_union([sources[name].to_ray(ids) for name, ids in plan.val.items()]), cfg, resize_to)
    n_invalid, first_error = _invalid(train)
    val_invalid, _ = _invalid(val)
    shards = train.split(cfg.scaling.num_workers, equal=True) if cfg.scaling.num_workers > 1 else [train]
    return DecodedData(train=shards, val=val, n_valid=train.count() - n_invalid, n_invalid=n_invalid,
                       first_error=first_error, val_invalid=val_invalid)


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
    if sep and kind in REAL_KINDS:
        return f"{kind}:{resolve_path(rest, base)}"
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)
