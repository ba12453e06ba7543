"""The training driver: from a TrainConfig to a finished run directory, through one TorchTrainer.

Images are decoded once, by Ray Data tasks, before the workers start (train/data/pipeline.py).
RUN/ holds: split.json (train/validation ids by source), model_init/ (the starting weights and
tokenizer, sent to every worker through Ray's object store), ray/ (Ray Train storage: checkpoints, unless checkpoint.storage_path
puts them elsewhere), metrics.jsonl, metrics.png, model/ (final weights from the last checkpoint,
`load_model(RUN/model)`), run.json (config, data summary, result, where the checkpoints are).
Only the driver writes here (train/run_log.py).
Rerunning the same command resumes from the latest checkpoint (same Ray Train name and storage).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from engine.core.errors import UserError
from engine.core.ownership import check_claim, claim, input_digest, update_marker, value_digest
from train.checkpointing import checkpoint_storage, directory_files, latest_checkpoint_step
from train.config import TrainConfig
from train.data.pipeline import build_datasets, load_sources, plan_data, training_texts
from train.hooks import VALIDATION_HOOKS
from train.loop import threads_for, train_loop_per_worker, train_shard_name
from train.progress import Tail, plot_metrics, read_records
from train.run_log import METRICS_FILE, MetricsLog, public_record


# Ray Train's controller collects a worker's report when it polls the workers (every 2 s by
# default), and a worker's next report waits until the last one is collected: with a record per
# step (log_every_steps) that was 2 s a step, whatever the model (a tiny one trained 3.6 pairs/s
# instead of 25). A value the user exports wins.
REPORT_POLL_ENV, REPORT_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


class TrainingStopped(UserError):
    """The run stopped itself (non-finite loss); the last good checkpoint is kept."""


def check_resources(cfg: TrainConfig, cluster: dict, reserved_cpus: float = 0.0) -> None:
    """Refuse, before anything starts, workers the cluster cannot place. Images are decoded before
    the workers start, so the workers may take every CPU. `reserved_cpus`: taken by something else
    of ours (a Tune trial's driver function)."""
    s = cfg.scaling
    for key, per_worker in s.per_worker().items():
        need = per_worker * s.num_workers + (reserved_cpus if key == "CPU" else 0.0)
        have = cluster.get(key, 0.0)
        if need > have + 1e-9:
            raise UserError(f"scaling: {s.num_workers} workers x {per_worker:g} {key}"
                            + (f" (+ {reserved_cpus:g} reserved)" if reserved_cpus and key == "CPU" else "")
                            + f" = {need:g} {key}, the cluster has {have:g}")
    free = cluster.get("CPU", 0.0) - reserved_cpus
    if cfg.data.num_cpus > free + 1e-9:
        raise UserError(f"data.num_cpus {cfg.data.num_cpus:g}: more than the {max(free, 0):g} CPU the cluster has "
                        f"for decoding")


def scaling_config(s):
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=s.per_worker(),
                         accelerator_type=s.accelerator_type)


def prepare_model(cfg: TrainConfig, run_dir: Path, texts: list[str]):
    """RUN/model_init: created once (a from-scratch tokenizer learns its vocabulary from the
    training reports), reused on resume so the vocabulary and initial weights never change."""
    from train.models import create_model, load_model

    init_dir = run_dir / "model_init"
    if (init_dir / "config.json").exists() or (init_dir.is_dir() and any(init_dir.iterdir())):
        return load_model(str(init_dir), expect_name=cfg.model.name), init_dir
    import torch

    torch.manual_seed(cfg.seed)  # the same initial weights for the same command
    model = create_model(cfg.model.name, text_corpus=texts, tokenizer_dir=cfg.model.tokenizer_dir,
                         overrides=cfg.model.overrides or None)
    tmp = run_dir / "model_init.tmp"
    model.save_pretrained(str(tmp))
    tmp.rename(init_dir)  # whole or absent: a kill mid-save does not leave half a model
    return model, init_dir


