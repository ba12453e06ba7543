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
import fcntl
import itertools
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
    # grid over engine settings by dotted key ("plan.k": [2, 4, 6]): each trial synthesises its
    # own dataset with them (cached by the engine config's digest) and trains on it alone
    synth: dict[str, list[Any]] = Field(default_factory=dict)

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
        grids = [("ratios", self.ratios), ("lrs", self.lrs), ("seeds", self.seeds),
                 *((f"synth.{k}", v) for k, v in self.synth.items())]
        for name, grid in grids:
            if len(set(map(repr, grid))) != len(grid):  # one trial twice: a grid point counted double
                raise ValueError(f"{name} {grid} repeat a value")
            if name.startswith("synth.") and not grid:
                raise ValueError(f"{name}: at least one value")
        if self.synth and self.ratios != [1.0]:
            raise ValueError("with search.synth every trial trains on its own synthetic data alone: ratios must be "
                             "[1.0]")
        return self

    def setting_keys(self) -> list[str]:
        """The engine settings that name a setting: those given more than one value (a single
        value is shared by every trial, as `plan.weighting: [frequency]`); all when none varies."""
        varying = [k for k, values in self.synth.items() if len(values) > 1]
        return varying or list(self.synth)

    def synth_points(self) -> list[dict[str, Any]]:
        """Every combination of the engine settings searched ({} when none is)."""
        keys = list(self.synth)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.synth[k] for k in keys))]


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
DATA_CARD_JSON = "data_card.json"  # beside a synthesis trial's scores: what its settings did to the data
TRIAL_DRIVER_CPU = 0.01


def trial_train_config(base: dict, ratio: float, lr: float, total: int, seed: int = 0) -> TrainConfig:
    """The training config of one trial: the base with its ratio, fixed total, lr and seed (the
    model's initialisation, the batch order and the mix's sample)."""
    return TrainConfig.model_validate(deep_merge(base, {
        "data": {"mix": {"mode": "ratio", "ratio": ratio, "total": total}, "seed": seed},
        "optim": {"lr": lr}, "seed": seed}))


def nested(point: dict[str, Any]) -> dict:
    """{"plan.k": 4} -> {"plan": {"k": 4}}."""
    out: dict = {}
    for key, value in point.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def trial_label(config: dict, setting_keys: Optional[list[str]] = None) -> str:
    """How the sweep names a trial: its synthesis setting (by `setting_keys`, default all its keys)
    or its ratio, then lr and seed."""
    synth = config.get("synth")
    what = (_point_text({k: v for k, v in synth.items() if setting_keys is None or k in setting_keys}) if synth
            else f"ratio {config['ratio']:g}")
    return f"{what} lr {config['lr']:g} seed {config['seed']}"


def synth_engine_config(synth_config: str, point: dict[str, Any]):
    """The engine config of one grid point, checked by the engine's schema (an unknown key or a
    bad value is a ConfigError naming the field)."""
    from engine.core.config import load_config

    return load_config(synth_config, nested(point))


def trial_dataset(out: Path, synth_config: str, point: dict[str, Any], n: int) -> Path:
    """The dataset of one grid point of engine settings, synthesised through the engine's public
    API under out/data/synth-<digest of the engine config>: trials that share the settings share
    it (one at a time, under a lock), a rerun reuses it, and the engine verifies it like any run
    directory (a damaged part is recomputed, never trusted)."""
    from engine.core.ownership import value_digest
    from workflows.datasets import synth, variant_config

    cfg = synth_engine_config(synth_config, point)
    digest = value_digest(cfg.model_dump(mode="json"))[:12]
    config_file = variant_config(synth_config, out / "configs", f"synth-{digest}", nested(point))
    data_dir = out / "data" / f"synth-{digest}"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out / "data" / f".synth-{digest}.lock", "a") as lock:  # "a": a rerun leaves even this file as it was
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second trial of the same settings waits, then reuses it
        return synth(config_file, n, data_dir)


