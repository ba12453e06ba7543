"""A worker's training (or validation) rows held in memory: the decoded uint8 frames, the
reports and the ids, read once from the worker's Ray Data shard and iterated every epoch in a
seeded order. Pure numpy; the loop reads the shard and hands its batches to `collect`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from train.models.frame import center_crop, to_input
from train.text_view import random_sentence


@dataclass
class FrameCache:
    sample_ids: np.ndarray      # object [N], sorted
    frames: np.ndarray          # uint8 [N, R, R]
    reports: list[str]
    skipped: int = 0            # rows dropped: the image did not decode

    def __len__(self) -> int:
        return len(self.sample_ids)

    def batch(self, idx: np.ndarray, image_size: int, augment: Optional[dict] = None,
              generator=None, sentence_rng: Optional[np.random.Generator] = None, device=None):
        """(images float32 tensor [B, 1, S, S] on `device`, texts) of rows `idx`: the centre crop
        (validation, or training without augmentation) or, with `augment` settings, a seeded
        random view (computed on `device`); the whole report, or one random sentence when
        `sentence_rng` is given."""
        import torch

        frames = self.frames[idx]
        if augment is not None:
            from train.augment import augment_batch

            images = augment_batch(torch.from_numpy(frames).to(device), image_size, augment, generator)
        else:
            images = torch.from_numpy(to_input(center_crop(frames, image_size))).to(device)
        reports = [self.reports[i] for i in idx]
        if sentence_rng is not None:
            reports = [random_sentence(r, sentence_rng) for r in reports]
        return images, reports


def collect(batches: Iterable[dict], resize_to: int) -> FrameCache:
    """Concatenate decoded batches (train/data/preprocess.py), drop the invalid rows and sort by
    sample_id, so the cache does not depend on the order Ray Data delivered the blocks in."""
    ids, frames, reports, skipped = [], [], [], 0
    for batch in batches:
        keep = np.asarray(batch["valid"], dtype=bool)
        skipped += int((~keep).sum())
        ids.extend(str(s) for s in np.asarray(batch["sample_id"], dtype=object)[keep])
        frames.append(np.asarray(batch["frame"], dtype=np.uint8)[keep])
        reports.extend(str(r) for r in np.asarray(batch["report"], dtype=object)[keep])
    if not ids:
        return FrameCache(np.zeros(0, dtype=object), np.zeros((0, resize_to, resize_to), np.uint8), [], skipped)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    stacked = np.concatenate(frames)
    return FrameCache(np.asarray(ids, dtype=object)[order], stacked[order], [reports[i] for i in order], skipped)


def epoch_batches(n: int, batch_size: int, steps: int, seed: int, epoch: int, rank: int = 0) -> list[np.ndarray]:
    """`steps` index batches of one epoch: a permutation seeded by (seed, epoch, rank), cut into
    batch_size pieces (the rest of the permutation is left for another epoch's order)."""
    if steps * batch_size > n:
        raise ValueError(f"{steps} steps of {batch_size} need {steps * batch_size} rows, the shard has {n}")
    order = np.random.default_rng([seed, epoch, rank]).permutation(n)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
