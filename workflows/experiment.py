"""`syncxr experiment`: the paper's central comparison in a controlled world.

Arms, each the same size and trained with the same model and step budget, over several seeds:
- real: "real-like" pairs: the corpus's own reports (real texts, their entity sets, their long
  tail), each drawn by the phantom from its own entities (plan mode `corpus`, report backend
  `corpus`), then spoilt the way real archives are: a share of pairs unpaired (report of another
  study) and a share of images of low quality (the degradations the judge knows);
- synthetic: the balanced plan through the whole engine, QC included;
- mixed-concat: both (twice the pairs, half the epochs: the same number of steps);
- mixed-ratio: half of each at the common size.
Every model is scored zero-shot on the phantom test sets of the common and of the rare findings.
Writes DIR/results.json, DIR/results.md and DIR/results.png; the datasets and runs stay in DIR.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator

from engine.core.config import Section, beside, deep_merge, load_config, load_yaml_model
from engine.core.files import save_figure, write_json, write_text
from engine.core.ownership import claim, value_digest
from engine.dataset import open_dataset, report_text

ARMS = ("real", "synthetic", "mixed-concat", "mixed-ratio")
SETS = {"common": "phantom-5x200", "rare": "phantom-rare"}


class RealLikeSection(Section):
    unpaired_share: float = Field(0.1, ge=0, le=1)  # pairs whose report belongs to another image
    low_quality_share: float = Field(0.1, ge=0, le=1)  # images degraded (lateral, cropped, noise, ...)
    seed: int = 0


class EvalSection(Section):
    per_class: int = Field(40, ge=2)  # test images per class and split of each phantom set
    size: int = Field(128, ge=32)  # rendering size of the test images
    batch_size: int = Field(50, ge=1)


class ExperimentConfig(Section):
    n: int = Field(1000, ge=10)  # pairs per arm
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    arms: list[Literal["real", "synthetic", "mixed-concat", "mixed-ratio"]] = Field(
        default_factory=lambda: list(ARMS), min_length=1)
    synth_config: str = "local.yaml"  # engine config of both datasets (relative to this file)
    train_config: str = "train-local.yaml"
    train: dict[str, Any] = Field(default_factory=dict)  # overrides of the training config, every arm
    real_like: RealLikeSection = Field(default_factory=RealLikeSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @field_validator("seeds", "arms")
    @classmethod
    def _no_repeats(cls, value: list) -> list:
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated:  # two runs of one seed are one model counted twice: a spread of zero that means nothing
            raise ValueError(f"repeated: {', '.join(repeated)}")
        return value


def load_experiment_config(path) -> tuple[ExperimentConfig, Path]:
    """The experiment config with its training config and every arm's overrides checked now, before
    any dataset is built."""
    from train.config import load_train_config

    cfg, found = load_yaml_model(path, ExperimentConfig, "experiment config")
    cfg.synth_config = str(beside(found, cfg.synth_config))
    cfg.train_config = str(beside(found, cfg.train_config))
    load_config(cfg.synth_config)  # the engine config of both datasets reads
    base, _ = load_train_config(cfg.train_config, cfg.train or None, f"{found}: train")
    for arm in cfg.arms:
        overrides, _, _ = arm_overrides(arm, cfg.seeds[0], cfg.n, base.epochs)
        load_train_config(cfg.train_config, deep_merge(cfg.train, overrides), f"{found}: train (arm {arm})")
    return cfg, found


# ---------------------------------------------------------------- the datasets

def synth(config: Path, n: int, out: Path) -> Path:
    """A dataset of n pairs by the function `syncxr synth` runs: a rerun resumes an unfinished run,
    reuses a finished one and refuses a directory of other settings."""
    from engine.synth.run import run_synth

    run_synth(load_config(config), n, out)  # fewer kept than planned (QC never accepted some): usable
    return out


def real_like_config(synth_config: str, out: Path) -> Path:
    """The engine config with the corpus plan and the corpus report writer."""
    data = yaml.safe_load(Path(synth_config).read_text()) or {}
    data.setdefault("plan", {})["mode"] = "corpus"
    data.setdefault("reports", {})["backend"] = "corpus"
    data["reports"]["options"] = {"corpus": data.get("corpus", {})}
    path = out / "real-like.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def spoil_plan(n: int, unpaired_share: float, low_quality_share: float, seed: int) -> tuple[np.ndarray, dict[int, str]]:
    """(report index for each image, {image index: degradation}) for n pairs: a share of reports
    moved to other images (a cycle, so none keeps its own), a share of images degraded."""
    from actors.degrade import DEGRADATIONS

    rng = np.random.default_rng(seed)
    report_of = np.arange(n)
    moved = rng.choice(n, size=int(round(unpaired_share * n)), replace=False)
    if len(moved) > 1:
        report_of[moved] = np.roll(moved, 1)
    spoilt = rng.choice(n, size=int(round(low_quality_share * n)), replace=False)
    kinds = {int(i): DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))] for i in spoilt}
    return report_of, kinds


def write_real_like_table(dataset_dir: Path, out: Path, section: RealLikeSection) -> Path:
    """The real-like pairs as a generic table (image_path, report), images as PNG files."""
    from PIL import Image

    from actors.degrade import degrade
    from train.models.frame import decode

    table_path = out / "pairs.csv"
    if table_path.is_file():
        return table_path
    rows = open_dataset(dataset_dir).to_arrow(["sample_id", "findings", "impression", "image"]).to_pylist()
    report_of, kinds = spoil_plan(len(rows), section.unpaired_share, section.low_quality_share, section.seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        image = decode(row["image"]["bytes"])
        if i in kinds:
            image = degrade(image, kinds[i], section.seed + i)
        name = f"images/{row['sample_id']}.png"
        Image.fromarray(image).save(out / name)
        source = rows[int(report_of[i])]
        lines.append({"sample_id": f"real-{row['sample_id']}", "image_path": name,
                      "report": report_text(source["findings"], source["impression"]),
                      "paired": bool(report_of[i] == i), "quality": kinds.get(i, "ok")})
    tmp = table_path.with_name(".pairs.csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    tmp.replace(table_path)
    return table_path


def undrawable_share(dataset_dir: Path) -> float:
    """Share of the positive entity mentions that the phantom could not draw (text that names
    what the image does not show), from the image provenance of each row."""
    prov = open_dataset(dataset_dir).to_arrow(["provenance"]).column("provenance").to_pylist()
    drawn = sum(len(p.get("drawn") or []) for p in prov)
    missing = sum(len(p.get("undrawable") or []) for p in prov)
    return missing / (drawn + missing) if drawn + missing else float("nan")


# ---------------------------------------------------------------- training and scoring

def arm_overrides(arm: str, seed: int, n: int, base_epochs: int) -> tuple[dict, bool, bool]:
    """(training-config overrides, uses synthetic, uses real) of one arm and seed."""
    mix = {"real": {"mode": "real"}, "synthetic": {"mode": "synthetic"}, "mixed-concat": {"mode": "concat"},
           "mixed-ratio": {"mode": "ratio", "ratio": 0.5, "total": n}}[arm]
    epochs = max(1, base_epochs // 2) if arm == "mixed-concat" else base_epochs
    return ({"seed": seed, "epochs": epochs, "data": {"mix": mix, "seed": seed}},
            arm != "real", arm != "synthetic")


def score(run_dir: Path, section: EvalSection, out: Path) -> dict[str, float]:
    from eval.evaluate import evaluate

    result = {}
    for key, name in SETS.items():
        res = evaluate([run_dir], name, "zero-shot", out / key, n=section.per_class, seed=0,
                       dataset_options={"size": section.size}, batch_size=section.batch_size)
        result[key] = float(res["checkpoints"][0]["mean_auc"])
    return result


def summarise(runs: list[dict], arms: list[str], undrawable: dict[str, float]) -> list[dict]:
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        row = {"arm": arm, "seeds": len(mine), "undrawable_share": undrawable.get(arm)}
        for key in SETS:
            values = np.array([r[key] for r in mine], float)
            row[f"{key}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict], cfg: ExperimentConfig) -> str:
    lines = [f"Zero-shot AUC on the phantom test sets ({cfg.eval.per_class} test images per class), "
             f"mean ± std over seeds {cfg.seeds}; {cfg.n} pairs per arm.", "",
             "| arm | common findings (5) | rare findings (6) | positive mentions the phantom cannot draw |",
             "|---|---|---|---|"]
    for r in rows:
        share = "-" if r["undrawable_share"] is None else f"{100 * r['undrawable_share']:.1f}%"
        lines.append(f"| {r['arm']} | {r['common_mean']:.3f} ± {r['common_std']:.3f} | "
                     f"{r['rare_mean']:.3f} ± {r['rare_std']:.3f} | {share} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    for j, key in enumerate(SETS):
        ax.bar(x + (j - 0.5) * 0.38, [r[f"{key}_mean"] for r in rows], 0.38,
               yerr=[r[f"{key}_std"] for r in rows], capsize=3, label=f"{key} findings")
    ax.axhline(0.5, color="grey", lw=1, ls="--", label="chance")
    ax.set_xticks(x, [r["arm"] for r in rows])
    ax.set_ylabel("zero-shot AUC (mean over classes)")
    ax.set_ylim(0.3, 1.0)
    ax.legend(fontsize=8)
    ax.set_title("real-like vs synthetic vs mixed (phantom world)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def run_experiment(cfg: ExperimentConfig, out: str | Path, log=print) -> dict:
    from engine.core.ray_session import init_ray
    from train.config import load_train_config
    from train.driver import run_training

    out = Path(out).resolve()
    # a rerun of the same experiment reuses its finished datasets and runs; another one needs another DIR
    claim(out, "experiment", {"config": value_digest(cfg.model_dump())})
    started = time.time()
    log(f"1/4 synthetic dataset ({cfg.n} pairs, balanced plan, full QC)")
    synthetic = synth(Path(cfg.synth_config), cfg.n, out / "data" / "synthetic")
    log(f"2/4 real-like dataset ({cfg.n} corpus reports drawn from their own entities, "
        f"{cfg.real_like.unpaired_share:.0%} unpaired, {cfg.real_like.low_quality_share:.0%} low quality)")
    real_engine = synth(real_like_config(cfg.synth_config, out / "configs"), cfg.n, out / "data" / "real-like-drawn")
    real_table = write_real_like_table(real_engine, out / "data" / "real-like", cfg.real_like)
    share_syn, share_real = undrawable_share(synthetic), undrawable_share(real_engine)
    undrawable = {"real": share_real, "synthetic": share_syn, "mixed-concat": (share_real + share_syn) / 2,
                  "mixed-ratio": (share_real + share_syn) / 2}

    base, _ = load_train_config(cfg.train_config, cfg.train or None)
    init_ray(base.engine)
    runs = []
    total = len(cfg.seeds) * len(cfg.arms)
    log(f"3/4 training {total} models ({base.model.name}, {base.epochs} epochs of {cfg.n} pairs each)")
    for seed in cfg.seeds:
        for arm in cfg.arms:
            overrides, use_syn, use_real = arm_overrides(arm, seed, cfg.n, base.epochs)
            train_cfg, _ = load_train_config(cfg.train_config, deep_merge(cfg.train, overrides))
            run_dir = out / "runs" / f"{arm}-seed{seed}"
            t0 = time.time()
            final = run_training(train_cfg, run_dir, synthetic=str(synthetic) if use_syn else None,
                                 real=f"table:{real_table}" if use_real else None, show_progress=False)
            scores = score(run_dir, cfg.eval, out / "eval" / run_dir.name)
            runs.append({"arm": arm, "seed": seed, "step": final.get("step"), **scores,
                         "seconds": round(time.time() - t0, 1)})
            log(f"  {len(runs)}/{total} {arm} seed {seed}: common {scores['common']:.3f}, "
                f"rare {scores['rare']:.3f} ({runs[-1]['seconds']} s)")
    log("4/4 results")
    rows = summarise(runs, list(cfg.arms), undrawable)
    results = {"config": cfg.model_dump(), "runs": runs, "arms": rows,
               "seconds": round(time.time() - started, 1)}
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown(rows, cfg))
    plot(rows, out / "results.png")
    return results