def synthesis_card(dataset: Path) -> dict:
    """What a trial's engine settings did to its data: the plan's balance (max/min mentions per
    group, the caps), the QC funnel and the data card's drawn/undrawable shares."""
    import json

    from workflows.datasets import data_card

    dataset = Path(dataset)
    plan = json.loads((dataset / "plan_stats.json").read_text())
    manifest = json.loads((dataset / "manifest.json").read_text())
    return {"planned": manifest["planned"], "kept": manifest["kept"], "funnel": manifest["counts"]["funnel"],
            "tau_max": plan.get("tau_max"),
            **{f"{g}_max_min": plan[g]["plan"]["max_min_ratio"] for g in ("clinical", "anatomy") if g in plan},
            **data_card(dataset)}


def tune_trial(config: dict) -> None:
    """The Tune function: the experiment's trial (train, then score on the phantom test sets),
    reporting its epoch records to Tune; the scores go to the trial's scores.json."""
    import ray.tune

    from engine.core.files import write_json
    from workflows.scoring import TestSets
    from workflows.trial import run_trial

    register_hooks(config["hooks"])
    out = Path(config["out"])
    run_dir = out / "trials" / ray.tune.get_context().get_trial_id()
    synthetic, real = config["synthetic"], config["real"]
    if config.get("synth") is not None:  # this trial's own dataset, from its engine settings
        dataset = trial_dataset(out, config["synth_config"], config["synth"], config["synth_n"])
        card = {"synth": config["synth"], "dataset": str(dataset), **synthesis_card(dataset)}
        synthetic, real = str(dataset), None
        cfg = TrainConfig.model_validate(deep_merge(config["base"], {
            "data": {"mix": {"mode": "synthetic"}, "seed": config["seed"]}, "optim": {"lr": config["lr"]},
            "seed": config["seed"]}))
    else:
        cfg = trial_train_config(config["base"], config["ratio"], config["lr"], config["total"], config["seed"])
        card = None
    tests = TestSets(**config["eval"], cache_dir=out / "test-sets")
    run_trial(cfg, run_dir, tests, synthetic=synthetic, real=real,
              callbacks=[epoch_reports()], reserved_cpus=config["reserved_cpus"])
    if card is not None:  # beside the scores (the run directory is the training run's own until then)
        write_json(run_dir / DATA_CARD_JSON, card)


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
    if tcfg.search.synth:
        if tcfg.data is None:
            raise ConfigError(f"{found}: search.synth needs a `data:` section (the engine config and n of each "
                              "trial's dataset)")
        for point in tcfg.search.synth_points():  # every engine config of the grid, by the engine's schema
            try:
                synth_engine_config(tcfg.data.synth_config, point)
            except ConfigError as exc:
                raise ConfigError(f"{found}: search.synth {_point_text(point)}: {exc}") from None
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

    def __new__(cls, metric: str, epochs: int, setting_keys: Optional[list[str]] = None):
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
                print(f"  {trial.trial_id} {trial_label(trial.config, setting_keys)}: epoch {result.get('epoch')}/{epochs} "
                      f"{metric} {result.get(metric, float('nan')):.3f}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                done = (trial.last_result or {}).get("epoch", 0)
                how = "finished" if done >= epochs else f"stopped by ASHA after epoch {done}"
                print(f"  {trial.trial_id} {how}", flush=True)
                self._release(trial)

        return TrialLines()


def build_data(tcfg: TuneConfig, out: Path, log=print) -> tuple[str, str, dict]:
    """(synthetic dir, real spec, data cards) of the sweep's own datasets under out/data, built
    through the engine as the experiment builds them; a rerun reuses finished ones."""
    from workflows.datasets import data_card, real_like, synth

    b = tcfg.data
    log(f"tune: building the data: {b.n} synthetic pairs and {b.n} real-like ones ({b.synth_config})")
    synthetic = synth(Path(b.synth_config), b.n, out / "data" / "synthetic")
    real_engine, table = real_like(b.synth_config, b.n, out, b.real_like)
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
    points = tcfg.search.synth_points()
    if points != [{}]:  # every trial synthesises its own data: none is given or built up front
        if synthetic or real:
            raise ConfigError("tune: search.synth makes every trial synthesise its own data; drop --synthetic/--real "
                              "(and data.synthetic/data.real)")
    build = synthetic is None and real is None and points == [{}]  # the sweep builds its own data
    if synthetic is None and real is None and tcfg.data is None:
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
    total = common_total(cfg, synthetic, real, ratios) if points == [{}] else None
    claim(out, "tune", inputs)  # the first write: a sweep that cannot start leaves nothing behind
    metric = cfg.validation.metric
    knobs = tcfg.search.setting_keys()
    # max_t one past the last epoch: ASHA stops a trial at max_t, which would kill it between its
    # last report and the final model save; a trial that gets there ends by itself instead
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs + 1, grace_period=tcfg.asha.grace_period,
                               reduction_factor=tcfg.asha.reduction_factor)
                 if tcfg.asha.enabled else FIFOScheduler())
    param_space = {"ratio": tune.grid_search(ratios), "lr": tune.grid_search(lrs), "seed": tune.grid_search(seeds),
                   "synth": tune.grid_search(points) if points != [{}] else None,
                   "synth_config": tcfg.data.synth_config if tcfg.data else None,
                   "synth_n": tcfg.data.n if tcfg.data else None,
                   "total": total, "base": cfg.model_dump(), "synthetic": synthetic, "real": real, "out": str(out),
                   "eval": tcfg.eval.model_dump(), "reserved_cpus": reserved, "hooks": VALIDATION_HOOKS.entries()}
    what = (f"{len(points)} synthesis settings ({', '.join(tcfg.search.synth)}) x " if points != [{}] else
            f"{len(ratios)} ratios x ")
    size = f"{total} training pairs each" if total else f"a dataset of {tcfg.data.n} pairs synthesised per setting"
    print(f"tune: {what}{len(lrs)} lrs x {len(seeds)} seeds x {tcfg.num_samples}, {size}, {cfg.epochs} epochs, ASHA {'on' if tcfg.asha.enabled else 'off'} ({metric}, {tcfg.mode}); "
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
                                  callbacks=[_TrialLines(metric, cfg.epochs, knobs)]),
    )
    grid = tuner.fit()
    rows = collect_rows(grid, metric, tcfg.mode, cfg.epochs, out, knobs)
    curve = ratio_curve(rows) if points == [{}] else []
    summary = write_results(rows, curve, out, metric)
    settings, comps = [], []
    if points != [{}]:
        settings = setting_table(rows, out)
        comps = best_setting_comparisons(rows, settings, out)
        summary = write_synth_results(rows, settings, comps, knobs, out)
    write_json(out / "results.json", {"rows": rows, "curve": curve, "data_cards": cards, "synthetic": synthetic,
                                      "real": real, "settings": settings, "summary": summary,
                                      "best": [{**c.__dict__, "sentence": best_sentence(c)} for c in comps]})
    return rows


