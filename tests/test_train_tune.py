"""Ray Tune over the mixing ratio, lr and seed: ASHA stops a trial and its Ray Train workers (every
CPU of the cluster comes back), a finished trial is scored on the phantom test sets like an
experiment arm, results.csv/md/json and ratio.png are written; the per-ratio curve over seeds.

To make ASHA's decision certain, the run's metric is a zero-shot hook (the pluggable validation
hook) that scores a trial by its lr: the middle trial is the worst at the first rung."""
from __future__ import annotations

import csv
import json
import math
import time

import pytest

from test_train_data import TINY_MODEL, make_synthetic_dataset, make_table
from train.hooks import VALIDATION_HOOKS


def score_by_lr(model, device, cfg) -> dict:
    """Validation hook: a metric that ranks trials by their lr (smaller lr, higher score)."""
    return {"lr_score": -cfg.optim.lr}


score_by_lr.metrics = ("lr_score",)  # what validation.metric may name
VALIDATION_HOOKS.register("lr-score", "test_train_tune:score_by_lr")


@pytest.mark.ray
@pytest.mark.slow
def test_asha_stops_a_trial_and_releases_its_workers(ray_session, tmp_path):
    from train.config import TrainConfig
    from workflows.tune import TuneConfig, run_tune

    syn = make_synthetic_dataset(tmp_path / "syn", 24)
    table = make_table(tmp_path / "real", 30)
    cfg = TrainConfig.model_validate({
        "model": {"name": "convirt-resnet18-smallbert", "overrides": TINY_MODEL},
        "data": {"batch_size": 12}, "validation": {"size": 6, "batch_size": 6, "metric": "lr_score",
                                                   "zero_shot": "lr-score"},
        "epochs": 2, "batch_size": 6, "scaling": {"num_workers": 1, "cpus_per_worker": 0.9}})
    # one ratio, two lrs run one after the other: 1e-4 (best), 1e-2 (worse at the first rung: stopped)
    tcfg = TuneConfig.model_validate({"search": {"ratios": [0.5], "lrs": [1e-4, 1e-2]},
                                      "asha": {"grace_period": 1, "reduction_factor": 2},
                                      "eval": {"per_class": 2, "size": 64}, "max_concurrent_trials": 1})
    rows = run_tune(tcfg, cfg, tmp_path / "tune", synthetic=str(syn), real=f"table:{table}")
    by_lr = {r["lr"]: r for r in rows}
    assert set(by_lr) == {1e-4, 1e-2} and not any(r["error"] for r in rows)
    assert by_lr[1e-2]["stopped_early"] and by_lr[1e-2]["epochs_done"] == 1
    assert by_lr[1e-4]["epochs_done"] == 2 and not by_lr[1e-4]["stopped_early"]
    assert by_lr[1e-4]["lr_score_best"] == -1e-4 and by_lr[1e-2]["lr_score_best"] == -1e-2
    # the finished trial went through the experiment's trial function: scored on both test sets;
    # the stopped one never got there
    assert 0 <= by_lr[1e-4]["common_auc"] <= 1 and 0 <= by_lr[1e-4]["rare_auc"] <= 1
    assert math.isnan(by_lr[1e-2]["common_auc"]) and {r["seed"] for r in rows} == {0}
    trial_dir = tmp_path / "tune" / "trials" / by_lr[1e-4]["trial"]
    assert (trial_dir / "scores.json").is_file() and (trial_dir / "zero_shot_scores.npz").is_file()
    assert len(list((tmp_path / "tune" / "test-sets").glob("*.npz"))) == 2  # drawn once, kept for the next trial
    # 24 - 0 synthetic and 30 - 6 real (validation from the real side): total = 2 x min(24, 24) at 0.5
    assert {r["total"] for r in rows} == {48}
    out = tmp_path / "tune"
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert "| 0.5 | 0.01 | 0 | 1 | True |" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["curve"][0]["common_seeds"] == 1
    assert (out / "ratio.png").stat().st_size > 1000
    # the stopped trial's workers are gone: all the cluster's CPUs come back (a leaked worker
    # holds 0.9 of them for good)
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_session.available_resources().get("CPU", 0) == 2


def _row(ratio, seed, common, rare=0.6, lr=1e-3, **extra):
    return {"trial": f"t{ratio}-{seed}", "ratio": ratio, "lr": lr, "seed": seed, "total": 100, "epochs_done": 2,
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
