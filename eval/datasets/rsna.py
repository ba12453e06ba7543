"""RSNA Pneumonia Detection (Kaggle stage 2 train labels, shipped by torchxrayvision): one row per
patientId, label Pneumonia = Target, boxes [x, y, w, h] in the 1024x1024 DICOM frame; split
70/15/15 by patient (MGCA's protocol). Images: IMGPATH/<patientId>.dcm (stage_2_train_images).
"""
from __future__ import annotations

from functools import lru_cache

import json

import pandas as pd

from eval.datasets.base import EvalSet, shipped_file, split_by_group, subsample

CLASSES = ["Pneumonia"]
SIZE = 1024  # every RSNA image is 1024 x 1024
SEED = 0


@lru_cache(maxsize=2)
def _table(seed: int) -> pd.DataFrame:
    csv = pd.read_csv(shipped_file("kaggle_stage_2_train_labels.csv.zip"))
    pos = csv[(csv["Target"] == 1) & csv["x"].notna()]
    boxes = {pid: json.dumps(g[["x", "y", "width", "height"]].astype(float).values.tolist())
             for pid, g in pos.groupby("patientId", sort=False)}
    target = csv.groupby("patientId", sort=True)["Target"].max()
    table = pd.DataFrame({"path": [f"{pid}.dcm" for pid in target.index], "patient": target.index.to_numpy(),
                          "Pneumonia": target.to_numpy().astype(int),
                          "boxes": [boxes.get(pid, "[]") for pid in target.index], "height": SIZE, "width": SIZE})
    table.insert(1, "split", split_by_group(table["patient"], seed).to_numpy())
    return table


def build(n: int | None = None, seed: int = SEED) -> EvalSet:
    table = _table(seed).copy()
    return EvalSet("rsna-pneumonia", list(CLASSES), "multilabel", subsample(table, n, seed),
                   layout="IMGPATH/<patientId>.dcm (the stage_2_train_images folder)",
                   target="Pneumonia", localisation="boxes",
                   notes={"source": "torchxrayvision kaggle_stage_2_train_labels.csv.zip", "seed": seed})
