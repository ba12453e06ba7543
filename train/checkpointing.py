"""Training state in a Ray Train checkpoint: one `state.pt` with plain tensors and numbers (model,
optimizer, scheduler, epoch, step), so `torch.load(path, weights_only=True)` reads it."""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.core.errors import UserError

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"  # epoch and step beside the state: readable without loading weights
RAY_RUN_NAME = "train"


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


def directory_files(directory: str | Path) -> dict[str, bytes]:
    """Every file under a directory, by relative path: a model directory sent to the workers
    through Ray's object store, since they need not mount the driver's disk."""
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_files(files: dict[str, bytes], directory: str | Path) -> Path:
    root = Path(directory)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


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


@dataclass(frozen=True)
class CheckpointStorage:
    """Where Ray Train keeps a run's checkpoints: `path` (Ray's storage_path: a local or mounted
    directory, or a URI such as s3://bucket/prefix that pyarrow can open) and `name` (the run's
    folder in it)."""
    path: str
    name: str

    @property
    def uri(self) -> str:
        return f"{self.path.rstrip('/')}/{self.name}"


def checkpoint_storage(cfg, run_dir: Path) -> CheckpointStorage:
    """RUN/ray/train by default. With `checkpoint.storage_path` (shared by many runs) the folder is
    named after RUN, so a rerun of the same RUN finds its checkpoints and another RUN does not."""
    from engine.core.ownership import value_digest

    if cfg.checkpoint.storage_path is None:
        return CheckpointStorage(str(Path(run_dir) / "ray"), RAY_RUN_NAME)
    run_dir = Path(run_dir).resolve()
    return CheckpointStorage(cfg.checkpoint.storage_path, f"{run_dir.name}-{value_digest(str(run_dir))[:12]}")


def _filesystem(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, ValueError) as exc:  # not a URI: a path, relative or not
        if "://" in uri:
            raise UserError(f"checkpoint.storage_path {uri!r}: {exc}") from None
        return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


def latest_checkpoint_step(storage: CheckpointStorage) -> int:
    """The step of the newest checkpoint in a run's Ray Train storage (0: none yet): where a
    rerun resumes. Its state is read here, on the driver, so a damaged checkpoint is one line
    naming its file instead of a failure inside a worker."""
    import pyarrow.fs

    fs, base = _filesystem(storage.uri)
    found = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    steps = {}
    for info in found:
        parent = info.path.rsplit("/", 1)[0]
        if info.base_name != PROGRESS_FILE or not parent.rsplit("/", 1)[-1].startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(info.path) as fh:
                steps[int(json.loads(fh.read())["step"])] = parent
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{info.path}: damaged checkpoint record: this run cannot resume; "
                            "train into a new --out") from None
    if not steps:
        return 0
    newest = max(steps)
    state_path = f"{steps[newest]}/{STATE_FILE}"
    try:
        with fs.open_input_stream(state_path) as fh:
            state = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
        if not all(k in state for k in ("model", "optimizer", "scheduler", "epoch", "step")):
            raise ValueError("keys missing")
    except Exception as exc:  # truncated, random bytes, another program's file: torch's own words mislead
        raise UserError(f"{state_path}: not a readable syncxr checkpoint ({type(exc).__name__}): "
                        "this run cannot resume from it; train into a new --out") from None
    return newest
