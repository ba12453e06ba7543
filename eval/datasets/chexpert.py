"""CheXpert 5x200 (GLoRIA's zero-shot benchmark) from the CheXpert train CSV torchxrayvision ships.

Frontal views only; for each of the five classes, the rows where it is 1 and the other four are 0
or blank (uncertain -1 excluded); 200 per class sampled with a fixed seed. These images must
leave any CheXpert training split: `excluded_paths()` names them.
Images: --imgpath is the `CheXpert-v1.0-small` folder (paths inside it: train/patient.../view1_frontal.jpg).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from engine.core.errors import UserError
from eval.datasets.base import EvalSet, shipped_file

CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
PER_CLASS = 200
SEED = 0
PREFIX = "CheXpert-v1.0-small/"


@lru_cache(maxsize=1)
def read_train_csv() -> pd.DataFrame:
    return pd.read_csv(shipped_file("chexpert_train.csv.gz"))


def eligible_rows(csv: pd.DataFrame) -> pd.DataFrame:
    """Frontal rows with exactly one of the five positive (=1) and the other four 0 or blank."""
    five = csv[CLASSES]
    positive = five.eq(1.0)
    negative_or_blank = five.eq(0.0) | five.isna()
    one = positive.sum(axis=1).eq(1) & (positive | negative_or_blank).all(axis=1)
    return csv[csv["Frontal/Lateral"].eq("Frontal") & one]


@lru_cache(maxsize=8)
def _selection(per_class: int, seed: int) -> pd.DataFrame:
    rows = eligible_rows(read_train_csv())
    rng = np.random.default_rng(seed)
    picked = []
    for cls in CLASSES:
        pool = rows[rows[cls].eq(1.0)]
        if len(pool) < per_class:
            raise UserError(f"CheXpert 5x200: only {len(pool)} eligible rows for {cls}, need {per_class}")
        take = np.sort(rng.choice(len(pool), size=per_class, replace=False))
        picked.append(pool.iloc[take].assign(label=cls))
    return pd.concat(picked).reset_index(drop=True)


def excluded_paths(per_class: int = PER_CLASS, seed: int = SEED) -> set[str]:
    """CSV `Path` values of the 5x200 images (as in the shipped CSV: CheXpert-v1.0-small/train/...):
    a CheXpert training split must drop these."""
    return set(_selection(per_class, seed)["Path"])


def build(n: int | None = None, seed: int = SEED) -> EvalSet:
    """n: images per class (default 200)."""
    sel = _selection(int(n or PER_CLASS), seed)
    table = pd.DataFrame({"path": sel["Path"].str.replace(PREFIX, "", regex=False), "split": "test",
                          "view": sel["AP/PA"].fillna("")})
    for cls in CLASSES:
        table[cls] = (sel["label"] == cls).astype(int).to_numpy()
    return EvalSet("chexpert-5x200", list(CLASSES), "multiclass", table,
                   layout="the CheXpert-v1.0-small folder (train/patientNNNNN/studyN/viewN_frontal.jpg inside)",
                   notes={"source": "torchxrayvision chexpert_train.csv.gz", "per_class": int(n or PER_CLASS),
                          "seed": seed})
