"""Paired comparisons of two training arms across seeds: the mean difference of their mean AUCs,
its 95% interval (Student t over seeds, and a bootstrap over seeds x test images), and the
sentence a reader wants. Pure functions over arrays: tests call them without Ray or models."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as st


def auc_columns(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each column (Mann-Whitney with mid-ranks for ties); NaN where a column has no
    positives or no negatives. labels, scores: [N, C]."""
    labels = np.asarray(labels, bool)
    ranks = st.rankdata(scores, axis=0)
    pos = labels.sum(axis=0)
    neg = len(labels) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * labels).sum(axis=0) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def mean_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.nanmean(auc_columns(labels, scores)))


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of `values` by Student's t; one value gives an interval of NaN."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(st.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def stratified_resample(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices drawn with replacement within each label pattern, so every class keeps its
    positives and the resampled set its class balance."""
    keys = np.unique(np.asarray(labels, int), axis=0, return_inverse=True)[1].ravel()
    parts = [rng.choice(np.flatnonzero(keys == k), size=int((keys == k).sum()), replace=True)
             for k in np.unique(keys)]
    return np.concatenate(parts)


def bootstrap_paired(labels: np.ndarray, scores_a: list[np.ndarray], scores_b: list[np.ndarray],
                     reps: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean_auc(a) - mean_auc(b), resampling seeds (pairs kept together) and
    test images (the same images for both arms) in every replicate. scores_a[i] and scores_b[i] are
    the [N, C] scores of seed i's two models on the same test set."""
    rng = np.random.default_rng(seed)
    k = len(scores_a)
    diffs = np.empty(reps)
    for r in range(reps):
        idx = stratified_resample(labels, rng)
        seeds = rng.integers(k, size=k)
        y = labels[idx]
        diffs[r] = np.mean([mean_auc(y, scores_a[s][idx]) - mean_auc(y, scores_b[s][idx]) for s in seeds])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """arm_a - arm_b on one test set, paired by seed."""
    arm_a: str
    arm_b: str
    findings: str  # "common" or "rare"
    seeds: int
    mean: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float

    def sentence(self) -> str:
        """'synthetic beats real on rare findings by 0.07 [0.04, 0.10]', or that the interval
        cannot tell them apart."""
        t = f"[{self.t_low:.3f}, {self.t_high:.3f}]"
        boot = f"bootstrap [{self.boot_low:.3f}, {self.boot_high:.3f}]"
        where = f"on {self.findings} findings"
        if np.isnan(self.t_low):
            return f"{self.arm_a} - {self.arm_b} {where}: {self.mean:+.3f} from one seed, no interval"
        if self.t_low > 0 or self.t_high < 0:
            winner, loser = (self.arm_a, self.arm_b) if self.mean > 0 else (self.arm_b, self.arm_a)
            return (f"{winner} beats {loser} {where} by {abs(self.mean):.3f} "
                    f"{_abs_interval(self.t_low, self.t_high)} (t, {self.seeds} seeds; {boot})")
        return (f"{self.arm_a} and {self.arm_b} are not separated {where}: {self.arm_a} - {self.arm_b} = "
                f"{self.mean:+.3f} {t} (t, {self.seeds} seeds; {boot})")


def _abs_interval(low: float, high: float) -> str:
    low, high = sorted((abs(low), abs(high)))
    return f"[{low:.3f}, {high:.3f}]"


def compare(arm_a: str, arm_b: str, findings: str, labels: np.ndarray, scores_a: list[np.ndarray],
            scores_b: list[np.ndarray], reps: int = 1000, seed: int = 0) -> Comparison:
    """The paired comparison of two arms over the seeds both have (lists in seed order)."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"{arm_a} vs {arm_b}: {len(scores_a)} and {len(scores_b)} seeds, need the same, at least one")
    diffs = [mean_auc(labels, a) - mean_auc(labels, b) for a, b in zip(scores_a, scores_b)]
    mean, lo, hi = t_interval(diffs)
    blo, bhi = bootstrap_paired(labels, scores_a, scores_b, reps, seed)
    return Comparison(arm_a, arm_b, findings, len(diffs), mean, lo, hi, blo, bhi)
