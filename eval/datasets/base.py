"""What every evaluation dataset is: a table of images with labels (and targets), split into
train/valid/test, plus how to find its images under the user's --imgpath.

Table columns: `path` (relative to the dataset root, in the dataset's own published layout),
`split`, one 0/1 column per class, and where the dataset localises: `boxes` (JSON list of
[x, y, w, h] in the original pixel frame), `mask_rle` (JSON list of SIIM run-length codes),
`height`/`width` of the original frame. Phantom sets carry `entities` and `seed` instead of files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from engine.core.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass
class EvalSet:
    name: str
    classes: list[str]
    kind: str  # "multiclass": exactly one class per image; "multilabel": any number
    table: pd.DataFrame
    layout: str  # where the images go under --imgpath, for error messages and `syncxr datasets`
    target: Optional[str] = None  # the class that grounding/segmentation localise
    localisation: Optional[str] = None  # "boxes" | "rle" | "phantom" | None
    # phantom sets render in memory: row -> (uint8 image, {class: bool mask})
    render: Optional[Callable[[pd.Series], tuple[np.ndarray, dict]]] = None
    # a path under imgpath for a row (SIIM files sit in per-study folders: found by walking)
    locate: Optional[Callable[[Path, pd.DataFrame], list[Optional[Path]]]] = None
    notes: dict = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        rows = self.table[self.table["split"] == name]
        if rows.empty:
            have = sorted(self.table["split"].unique())
            raise UserError(f"dataset {self.name}: no {name!r} split (it has: {', '.join(have)})")
        return rows.reset_index(drop=True)

    def has_split(self, name: str) -> bool:
        return bool((self.table["split"] == name).any())

    def labels(self, rows: pd.DataFrame) -> np.ndarray:
        return rows[self.classes].to_numpy(dtype=np.int64)


def shipped_file(name: str) -> Path:
    """A label file shipped inside torchxrayvision (its data/ folder)."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise UserError("torchxrayvision is not installed: it ships the benchmark label files")
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        raise UserError(f"{path}: label file not found in the torchxrayvision package")
    return path


def split_by_group(groups: pd.Series, seed: int, fractions=(0.7, 0.15, 0.15)) -> pd.Series:
    """train/valid/test per group (patient or image id), seeded: every row of a group lands in
    the same split, so no patient is in two splits."""
    uniq = np.array(sorted(groups.astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_train = int(round(fractions[0] * len(uniq)))
    n_valid = int(round(fractions[1] * len(uniq)))
    names = np.empty(len(uniq), dtype=object)
    names[order[:n_train]] = "train"
    names[order[n_train:n_train + n_valid]] = "valid"
    names[order[n_train + n_valid:]] = "test"
    lookup = dict(zip(uniq, names))
    return groups.astype(str).map(lookup)


def subsample(table: pd.DataFrame, n: Optional[int], seed: int) -> pd.DataFrame:
    """At most n rows per split, seeded (keeps benchmark runs small when asked)."""
    if not n:
        return table
    parts = []
    for name in SPLITS:
        rows = table[table["split"] == name]
        if len(rows) > n:
            rows = rows.sample(n=n, random_state=seed).sort_index()
        parts.append(rows)
    return pd.concat(parts).reset_index(drop=True)


def default_locate(root: Path, rows: pd.DataFrame) -> list[Optional[Path]]:
    """`root/path`; a dataset's own locate() may look elsewhere (e.g. an alternative folder)."""
    return [root / p for p in rows["path"]]


def image_paths(ds: EvalSet, rows: pd.DataFrame, imgpath: Optional[str | Path]) -> list[Path]:
    """The file of every row, or one UserError line saying how many are missing and the first."""
    if imgpath is None:
        raise UserError(f"dataset {ds.name} needs --imgpath (images: {ds.layout})")
    root = Path(imgpath).expanduser()
    if not root.is_dir():
        raise UserError(f"--imgpath {root}: not a directory (dataset {ds.name}: {ds.layout})")
    found = (ds.locate or default_locate)(root, rows)
    missing = [rel for rel, p in zip(rows["path"], found) if p is None or not Path(p).is_file()]
    if missing:
        raise UserError(f"dataset {ds.name}: {len(missing)} of {len(rows)} images missing under {root}; "
                        f"first: {missing[0]} (expected layout: {ds.layout})")
    return [Path(p) for p in found]


def json_list(value) -> list:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return []
    return json.loads(value) if isinstance(value, str) else list(value)
