"""`syncxr experiment`: the paper's central comparison in a controlled world.

Arms, each about the same size and trained with the same model for the same epochs (about the same
step budget: QC and the validation hold-out shift it by a few batches), over several seeds:
- real: "real-like" pairs: the corpus's own reports (real texts, their entity sets, their long
  tail), each drawn by the phantom from its own entities (plan mode `corpus`, report backend
  `corpus`), then spoilt the way real archives are: a share of pairs unpaired (report of another
  study) and a share of images of low quality (the degradations the judge knows);
- synthetic: the balanced plan through the whole engine, QC included;
- synthetic-drawable: the same, with the plan restricted to the findings the phantom draws
  (`plan.drawable_only`), so the effect of text that names what the image does not show is measured;
- mixed-concat: both (twice the pairs, half the epochs: the same number of steps);
- mixed-ratio: half of each at the common size.
Every model is one trial (workflows/trial.py), scored zero-shot on the phantom test sets of the
common and of the rare findings. Each comparison of two arms is a paired difference across seeds
with its 95% intervals (workflows/stats.py); `scale` trains the synthetic arm at other sizes.
Writes DIR/results.json, DIR/results.md, DIR/results.png and DIR/scale.png; datasets and runs stay in DIR.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from engine.core.config import Section, beside, deep_merge, load_config, load_yaml_model
from engine.core.files import save_figure, write_json, write_text
from engine.core.ownership import claim, value_digest
from workflows.datasets import RealLikeSection, data_card, drawable_config, mixed_card, real_like, synth
from workflows.scoring import SETS, EvalSection, TestSets, load_scores
from workflows.stats import Comparison, compare

ARMS = ("real", "synthetic", "synthetic-drawable", "mixed-concat", "mixed-ratio")
ArmName = Literal["real", "synthetic", "synthetic-drawable", "mixed-concat", "mixed-ratio"]
# (a, b): a - b, paired by seed, where both arms ran
COMPARISONS = (("synthetic", "real"), ("mixed-concat", "real"), ("mixed-ratio", "real"),
               ("synthetic", "mixed-concat"), ("synthetic-drawable", "synthetic"))


class ExperimentConfig(Section):
    n: int = Field(1000, ge=10)  # pairs per arm
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    arms: list[ArmName] = Field(default_factory=lambda: list(ARMS), min_length=1)
    # smaller training sets of the synthetic arm (data.limit), at the same epochs: with n itself,
    # the scale axis (sizes below n, so every other arm still sees n pairs)
    scale: list[int] = Field(default_factory=list)
    bootstrap: int = Field(1000, ge=0)  # replicates of the seeds x test-images bootstrap
    synth_config: str = "local.yaml"  # engine config of both datasets (relative to this file)
    train_config: str = "train-local.yaml"
    train: dict[str, Any] = Field(default_factory=dict)  # overrides of the training config, every arm
    real_like: RealLikeSection = Field(default_factory=RealLikeSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @field_validator("seeds", "arms", "scale")
    @classmethod
    def _no_repeats(cls, value: list) -> list:
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated:  # two runs of one seed are one model counted twice: a spread of zero that means nothing
            raise ValueError(f"repeated: {', '.join(repeated)}")
        return value


    @model_validator(mode="after")
    def _scale_below_n(self) -> "ExperimentConfig":
        for size in self.scale:
            if not 2 <= size < self.n:
                raise ValueError(f"scale size {size}: sizes are training sets smaller than n = {self.n}")
        return self


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


# ---------------------------------------------------------------- training and scoring

def arm_overrides(arm: str, seed: int, n: int, base_epochs: int) -> tuple[dict, bool, bool]:
    """(training-config overrides, uses synthetic, uses real) of one arm and seed; synthetic-drawable
    uses its own synthetic dataset."""
    mix = {"real": {"mode": "real"}, "synthetic": {"mode": "synthetic"}, "synthetic-drawable": {"mode": "synthetic"},
           "mixed-concat": {"mode": "concat"}, "mixed-ratio": {"mode": "ratio", "ratio": 0.5, "total": n}}[arm]
    epochs = max(1, base_epochs // 2) if arm == "mixed-concat" else base_epochs
    return ({"seed": seed, "epochs": epochs, "data": {"mix": mix, "seed": seed}},
            arm != "real", arm not in ("synthetic", "synthetic-drawable"))


def summarise(runs: list[dict], arms: list[str], cards: dict[str, dict]) -> list[dict]:
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        row = {"arm": arm, "seeds": len(mine), "card": cards.get(arm, {})}
        for key in SETS:
            values = np.array([r[key] for r in mine], float)
            row[f"{key}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            classes = sorted({c for r in mine for c in r["per_class"][key]})
            row[f"{key}_per_class"] = {c: float(np.nanmean([r["per_class"][key][c] for r in mine])) for c in classes}
        rows.append(row)
    return rows


def comparisons(runs: list[dict], arms: list[str], reps: int) -> list[Comparison]:
    """Every comparison of COMPARISONS whose two arms ran, on each test set, over their common seeds."""
    out = []
    for a, b in COMPARISONS:
        if a not in arms or b not in arms:
            continue
        by_seed = {arm: {r["seed"]: r["run_dir"] for r in runs if r["arm"] == arm} for arm in (a, b)}
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
        if not seeds:
            continue
        loaded = {arm: [load_scores(by_seed[arm][s]) for s in seeds] for arm in (a, b)}
        for key in SETS:
            labels = loaded[a][0][key][0]
            out.append(compare(a, b, key, labels, [x[key][1] for x in loaded[a]], [x[key][1] for x in loaded[b]],
                               reps=reps))
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(rows: list[dict], comps: list[Comparison], scale_rows: list[dict], cfg: ExperimentConfig) -> str:
    lines = [f"Zero-shot AUC on the phantom test sets ({cfg.eval.per_class} test images per class), "
             f"mean ± sd over seeds {cfg.seeds}; {cfg.n} pairs per arm.", "",
             "| arm | common findings (5) | rare findings (6) | pairs all drawn | undrawable mentions | "
             "findings (max/min) | unpaired | degraded |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["card"]
        tail = "-" if c.get("findings") is None else f"{c['findings']} ({c['max_min_ratio']})"
        lines.append(f"| {r['arm']} | {r['common_mean']:.3f} ± {r['common_std']:.3f} | "
                     f"{r['rare_mean']:.3f} ± {r['rare_std']:.3f} | {_pct(c.get('drawn_pairs_share'))} | "
                     f"{_pct(c.get('undrawable_mentions_share'))} | {tail} | {_pct(c.get('unpaired_share'))} | "
                     f"{_pct(c.get('degraded_share'))} |")
    if comps:
        lines += ["", "Paired differences (same seed: same initialisation and batch order where the data allow), "
                  "95% intervals by t over seeds and by a bootstrap over seeds x test images:", "",
                  "| a - b | findings | seeds | mean | t interval | bootstrap |", "|---|---|---|---|---|---|"]
        lines += [f"| {c.arm_a} - {c.arm_b} | {c.findings} | {c.seeds} | {c.mean:+.3f} | "
                  f"[{c.t_low:.3f}, {c.t_high:.3f}] | [{c.boot_low:.3f}, {c.boot_high:.3f}] |" for c in comps]
        lines += [""] + [f"- {c.sentence()}" for c in comps]
    if scale_rows:
        lines += ["", "Scale (synthetic arm, same epochs; training pairs after the validation hold-out):", "",
                  "| training pairs | common | rare | seeds |",
                  "|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['common_mean']:.3f} ± {r['common_std']:.3f} | "
                  f"{r['rare_mean']:.3f} ± {r['rare_std']:.3f} | {r['seeds']} |" for r in scale_rows]
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict], comps: list[Comparison], path: Path) -> Path:
    """Left: each arm's mean AUC ± sd over seeds; right: each paired difference with its t interval."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.2]})
    x = np.arange(len(rows))
    for j, key in enumerate(SETS):
        ax.bar(x + (j - 0.5) * 0.38, [r[f"{key}_mean"] for r in rows], 0.38,
               yerr=[r[f"{key}_std"] for r in rows], capsize=3, label=f"{key} findings")
    ax.axhline(0.5, color="grey", lw=1, ls="--", label="chance")
    ax.set_xticks(x, [r["arm"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("zero-shot AUC (mean over classes)")
    ax.set_ylim(0.3, 1.0)
    ax.legend(fontsize=8)
    ax.set_title("arms (mean ± sd over seeds)")
    for i, c in enumerate(comps):
        color = "C0" if c.findings == "common" else "C1"
        bx.errorbar(c.mean, i, xerr=[[c.mean - c.t_low], [c.t_high - c.mean]] if c.seeds > 1 else None,
                    fmt="o", color=color, capsize=3)
    bx.axvline(0, color="grey", lw=1)
    bx.set_yticks(range(len(comps)), [f"{c.arm_a} - {c.arm_b} ({c.findings})" for c in comps], fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("paired difference of mean AUC, 95% t interval")
    bx.set_title("comparisons")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_scale(scale_rows: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["size"] for r in scale_rows]
    for key in SETS:
        ax.errorbar(sizes, [r[f"{key}_mean"] for r in scale_rows], yerr=[r[f"{key}_std"] for r in scale_rows],
                    marker="o", capsize=3, label=f"{key} findings")
    ax.set_xscale("log")
    ax.set(xlabel="synthetic training pairs", ylabel="zero-shot AUC (mean ± sd over seeds)",
           title="synthetic data at three sizes, same epochs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def scale_summary(runs: list[dict], n: int) -> list[dict]:
    """Mean ± sd per training-set size of the synthetic arm (its main runs count as size n)."""
    sized = [{**r, "size": r.get("size", n)} for r in runs if r["arm"] == "synthetic"]
    out = []
    for size in sorted({r["size"] for r in sized}):
        mine = [r for r in sized if r["size"] == size]
        row = {"size": size, "seeds": len(mine)}
        for key in SETS:
            v = np.array([r[key] for r in mine], float)
            row[f"{key}_mean"], row[f"{key}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return out


def run_experiment(cfg: ExperimentConfig, out: str | Path, log=print) -> dict:
    from engine.core.ray_session import init_ray
    from train.config import load_train_config
    from workflows.trial import run_trial

    out = Path(out).resolve()
    # a rerun of the same experiment reuses its finished datasets and runs; another one needs another DIR
    claim(out, "experiment", {"config": value_digest(cfg.model_dump())})
    started = time.time()
    log(f"1/4 datasets: synthetic ({cfg.n} pairs, balanced plan, full QC)")
    synthetic = synth(Path(cfg.synth_config), cfg.n, out / "data" / "synthetic")
    drawable = None
    if "synthetic-drawable" in cfg.arms:
        log(f"  synthetic-drawable ({cfg.n} pairs, the plan restricted to what the phantom draws)")
        drawable = synth(drawable_config(cfg.synth_config, out / "configs"), cfg.n, out / "data" / "synthetic-drawable")
    rl = cfg.real_like
    log(f"  real-like ({cfg.n} corpus reports drawn from their own entities, "
        f"{rl.unpaired_share:.0%} unpaired, {rl.low_quality_share:.0%} low quality)")
    real_engine, real_table = real_like(cfg.synth_config, cfg.n, out, rl)
    cards = {"real": data_card(real_engine, real_table), "synthetic": data_card(synthetic)}
    if drawable is not None:
        cards["synthetic-drawable"] = data_card(drawable)
    cards["mixed-concat"] = mixed_card(cards["synthetic"], cards["real"], 0.5)
    cards["mixed-ratio"] = mixed_card(cards["synthetic"], cards["real"], 0.5)

    base, _ = load_train_config(cfg.train_config, cfg.train or None)
    init_ray(base.engine)
    tests = TestSets(cfg.eval.per_class, cfg.eval.size, cfg.eval.batch_size, cache_dir=out / "test-sets")
    plan = [(seed, arm, None) for seed in cfg.seeds for arm in cfg.arms]
    plan += [(seed, "synthetic", size) for seed in cfg.seeds for size in cfg.scale]
    runs = []
    log(f"2/4 training {len(plan)} models ({base.model.name}, {base.epochs} epochs of {cfg.n} pairs each)")
    for seed, arm, size in plan:
        overrides, use_syn, use_real = arm_overrides(arm, seed, cfg.n, base.epochs)
        if size is not None:  # a point of the scale axis
            overrides["data"]["limit"] = size
        train_cfg, _ = load_train_config(cfg.train_config, deep_merge(cfg.train, overrides))
        source = drawable if arm == "synthetic-drawable" else synthetic
        run_dir = out / "runs" / (f"{arm}-seed{seed}" if size is None else f"{arm}-{size}-seed{seed}")
        t0 = time.time()
        record = run_trial(train_cfg, run_dir, tests, synthetic=str(source) if use_syn else None,
                           real=f"table:{real_table}" if use_real else None)
        runs.append({"arm": arm, "seed": seed, **({"size": size} if size is not None else {}),
                     "run_dir": str(run_dir), **record, "seconds": round(time.time() - t0, 1)})
        log(f"  {len(runs)}/{len(plan)} {arm}{'' if size is None else f' ({size} pairs)'} seed {seed}: "
            f"common {record['common']:.3f}, rare {record['rare']:.3f} ({runs[-1]['seconds']} s)")
    log("3/4 paired comparisons")
    main_runs = [r for r in runs if "size" not in r]
    comps = comparisons(main_runs, list(cfg.arms), cfg.bootstrap)
    log("4/4 results")
    rows = summarise(main_runs, list(cfg.arms), cards)
    # the main synthetic runs train on n less the held-out validation pairs
    main_size = cfg.n - train_cfg.validation.size
    scale_rows = scale_summary(runs, main_size) if cfg.scale and "synthetic" in cfg.arms else []
    results = {"config": cfg.model_dump(), "runs": runs, "arms": rows,
               "comparisons": [{**c.__dict__, "sentence": c.sentence()} for c in comps],
               "scale": scale_rows, "seconds": round(time.time() - started, 1)}
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown(rows, comps, scale_rows, cfg))
    plot(rows, comps, out / "results.png")
    if scale_rows:
        plot_scale(scale_rows, out / "scale.png")
    return results
