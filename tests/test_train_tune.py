"""Ray Tune over the mixing ratio, lr, seed and synthesis settings: one sweep on Ray (ASHA stops a
trial and its Ray Train workers, every CPU of the cluster comes back; a setting the engine
refuses fails alone; datasets are synthesised once and reused; a finished trial is scored on
the phantom test sets like an experiment arm), and the pure parts: the ratio trial's size and
config, the per-ratio curve over seeds, the best setting's paired interval.

To make ASHA's decision certain, the run's metric is a zero-shot hook (the pluggable validation
hook) that scores a trial by its lr: the larger lr is the worse at the first rung."""
from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest

from test_train_data import TINY_BOW, make_synthetic_dataset, make_table
from train.hooks import VALIDATION_HOOKS


def score_by_lr(model, device, cfg) -> dict:
    """Validation hook: a metric that ranks trials by their lr (smaller lr, higher score)."""
    return {"lr_score": -cfg.optim.lr}


score_by_lr.metrics = ("lr_score",)  # what validation.metric may name
VALIDATION_HOOKS.register("lr-score", "test_train_tune:score_by_lr")


def test_a_ratio_trial_trains_on_the_equal_size_mix_of_its_ratio(tmp_path):
    """The ratio sweep's pieces, without Ray: one training-set size for every ratio (the smallest
    that every ratio can fill), and each trial's config mixing that many pairs at its ratio, with
    its lr and seed."""
    from engine.core.errors import ConfigError
    from train.config import TrainConfig
    from workflows.tune import common_total, trial_train_config

    syn = make_synthetic_dataset(tmp_path / "syn", 24)
    table = make_table(tmp_path / "real", 30)
    cfg = TrainConfig.model_validate({"model": {"name": TINY_BOW[0], "overrides": TINY_BOW[1]},
                                      "validation": {"size": 6}, "batch_size": 6})
    # 24 synthetic and 30 - 6 real (validation from the real side): 2 x 24 at 0.5, 24 at 0 and at 1
    assert common_total(cfg, str(syn), f"table:{table}", [0.5]) == 48
    assert common_total(cfg, str(syn), f"table:{table}", [0.0, 0.5, 1.0]) == 24
    with pytest.raises(ConfigError, match="needs both --synthetic and --real"):
        common_total(cfg, str(syn), None, [0.5])
    trial = trial_train_config(cfg.model_dump(), 0.25, 1e-2, 24, seed=3)
    assert (trial.data.mix.mode, trial.data.mix.ratio, trial.data.mix.total) == ("ratio", 0.25, 24)
    assert (trial.optim.lr, trial.seed, trial.data.seed) == (1e-2, 3, 3)


def _row(ratio, seed, common, rare=0.6, lr=1e-3, **extra):
    return {"trial": f"t{ratio}-{seed}", "ratio": ratio, "lr": lr, "seed": seed, "setting": "", "total": 100,
            "epochs_done": 2,
            "epochs_planned": 2, "stopped_early": False, "m_last": 0.5, "m_best": 0.5, "val_loss_last": 1.0,
            "common_auc": common, "rare_auc": rare, "error": "", **extra}


