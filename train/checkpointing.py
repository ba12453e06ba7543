"""Training state in a Ray Train checkpoint: one `state.pt` with plain tensors and numbers (model,
optimizer, scheduler, epoch, step), so `torch.load(path, weights_only=True)` reads it."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from engine.core.errors import UserError

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"  # epoch and step beside the state: readable without loading weights


def training_state(model, optimizer, scheduler, epoch: int, step: int) -> dict:
    """`epoch` is the number of finished epochs; `step` the optimizer steps taken so far."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": int(epoch), "step": int(step)}


def save_state(state: dict, directory: str | Path) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    (Path(directory) / PROGRESS_FILE).write_text(json.dumps({"epoch": state["epoch"], "step": state["step"]}))
    return path


def load_state(directory: str | Path) -> dict:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def report_with_checkpoint(metrics: dict, state: dict | None) -> None:
    """ray.train.report with a checkpoint built from `state` (None: metrics only, e.g. rank > 0)."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="syncxr-ckpt-") as tmp:
        save_state(state, tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(model, optimizer, scheduler) -> tuple[int, int]:
    """Load the latest checkpoint of this run, if any. Returns (finished epochs, step)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"], state["step"]


def latest_checkpoint_step(storage: str | Path) -> int:
    """The step of the newest checkpoint under a run's Ray Train storage (0: none yet): where a
    rerun resumes. Its state is read here, on the driver, so a damaged checkpoint is one line
    naming its file instead of a failure inside a worker."""
    steps = {}
    for progress in Path(storage).glob("*/checkpoint_*/" + PROGRESS_FILE):
        try:
            steps[int(json.loads(progress.read_text())["step"])] = progress.parent
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{progress}: damaged checkpoint record: this run cannot resume; "
                            "train into a new --out") from None
    if not steps:
        return 0
    newest = max(steps)
    try:
        state = load_state(steps[newest])
        if not all(k in state for k in ("model", "optimizer", "scheduler", "epoch", "step")):
            raise ValueError("keys missing")
    except Exception as exc:  # truncated, random bytes, another program's file: torch's own words mislead
        raise UserError(f"{steps[newest] / STATE_FILE}: not a readable syncxr checkpoint ({type(exc).__name__}): "
                        "this run cannot resume from it; train into a new --out") from None
    return newest
