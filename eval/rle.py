"""SIIM-ACR pneumothorax masks: the Kaggle challenge's relative run-length encoding.

`EncodedPixels` is "start length start length ...", where each start is an offset from the END of
the previous run (the first from pixel 0), pixels numbered column-major (down the first column,
then the next), 0-based. "-1" means no pneumothorax. Several rows for one ImageId are a union.
"""
from __future__ import annotations

import numpy as np


def decode_relative_rle(rle: str, height: int, width: int) -> tuple[np.ndarray, int]:
    """(bool mask [height, width], pixels that fell outside the image and were clipped)."""
    mask = np.zeros(height * width, dtype=bool)
    text = str(rle).strip()
    if text in ("", "-1", "nan"):
        return mask.reshape(width, height).T, 0
    nums = [int(x) for x in text.split()]
    if len(nums) % 2:
        raise ValueError(f"run-length code has an odd number of values ({len(nums)})")
    pos, clipped = 0, 0
    for start, length in zip(nums[0::2], nums[1::2]):
        if start < 0 or length < 0:
            raise ValueError(f"negative start or length in run-length code ({start} {length})")
        pos += start
        end = pos + length
        clipped += max(0, end - max(pos, mask.size))
        mask[min(pos, mask.size):min(end, mask.size)] = True
        pos = end
    return mask.reshape(width, height).T, clipped


def encode_relative_rle(mask: np.ndarray) -> str:
    """The inverse of decode_relative_rle (used to write masks and in tests)."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    if not flat.any():
        return "-1"
    padded = np.r_[False, flat, False].astype(np.int8)
    edges = np.nonzero(np.diff(padded))[0]
    starts, ends = edges[0::2], edges[1::2]
    out, prev_end = [], 0
    for s, e in zip(starts, ends):
        out += [int(s - prev_end), int(e - s)]
        prev_end = e
    return " ".join(map(str, out))
