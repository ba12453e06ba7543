"""Zero-shot grounding: a class's prompts -> the model's similarity maps -> upsampled to the image
-> compared with the target (RSNA boxes, SIIM masks, phantom masks).

Each image's map is the mean over its class's prompts, min-max scaled to [0, 1] per image, so one
threshold applies to all images; the threshold is the one with the best mean Dice on the
validation split. Images without a target region (negatives, findings out of frame) are counted
and left out: there is nothing to point at.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval import metrics
from eval.prompts import check_prompts

THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


@torch.no_grad()
def class_maps(model, images, row_classes: list[str], prompts: dict[str, list[str]],
               batch_size: int = 32) -> np.ndarray:
    """[N, S, S] maps in [0, 1]: per image the mean similarity map of its class's prompts."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    n, size = len(x), x.shape[-1]
    out = np.zeros((n, size, size), np.float32)
    was_training = model.training
    model.eval()
    for cls in sorted(set(row_classes)):
        idx = np.array([i for i, c in enumerate(row_classes) if c == cls])
        tok = model.tokenize(prompts[cls])
        for start in range(0, len(idx), batch_size):
            b = idx[start:start + batch_size]
            maps = model.similarity_maps(x[b], tok["input_ids"], tok["attention_mask"]).float().mean(dim=1)
            up = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            out[b] = _minmax(up.cpu().numpy())
    model.train(was_training)
    return out


def _minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    return (maps - lo) / np.where(hi > lo, hi - lo, 1.0)


def choose_threshold(maps: np.ndarray, masks: np.ndarray) -> float:
    """The threshold with the best mean Dice over images with a target (ties: the lower one)."""
    keep = masks.reshape(len(masks), -1).any(axis=1)
    if not keep.any():
        return 0.5
    scores = [np.mean([metrics.dice(m >= t, g) for m, g in zip(maps[keep], masks[keep])]) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(scores))])


def grounding_metrics(maps: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    """Pointing game, IoU, Dice, precision and recall at `threshold`, over images with a target."""
    keep = masks.reshape(len(masks), -1).any(axis=1)
    rows = []
    for m, g in zip(maps[keep], masks[keep]):
        pred = m >= threshold
        p, r = metrics.precision_recall(pred, g)
        rows.append((metrics.pointing_hit(m, g), metrics.iou(pred, g), metrics.dice(pred, g), p, r))
    if not rows:
        return {"n": 0, "n_without_target": int((~keep).sum()), "threshold": threshold, "pointing_game": None,
                "iou": None, "dice": None, "precision": None, "recall": None}
    arr = np.array(rows, dtype=np.float64)
    return {"n": int(keep.sum()), "n_without_target": int((~keep).sum()), "threshold": float(threshold),
            "pointing_game": float(arr[:, 0].mean()), "iou": float(arr[:, 1].mean()),
            "dice": float(arr[:, 2].mean()), "precision": float(arr[:, 3].mean()), "recall": float(arr[:, 4].mean())}


def zero_shot_grounding(model, valid: tuple, test: tuple, prompts: Optional[dict] = None,
                        classes: Optional[list[str]] = None, batch_size: int = 32) -> dict:
    """valid/test: (images [N,1,S,S], masks bool [N,S,S], row classes). Returns the test metrics
    at the validation threshold, plus the test maps (for overlays)."""
    classes = classes or sorted(set(valid[2]) | set(test[2]))
    prompts = check_prompts(prompts, classes)
    v_maps = class_maps(model, valid[0], list(valid[2]), prompts, batch_size)
    threshold = choose_threshold(v_maps, valid[1])
    t_maps = class_maps(model, test[0], list(test[2]), prompts, batch_size)
    out = grounding_metrics(t_maps, test[1], threshold)
    out["maps"] = t_maps
    return out