def collect_rows(grid, metric: str, mode: str, epochs: int, out: Path,
                 setting_keys: Optional[list[str]] = None) -> list[dict]:
    """One row per trial: its grid point (a synthesis setting named by `setting_keys`, default all
    its keys), how far it got, its validation metric and, for a trial that finished, its zero-shot
    AUC on each test set (from its scores.json)."""
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
            "setting": _point_text({k: v for k, v in config["synth"].items()
                                    if setting_keys is None or k in setting_keys}) if config.get("synth") else "",
            "total": config.get("total"),
            "epochs_done": int(last.get("epoch", 0) or 0), "epochs_planned": epochs,
            "stopped_early": int(last.get("epoch", 0) or 0) < epochs and result.error is None,
            f"{metric}_last": last.get(metric, float("nan")), f"{metric}_best": best,
            "val_loss_last": last.get("val_loss", float("nan")),
            **{f"{key}_auc": scores.get(key, float("nan")) for key in SETS},
            "error": (str(result.error).strip().splitlines() or [""])[-1] if result.error else "",
        })
    return sorted(rows, key=lambda r: (r["ratio"] is None, r["ratio"] or 0.0, setting_order(r["setting"]),
                                       r["lr"] or 0.0, r["seed"] or 0))


def setting_order(setting: str) -> tuple:
    """A setting's sort key by its values as numbers: k=2 before k=10, tau_factor=2.0 before 1000.0."""
    return tuple(_as_number(part.split("=", 1)[-1]) for part in setting.split(", ")) if setting else ()


