"""Paired comparisons of arms (workflows/stats.py) and the card of a training set
(workflows/datasets.py): pure functions on arrays, checked against known answers."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from workflows.datasets import card_of_rows, mixed_card
from workflows.stats import auc_columns, bootstrap_paired, compare, stratified_resample, t_interval


def _multiclass(rng, n_per_class: int, classes: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """One-hot labels and scores where the true class's column is raised by `signal`."""
    labels = np.repeat(np.eye(classes, dtype=int), n_per_class, axis=0)
    return labels, rng.normal(size=labels.shape) + signal * labels


def test_column_aucs_match_sklearn_with_ties_and_a_class_without_positives():
    rng = np.random.default_rng(0)
    labels, scores = _multiclass(rng, 30, 4, 1.0)
    scores = np.round(scores, 1)  # ties
    got = auc_columns(labels, scores)
    assert np.allclose(got, [roc_auc_score(labels[:, c], scores[:, c]) for c in range(4)])
    labels[:, 2] = 0
    assert np.isnan(auc_columns(labels, scores)[2])


def test_t_interval_is_students():
    mean, lo, hi = t_interval([0.01, 0.03, 0.05, 0.02, 0.04])
    half = 2.7764451051977987 * np.std([0.01, 0.03, 0.05, 0.02, 0.04], ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(0.03) and lo == pytest.approx(0.03 - half) and hi == pytest.approx(0.03 + half)
    assert np.isnan(t_interval([0.2])[1])


def test_resampling_keeps_every_class_and_its_size():
    labels = np.repeat(np.eye(3, dtype=int), [5, 7, 9], axis=0)
    idx = stratified_resample(labels, np.random.default_rng(1))
    assert len(idx) == 21 and (labels[idx].sum(axis=0) == [5, 7, 9]).all()


def test_a_real_gap_is_found_and_named_and_no_gap_is_not():
    rng = np.random.default_rng(2)
    labels, _ = _multiclass(rng, 60, 3, 0)
    strong = [rng.normal(size=labels.shape) + 1.5 * labels for _ in range(5)]
    weak = [rng.normal(size=labels.shape) + 0.5 * labels for _ in range(5)]
    same = [rng.normal(size=labels.shape) + 1.5 * labels for _ in range(5)]
    won = compare("synthetic", "real", "rare", labels, strong, weak, reps=200)
    assert won.mean > 0.15 and 0 < won.t_low < won.mean < won.t_high and 0 < won.boot_low < won.boot_high
    assert won.sentence().startswith(f"synthetic beats real on rare findings by {won.mean:.3f} [")
    lost = compare("real", "synthetic", "rare", labels, weak, strong, reps=200)
    assert lost.sentence().startswith("synthetic beats real on rare findings by")
    tie = compare("synthetic", "mixed-concat", "common", labels, strong, same, reps=200)
    assert tie.t_low < 0 < tie.t_high and "are not separated on common findings" in tie.sentence()
    # the bootstrap also resamples test images: wider than resampling seeds alone would be
    lo, hi = bootstrap_paired(labels, strong, same, reps=200)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="need the same"):
        compare("a", "b", "common", labels, strong, weak[:3])


def test_the_card_counts_drawn_pairs_the_long_tail_and_the_spoilt_shares():
    prov = [{"drawn": ["copd -> emphysema (bilateral)", "effusion -> effusion (left)"], "undrawable": []},
            {"drawn": ["effusion -> effusion (right)"], "undrawable": ["metastatic disease"]},
            {"drawn": ["effusion -> effusion (left)"], "undrawable": None},
            {"drawn": [], "undrawable": []}]
    card = card_of_rows(prov, paired=[True, False, True, True], quality=["ok", "ok", "noise", "ok"])
    assert card == {"pairs": 4, "drawn_pairs_share": 0.75, "undrawable_mentions_share": 0.2, "findings": 3,
                    "max_min_ratio": 3.0, "unpaired_share": 0.25, "degraded_share": 0.25}
    clean = card_of_rows(prov[:1])
    assert clean["unpaired_share"] == 0.0 and clean["degraded_share"] == 0.0 and clean["drawn_pairs_share"] == 1.0
    assert card_of_rows([])["drawn_pairs_share"] is None
    mix = mixed_card(card, clean, 0.5)
    assert mix["drawn_pairs_share"] == 0.875 and mix["unpaired_share"] == 0.125 and mix["findings"] is None
