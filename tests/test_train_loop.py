"""The Ray Train loop: a run killed (kill -9) after its first checkpoint, rerun with the same
command, finishes with the planned step count and the step counter continuing from the
checkpoint; plus the pure parts of the loop (optimizer schedule, hook resolution, checkpoints)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from local_head import kill_all, processes_of
import torch
import yaml

from test_train_data import TINY_BOW, make_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent


def test_schedule_warms_up_then_decays_to_zero():
    from train.config import OptimSection
    from train.loop import make_optimizer

    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, OptimSection(lr=1.0, warmup_steps=2, scheduler="cosine"), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.05


def test_training_state_round_trips_through_weights_only_load(tmp_path):
    from train.checkpointing import load_state, save_state, training_state
    from train.config import OptimSection
    from train.loop import make_optimizer

    model = torch.nn.Linear(3, 2)
    opt, sched = make_optimizer(model, OptimSection(lr=0.1), total_steps=5)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    save_state(training_state(model, opt, sched, epoch=2, step=7), tmp_path)
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # what the brief promises
    assert (state["epoch"], state["step"]) == (2, 7)
    assert torch.equal(load_state(tmp_path)["model"]["weight"], model.weight.detach())
    assert state["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)


def test_checkpoints_are_found_in_the_run_or_in_a_storage_path_or_uri(tmp_path):
    """Where a rerun resumes from: RUN/ray by default; with checkpoint.storage_path (a path or a
    URI), a folder of its own per RUN. A damaged checkpoint is one line naming its file."""
    from engine.core.errors import UserError
    from train.checkpointing import checkpoint_storage, latest_checkpoint_step, save_state, training_state
    from train.config import OptimSection, TrainConfig
    from train.loop import make_optimizer

    model = torch.nn.Linear(3, 2)
    opt, sched = make_optimizer(model, OptimSection(lr=0.1), total_steps=5)

    def fill(storage, steps):
        for i, step in enumerate(steps):
            directory = Path(storage.uri.removeprefix("file://")) / f"checkpoint_{i:06d}"
            directory.mkdir(parents=True)
            save_state(training_state(model, opt, sched, epoch=i + 1, step=step), directory)

    run = tmp_path / "run"
    default = checkpoint_storage(TrainConfig(), run)
    assert (default.path, default.name) == (str(run / "ray"), "train") and latest_checkpoint_step(default) == 0
    fill(default, [3, 7])
    assert latest_checkpoint_step(default) == 7

    shared = TrainConfig.model_validate({"checkpoint": {"storage_path": str(tmp_path / "shared")}})
    mine, other = checkpoint_storage(shared, run), checkpoint_storage(shared, tmp_path / "other" / "run")
    assert mine.name.startswith("run-") and mine.name != other.name and mine == checkpoint_storage(shared, run)
    fill(mine, [5])
    assert latest_checkpoint_step(mine) == 5 and latest_checkpoint_step(other) == 0
    as_uri = checkpoint_storage(TrainConfig.model_validate(
        {"checkpoint": {"storage_path": f"file://{tmp_path / 'shared'}"}}), run)
    assert latest_checkpoint_step(as_uri) == 5

    (Path(mine.uri) / "checkpoint_000001").mkdir()
    (Path(mine.uri) / "checkpoint_000001" / "progress.json").write_text('{"step": 9}')
    (Path(mine.uri) / "checkpoint_000001" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"checkpoint_000001/state.pt: not a readable syncxr checkpoint"):
        latest_checkpoint_step(mine)
    (Path(mine.uri) / "checkpoint_000001" / "progress.json").write_text("{")
    with pytest.raises(UserError, match=r"checkpoint_000001/progress.json: damaged checkpoint record"):
        latest_checkpoint_step(mine)


def test_zero_shot_hook_is_resolved_by_name():
    from eval.validation import phantom_zero_shot
    from train.hooks import resolve_hook

    assert resolve_hook("phantom") is phantom_zero_shot
    assert resolve_hook(None) is None


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _tiny_run(tmp_path: Path, pairs: int, **top) -> tuple[Path, list[str]]:
    """(run dir, `syncxr train` command) of the tiny model on `pairs` generated pairs (10 held out,
    batch 6), with `top` on top of the config."""
    data = make_synthetic_dataset(tmp_path / "syn", pairs)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": TINY_BOW[0], "overrides": TINY_BOW[1]},
        "data": {"batch_size": 30, "num_cpus": 0.5}, "validation": {"size": 10, "batch_size": 10},
        "batch_size": 6, "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "engine": {"num_cpus": 2}, **top}))
    run = tmp_path / "run"
    return run, [sys.executable, "-m", "engine.cli", "train", "--config", str(cfg), "--out", str(run),
                 "--synthetic", str(data)]


@pytest.mark.slow
def test_a_stopped_or_killed_run_resumes_from_its_checkpoint_to_the_planned_step_count(tmp_path):
    """SIGTERM (a scheduler's stop) ends the run cleanly: exit 143, one line, its checkpoint kept
    and the steps after it dropped, as after a crash; the rerun of the same command resumes, and
    every planned step is trained exactly once."""
    # 60 training pairs / batch 6 = 10 steps per epoch, 3 epochs = 30 planned steps
    run, cmd = _tiny_run(tmp_path, 70, epochs=3, log_every_steps=1, optim={"lr": 1e-3})
    ray_tmp = Path(tempfile.mkdtemp(prefix="sxt-", dir="/tmp"))  # the child's Ray lives here (short socket paths)
    env = {**os.environ, "TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)

    def run_until(past_step: int, how: signal.Signals) -> tuple[int, str]:
        log = tmp_path / f"{how.name}.log"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=log.open("w"))
        try:
            deadline = time.time() + 300
            while not any(r.get("kind") == "step" and r["step"] > past_step for r in _records(run)):
                assert proc.poll() is None, f"the run ended before it could be stopped: {log.read_text()[-3000:]}"
                assert time.time() < deadline, f"no step past {past_step} after 300 s"
                time.sleep(0.02)
            proc.send_signal(how)  # the driver only, as `kill PID` does
            rc = proc.wait(120)
        finally:
            kill_all(processes_of([str(ray_tmp)]))
        return rc, log.read_text()

    def saved_steps() -> list[int]:
        return sorted(torch.load(c, weights_only=True)["step"] for c in (run / "ray").glob("train/checkpoint_*/state.pt"))

    try:
        rc, err = run_until(10, signal.SIGTERM)  # in epoch 2
        assert rc == 143, err[-3000:]
        assert "syncxr train: terminated (SIGTERM); rerun the same command to resume" in err.splitlines()[-1]
        assert "Traceback" not in err and "core dumped" not in err.lower()
        saved = saved_steps()[-1]
        assert saved in (10, 20) and not (run / "model").exists()
        third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    recs = _records(run)
    steps = [r["step"] for r in recs if r["kind"] == "step"]
    assert steps == list(range(1, 31))  # every step once: the stopped attempts' extra ones dropped
    assert [(r["epoch"], r["step"]) for r in recs if r["kind"] == "epoch"] == [(1, 10), (2, 20), (3, 30)]
    # the last rerun printed only what it trained: it began at the step after the checkpoint
    printed = [int(line.split("step ")[1].split("/")[0]) for line in third.stdout.splitlines()
               if line.startswith("  epoch ")]
    assert printed[0] == saved + 1 and printed[-1] == 30
    summary = json.loads((run / "run.json").read_text())
    assert summary["planned_steps"] == 30 and summary["final"]["step"] == 30 and summary["kind"] == "train"
    from train.models import load_model
    assert load_model(run / "model").name == TINY_BOW[0]


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # 60 training pairs / batch 6 = 10 steps per epoch; the loss of step 14 (epoch 2) is poisoned
    run, cmd = _tiny_run(tmp_path, 70, epochs=2)
    cmd[1:3] = ["-m", "poisoned_train", "14"]  # the same command, through the test's launcher
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("RAY_ADDRESS", None)
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stopped: non-finite loss at step 14" in first.stdout and "Traceback" not in first.stderr
    assert [(r["kind"], r["step"]) for r in _records(run)] == [("epoch", 10), ("stopped", 14)]
    checkpoints = sorted((run / "ray").glob("train/checkpoint_*/state.pt"))
    assert [torch.load(c, weights_only=True)["step"] for c in checkpoints] == [10]
    assert not (run / "model").exists()  # no final model from broken weights (resuming: the test above)


TIMING_KEYS = {"samples_per_s", "epoch_seconds"}


@pytest.mark.slow
@pytest.mark.ray
def test_two_runs_of_the_same_command_give_the_same_metrics(ray_session, tmp_path):
    """One worker, augmentation and the random-sentence view on: every number but the timings
    agrees to 1e-6 between two runs (same init, same order, same views)."""
    from train.config import TrainConfig
    from train.driver import run_training

    data = make_synthetic_dataset(tmp_path / "syn", 50)
    cfg = TrainConfig.model_validate({
        "model": {"name": TINY_BOW[0], "overrides": TINY_BOW[1]},
        "data": {"batch_size": 20, "num_cpus": 0.5, "augment": True, "random_sentence": True},
        "validation": {"size": 10, "batch_size": 10}, "epochs": 2, "batch_size": 8,
        "optim": {"lr": 1e-3}, "scaling": {"num_workers": 1, "cpus_per_worker": 2}})
    finals = [run_training(cfg, tmp_path / f"run{i}", synthetic=str(data), show_progress=False) for i in (1, 2)]
    runs = [_records(tmp_path / f"run{i}") for i in (1, 2)]
    assert [r["step"] for r in runs[0]] == [5, 10]  # 40 training pairs / batch 8, two epochs
    for a, b in zip(*runs):
        assert set(a) == set(b)
        for key in set(a) - TIMING_KEYS:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert runs[0][0]["train_loss"] != runs[0][1]["train_loss"]  # it trained
    assert finals[0]["val_loss"] == pytest.approx(finals[1]["val_loss"], abs=1e-6)
