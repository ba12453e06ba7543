"""`syncxr tune`: Ray Tune over the synthetic:real mixing ratio (grid), the learning rate and
the seed.

Each trial is the experiment's trial function (workflows/trial.py): a Ray Train run of the
training config with the trial's ratio, lr and seed, then zero-shot scores on the phantom test
sets of the common and the rare findings. So a sweep over the ratio is the experiment's
mixed-ratio arm at several ratios. The mix is built inside the trial, since a unioned Ray
Dataset cannot be a hyperparameter. The Train V2 pattern: the Tune function builds and fits the
TorchTrainer with TuneReportCallback, and Tune's own RunConfig goes to the Tuner. ASHA, when on,
stops weak trials on the validation metric (a stopped trial has no test scores).

Without --synthetic/--real (and none in the config), `data:` says how to build both through the
engine, as the experiment does: a balanced synthetic set and a real-like one from the corpus.

DIR/ holds results.csv, results.md (per trial, and per ratio mean ± sd over seeds), ratio.png
(zero-shot AUC against the ratio, every seed and the spread), trials/<trial id>/ (each trial's run
directory with scores.json), data/ (the built datasets), test-sets/ (drawn test frames, shared by
the trials) and ray/ (Tune's experiment state).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from engine.core.config import Section, beside, deep_merge
from engine.core.errors import ConfigError
from train.config import TrainConfig, load_train_config
from train.data.mixing import max_total
from train.hooks import VALIDATION_HOOKS, register_hooks
from train.run_log import PLACEMENT_GROUP_KEY
from workflows.datasets import RealLikeSection
from workflows.scoring import SETS, EvalSection


class SearchSection(Section):
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0])  # grid
    lrs: list[float] = Field(default_factory=list)  # grid; empty: the train config's lr
    seeds: list[int] = Field(default_factory=lambda: [0])  # grid: initialisation and batch order

    @model_validator(mode="after")
    def _in_range(self) -> "SearchSection":
        for r in self.ratios:
            if not 0 <= r <= 1:
                raise ValueError(f"ratio {r} outside [0, 1]")
        if not self.ratios:
            raise ValueError("at least one ratio")
        if not self.seeds:
            raise ValueError("at least one seed")
        for lr in self.lrs:  # every trial would fail on it, one after the other
            if not lr > 0:
                raise ValueError(f"lr {lr} must be greater than 0")
        for name, grid in (("ratios", self.ratios), ("lrs", self.lrs), ("seeds", self.seeds)):
            if len(set(grid)) != len(grid):  # one trial twice: a grid point counted double
                raise ValueError(f"{name} {grid} repeat a value")
        return self


class AshaSection(Section):
    enabled: bool = True
    grace_period: int = Field(1, ge=1)  # epochs before a trial may be stopped
    reduction_factor: float = Field(2.0, gt=1)


class BuildSection(Section):
    """The datasets a sweep builds for itself when none is given: n synthetic pairs (the balanced
    plan, full QC) and n real-like ones (the corpus's reports, spoilt like a real archive)."""

    n: int = Field(800, ge=10)
    synth_config: str = "local.yaml"  # relative to the tune file, else the packaged one
    real_like: RealLikeSection = Field(default_factory=RealLikeSection)


class TuneConfig(Section):
    """A sweep: a full training config (inline `train:` or a file `train_config:`) plus a grid."""

    train_config: Optional[str] = None  # path, relative to this file
    train: dict[str, Any] = Field(default_factory=dict)  # merged over train_config
    search: SearchSection = Field(default_factory=SearchSection)
    asha: AshaSection = Field(default_factory=AshaSection)
    data: Optional[BuildSection] = None  # None: the data must be given (--synthetic and --real)
    eval: EvalSection = Field(default_factory=EvalSection)
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = Field(1, ge=1)
    num_samples: int = Field(1, ge=1)  # repeats of the grid


TUNE_RUN_NAME = "tune"
TRIAL_DRIVER_CPU = 0.01


def trial_train_config(base: dict, ratio: float, lr: float, total: int, seed: int = 0) -> TrainConfig:
    """The training config of one trial: the base with its ratio, fixed total, lr and seed (the
    model's initialisation, the batch order and the mix's sample)."""
    return TrainConfig.model_validate(deep_merge(base, {
        "data": {"mix": {"mode": "ratio", "ratio": ratio, "total": total}, "seed": seed},
        "optim": {"lr": lr}, "seed": seed}))


def tune_trial(config: dict) -> None:
    """The Tune function: the experiment's trial (train, then score on the phantom test sets),
    reporting its epoch records to Tune; the scores go to the trial's scores.json."""
    import ray.tune

    from workflows.scoring import TestSets
    from workflows.trial import run_trial

    register_hooks(config["hooks"])
    cfg = trial_train_config(config["base"], config["ratio"], config["lr"], config["total"], config["seed"])
    run_dir = Path(config["out"]) / "trials" / ray.tune.get_context().get_trial_id()
    tests = TestSets(**config["eval"], cache_dir=Path(config["out"]) / "test-sets")
    run_trial(cfg, run_dir, tests, synthetic=config["synthetic"], real=config["real"],
              callbacks=[epoch_reports()], reserved_cpus=config["reserved_cpus"])


def common_total(cfg: TrainConfig, synthetic: Optional[str], real: Optional[str], ratios: list[float]) -> int:
    """One training-set size for every ratio (the smallest that all ratios can fill), unless
    data.mix.total fixes it: a ratio sweep compares mixes at equal size."""
    from train.data.pipeline import load_sources, plan_data

    if cfg.data.mix.total:
        return cfg.data.mix.total
    sources = load_sources(cfg.data, synthetic, real)
    pools_cfg = TrainConfig.model_validate(deep_merge(cfg.model_dump(), {"data": {"mix": {"mode": "concat"}, "limit": None}}))
    if "synthetic" not in sources or "real" not in sources:
        raise ConfigError("tune: a ratio sweep needs both --synthetic and --real data (or data.synthetic / data.real)")
    pools = plan_data(pools_cfg, sources).train
    total = min(max_total(len(pools.get("synthetic", [])), len(pools.get("real", [])), r) for r in ratios)
    if cfg.data.limit:
        total = min(total, cfg.data.limit)
    if total < 2:
        raise ConfigError(f"tune: ratios {ratios} leave {total} training pairs")
    return total


def load_tune_config(path) -> tuple[TuneConfig, TrainConfig, Path]:
    from pydantic import ValidationError

    from engine.core.config import load_yaml_model
    from train.data.pipeline import resolve_path

    tcfg, found = load_yaml_model(path, TuneConfig, "tune config")
    base_dir = Path(found).resolve().parent
    base: dict = {}
    if tcfg.train_config:
        cfg, train_found = load_train_config(beside(found, tcfg.train_config))
        base = cfg.model_dump()
        for key in ("synthetic", "real"):
            base["data"][key] = resolve_path(base["data"][key], Path(train_found).resolve().parent)
    try:
        cfg = TrainConfig.model_validate(deep_merge(base, tcfg.train))
    except ValidationError as exc:  # name the tune file and the field
        err = exc.errors()[0]
        raise ConfigError(f"{found}: field 'train.{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
    for key in ("synthetic", "real"):
        if key in tcfg.train.get("data", {}):
            setattr(cfg.data, key, resolve_path(getattr(cfg.data, key), base_dir))
    if tcfg.data is not None:
        tcfg.data.synth_config = str(beside(found, tcfg.data.synth_config))
    for ratio in tcfg.search.ratios:  # the whole grid, before the first trial
        for lr in tcfg.search.lrs or [cfg.optim.lr]:
            try:
                trial_train_config(cfg.model_dump(), ratio, lr, 1, tcfg.search.seeds[0])
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ConfigError(f"{found}: trial ratio {ratio:g} lr {lr:g}: field "
                                  f"'{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
    return tcfg, cfg, Path(found)


def release_placement_group(group_id: Optional[str]) -> bool:
    """Remove the Train worker group's placement group a stopped trial left behind (its id comes
    in the trial's results: train/loop.py, placement_group_id). Its workers died with their
    controller; without this the group keeps their CPUs reserved and every later trial waits
    forever. True if removed."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not group_id:
        return False
    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))
    if ray.util.placement_group_table(pg).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(pg)
    return True


def epoch_reports():
    """TuneReportCallback for epoch records only: a trial's step records (log_every_steps) are
    progress, and counted by ASHA as training iterations they would stop trials too early."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("kind") != "step":
                super().after_report(run_context, metrics, checkpoint)

    return EpochReports()


class _TrialLines:
    """A Tune callback printing one line per trial result and end (instead of Tune's tables), and
    releasing a finished or stopped trial's worker placement group."""

    def __new__(cls, metric: str, epochs: int):
        from ray.tune import Callback

        class TrialLines(Callback):
            def __init__(self):
                self.groups = {}  # trial id -> its worker group's placement group, from its results

            def _release(self, trial):
                if release_placement_group(self.groups.pop(trial.trial_id, None)):
                    print(f"  {trial.trial_id}: released the placement group of its stopped workers", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._release(trial)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                self.groups[trial.trial_id] = result.get(PLACEMENT_GROUP_KEY) or self.groups.get(trial.trial_id)
                print(f"  {trial.trial_id} ratio {trial.config['ratio']:g} lr {trial.config['lr']:g} "
                      f"seed {trial.config['seed']}: "
                      f"epoch {result.get('epoch')}/{epochs} {metric} {result.get(metric, float('nan')):.3f}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                done = (trial.last_result or {}).get("epoch", 0)
                how = "finished" if done >= epochs else f"stopped by ASHA after epoch {done}"
                print(f"  {trial.trial_id} {how}", flush=True)
                self._release(trial)

        return TrialLines()


def build_data(tcfg: TuneConfig, out: Path, log=print) -> tuple[str, str, dict]:
    """(synthetic dir, real spec, data cards) of the sweep's own datasets under out/data, built
    through the engine as the experiment builds them; a rerun reuses finished ones."""
    from workflows.datasets import data_card, real_like_config, synth, write_real_like_table

    b = tcfg.data
    log(f"tune: building the data: {b.n} synthetic pairs and {b.n} real-like ones ({b.synth_config})")
    synthetic = synth(Path(b.synth_config), b.n, out / "data" / "synthetic")
    real_engine = synth(real_like_config(b.synth_config, out / "configs"), b.n, out / "data" / "real-like-drawn")
    rl = b.real_like
    table = write_real_like_table(real_engine, out / "data" / "real-like", rl.unpaired_share,
                                  rl.low_quality_share, rl.seed)
    cards = {"synthetic": data_card(synthetic), "real": data_card(real_engine, table)}
    return str(synthetic), f"table:{table}", cards


def run_tune(tcfg: TuneConfig, cfg: TrainConfig, out: str | Path, synthetic: Optional[str] = None,
             real: Optional[str] = None, verbose: bool = False) -> list[dict]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from engine.core.files import write_json
    from engine.core.ownership import check_claim, claim, value_digest
    from train.driver import check_resources, run_inputs

    out = Path(out).resolve()
    synthetic = synthetic or cfg.data.synthetic
    real = real or cfg.data.real
    build = synthetic is None and real is None  # the sweep builds its own data
    if build and tcfg.data is None:
        raise ConfigError("tune: no data: give --synthetic and --real (or data.synthetic / data.real), or a `data:` "
                          "section for the sweep to build both")
    sweep = {"sweep": value_digest(tcfg.model_dump(exclude={"train", "train_config"}))}
    inputs = ({**sweep, "config": run_inputs(cfg, None, None)["config"], "data": "built"} if build
              else {**sweep, **run_inputs(cfg, synthetic, real)})
    check_claim(out, "tune", inputs)  # refused before any trial
    # every concurrent trial's driver function holds a sliver of CPU beside its workers
    reserved = TRIAL_DRIVER_CPU * tcfg.max_concurrent_trials
    check_resources(cfg, ray.cluster_resources(), reserved)
    if tcfg.max_concurrent_trials > 1:
        s = cfg.scaling
        check_resources(cfg.model_copy(update={"scaling": s.model_copy(
            update={"num_workers": s.num_workers * tcfg.max_concurrent_trials})}), ray.cluster_resources(), reserved)
    ratios = list(tcfg.search.ratios)
    lrs = list(tcfg.search.lrs) or [cfg.optim.lr]
    seeds = list(tcfg.search.seeds)
    cards = {}
    if build:
        claim(out, "tune", inputs)
        synthetic, real, cards = build_data(tcfg, out)
    total = common_total(cfg, synthetic, real, ratios)
    claim(out, "tune", inputs)  # the first write: a sweep that cannot start leaves nothing behind
    metric = cfg.validation.metric
    # max_t one past the last epoch: ASHA stops a trial at max_t, which would kill it between its
    # last report and the final model save; a trial that gets there ends by itself instead
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs + 1, grace_period=tcfg.asha.grace_period,
                               reduction_factor=tcfg.asha.reduction_factor)
                 if tcfg.asha.enabled else FIFOScheduler())
    param_space = {"ratio": tune.grid_search(ratios), "lr": tune.grid_search(lrs), "seed": tune.grid_search(seeds),
                   "total": total, "base": cfg.model_dump(), "synthetic": synthetic, "real": real, "out": str(out),
                   "eval": tcfg.eval.model_dump(), "reserved_cpus": reserved, "hooks": VALIDATION_HOOKS.entries()}
    print(f"tune: {len(ratios)} ratios x {len(lrs)} lrs x {len(seeds)} seeds x {tcfg.num_samples}, {total} training "
          f"pairs each, {cfg.epochs} epochs, ASHA {'on' if tcfg.asha.enabled else 'off'} ({metric}, {tcfg.mode}); "
          f"each finished trial scored on the phantom test sets ({tcfg.eval.per_class} images a class)", flush=True)
    if not verbose:  # Tune's newer console output ignores verbose=0: the legacy one honours it
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C reaches our CLI (exit 130, one line) instead of Tune's own handler, whose partial
    # result grid has trials without a config; each trial's checkpoints stay on disk
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    tuner = tune.Tuner(
        # the trial function only drives its TorchTrainer, whose workers hold the CPUs (Tune
        # refuses a trial of zero resources)
        tune.with_resources(tune_trial, {"cpu": TRIAL_DRIVER_CPU}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=tcfg.mode, scheduler=scheduler,
                                    max_concurrent_trials=tcfg.max_concurrent_trials, num_samples=tcfg.num_samples),
        run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=str(out / "ray"), verbose=1 if verbose else 0,
                                  callbacks=[_TrialLines(metric, cfg.epochs)]),
    )
    grid = tuner.fit()
    rows = collect_rows(grid, metric, tcfg.mode, cfg.epochs, out)
    curve = ratio_curve(rows)
    write_results(rows, curve, out, metric)
    write_json(out / "results.json", {"rows": rows, "curve": curve, "data_cards": cards,
                                      "synthetic": synthetic, "real": real})
    return rows


def collect_rows(grid, metric: str, mode: str, epochs: int, out: Path) -> list[dict]:
    """One row per trial: its grid point, how far it got, its validation metric and, for a trial
    that finished, its zero-shot AUC on each test set (from its scores.json)."""
    import json

    from workflows.trial import SCORES_JSON

    rows = []
    for result in grid:
        config = result.config or {}
        history = result.metrics_dataframe
        values = list(history[metric]) if history is not None and metric in history else []
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        last = result.metrics or {}
        best = (max(values) if mode == "max" else min(values)) if values else float("nan")
        trial_id = last.get("trial_id") or ""
        scores_file = out / "trials" / trial_id / SCORES_JSON
        scores = json.loads(scores_file.read_text()) if trial_id and scores_file.is_file() else {}
        rows.append({
            "trial": trial_id or (Path(result.path).name if result.path else ""),
            "ratio": config.get("ratio"), "lr": config.get("lr"), "seed": config.get("seed"),
            "total": config.get("total"),
            "epochs_done": int(last.get("epoch", 0) or 0), "epochs_planned": epochs,
            "stopped_early": int(last.get("epoch", 0) or 0) < epochs and result.error is None,
            f"{metric}_last": last.get(metric, float("nan")), f"{metric}_best": best,
            "val_loss_last": last.get("val_loss", float("nan")),
            **{f"{key}_auc": scores.get(key, float("nan")) for key in SETS},
            "error": (str(result.error).strip().splitlines() or [""])[-1] if result.error else "",
        })
    return sorted(rows, key=lambda r: (r["ratio"] is None, r["ratio"] or 0.0, r["lr"] or 0.0, r["seed"] or 0))


def ratio_curve(rows: list[dict]) -> list[dict]:
    """Per (ratio, lr): the mean, sd and range over seeds of each test set's AUC, from the trials
    that finished and were scored."""
    out = []
    for ratio, lr in sorted({(r["ratio"], r["lr"]) for r in rows if r["ratio"] is not None}):
        mine = [r for r in rows if r["ratio"] == ratio and r["lr"] == lr]
        point = {"ratio": ratio, "lr": lr, "trials": len(mine)}
        for key in SETS:
            v = np.array([r[f"{key}_auc"] for r in mine], float)
            v = v[np.isfinite(v)]
            point[f"{key}_seeds"] = len(v)
            point[f"{key}_mean"] = float(v.mean()) if len(v) else float("nan")
            point[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            point[f"{key}_min"] = float(v.min()) if len(v) else float("nan")
            point[f"{key}_max"] = float(v.max()) if len(v) else float("nan")
        out.append(point)
    return out


def write_results(rows: list[dict], curve: list[dict], out: Path, metric: str) -> None:
    if not rows:
        return
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = ["ratio", "lr", "seed", "epochs_done", "stopped_early", f"{metric}_best", "val_loss_last",
            *[f"{k}_auc" for k in SETS], "error"]
    lines = [f"# Ray Tune: synthetic ratio x lr x seed", "",
             "ratio = fraction of synthetic pairs in a training set of fixed size (total "
             f"{rows[0]['total']}); validation ({metric}) on the same held-out pairs for every trial; "
             "common / rare = mean zero-shot AUC on the phantom test sets of the five common and the six "
             "rarest drawable findings (chance 0.5), for trials that finished.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "Per ratio, over seeds (mean ± sd, [min, max]):", "",
              "| ratio | lr | seeds | common | rare |", "|---|---|---|---|---|"]
    for p in curve:
        cells = [f"{p[f'{k}_mean']:.3f} ± {p[f'{k}_sd']:.3f} [{p[f'{k}_min']:.3f}, {p[f'{k}_max']:.3f}]"
                 if p[f"{k}_seeds"] else "-" for k in SETS]
        lines.append(f"| {p['ratio']:g} | {p['lr']:g} | {p['common_seeds']} | " + " | ".join(cells) + " |")
    scored = [r for r in rows if np.isfinite(r["common_auc"])]
    if scored:
        low = min(scored, key=lambda r: r["common_auc"])
        lines += ["", f"{len(scored)} of {len(rows)} trials scored; the lowest common-findings AUC is "
                  f"{low['common_auc']:.3f} (ratio {low['ratio']:g}, seed {low['seed']}). The spread over seeds "
                  "is what a difference between two ratios must beat; this table alone tests no difference."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_ratio(rows, curve, out / "ratio.png")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_ratio(rows: list[dict], curve: list[dict], path: Path) -> None:
    """Zero-shot AUC against the ratio: each seed's trial as a dot, the mean over seeds as a line
    with its sd as a band, one panel per test set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.core.files import save_figure

    fig, axes = plt.subplots(1, len(SETS), figsize=(5.5 * len(SETS), 4), sharey=True)
    for ax, key in zip(np.atleast_1d(axes), SETS):
        for i, lr in enumerate(sorted({p["lr"] for p in curve})):
            pts = [p for p in curve if p["lr"] == lr and p[f"{key}_seeds"]]
            x = np.array([p["ratio"] for p in pts])
            m = np.array([p[f"{key}_mean"] for p in pts])
            sd = np.nan_to_num(np.array([p[f"{key}_sd"] for p in pts]))
            ax.plot(x, m, marker="o", color=f"C{i}", label=f"lr {lr:g}: mean over seeds")
            ax.fill_between(x, m - sd, m + sd, color=f"C{i}", alpha=0.2)
            dots = [(r["ratio"], r[f"{key}_auc"]) for r in rows if r["lr"] == lr and np.isfinite(r[f"{key}_auc"])]
            ax.scatter([d[0] for d in dots], [d[1] for d in dots], s=14, color=f"C{i}", alpha=0.7,
                       label="one seed" if i == 0 else None)
        ax.axhline(0.5, color="grey", lw=1, ls="--", label="chance")
        ax.set(xlabel="synthetic fraction of the training set", title=f"{key} findings")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("zero-shot AUC (band: ± sd over seeds)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
