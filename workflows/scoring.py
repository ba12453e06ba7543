"""The zero-shot test sets a trial is scored on (the phantom sets of the common and of the rare
findings, test split), drawn once per process and per model geometry, and the scores each model
gives them: per-class AUCs for tables, the raw [N, C] scores for paired bootstraps."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field

from engine.core.config import Section

SETS = {"common": "phantom-5x200", "rare": "phantom-rare"}
SCORES_FILE = "zero_shot_scores.npz"


class EvalSection(Section):
    per_class: int = Field(200, ge=2)  # test images per class and split of each phantom set
    size: int = Field(128, ge=32)  # rendering size of the test images
    batch_size: int = Field(50, ge=1)


@dataclass
class TestSets:
    per_class: int = 200  # images per class: the per-class AUC's own sampling error stays small
    size: int = 128  # rendering size, before the model's own frame
    batch_size: int = 50
    # where drawn frames are kept between processes (a sweep's trials each run in their own)
    cache_dir: Optional[Path] = None
    _frames: dict = field(default_factory=dict, repr=False)

    def _cache_file(self, key: str, image_size: int, resize_to: int) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        return Path(self.cache_dir) / f"{SETS[key]}-n{self.per_class}-s{self.size}-{resize_to}to{image_size}.npz"

    def _load(self, key: str, image_size: int, resize_to: int):
        k = (key, image_size, resize_to)
        if k not in self._frames:
            from eval.datasets import build_dataset
            from train.models.frame import to_input

            ds = build_dataset(SETS[key], n=self.per_class, seed=0, size=self.size)
            rows = ds.split("test")
            frames = self._drawn_frames(ds, rows, key, image_size, resize_to)
            self._frames[k] = (to_input(frames), np.asarray(ds.labels(rows)), list(ds.classes), ds.kind)
        return self._frames[k]

    def _drawn_frames(self, ds, rows, key: str, image_size: int, resize_to: int) -> np.ndarray:
        """The uint8 frames of the test split, from the cache when an earlier process drew them."""
        from engine.core.files import atomic_path
        from eval.loading import load_rows

        cached = self._cache_file(key, image_size, resize_to)
        if cached is not None and cached.is_file():
            try:
                with np.load(cached) as z:
                    frames = z["frames"]
                if len(frames) == len(rows):
                    return frames
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is drawn again, never trusted
        frames, _, _ = load_rows(ds, rows, None, image_size, resize_to)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, frames=np.asarray(frames))
        return frames

    def score(self, model) -> dict:
        """{set: {"mean_auc", "per_class": {class: auc}, "scores": [N, C], "labels": [N, C]}}."""
        import torch

        from eval.zero_shot import zero_shot_classification

        out = {}
        model.eval()
        for key in SETS:
            images, labels, classes, kind = self._load(key, model.image_size, model.resize_to)
            with torch.no_grad():
                res = zero_shot_classification(model, images, labels, classes, kind, batch_size=self.batch_size)
            out[key] = {"mean_auc": float(res["mean_auc"]),
                        "per_class": {c: v["auc"] for c, v in res["per_class"].items()},
                        "scores": np.asarray(res["scores"], np.float32), "labels": labels}
        return out


def save_scores(scored: dict, run_dir: Path) -> Path:
    """The raw scores beside the run, so comparisons can be recomputed without the models."""
    from engine.core.files import atomic_path

    path = Path(run_dir) / SCORES_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f"{k}_scores": v["scores"] for k, v in scored.items()},
                     **{f"{k}_labels": v["labels"] for k, v in scored.items()})
    return path


def load_scores(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set: (labels, scores)} as save_scores wrote them."""
    with np.load(Path(run_dir) / SCORES_FILE) as z:
        return {k: (z[f"{k}_labels"], z[f"{k}_scores"]) for k in SETS}
