"""`syncxr tune`: Ray Tune over the synthetic:real mixing ratio (grid) and the learning rate.

Each trial is a full training run (train/driver.py) with the ratio and lr of its config: the mix
is built inside the trial, since a unioned Ray Dataset cannot be a hyperparameter. The Train V2
pattern: the Tune function builds and fits the TorchTrainer with TuneReportCallback, and Tune's
own RunConfig goes to the Tuner. ASHA stops weak trials on the validation metric.

DIR/ holds results.csv, results.md, ratio.png (metric against ratio), trials/<name>/ (each trial's
run directory, as `syncxr train` writes it) and ray/ (Tune's experiment state).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional

from engine.core.config import beside, deep_merge
from engine.core.errors import ConfigError
from train.config import TrainConfig, TuneConfig, load_train_config
from train.data.mixing import max_total
from train.hooks import VALIDATION_HOOKS, register_hooks
from train.run_log import PLACEMENT_GROUP_KEY

TUNE_RUN_NAME = "tune"
TRIAL_DRIVER_CPU = 0.01


def trial_train_config(base: dict, ratio: float, lr: float, total: int) -> TrainConfig:
    """The training config of one trial: the base with its ratio, fixed total and lr."""
    return TrainConfig.model_validate(deep_merge(base, {"data": {"mix": {"mode": "ratio", "ratio": ratio, "total": total}},
                                                   "optim": {"lr": lr}}))


def run_trial(config: dict) -> None:
    """The Tune function: one TorchTrainer run, reporting its epoch records to Tune."""
    import ray.tune

    from train.driver import run_training

    register_hooks(config["hooks"])
    cfg = trial_train_config(config["base"], config["ratio"], config["lr"], config["total"])
    run_dir = Path(config["out"]) / "trials" / ray.tune.get_context().get_trial_id()
    run_training(cfg, run_dir, synthetic=config["synthetic"], real=config["real"],
                 callbacks=[epoch_reports()], show_progress=False, reserved_cpus=config["reserved_cpus"])


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
    for ratio in tcfg.search.ratios:  # the whole grid, before the first trial
        for lr in tcfg.search.lrs or [cfg.optim.lr]:
            try:
                trial_train_config(cfg.model_dump(), ratio, lr, 1)
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
                print(f"  {trial.trial_id} ratio {trial.config['ratio']:g} lr {trial.config['lr']:g}: "
                      f"epoch {result.get('epoch')}/{epochs} {metric} {result.get(metric, float('nan')):.3f}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                done = (trial.last_result or {}).get("epoch", 0)
                how = "finished" if done >= epochs else f"stopped by ASHA after epoch {done}"
                print(f"  {trial.trial_id} {how}", flush=True)
                self._release(trial)

        return TrialLines()


def run_tune(tcfg: TuneConfig, cfg: TrainConfig, out: str | Path, synthetic: Optional[str] = None,
             real: Optional[str] = None, verbose: bool = False) -> list[dict]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from engine.core.ownership import check_claim, claim, value_digest
    from train.driver import check_resources, run_inputs

    out = Path(out).resolve()
    synthetic = synthetic or cfg.data.synthetic
    real = real or cfg.data.real
    inputs = {"sweep": value_digest(tcfg.model_dump(exclude={"train", "train_config"})),
              **run_inputs(cfg, synthetic, real)}
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
    total = common_total(cfg, synthetic, real, ratios)
    claim(out, "tune", inputs)  # the first write: a sweep that cannot start leaves nothing behind
    metric = cfg.validation.metric
    # max_t one past the last epoch: ASHA stops a trial at max_t, which would kill it between its
    # last report and the final model save; a trial that gets there ends by itself instead
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs + 1, grace_period=tcfg.asha.grace_period,
                               reduction_factor=tcfg.asha.reduction_factor)
                 if tcfg.asha.enabled else FIFOScheduler())
    param_space = {"ratio": tune.grid_search(ratios), "lr": tune.grid_search(lrs), "total": total,
                   "base": cfg.model_dump(), "synthetic": synthetic, "real": real, "out": str(out),
                   "reserved_cpus": reserved, "hooks": VALIDATION_HOOKS.entries()}
    print(f"tune: {len(ratios)} ratios x {len(lrs)} lrs x {tcfg.num_samples}, {total} training pairs each, "
          f"{cfg.epochs} epochs, ASHA {'on' if tcfg.asha.enabled else 'off'} ({metric}, {tcfg.mode})", flush=True)
    if not verbose:  # Tune's newer console output ignores verbose=0: the legacy one honours it
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C reaches our CLI (exit 130, one line) instead of Tune's own handler, whose partial
    # result grid has trials without a config; each trial's checkpoints stay on disk
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    tuner = tune.Tuner(
        # the trial function only drives its TorchTrainer, whose workers hold the CPUs (Tune
        # refuses a trial of zero resources)
        tune.with_resources(run_trial, {"cpu": TRIAL_DRIVER_CPU}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=tcfg.mode, scheduler=scheduler,
                                    max_concurrent_trials=tcfg.max_concurrent_trials, num_samples=tcfg.num_samples),
        run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=str(out / "ray"), verbose=1 if verbose else 0,
                                  callbacks=[_TrialLines(metric, cfg.epochs)]),
    )
    grid = tuner.fit()
    rows = collect_rows(grid, metric, tcfg.mode, cfg.epochs)
    write_results(rows, out, metric)
    return rows


def collect_rows(grid, metric: str, mode: str, epochs: int) -> list[dict]:
    rows = []
    for result in grid:
        config = result.config or {}
        history = result.metrics_dataframe
        values = list(history[metric]) if history is not None and metric in history else []
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        last = result.metrics or {}
        best = (max(values) if mode == "max" else min(values)) if values else float("nan")
        rows.append({
            "trial": Path(result.path).name if result.path else "",
            "ratio": config.get("ratio"), "lr": config.get("lr"), "total": config.get("total"),
            "epochs_done": int(last.get("epoch", 0) or 0), "epochs_planned": epochs,
            "stopped_early": int(last.get("epoch", 0) or 0) < epochs and result.error is None,
            f"{metric}_last": last.get(metric, float("nan")), f"{metric}_best": best,
            "val_loss_last": last.get("val_loss", float("nan")),
            "error": (str(result.error).strip().splitlines() or [""])[-1] if result.error else "",
        })
    return sorted(rows, key=lambda r: (r["ratio"] is None, r["ratio"] or 0.0, r["lr"] or 0.0))


def write_results(rows: list[dict], out: Path, metric: str) -> None:
    if not rows:
        return
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = ["ratio", "lr", "epochs_done", "stopped_early", f"{metric}_best", f"{metric}_last", "val_loss_last"]
    lines = [f"# Ray Tune: synthetic ratio x lr ({metric})", "",
             "ratio = fraction of synthetic pairs in a training set of fixed size (total "
             f"{rows[0]['total']}); validation on the same held-out pairs for every trial.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_ratio(rows, out / "ratio.png", metric)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_ratio(rows: list[dict], path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for lr in sorted({r["lr"] for r in rows}):
        pts = sorted((r["ratio"], r[f"{metric}_best"]) for r in rows if r["lr"] == lr)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"lr {lr:g}")
        for r in rows:
            if r["lr"] == lr and r["stopped_early"]:
                ax.annotate("ASHA stop", (r["ratio"], r[f"{metric}_best"]), fontsize=7)
    ax.set(xlabel="synthetic fraction of the training set", ylabel=f"best {metric}", title="mixing ratio sweep")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
