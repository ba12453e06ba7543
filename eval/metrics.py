"""Evaluation metrics as pure functions over numpy arrays.

Classification: ROC AUC (sklearn), F1 and accuracy at the threshold that maximises F1.
Localisation: Dice, IoU (an empty mask predicted empty scores 1 for both: nothing to find, nothing
found), the pointing game, precision/recall of a thresholded map.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def has_both_classes(y: np.ndarray) -> bool:
    y = np.asarray(y)
    return bool((y == 1).any() and (y == 0).any())


def auc(y: np.ndarray, score: np.ndarray) -> Optional[float]:
    """ROC AUC, or None when y holds a single class (AUC is undefined there, never a number)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    if not has_both_classes(y):
        return None
    return float(roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def best_f1(y: np.ndarray, score: np.ndarray) -> dict:
    """F1, accuracy, precision and recall at the threshold t (predict score >= t) that maximises F1.

    Candidate thresholds are the distinct scores; ties in F1 keep the highest threshold."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s) - 1]  # last index of each distinct score
    tp, fp, thr = tp[last], fp[last], s_sorted[last]
    pos = int(y.sum())
    fn = pos - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    i = int(np.argmax(f1))
    tn = len(y) - pos - fp[i]
    return {"f1": float(f1[i]), "accuracy": float((tp[i] + tn) / len(y)), "threshold": float(thr[i]),
            "precision": float(tp[i] / (tp[i] + fp[i])) if tp[i] + fp[i] else 0.0,
            "recall": float(tp[i] / pos) if pos else 0.0}


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = pred.sum() + gt.sum()
    return 1.0 if total == 0 else float(2 * (pred & gt).sum() / total)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = (pred | gt).sum()
    return 1.0 if union == 0 else float((pred & gt).sum() / union)


def pointing_hit(heatmap: np.ndarray, gt: np.ndarray) -> Optional[bool]:
    """Pointing game: does the map's maximum fall inside the target? None for an empty target
    (nothing to point at: such images do not count). Ties: any maximal pixel inside is a hit."""
    gt = np.asarray(gt, bool)
    if not gt.any():
        return None
    h = np.asarray(heatmap, dtype=np.float64)
    return bool(gt[h == h.max()].any())


def precision_recall(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Pixel precision and recall of a binary map; an empty prediction has precision 1 when the
    target is empty too, else 0; an empty target has recall 1."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    tp = (pred & gt).sum()
    precision = float(tp / pred.sum()) if pred.sum() else (1.0 if not gt.any() else 0.0)
    recall = float(tp / gt.sum()) if gt.sum() else 1.0
    return precision, recall


def mean_or_none(values) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
