"""One trial: a training config (data mix, overrides, seed already in it) and its data sources ->
a trained model in run_dir and its zero-shot scores on the phantom test sets. The experiment's
arms and `syncxr tune`'s trials are both this function, so a sweep over the ratio is the
experiment's mixed-ratio arm at several ratios."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from engine.core.files import write_json
from train.config import TrainConfig
from workflows.scoring import TestSets, save_scores

SCORES_JSON = "scores.json"


def run_trial(cfg: TrainConfig, run_dir: str | Path, tests: TestSets, synthetic: Optional[str] = None,
              real: Optional[str] = None, callbacks: Optional[list] = None, reserved_cpus: float = 0.0) -> dict:
    """Train (a rerun of a finished trial reuses its model), score, and write run_dir/scores.json
    (mean and per-class AUC of each test set) and the raw scores beside it. Returns the scores.json
    record."""
    from train.driver import run_training
    from train.models import load_model, model_dir

    run_dir = Path(run_dir)
    final = run_training(cfg, run_dir, synthetic=synthetic, real=real, callbacks=callbacks,
                         show_progress=False, reserved_cpus=reserved_cpus)
    scored = tests.score(load_model(model_dir(run_dir)))
    save_scores(scored, run_dir)
    record = {"step": final.get("step"), "seed": cfg.seed,
              **{key: s["mean_auc"] for key, s in scored.items()},
              "per_class": {key: s["per_class"] for key, s in scored.items()}}
    write_json(run_dir / SCORES_JSON, record)
    return record
