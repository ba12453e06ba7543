"""SIIM-ACR Pneumothorax (train-rle.csv, shipped by torchxrayvision): one row per ImageId (several
RLE rows of one image are one mask), label Pneumothorax = any non-empty mask, split 70/15/15 by
ImageId (MGCA split by row, which leaks an image's masks across splits).
Images: <ImageId>.dcm anywhere under IMGPATH (the published dicom-images-train/<study>/<series>/ tree).
"""
from __future__ import annotations

from functools import lru_cache

import json
from pathlib import Path
from typing import Optional

import pandas as pd

from eval.datasets.base import EvalSet, shipped_file, split_by_group, subsample

CLASSES = ["Pneumothorax"]
SIZE = 1024
SEED = 0


@lru_cache(maxsize=2)
def _table(seed: int) -> pd.DataFrame:
    csv = pd.read_csv(shipped_file("siim-pneumothorax-train-rle.csv.gz"), skipinitialspace=True)
    csv.columns = [c.strip() for c in csv.columns]
    rows = []
    for image_id, group in csv.groupby("ImageId", sort=True):
        codes = [str(c).strip() for c in group["EncodedPixels"] if str(c).strip() not in ("-1", "", "nan")]
        rows.append({"path": f"{image_id}.dcm", "image_id": image_id, "Pneumothorax": int(bool(codes)),
                     "mask_rle": json.dumps(codes), "height": SIZE, "width": SIZE})
    table = pd.DataFrame(rows)
    table.insert(1, "split", split_by_group(table["image_id"], seed).to_numpy())
    return table


def build(n: int | None = None, seed: int = SEED) -> EvalSet:
    table = _table(seed).copy()
    return EvalSet("siim-pneumothorax", list(CLASSES), "multilabel", subsample(table, n, seed),
                   layout="<ImageId>.dcm anywhere under IMGPATH (dicom-images-train/<study>/<series>/)",
                   target="Pneumothorax", localisation="rle", locate=locate,
                   notes={"source": "torchxrayvision siim-pneumothorax-train-rle.csv.gz", "seed": seed})


def locate(root: Path, rows: pd.DataFrame) -> list[Optional[Path]]:
    index = {p.name: p for p in root.rglob("*.dcm")}
    return [index.get(Path(rel).name) for rel in rows["path"]]
