"""PadChest from the label CSV torchxrayvision ships: a fixed list of common findings parsed
from `Labels`, PA/AP (incl. AP_horizontal) projections, split 70/15/15 by patient. Images are
16-bit PNGs. Images: --imgpath holds IMGPATH/ImageDir/ImageID (the published numbered folders)
or the PNGs flat.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pandas as pd

from eval.datasets.base import EvalSet, shipped_file, split_by_group, subsample

# common PadChest labels the zero-shot prompts can name (lower case, as in the CSV)
CLASSES = ["atelectasis", "cardiomegaly", "consolidation", "pleural effusion", "pneumonia", "pneumothorax",
           "nodule", "mass", "emphysema", "hiatal hernia", "fibrotic band", "infiltrates",
           "pulmonary edema", "scoliosis", "aortic elongation"]
VIEWS = ("PA", "AP", "AP_horizontal")
SEED = 0


def _labels(text) -> set[str]:
    try:
        return {str(x).strip().lower() for x in ast.literal_eval(text)}
    except (ValueError, SyntaxError):
        return set()


def build(n: int | None = None, seed: int = SEED) -> EvalSet:
    csv = pd.read_csv(shipped_file("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"),
                      usecols=["ImageID", "ImageDir", "PatientID", "Projection", "Labels"], low_memory=False)
    csv = csv[csv["Projection"].isin(VIEWS) & csv["Labels"].notna()]
    table = pd.DataFrame({"path": (csv["ImageDir"].astype(int).astype(str) + "/" + csv["ImageID"]).to_numpy(),
                          "split": split_by_group(csv["PatientID"], seed).to_numpy(),
                          "view": csv["Projection"].to_numpy(), "labels": csv["Labels"].to_numpy()})
    table = subsample(table, n, seed)  # before parsing: literal_eval of 100k lists takes a while
    parsed = table.pop("labels").apply(_labels)
    for cls in CLASSES:
        table[cls] = parsed.apply(lambda s, c=cls: int(c in s)).to_numpy()
    return EvalSet("padchest", list(CLASSES), "multilabel", table,
                   layout="IMGPATH/<ImageDir>/<ImageID>.png (16-bit PNGs in the published numbered folders), or flat",
                   locate=locate, notes={"source": "torchxrayvision PADCHEST_..._160K_01.02.19.csv.gz", "seed": seed})


def locate(root: Path, rows: pd.DataFrame) -> list[Optional[Path]]:
    out = []
    for rel in rows["path"]:
        nested = root / rel
        out.append(nested if nested.is_file() else root / Path(rel).name)
    return out
