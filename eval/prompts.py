"""Zero-shot class prompts.

Multi-class sets (CheXpert 5x200, phantom sets) follow GLoRIA's recipe: each class has severity,
subtype and location phrases; the prompts are their combinations, of which a fixed number is
sampled per class with a fixed seed (GLoRIA samples 5). The phrase lists are ours, written in the
style of radiology reports. Multi-label sets (ChestX-ray14, PadChest, RSNA, SIIM) score each
class by a positive against a negative prompt.
"""
from __future__ import annotations

import itertools
import random
from typing import Optional

# class -> (severities, subtypes, locations); "" stands for "no such phrase"
PHRASES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "atelectasis": (
        ["", "mild", "minimal", "moderate"],
        ["subsegmental atelectasis", "linear atelectasis", "plate-like atelectasis", "patchy atelectasis",
         "bibasilar atelectasis", "discoid atelectasis"],
        ["", "at the lung bases", "at the left lung base", "at the right lung base", "in the lower lobes",
         "at the mid lung zone"]),
    "cardiomegaly": (
        ["", "mild", "moderate", "marked"],
        ["cardiomegaly", "enlargement of the cardiac silhouette", "enlarged heart size",
         "increased cardiothoracic ratio"],
        ["", "which is stable", "compared to the prior study"]),
    "consolidation": (
        ["", "patchy", "focal", "dense"],
        ["consolidation", "airspace consolidation", "alveolar consolidation", "lobar consolidation"],
        ["", "in the right lower lobe", "in the left lower lobe", "in the right upper lobe",
         "at the lung bases", "in the left upper lobe"]),
    "pulmonary edema": (
        ["", "mild", "moderate", "severe"],
        ["pulmonary edema", "interstitial edema", "vascular congestion", "perihilar edema",
         "alveolar edema"],
        ["", "bilaterally", "in both lungs"]),
    "pleural effusion": (
        ["", "small", "moderate", "large", "trace"],
        ["pleural effusion", "layering pleural effusion", "blunting of the costophrenic angle"],
        ["", "on the left", "on the right", "bilaterally"]),
    "pneumothorax": (
        ["", "small", "moderate", "large", "tiny"],
        ["pneumothorax", "apical pneumothorax", "visible pleural line with absent lung markings"],
        ["", "on the left", "on the right"]),
    "hilar enlargement": (
        ["", "mild", "prominent"],
        ["hilar enlargement", "hilar lymphadenopathy", "enlarged hila"],
        ["", "on the left", "on the right", "bilaterally"]),
    "hiatal hernia": (
        ["", "small", "moderate", "large"],
        ["hiatal hernia", "retrocardiac air-fluid level of a hiatal hernia"],
        ["", "behind the heart"]),
    "pleural thickening": (
        ["", "mild", "apical"],
        ["pleural thickening", "pleural scarring", "apical pleural cap"],
        ["", "on the left", "on the right", "bilaterally"]),
    "widened mediastinum": (
        ["", "mildly", "markedly"],
        ["widened mediastinum", "widening of the superior mediastinum", "mediastinal widening"],
        ["", "compared to the prior study"]),
    "pneumoperitoneum": (
        ["", "small", "large"],
        ["pneumoperitoneum", "free air under the diaphragm", "free intraperitoneal air"],
        ["", "under the right hemidiaphragm", "under both hemidiaphragms"]),
}
# dataset class names -> the canonical names above
ALIASES = {"edema": "pulmonary edema", "effusion": "pleural effusion", "pneumonia": "consolidation"}


def _canonical(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def class_prompts(classes: list[str], n: int = 5, seed: int = 0) -> dict[str, list[str]]:
    """Up to n prompts per class, sampled from its severity x subtype x location combinations
    with a fixed seed; a class without phrase lists gets short generic sentences."""
    out = {}
    for i, cls in enumerate(classes):
        key = _canonical(cls)
        if key in PHRASES:
            combos = sorted({" ".join(p for p in c if p) for c in itertools.product(*PHRASES[key])})
        else:
            combos = [key, f"there is {key}", f"findings consistent with {key}", f"evidence of {key}",
                      f"{key} is seen"]
        rng = random.Random(seed * 1000 + i)
        out[cls] = rng.sample(combos, min(n, len(combos)))
    return out


def pos_neg_prompts(classes: list[str]) -> dict[str, tuple[str, str]]:
    """(positive, negative) prompt per class for multi-label zero-shot scoring."""
    return {cls: (f"findings consistent with {_canonical(cls)}", f"no {_canonical(cls)}") for cls in classes}


def check_prompts(prompts: Optional[dict], classes: list[str]) -> dict[str, list[str]]:
    """Validate user-given prompts: every class needs at least one non-empty prompt."""
    from engine.core.errors import UserError

    if prompts is None:
        return class_prompts(classes)
    missing = [c for c in classes if not prompts.get(c)]
    if missing:
        raise UserError(f"prompts: no prompt for class(es) {', '.join(missing)}")
    return {c: [str(p) for p in prompts[c]] for c in classes}
