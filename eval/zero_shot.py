"""Zero-shot classification.

Scores per method: ConVIRT, cosine of the global embeddings; GLoRIA, the mean of global and local
similarity (both come from model.similarity), z-scored per class across images. A class's score
is the max over its prompts. Multi-class sets (one finding an image): argmax accuracy, and per
class the one-vs-rest AUC of the class's probability, the softmax over the image's class scores
at the temperature the model's logits were trained at (CLIP's multi-class rule): which finding's
text is this image's, the image-to-text question ConVIRT's loss weights 0.75. Ranking all images by
one class's raw score asks the text-to-image question across a whole set instead; its AUC can stay
flat while argmax accuracy climbs (docs/training.md). Multi-label sets: a positive against a
negative prompt per class, softmax over the pair.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from eval import metrics
from eval.prompts import check_prompts, pos_neg_prompts

PAIR_TEMPERATURE = 0.1  # of the softmax over (positive, negative) similarities; rankings do not depend on it


def _image_batches(images, batch_size: int):
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not torch.is_tensor(images) else images.float()
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


@torch.no_grad()
def prompt_similarities(model, images, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """[N, len(texts)] image-text similarities (model.similarity: the method's own score)."""
    was_training = model.training
    model.eval()
    tok = model.tokenize(texts)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    out = [model.similarity(batch, ids, mask).float().cpu().numpy() for batch in _image_batches(images, batch_size)]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(texts)), np.float32)


def zscore_columns(scores: np.ndarray) -> np.ndarray:
    std = scores.std(axis=0, keepdims=True)
    return (scores - scores.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1.0)


def class_scores(model, images, classes: list[str], prompts: Optional[dict] = None,
                 batch_size: int = 64) -> np.ndarray:
    """[N, C]: per class the max similarity over its prompts; GLoRIA's z-scored per class."""
    prompts = check_prompts(prompts, classes)
    texts, owner = [], []
    for c, cls in enumerate(classes):
        texts += prompts[cls]
        owner += [c] * len(prompts[cls])
    sims = prompt_similarities(model, images, texts, batch_size)
    owner = np.asarray(owner)
    scores = np.stack([sims[:, owner == c].max(axis=1) for c in range(len(classes))], axis=1)
    return zscore_columns(scores) if getattr(model, "method", "") == "gloria" else scores


def softmax_temperature(model) -> float:
    """The temperature of the softmax over a multi-class set's class scores: ConVIRT's cosines at
    its training temperature (loss.temperature); GLoRIA's class scores are z-scores, already on a
    unit scale: 1 (also for a model without a loss config)."""
    if getattr(model, "method", "") == "gloria":
        return 1.0
    return float((getattr(model, "config", None) or {}).get("loss", {}).get("temperature") or 1.0)


def class_log_probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
    """[N, C]: log of the softmax over each image's class scores / temperature. Logs rank as the
    probabilities do, without the ties a saturated softmax makes."""
    from scipy.special import log_softmax

    return log_softmax(np.asarray(scores, np.float64) / temperature, axis=1)


def pair_scores(model, images, classes: list[str], batch_size: int = 64) -> np.ndarray:
    """[N, C]: the softmax over (positive, negative) prompt similarities per class, given as its
    log-odds (s_pos - s_neg) / T: the same ranking and thresholds as the probability, without the
    ties a saturated softmax makes on GLoRIA's unbounded local similarity."""
    pairs = pos_neg_prompts(classes)
    texts = [t for cls in classes for t in pairs[cls]]
    sims = prompt_similarities(model, images, texts, batch_size).reshape(-1, len(classes), 2)
    return (sims[..., 0] - sims[..., 1]) / PAIR_TEMPERATURE


def per_class_metrics(labels: np.ndarray, scores: np.ndarray, classes: list[str]) -> tuple[dict, list[str]]:
    """{class: {auc, f1, accuracy, threshold, n_pos, n}} and the classes skipped (one label only)."""
    per_class, skipped = {}, []
    for c, cls in enumerate(classes):
        y = labels[:, c]
        if not metrics.has_both_classes(y):
            skipped.append(cls)
            continue
        f1 = metrics.best_f1(y, scores[:, c])
        per_class[cls] = {"auc": metrics.auc(y, scores[:, c]), "f1": f1["f1"], "accuracy": f1["accuracy"],
                          "threshold": f1["threshold"], "n_pos": int(y.sum()), "n": int(len(y))}
    return per_class, skipped


def summarise(labels: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    per_class, skipped = per_class_metrics(np.asarray(labels), scores, classes)
    mean = lambda key: metrics.mean_or_none(v[key] for v in per_class.values())  # noqa: E731
    return {"mean_auc": mean("auc"), "mean_f1": mean("f1"), "mean_accuracy": mean("accuracy"),
            "per_class": per_class, "skipped": skipped, "n": int(len(labels))}


def zero_shot_classification(model, images, labels: np.ndarray, classes: list[str], kind: str,
                             prompts: Optional[dict] = None, batch_size: int = 64) -> dict:
    """Full zero-shot result of one model on one set: per-class AUC/F1/accuracy, their means and,
    for a multi-class set, argmax accuracy; the scores come back for ROC plots. images: model
    inputs [N,1,S,S]; labels: [N,C] 0/1. A class with no positives or no negatives is listed in
    "skipped" and left out of the means."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(classes) or labels.shape[0] != len(images):
        raise ValueError(f"labels must be [N={len(images)}, C={len(classes)}], got {list(labels.shape)}")
    if kind == "multiclass":
        raw = class_scores(model, images, classes, prompts, batch_size)
        scores = class_log_probabilities(raw, softmax_temperature(model))
        out = summarise(labels, scores, classes)
        out["mean_auc_raw_score"] = summarise(labels, raw, classes)["mean_auc"]  # the rule of earlier figures
        truth = labels.argmax(axis=1)
        out["multiclass_accuracy"] = float((scores.argmax(axis=1) == truth).mean()) if len(labels) else None
    else:
        scores = pair_scores(model, images, classes, batch_size)
        out = summarise(labels, scores, classes)
    out["scores"] = scores
    return out
