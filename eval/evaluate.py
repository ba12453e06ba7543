"""evaluate(checkpoints, dataset, task, out): the four tasks over one dataset for several
checkpoints side by side; writes results.json, results.md and PNGs to `out`.

A checkpoint is a training run directory (its `model/` is used) or a saved model directory.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

from engine.core.errors import UserError
from engine.core.ownership import claim, input_digest, value_digest
from eval.datasets import TASKS, build_dataset, check_task
from eval.datasets.base import EvalSet
from eval.loading import load_rows, row_class
from train.models import load_model, model_dir
from train.models.base import WEIGHTS_FILE
from train.models.frame import to_input


def load_checkpoint(checkpoint, expect_model: Optional[str] = None):
    return load_model(model_dir(checkpoint), expect_name=expect_model)


class _Frames:
    """Images (and targets) of a split, loaded once per model geometry and shared by checkpoints."""

    def __init__(self, ds: EvalSet, imgpath):
        self.ds, self.imgpath, self.cache = ds, imgpath, {}

    def get(self, rows, key: str, image_size: int, resize_to: int, masks: bool):
        k = (key, image_size, resize_to, masks)
        if k not in self.cache:
            self.cache[k] = load_rows(self.ds, rows, self.imgpath, image_size, resize_to, with_masks=masks)
        return self.cache[k]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-60:] or "model"


def _grounding_rows(ds: EvalSet, split: str):
    rows = ds.split(split)
    if ds.target:  # RSNA / SIIM: only positives have a region to find
        rows = rows[rows[ds.target] == 1].reset_index(drop=True)
    return rows


def _run_one(model, ds: EvalSet, task: str, frames: _Frames, out: Path, tag: str, options: dict) -> dict:
    from eval import report

    size, resize_to, bs = model.image_size, model.resize_to, options.get("batch_size", 32)
    res: dict = {}
    if task == "zero-shot":
        from eval.zero_shot import zero_shot_classification

        rows = ds.split("test")
        x, _, _ = frames.get(rows, "test", size, resize_to, False)
        labels = ds.labels(rows)
        r = zero_shot_classification(model, to_input(x), labels, ds.classes, ds.kind, batch_size=bs)
        scores = r.pop("scores")
        res.update(r)
        res["roc_png"] = str(report.roc_plot(labels, scores, ds.classes, f"{tag}: {ds.name}",
                                             out / f"roc_{tag}.png").name)
        res["n_eval"] = len(rows)
    elif task == "grounding":
        from eval.grounding import zero_shot_grounding

        parts = []
        for split in ("valid", "test"):
            rows = _grounding_rows(ds, split)
            x, m, st = frames.get(rows, split + "-pos", size, resize_to, True)
            parts.append((to_input(x), m, [row_class(ds, r) for _, r in rows.iterrows()], x, st))
        r = zero_shot_grounding(model, parts[0][:3], parts[1][:3], batch_size=bs)
        maps = r.pop("maps")
        res.update(r, clipped_targets=parts[0][4]["clipped"] + parts[1][4]["clipped"])
        res["overlay_png"] = str(report.overlay_plot(parts[1][3], maps, parts[1][1], parts[1][2],
                                                     f"{tag}: {ds.name}", out / f"grounding_{tag}.png").name)
        res["n_eval"] = int(len(parts[1][1]))
    elif task == "linear-probe":
        from eval.linear_probe import linear_probe, pooled_features

        sets = []
        for split in ("train", "valid", "test"):
            rows = ds.split(split)
            x, _, _ = frames.get(rows, split, size, resize_to, False)
            sets.append((pooled_features(model, to_input(x), bs), ds.labels(rows)))
        r = linear_probe(*sets, ds.classes, ds.kind, seed=options.get("seed", 0))
        res["fractions"] = r
        for frac, v in r.items():
            res[f"auc_{frac}"] = v["mean_auc"]
        res["n_eval"] = int(len(sets[2][1]))
    elif task == "segmentation":
        from eval.segmentation import train_segmentation

        sets, clipped = [], 0
        for split in ("train", "valid", "test"):
            rows = _grounding_rows(ds, split) if options.get("positives_only") else ds.split(split)
            x, m, st = frames.get(rows, split + "-seg", size, resize_to, True)
            sets.append((to_input(x), m))
            clipped += st["clipped"]
        r = train_segmentation(model, *sets, epochs=options.get("epochs", 10), max_steps=options.get("max_steps"),
                               seed=options.get("seed", 0))
        r.pop("probs"), r.pop("unet")
        res.update(r, n_eval=r["n_test"], clipped_targets=clipped)
    return res


def evaluate(checkpoints: list, dataset: str, task: str, out, imgpath=None, n: Optional[int] = None,
             seed: int = 0, expect_model: Optional[str] = None, dataset_options: Optional[dict] = None,
             overwrite: bool = False, **options) -> dict:
    """Evaluate each checkpoint (path, or an already loaded model) on `dataset` for `task`.
    options: batch_size, epochs / max_steps (segmentation). Returns the results dict written to
    out/results.json. `out` is claimed like every command's output (engine/core/ownership.py):
    a rerun of the same evaluation refreshes it, another one needs another `out` or `overwrite`."""
    if task not in TASKS:
        raise UserError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    if not checkpoints:
        raise UserError("no --checkpoint given")
    check_task(dataset, task)
    if imgpath is not None and not Path(imgpath).expanduser().is_dir():
        raise UserError(f"--imgpath {imgpath}: no such folder")
    out = Path(out)
    models = [(f"model{i}", c) if hasattr(c, "similarity") else (str(c), load_checkpoint(c, expect_model))
              for i, c in enumerate(checkpoints)]
    ds = build_dataset(dataset, n=n, seed=seed, **(dataset_options or {}))
    weights = [input_digest(model_dir(c) / WEIGHTS_FILE) if not hasattr(c, "similarity") else f"in memory {i}"
               for i, c in enumerate(checkpoints)]
    claim(out, "eval", {"checkpoints": weights, "dataset": dataset, "task": task, "n": n, "seed": seed,
                        "imgpath": str(Path(imgpath).resolve()) if imgpath else None,
                        "options": value_digest([dataset_options, options])}, replace=overwrite)
    frames = _Frames(ds, imgpath)
    rows = []
    for i, (label, model) in enumerate(models):
        start = time.time()
        tag = f"{i}_{_safe(Path(label).name if Path(label).name != 'model' else Path(label).parent.name)}"
        res = _run_one(model, ds, task, frames, out, tag, {**options, "seed": seed})
        rows.append({"checkpoint": label, "model": getattr(model, "name", "?"),
                     "method": getattr(model, "method", "?"), "seconds": round(time.time() - start, 2), **res})
    results = {"dataset": dataset, "task": task, "seed": seed, "n": n, "n_eval": rows[0].get("n_eval"),
               "classes": ds.classes, "dataset_notes": ds.notes, "checkpoints": rows}
    from eval.report import write_results

    write_results(results, out)
    return results