def test_the_ratio_curve_summarises_seeds_and_leaves_unscored_trials_out(tmp_path):
    from workflows.tune import ratio_curve, write_results

    rows = [_row(0.0, 0, 0.70), _row(0.0, 1, 0.80), _row(1.0, 0, 0.90), _row(1.0, 1, float("nan"), float("nan"),
                                                                           stopped_early=True)]
    curve = ratio_curve(rows)
    at0, at1 = curve
    assert (at0["ratio"], at0["common_seeds"]) == (0.0, 2)
    assert at0["common_mean"] == pytest.approx(0.75) and at0["common_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert (at0["common_min"], at0["common_max"]) == (0.70, 0.80)
    # the unscored (stopped) seed is not a zero: one seed left, no sd
    assert at1["common_seeds"] == 1 and at1["common_mean"] == 0.90 and math.isnan(at1["common_sd"])
    write_results(rows, curve, tmp_path, "m")
    md = (tmp_path / "results.md").read_text()
    assert "| 0 | 0.001 | 2 | 0.750 ± 0.071 [0.700, 0.800] |" in md
    assert "3 of 4 trials scored; the lowest common-findings AUC is 0.700 (ratio 0, seed 0)" in md
    assert (tmp_path / "ratio.png").stat().st_size > 5000
    with (tmp_path / "results.csv").open() as fh:
        assert [r["seed"] for r in csv.DictReader(fh)] == ["0", "1", "0", "1"]


def test_tune_configs_read_seeds_and_the_data_to_build(tmp_path):
    from engine.core.errors import ConfigError
    from workflows.tune import load_tune_config

    tcfg, cfg, _ = load_tune_config("configs/tune-local.yaml")
    assert len(tcfg.search.ratios) >= 5 and len(tcfg.search.seeds) >= 2
    assert tcfg.data.synth_config.endswith("local.yaml") and cfg.data.synthetic is None and cfg.data.real is None
    bad = tmp_path / "tune.yaml"
    bad.write_text("train_config: train-local.yaml\nsearch: {ratios: [0.5], seeds: [1, 1]}\n")
    with pytest.raises(ConfigError, match=r"seeds \[1, 1\] repeat a value"):
        load_tune_config(bad)


# ---------------------------------------------------------------- synthesis settings in the search space

def test_synthesis_knobs_are_checked_by_the_engine_schema_when_the_file_is_read(tmp_path):
    from engine.core.errors import ConfigError
    from workflows.tune import load_tune_config, nested

    assert nested({"plan.k": 4, "plan.tau_factor": 2.0, "qc.reference_threshold": 0.5}) == {
        "plan": {"k": 4, "tau_factor": 2.0}, "qc": {"reference_threshold": 0.5}}
    cases = {
        "search: {ratios: [1.0], synth: {plan.kk: [2]}}\ndata: {n: 50}": r"search.synth plan.kk=2: .*plan.kk",
        "search: {ratios: [1.0], synth: {plan.k: [0, 2]}}\ndata: {n: 50}": r"search.synth plan.k=0: .*plan.k",
        "search: {ratios: [0.5], synth: {plan.k: [2]}}\ndata: {n: 50}": r"ratios must be \[1.0\]",
        "search: {ratios: [1.0], synth: {plan.k: [2]}}": r"search.synth needs a `data:` section",
    }
    for text, message in cases.items():
        path = tmp_path / "tune.yaml"
        path.write_text("train_config: train-local.yaml\n" + text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_tune_config(path)
    tcfg, _, _ = load_tune_config("configs/tune-synth-local.yaml")
    assert len(tcfg.search.synth_points()) == 9 and tcfg.search.seeds == [0, 1]
    # a one-value key is shared by every trial: it names no setting and is no axis of the heat map
    assert tcfg.search.synth["plan.weighting"] == ["frequency"]
    assert tcfg.search.setting_keys() == ["plan.k", "plan.tau_factor"]
    from workflows.tune import SearchSection
    assert SearchSection(ratios=[1.0], synth={"plan.k": [4]}).setting_keys() == ["plan.k"]


def _synth_trial(out, name, setting, seed, labels, scores, card):
    from engine.core.files import write_json
    from workflows.scoring import save_scores

    run = out / "trials" / name
    run.mkdir(parents=True)
    save_scores({key: {"scores": scores[key], "labels": labels[key]} for key in labels}, run)
    write_json(run / "data_card.json", card)
    common = roc_mean(labels["common"], scores["common"])
    return {**_row(1.0, seed, common, roc_mean(labels["rare"], scores["rare"])), "trial": name, "setting": setting}


def roc_mean(labels, scores):
    from workflows.stats import mean_auc

    return float(mean_auc(labels, scores))


def test_settings_sort_by_their_values_as_numbers():
    from workflows.tune import setting_order

    names = ["plan.k=10, plan.tau_factor=1.1", "plan.k=2, plan.tau_factor=1000.0", "plan.k=2, plan.tau_factor=2.0",
             "plan.k=2, plan.tau_factor=1.1"]
    assert sorted(names, key=setting_order) == [names[3], names[2], names[1], names[0]]
    assert setting_order("") == ()


def test_a_trial_is_named_by_its_synthesis_setting_or_its_ratio():
    from workflows.tune import trial_label

    point = {"plan.weighting": "frequency", "plan.k": 2, "plan.tau_factor": 1.1}
    assert trial_label({"synth": point, "ratio": 1.0, "lr": 1e-3, "seed": 0}, ["plan.k", "plan.tau_factor"]) == \
        "plan.k=2, plan.tau_factor=1.1 lr 0.001 seed 0"
    assert trial_label({"synth": None, "ratio": 0.25, "lr": 3e-4, "seed": 1}) == "ratio 0.25 lr 0.0003 seed 1"


def test_the_best_synthesis_setting_is_named_with_its_paired_interval(tmp_path):
    from workflows.tune import best_sentence, best_setting_comparisons, setting_table, write_results, \
        write_synth_results

    rng = np.random.default_rng(0)
    labels = {key: np.repeat(np.eye(3), 40, axis=0) for key in ("common", "rare")}
    rows = []
    for s, (k, strength) in enumerate([(2, 0.5), (4, 2.0), (6, 1.0)]):
        for seed in (0, 1, 2):
            scores = {key: labels[key] * strength + rng.normal(0, 1, labels[key].shape) for key in labels}
            card = {"kept": 50, "planned": 50, "clinical_max_min": 1.0 + s if k != 2 else None,
                    "drawn_pairs_share": 0.5}
            rows.append(_synth_trial(tmp_path, f"k{k}-s{seed}", f"plan.k={k}, plan.tau_factor=1.1", seed, labels,
                                     scores, card))
    rows.append({**_row(1.0, 0, float("nan"), float("nan")), "trial": "bad", "setting": "plan.k=8, plan.tau_factor=1.1",
                 "error": "UserError: plan.k=8 is larger than the clinical vocabulary"})
    table = setting_table(rows, tmp_path)
    by = {e["setting"]: e for e in table}
    assert by["plan.k=4, plan.tau_factor=1.1"]["common_seeds"] == 3 and by["plan.k=8, plan.tau_factor=1.1"]["failed"] == 1
    assert by["plan.k=6, plan.tau_factor=1.1"]["card"]["clinical_max_min"] == 3.0
    comps = best_setting_comparisons(rows, table, tmp_path, reps=200)
    assert [c.findings for c in comps] == ["common", "rare"]
    best = comps[0]
    assert best.arm_a == "plan.k=4, plan.tau_factor=1.1" and best.arm_b == "plan.k=6, plan.tau_factor=1.1"
    assert best.t_low > 0 and best_sentence(best).startswith("plan.k=4, plan.tau_factor=1.1 is best on common "
                                                              "findings by ")
    write_results(rows, [], tmp_path, "m")
    write_synth_results(rows, table, comps, ["plan.k", "plan.tau_factor"], tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| plan.k=8, plan.tau_factor=1.1 | 0.001 | 0 | 1 | - | - |" in md and "## Synthesis settings" in md
    assert "is best on common findings" in md and (tmp_path / "synth.png").stat().st_size > 5000
    # an entity without a slot (no cap) is an unbounded max/min; a card without the figure shows none
    assert "| 50/50 | ∞ (some at 0) | - | 50.0% |" in md and "| 50/50 | 3 | - | 50.0% |" in md
    assert not (tmp_path / "ratio.png").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_synthesis_sweep_stops_a_trial_fails_a_refused_setting_alone_and_reuses_datasets(ray_session, tmp_path):
    """The one Ray Tune run of the suite: two synthesis settings x two lrs, one trial at a time.
    The setting the engine refuses when planning (a cap too small for the plan) fails its trials
    alone. The other's dataset is synthesised once and shared by its two trials, which ASHA ranks
    by a validation hook that scores a trial by its lr: the larger lr is worse at the first rung
    and is stopped there, and its Ray Train workers give every CPU back. The finished trial is
    scored on the phantom test sets (drawn once, kept for the next trial) beside its data card;
    asking for the same settings again reuses the dataset without synthesising it."""
    from engine.synth.layout import RunLayout
    from train.config import TrainConfig
    from workflows.tune import TuneConfig, run_tune, trial_dataset

    cfg = TrainConfig.model_validate({
        "model": {"name": TINY_BOW[0], "overrides": TINY_BOW[1]},
        "data": {"batch_size": 12}, "validation": {"size": 6, "batch_size": 6, "metric": "lr_score",
                                                   "zero_shot": "lr-score"},
        "epochs": 2, "batch_size": 6, "scaling": {"num_workers": 1, "cpus_per_worker": 0.9}})
    # lr varies fastest in Tune's grid: both lrs of tau_max=1 fail, then 1e-4 runs before 1e-2
    tcfg = TuneConfig.model_validate({"search": {"ratios": [1.0], "lrs": [1e-4, 1e-2], "seeds": [0],
                                                 "synth": {"plan.tau_max": [1, 50]}},
                                      "data": {"n": 60, "synth_config": "local.yaml"},
                                      "asha": {"grace_period": 1, "reduction_factor": 2},
                                      "eval": {"per_class": 2, "size": 64}, "max_concurrent_trials": 1})
    out = tmp_path / "sweep"
    rows = run_tune(tcfg, cfg, out)
    by = {(r["setting"], r["lr"]): r for r in rows}
    assert set(by) == {(s, lr) for s in ("plan.tau_max=1", "plan.tau_max=50") for lr in (1e-4, 1e-2)}
    assert all("tau_max=1 is too small" in by[("plan.tau_max=1", lr)]["error"] for lr in (1e-4, 1e-2))
    good, stopped = by[("plan.tau_max=50", 1e-4)], by[("plan.tau_max=50", 1e-2)]
    assert not good["error"] and not stopped["error"]
    assert good["epochs_done"] == 2 and not good["stopped_early"] and good["lr_score_best"] == -1e-4
    assert stopped["stopped_early"] and stopped["epochs_done"] == 1 and stopped["lr_score_best"] == -1e-2
    # the finished trial went through the experiment's trial function; the stopped one never got there
    assert 0 <= good["common_auc"] <= 1 and 0 <= good["rare_auc"] <= 1 and math.isnan(stopped["common_auc"])
    trial_dir = out / "trials" / good["trial"]
    assert (trial_dir / "scores.json").is_file() and (trial_dir / "zero_shot_scores.npz").is_file()
    assert len(list((out / "test-sets").glob("*.npz"))) == 2
    card = json.loads((trial_dir / "data_card.json").read_text())
    assert card["synth"] == {"plan.tau_max": 50} and card["kept"] > 50 and card["funnel"]["attempts"] >= 60
    [dataset] = [d for d in (out / "data").iterdir() if d.is_dir()]  # one dataset for both lrs
    assert card["dataset"] == str(dataset)
    stamps = {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file()}
    assert RunLayout(dataset).manifest in stamps and trial_dataset(out, "local.yaml", {"plan.tau_max": 50}, 60) == dataset
    # reused: every round sealed, every published file as recorded; not one file written again
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file()} == stamps
    md = (out / "results.md").read_text()
    assert "## Synthesis settings" in md and "| plan.tau_max=1 | 0.0001 | 0 | 1 | - | - |" in md
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert (out / "synth.png").stat().st_size > 1000 and not (out / "ratio.png").exists()
    # the stopped trial's workers are gone: all the cluster's CPUs come back (a leaked worker
    # holds 0.9 of them for good)
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_session.available_resources().get("CPU", 0) == 2
