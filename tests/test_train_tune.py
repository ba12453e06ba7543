"""Ray Tune over the mixing ratio and lr: ASHA stops a trial and its Ray Train workers (every CPU
of the cluster comes back), results.csv/md and ratio.png are written.

To make ASHA's decision certain, the run's metric is a zero-shot hook (the pluggable validation
hook) that scores a trial by its lr: the middle trial is the worst at the first rung."""
from __future__ import annotations

import csv
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
    from train.config import TrainConfig, TuneConfig
    from train.tune import run_tune

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
                                      "max_concurrent_trials": 1})
    rows = run_tune(tcfg, cfg, tmp_path / "tune", synthetic=str(syn), real=f"table:{table}")
    by_lr = {r["lr"]: r for r in rows}
    assert set(by_lr) == {1e-4, 1e-2} and not any(r["error"] for r in rows)
    assert by_lr[1e-2]["stopped_early"] and by_lr[1e-2]["epochs_done"] == 1
    assert by_lr[1e-4]["epochs_done"] == 2 and not by_lr[1e-4]["stopped_early"]
    assert by_lr[1e-4]["lr_score_best"] == -1e-4 and by_lr[1e-2]["lr_score_best"] == -1e-2
    # 24 - 0 synthetic and 30 - 6 real (validation from the real side): total = 2 x min(24, 24) at 0.5
    assert {r["total"] for r in rows} == {48}
    out = tmp_path / "tune"
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert "| 0.5 | 0.01 | 1 | True |" in (out / "results.md").read_text()
    assert (out / "ratio.png").stat().st_size > 1000
    # the stopped trial's workers are gone: all the cluster's CPUs come back (a leaked worker
    # holds 0.9 of them for good)
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_session.available_resources().get("CPU", 0) == 2