def run_training(cfg: TrainConfig, run_dir: str | Path, synthetic: Optional[str] = None, real: Optional[str] = None,
                 callbacks: Optional[list] = None, show_progress: bool = True, verbose: bool = False,
                 reserved_cpus: float = 0.0) -> dict:
    """Train; returns the final metrics record. Raises UserError for bad input or a stopped run."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from train.models import load_config

    model_config = load_config(cfg.model.name, cfg.model.overrides or None)  # unknown name: lists known ones
    run_dir = Path(run_dir).resolve()
    synthetic, real = synthetic or cfg.data.synthetic, real or cfg.data.real
    inputs = run_inputs(cfg, synthetic, real)
    check_claim(run_dir, "train", inputs)  # another command's or another run's directory: refused before any work
    # an unreadable storage_path or a damaged checkpoint: one line before any decoding or claim
    storage = checkpoint_storage(cfg, run_dir)
    resume_step = latest_checkpoint_step(storage)
    check_resources(cfg, ray.cluster_resources(), reserved_cpus)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False
    sources = load_sources(cfg.data, synthetic, real)
    plan = plan_data(cfg, sources)
    world = cfg.scaling.num_workers
    if plan.n_train < cfg.batch_size * world:
        raise UserError(f"batch_size {cfg.batch_size} x {world} workers is more than the {plan.n_train} training pairs")
    data = build_datasets(cfg, sources, plan, int(model_config["image"]["resize_to"]))
    check_decoded(data, cfg.batch_size, world)
    claim(run_dir, "train", inputs)  # the first write: data that cannot train leaves nothing behind
    (run_dir / "split.json").write_text(json.dumps({"train": plan.train, "val": plan.val}, indent=0))
    _, init_dir = prepare_model(cfg, run_dir, training_texts(sources, plan))
    steps_per_epoch = data.n_valid // world // cfg.batch_size
    datasets = {train_shard_name(rank): shard for rank, shard in enumerate(data.train)}
    datasets["val"] = data.val

    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_S)  # read by the controller Ray Train starts
    run_config = RunConfig(
        name=storage.name, storage_path=storage.path,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
        failure_config=FailureConfig(max_failures=0),
        callbacks=[MetricsLog(run_dir, resume_step), *(callbacks or [])])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.model_dump(), "init_model": ray.put(directory_files(init_dir)),
                           "steps_per_epoch": steps_per_epoch, "hooks": VALIDATION_HOOKS.entries()},
        scaling_config=scaling_config(cfg.scaling), run_config=run_config,
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]))
    total_steps = steps_per_epoch * cfg.epochs
    if show_progress:
        left_out = [f"{n} {source} rows {reason.replace('_', ' ')}" for source, reasons in plan.skipped_index.items()
                    for reason, n in reasons.items()]  # e.g. rows with an empty report
        left_out += [f"{data.n_invalid} images did not decode"] if data.n_invalid else []
        dropped = f" ({', '.join(left_out)}, left out)" if left_out else ""
        print(f"training {cfg.model.name}: {plan.summary()['train']} pairs{dropped}, {plan.n_val} held out, "
              f"{cfg.epochs} epochs x {steps_per_epoch} steps, {world} worker(s) x "
              f"{threads_for(cfg.scaling.cpus_per_worker)} thread(s)"
              + (f"; resuming after step {resume_step}" if resume_step else ""), flush=True)
    t0 = time.perf_counter()
    if show_progress:
        with Tail(run_dir / METRICS_FILE, cfg.epochs, total_steps, resume_step):
            result = _fit(trainer)
    else:
        result = _fit(trainer)
    seconds = time.perf_counter() - t0
    records = read_records(run_dir / METRICS_FILE)
    plot_metrics(records, run_dir / "metrics.png", chance=min(10, plan.n_val) / plan.n_val)
    final = public_record(result.metrics or (records[-1] if records else {}))
    if records and records[-1].get("kind") == "stopped":
        final = records[-1]  # Ray reports the metrics of the last checkpoint, not of the stop
    elif result.checkpoint is not None:
        save_final_model(result.checkpoint, init_dir, run_dir / "model")
    decoded = {"train_valid": data.n_valid, "train_undecodable": data.n_invalid, "val_undecodable": data.val_invalid,
               "first_error": data.first_error}
    update_marker(run_dir, config=cfg.model_dump(), data={**plan.summary(), "decoded": decoded},
                  steps_per_epoch=steps_per_epoch, planned_steps=total_steps, fit_seconds=seconds, final=final,
                  checkpoints=storage.uri)
    if final.get("nonfinite_step"):
        raise TrainingStopped(f"non-finite loss at step {final['nonfinite_step']}: stopped, "
                              f"the last good checkpoint is kept under {storage.uri}")
    return final


def save_final_model(checkpoint, init_dir: Path, model_dir: Path) -> None:
    """RUN/model from the run's last checkpoint, on the driver (fetched from the storage where the
    workers put it): the starting model with the trained weights, whole or absent."""
    import shutil

    from train.checkpointing import load_state
    from train.models import load_model

    with checkpoint.as_directory() as directory:
        state = load_state(directory)
    model = load_model(str(init_dir))
    model.load_state_dict(state["model"])
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)


def run_inputs(cfg: TrainConfig, synthetic: Optional[str], real: Optional[str]) -> dict:
    """What a training run is made from, for its directory's marker: a rerun with any of these
    changed is another run (where Ray runs, `engine`, is not among them)."""
    settings = cfg.model_dump(exclude={"engine"})
    settings["data"].pop("synthetic"), settings["data"].pop("real")  # named by the data digests below
    return {"config": value_digest(settings), "synthetic": input_digest(synthetic), "real": input_digest(real)}


def check_decoded(data, batch_size: int, world: int) -> None:
    """Data that cannot train stops here, before any worker starts, with the counts."""
    total = data.n_valid + data.n_invalid
    if data.n_valid == 0:
        raise UserError(f"no training image decodes ({data.n_invalid} of {total} rows); first: {data.first_error}")
    if data.n_valid < batch_size * world:
        raise UserError(f"{data.n_valid} of {total} training images decode, fewer than one batch of "
                        f"{batch_size} x {world} worker(s)" + (f"; first error: {data.first_error}" if data.first_error else ""))


def _fit(trainer):
    """fit(), with a failed worker's exception reduced to one line."""
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        raise UserError(f"training failed: {_last_line(exc)}") from None


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errors or lines or [type(exc).__name__])[-1]