def ratio_curve(rows: list[dict]) -> list[dict]:
    """Per (ratio, lr): the mean, sd and range over seeds of each test set's AUC, from the trials
    that finished and were scored."""
    out = []
    for ratio, lr in sorted({(r["ratio"], r["lr"]) for r in rows if r["ratio"] is not None}):
        mine = [r for r in rows if r["ratio"] == ratio and r["lr"] == lr]
        out.append({"ratio": ratio, "lr": lr, "trials": len(mine), **seed_stats(mine)})
    return out


def seed_stats(trials: list[dict]) -> dict:
    """Per test set, over the trials that were scored: how many, mean, sd (ddof 1) and range."""
    out = {}
    for key in SETS:
        v = np.array([r[f"{key}_auc"] for r in trials], float)
        v = v[np.isfinite(v)]
        nan = float("nan")
        out.update({f"{key}_seeds": len(v), f"{key}_mean": float(v.mean()) if len(v) else nan,
                    f"{key}_sd": float(v.std(ddof=1)) if len(v) > 1 else nan,
                    f"{key}_min": float(v.min()) if len(v) else nan, f"{key}_max": float(v.max()) if len(v) else nan})
    return out


def write_results(rows: list[dict], curve: list[dict], out: Path, metric: str) -> str:
    """results.csv, results.md and ratio.png; returns the per-ratio summary (markdown), if any."""
    if not rows:
        return ""
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    synth = any(r["setting"] for r in rows)
    point = "setting" if synth else "ratio"
    cols = [point, "lr", "seed", "epochs_done", "stopped_early", f"{metric}_best", "val_loss_last",
            *[f"{k}_auc" for k in SETS], "error"]
    what = ("setting = the engine settings of the trial's own synthetic dataset, on which it trains alone"
            if synth else f"ratio = fraction of synthetic pairs in a training set of fixed size (total {rows[0]['total']})")
    lines = [f"# Ray Tune: {'synthesis settings' if synth else 'synthetic ratio'} x lr x seed", "",
             f"{what}; validation metric {metric}; common / rare = mean zero-shot AUC on the phantom test sets of the "
             "five common and the six rarest drawable findings (chance 0.5), for trials that finished.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    summary = []
    if curve:
        summary = ["Per ratio, over seeds (mean ± sd, [min, max]):", "",
                   "| ratio | lr | seeds | common | rare |", "|---|---|---|---|---|"]
        for p in curve:
            cells = [f"{p[f'{k}_mean']:.3f} ± {p[f'{k}_sd']:.3f} [{p[f'{k}_min']:.3f}, {p[f'{k}_max']:.3f}]"
                     if p[f"{k}_seeds"] else "-" for k in SETS]
            summary.append(f"| {p['ratio']:g} | {p['lr']:g} | {p['common_seeds']} | " + " | ".join(cells) + " |")
        lines += [""] + summary
    scored = [r for r in rows if np.isfinite(r["common_auc"])]
    if scored:
        low = min(scored, key=lambda r: r["common_auc"])
        lines += ["", f"{len(scored)} of {len(rows)} trials scored; the lowest common-findings AUC is "
                  f"{low['common_auc']:.3f} ({point} {_fmt(low[point])}, seed {low['seed']}). The spread over seeds "
                  f"is what a difference between two {point}s must beat; this table alone tests no difference."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if curve:
        plot_ratio(rows, curve, out / "ratio.png")
    return "\n".join(summary)


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


# ---------------------------------------------------------------- sweeps over synthesis settings

def setting_table(rows: list[dict], out: Path) -> list[dict]:
    """Per synthesis setting (and lr): mean ± sd over seeds of each test set's AUC, and the data
    card of its dataset (what the knob did to the data)."""
    import json

    table = []
    for setting, lr in sorted({(r["setting"], r["lr"]) for r in rows if r["setting"]},
                              key=lambda s: (setting_order(s[0]), s[1])):
        mine = [r for r in rows if r["setting"] == setting and r["lr"] == lr]
        entry = {"setting": setting, "lr": lr, "trials": len(mine), "failed": sum(bool(r["error"]) for r in mine),
                 **seed_stats(mine)}
        cards = [out / "trials" / r["trial"] / DATA_CARD_JSON for r in mine]
        card = next((json.loads(c.read_text()) for c in cards if c.is_file()), {})
        entry["card"] = {k: card[k] for k in ("kept", "planned", "clinical_max_min", "anatomy_max_min",
                                               "drawn_pairs_share", "undrawable_mentions_share") if k in card}
        table.append(entry)
    return table


def best_setting_comparisons(rows: list[dict], table: list[dict], out: Path, reps: int = 1000) -> list:
    """Per test set: the best setting by mean AUC against the runner-up, paired by seed (the
    experiment's comparison: t interval over seeds, bootstrap over seeds x test images)."""
    from workflows.scoring import load_scores
    from workflows.stats import compare

    comps = []
    for key in SETS:
        ranked = sorted((e for e in table if e[f"{key}_seeds"]), key=lambda e: -e[f"{key}_mean"])
        if len(ranked) < 2:
            continue
        a, b = ranked[0], ranked[1]
        runs = {e["setting"]: {r["seed"]: out / "trials" / r["trial"] for r in rows
                               if r["setting"] == e["setting"] and r["lr"] == e["lr"] and np.isfinite(r[f"{key}_auc"])}
                for e in (a, b)}
        seeds = sorted(set(runs[a["setting"]]) & set(runs[b["setting"]]))
        if not seeds:
            continue
        loaded = {name: [load_scores(runs[name][s])[key] for s in seeds] for name in runs}
        labels = loaded[a["setting"]][0][0]
        comps.append(compare(a["setting"], b["setting"], key, labels, [x[1] for x in loaded[a["setting"]]],
                             [x[1] for x in loaded[b["setting"]]], reps=reps))
    return comps


def best_sentence(comp) -> str:
    """'k=4, tau=1.1 is best on rare findings by 0.04 [0.01, 0.07] over k=2, tau=1.1 (...)', or
    that the best two are not separated."""
    where = f"on {comp.findings} findings"
    if np.isnan(comp.t_low):
        return f"{comp.arm_a} is best {where} by {comp.mean:+.3f} over {comp.arm_b}, from one seed: no interval"
    interval = f"[{comp.t_low:.3f}, {comp.t_high:.3f}] (t, {comp.seeds} seeds; bootstrap [{comp.boot_low:.3f}, " \
               f"{comp.boot_high:.3f}])"
    if comp.t_low > 0:
        return f"{comp.arm_a} is best {where} by {comp.mean:.3f} {interval} over the runner-up {comp.arm_b}"
    return (f"{comp.arm_a} has the best mean {where}, but is not separated from the runner-up {comp.arm_b}: "
            f"{comp.mean:+.3f} {interval}")


def write_synth_results(rows: list[dict], table: list[dict], comps: list, knobs: list[str], out: Path) -> str:
    """The per-setting section of results.md and synth.png; returns the section (markdown)."""
    lines = ["", "## Synthesis settings", "",
             "Per setting, over seeds: zero-shot AUC (mean ± sd) and what the setting did to its dataset "
             "(kept of planned, max/min mentions of the plan's clinical and anatomy entities, pairs whose present "
             "findings are all drawn, mentions the image does not show).", "",
             "| setting | lr | seeds | failed | common | rare | kept | clinical max/min | anatomy max/min | "
             "all drawn | undrawable |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def spread(card, key):  # the plan's max/min is None when an entity got no slot
        return "-" if key not in card else "∞ (some at 0)" if card[key] is None else f"{card[key]:g}"

    for e in table:
        c = e["card"]
        auc = [("-" if not e[f"{k}_seeds"] else f"{e[f'{k}_mean']:.3f}"
                + (f" ± {e[f'{k}_sd']:.3f}" if e[f"{k}_seeds"] > 1 else "")) for k in SETS]
        lines.append(f"| {e['setting']} | {e['lr']:g} | {e['common_seeds']} | {e['failed']} | {auc[0]} | {auc[1]} | "
                     f"{c.get('kept')}/{c.get('planned')} | {spread(c, 'clinical_max_min')} | {spread(c, 'anatomy_max_min')} | "
                     f"{pct(c.get('drawn_pairs_share'))} | {pct(c.get('undrawable_mentions_share'))} |")
    if comps:
        lines += [""] + [f"- {best_sentence(c)}" for c in comps]
    with (out / "results.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    plot_settings(table, knobs, out / "synth.png")
    return "\n".join(lines).strip()


def plot_settings(table: list[dict], knobs: list[str], path: Path) -> None:
    """Two knobs: a heat map of mean AUC over their grid per test set; otherwise one bar per
    setting with its sd over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.core.files import save_figure

    fig, axes = plt.subplots(1, len(SETS), figsize=(5.5 * len(SETS), 4.2))
    for ax, key in zip(np.atleast_1d(axes), SETS):
        if len(knobs) == 2:
            values = [dict(part.split("=", 1) for part in e["setting"].split(", ")) for e in table]
            xs = sorted({v[knobs[1]] for v in values}, key=_as_number)
            ys = sorted({v[knobs[0]] for v in values}, key=_as_number)
            grid = np.full((len(ys), len(xs)), np.nan)
            for v, e in zip(values, table):
                grid[ys.index(v[knobs[0]]), xs.index(v[knobs[1]])] = e[f"{key}_mean"]
            im = ax.imshow(grid, cmap="viridis", vmin=0.5, vmax=1.0, origin="lower")
            for (i, j), val in np.ndenumerate(grid):
                ax.text(j, i, "failed" if np.isnan(val) else f"{val:.3f}", ha="center", va="center",
                        color="white" if np.isnan(val) or val < 0.75 else "black", fontsize=8)
            ax.set_xticks(range(len(xs)), xs)
            ax.set_yticks(range(len(ys)), ys)
            ax.set(xlabel=knobs[1], ylabel=knobs[0])
            fig.colorbar(im, ax=ax, label="zero-shot AUC (mean over seeds)")
        else:
            x = np.arange(len(table))
            ax.bar(x, [e[f"{key}_mean"] for e in table], yerr=np.nan_to_num([e[f"{key}_sd"] for e in table]),
                   capsize=3)
            ax.axhline(0.5, color="grey", lw=1, ls="--")
            ax.set_xticks(x, [e["setting"] for e in table], rotation=20, fontsize=7)
            ax.set_ylabel("zero-shot AUC (mean ± sd over seeds)")
        ax.set_title(f"{key} findings")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _as_number(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)
