"""Rows of an EvalSet -> images (and localisation targets) in the model's frame.

Targets: RSNA boxes are rasterised in the original frame, SIIM run-length codes decoded there,
phantom masks come with the rendering; then all go through the image's geometry. A box or code
reaching outside the image is clipped, and counted (`clipped` in the returned stats).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd

from eval.datasets.base import EvalSet, image_paths, json_list
from train.models.frame import decode, frame
from eval.rle import decode_relative_rle


def boxes_to_mask(boxes: list, height: int, width: int) -> tuple[np.ndarray, int]:
    """Union of [x, y, w, h] boxes as a bool mask; returns (mask, boxes that had to be clipped)."""
    mask = np.zeros((height, width), bool)
    clipped = 0
    for x, y, w, h in boxes:
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            clipped += 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask, clipped


def row_target(ds: EvalSet, row: pd.Series, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(target mask in the original frame, clipped count) for boxes / rle datasets."""
    h, w = shape
    if ds.localisation == "boxes":
        return boxes_to_mask(json_list(row["boxes"]), h, w)
    if ds.localisation == "rle":
        mask, clipped = np.zeros((h, w), bool), 0
        for code in json_list(row["mask_rle"]):
            m, c = decode_relative_rle(code, h, w)
            mask |= m
            clipped += int(c > 0)
        return mask, clipped
    raise ValueError(f"dataset {ds.name} has no localisation targets")


def row_class(ds: EvalSet, row: pd.Series) -> Optional[str]:
    """The class a grounding query asks for: the dataset's target, or a multi-class row's class."""
    if ds.target:
        return ds.target
    hits = [c for c in ds.classes if int(row[c]) == 1]
    return hits[0] if hits else None


# Drawn sets of at least this many rows are rendered by a pool of processes (one per core):
# a phantom takes ~0.1 s, so a 1,000-image test split would otherwise be minutes on one core.
PARALLEL_RENDER_MIN = 200


def rendered(ds: EvalSet, rows: pd.DataFrame) -> list[tuple[np.ndarray, dict]]:
    """ds.render of every row, in row order; deterministic (each row carries its seed)."""
    records = [row for _, row in rows.iterrows()]
    workers = min(os.cpu_count() or 1, 8)
    if len(records) < PARALLEL_RENDER_MIN or workers < 2:
        return [ds.render(row) for row in records]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the caller may hold Ray's threads, which a fork would copy mid-lock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(ds.render, records, chunksize=max(1, len(records) // (4 * workers))))


def load_rows(ds: EvalSet, rows: pd.DataFrame, imgpath, image_size: int, resize_to: int,
              with_masks: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], dict]:
    """(uint8 [N,S,S] frames, bool [N,S,S] target masks or None, {"clipped": n})."""
    frames, masks, clipped = [], [], 0
    paths = None if ds.render is not None else image_paths(ds, rows, imgpath)
    drawn = rendered(ds, rows) if ds.render is not None else None
    for i, (_, row) in enumerate(rows.iterrows()):
        if drawn is not None:
            img, class_masks = drawn[i]
            target = class_masks.get(row_class(ds, row)) if with_masks else None
        else:
            img = decode(paths[i])
            target = None
            if with_masks:
                target, c = row_target(ds, row, img.shape)
                clipped += c
        frames.append(frame(img, image_size, resize_to))
        if with_masks:
            if target is None:
                target = np.zeros(img.shape, bool)
            masks.append(frame(target, image_size, resize_to, mask=True))
    size = (0, image_size, image_size)
    out_frames = np.stack(frames) if frames else np.zeros(size, np.uint8)
    out_masks = (np.stack(masks) if masks else np.zeros(size, bool)) if with_masks else None
    return out_frames, out_masks, {"clipped": clipped}
