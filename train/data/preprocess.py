"""The per-batch work Ray Data runs in CPU tasks before a batch reaches a training worker: decode,
augment (training only), resize/crop/normalise to a fixed-size float array, and pick the text
view (one random sentence in training, the whole report for validation).

An image that does not decode is not an error: its row comes out with `valid=False` and a zero
image, so every worker still sees the same number of batches; the loop drops and counts it.
"""
from __future__ import annotations

import numpy as np


def preprocess_batch(batch: dict, image_size: int, resize_to: int, train: bool, augment: bool = True,
                     augment_settings: dict | None = None, random_sentence: bool = True,
                     seed: int | None = None) -> dict:
    from train import transforms

    n = len(batch["sample_id"])
    # Fresh augmentation each epoch (Ray Data re-runs this per pass); validation is deterministic.
    rng = np.random.default_rng(seed if seed is not None else (None if train else 0))
    images = np.zeros((n, 1, image_size, image_size), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    texts = []
    for i in range(n):
        raw = batch["image_bytes"][i]
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            raw = batch["image_path"][i]
        else:
            raw = bytes(raw)
        try:
            img = transforms.load_image(raw)
            if train and augment:
                img = transforms.augment(img, rng, augment_settings or {})
            images[i] = transforms.preprocess(img, image_size, resize_to)
            valid[i] = True
        except Exception:  # noqa: BLE001 - any undecodable file is skipped and counted, not fatal
            pass
        report = str(batch["report"][i])
        texts.append(transforms.random_sentence(report, rng) if train and random_sentence else report)
    return {"sample_id": np.asarray(batch["sample_id"], dtype=object), "image": images,
            "text": np.asarray(texts, dtype=object), "valid": valid}
