"""NIH ChestX-ray14 from the Data_Entry_2017_v2020.csv torchxrayvision ships: 14 labels from
`Finding Labels` ("A|B", "No Finding"), PA and AP views, every image of a patient (the benchmark
split needs all, not torchxrayvision's one-per-patient default), split 70/15/15 by patient.
Images: --imgpath holds the PNGs by name (00000001_000.png), or the published images_NNN/images/ folders.
"""
from __future__ import annotations

from functools import lru_cache

from pathlib import Path
from typing import Optional

import pandas as pd

from eval.datasets.base import EvalSet, shipped_file, split_by_group, subsample

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
SEED = 0


@lru_cache(maxsize=2)
def _table(seed: int) -> pd.DataFrame:
    csv = pd.read_csv(shipped_file("Data_Entry_2017_v2020.csv.gz"))
    csv = csv[csv["View Position"].isin(["PA", "AP"])]
    findings = csv["Finding Labels"].fillna("").str.split("|")
    table = pd.DataFrame({"path": csv["Image Index"].to_numpy(),
                          "split": split_by_group(csv["Patient ID"], seed).to_numpy(),
                          "patient": csv["Patient ID"].astype(str).to_numpy(),
                          "view": csv["View Position"].to_numpy()})
    for cls in CLASSES:
        table[cls] = findings.apply(lambda labels, c=cls: int(c in labels)).to_numpy()
    return table


def build(n: int | None = None, seed: int = SEED) -> EvalSet:
    table = _table(seed).copy()
    return EvalSet("chestxray14", list(CLASSES), "multilabel", subsample(table, n, seed),
                   layout="the PNGs by name (IMGPATH/00000001_000.png), or IMGPATH/images_NNN/images/NAME.png",
                   locate=locate, notes={"source": "torchxrayvision Data_Entry_2017_v2020.csv.gz", "seed": seed})


def locate(root: Path, rows: pd.DataFrame) -> list[Optional[Path]]:
    flat = [root / p for p in rows["path"]]
    if all(p.is_file() for p in flat):
        return flat
    nested = {p.name: p for p in root.glob("images_*/images/*.png")}  # the published archive layout
    return [p if p.is_file() else nested.get(p.name) for p in flat]
