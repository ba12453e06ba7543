"""Phantom test sets drawn by the engine's phantom renderer (actors.phantom), with their masks.

- phantom-5x200: the CheXpert five the phantom draws (atelectasis, cardiomegaly, consolidation,
  pulmonary edema, pleural effusion), n images per class and split, one finding per image.
- phantom-rare: the long tail: the six drawable findings rarest in the IU X-ray corpus.

Each image is rendered from one positive entity (plus a side for the lateral findings) with a
seed derived from (seed, split, index), so a set is the same on every machine; images are drawn
when read, not when the table is built.
"""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pandas as pd

from eval.datasets.base import SPLITS, EvalSet

# display class -> entity text the renderer maps to one drawer (actors.phantom_findings.finding_for)
COMMON = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
          "Edema": "pulmonary edema", "Pleural Effusion": "pleural effusion"}
# IU X-ray corpus counts of positive mentions per drawable finding (engine lexicon extractor over
# the 3,927 shipped reports, measured 2026-12-01): the six rarest of the twenty the phantom draws.
IU_XRAY_COUNTS = {"pneumoperitoneum": 6, "widened mediastinum": 11, "pneumothorax": 27,
                  "hilar enlargement": 32, "hiatal hernia": 54, "pleural thickening": 60}
RARE = {"Pneumothorax": "pneumothorax", "Hilar Enlargement": "hilar enlargement",
        "Hiatal Hernia": "hiatal hernia", "Pleural Thickening": "pleural thickening",
        "Widened Mediastinum": "widened mediastinum", "Pneumoperitoneum": "pneumoperitoneum"}
SIDES = ("left lung", "right lung")
SEED = 0
SIZE = 256


def _image_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1)[0])


def _entities(text: str, rng: np.random.Generator) -> list[dict]:
    from actors.phantom_findings import DRAWERS, finding_for

    ents = [{"text": text, "type": "ABNORMALITY"}]
    if DRAWERS[finding_for(text)].lateral:
        ents.append({"text": SIDES[int(rng.integers(len(SIDES)))], "type": "ANATOMY"})
    return ents


def render_row(row: pd.Series, classes: dict[str, str], size: int) -> tuple[np.ndarray, dict]:
    """(uint8 image, {class: bool mask}) of one table row."""
    from actors.phantom import render_phantom
    from actors.phantom_findings import finding_for

    res = render_phantom(json.loads(row["entities"]), int(row["seed"]), size)
    masks = {}
    for cls, text in classes.items():
        drawer = finding_for(text)
        m = np.zeros((size, size), bool)
        for item in res.masks:
            if item["finding"] == drawer:
                m |= item["mask"]
        masks[cls] = m
    return res.image, masks


def _build(name: str, classes: dict[str, str], n: int | None, seed: int, size: int) -> EvalSet:
    per_class = int(n or 200)
    rows = []
    for split in SPLITS:
        for c, (cls, text) in enumerate(classes.items()):
            for k in range(per_class):
                index = c * per_class + k
                s = _image_seed(seed, split, index)
                ents = _entities(text, np.random.default_rng(s))
                rows.append({"path": f"{split}/{index:05d}.png", "split": split, "entities": json.dumps(ents),
                             "seed": s, "height": size, "width": size,
                             **{k2: int(k2 == cls) for k2 in classes}})
    table = pd.DataFrame(rows)
    return EvalSet(name, list(classes), "multiclass", table,
                   layout="drawn in memory (syncxr datasets --imgpath DIR writes them as DIR/<split>/NNNNN.png)",
                   localisation="phantom", render=partial(render_row, classes=classes, size=size),
                   notes={"source": "actors.phantom", "per_class": per_class, "seed": seed, "size": size})


def build_common(n: int | None = None, seed: int = SEED, size: int = SIZE) -> EvalSet:
    return _build("phantom-5x200", COMMON, n, seed, size)


def build_rare(n: int | None = None, seed: int = SEED, size: int = SIZE) -> EvalSet:
    return _build("phantom-rare", RARE, n, seed, size)
