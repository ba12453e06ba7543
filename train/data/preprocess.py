"""The per-batch work Ray Data runs once per training run, before any worker starts: decode each
image and resize it to the model's `resize_to` frame (train/models/frame.py), as uint8. Workers keep
these frames in memory and take the crop (or a random view) each epoch, so nothing is decoded twice.

An image that does not decode is not an error here: its row comes out with `valid=False`, a zero
frame and the reason in `error`; the driver counts them (and stops when no row is valid), the
workers drop them.
"""
from __future__ import annotations

import numpy as np

from train.models.frame import decode, resized


def _image_source(batch: dict, i: int):
    raw = batch["image_bytes"][i]
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return batch["image_path"][i]
    return bytes(raw)


def decode_batch(batch: dict, resize_to: int) -> dict:
    """Rows {sample_id, image_bytes | image_path, report} -> {sample_id, frame uint8 [R, R],
    report, valid, error}."""
    n = len(batch["sample_id"])
    frames = np.zeros((n, resize_to, resize_to), dtype=np.uint8)
    valid = np.zeros(n, dtype=bool)
    errors = []
    for i in range(n):
        try:
            source = _image_source(batch, i)
            if source is None:
                raise ValueError("no image bytes and no image path")
            frames[i] = resized(decode(source), resize_to)
            valid[i] = True
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - any undecodable image is counted and named, not fatal here
            errors.append(f"{batch['sample_id'][i]}: {exc}")
    return {"sample_id": np.asarray(batch["sample_id"], dtype=object), "frame": frames,
            "report": np.asarray([str(r) if r is not None else "" for r in batch["report"]], dtype=object),
            "valid": valid, "error": np.asarray(errors, dtype=object)}
