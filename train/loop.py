"""The Ray Train worker loop: one function every training worker runs (TorchTrainer's
`train_loop_per_worker`).

At start: torch gets as many intra-op threads as the worker has CPUs; the worker reads its shard
of the decoded frames (train/data/pipeline.py) into memory once (train/data/cache.py). Per epoch:
a seeded permutation of the shard, one optimizer step per batch of `batch_size` rows (a seeded
random view of each frame when augmentation is on, the centre crop otherwise), then on rank 0
validation on the held-out pairs (loss and recall@1/5/10 both ways, plus the optional zero-shot
hook) and a checkpoint, through `ray.train.report` (every rank calls it once per epoch, and every
`log_every_steps`: it is a barrier). A worker writes nothing into RUN: the driver's callback logs
the reported records (train/run_log.py) and takes the final weights from the last checkpoint, so
the workers need not share the driver's disk. With one worker, two runs of the same command give
the same numbers.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from train.checkpointing import report_with_checkpoint, restore, training_state, write_files
from train.config import TrainConfig
from train.data.cache import epoch_batches
from train.hooks import register_hooks, resolve_hook
from train.retrieval import retrieval_metrics
from train.run_log import PLACEMENT_GROUP_KEY

READ_BATCH = 256  # rows per batch when a worker reads its shard into memory


def train_shard_name(rank: int) -> str:
    return f"train_{rank}"


def threads_for(cpus_per_worker: float) -> int:
    """Intra-op threads of a worker: the CPUs it was given (at least one)."""
    return max(1, int(round(cpus_per_worker)))


def claim_priority() -> None:
    """Ray starts its workers at nice 15, below its own helpers (the Train controller and watchers,
    the raylet, the driver); on a small machine each of their wake-ups then preempts a training
    thread, and torch's OpenMP threads wait on each other. The training worker is the work: back
    to nice 0 where the OS allows it (root, or CAP_SYS_NICE), every thread of the process,
    before torch starts its pool (later threads inherit it). Elsewhere it stays as Ray set it."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir() or os.getpriority(os.PRIO_PROCESS, 0) <= 0:
        return
    try:
        for tid in os.listdir(tasks):
            os.setpriority(os.PRIO_PROCESS, int(tid), 0)
    except (PermissionError, ProcessLookupError):
        pass


def read_cache(shard, resize_to: int):
    from train.data.cache import collect

    return collect(shard.iter_batches(batch_size=READ_BATCH, batch_format="numpy"), resize_to)


def epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A seed per (run seed, epoch, rank, random stream): augmentation and the sentence view."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def make_optimizer(model, optim_cfg, total_steps: int):
    cls = torch.optim.AdamW if optim_cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = cls([p for p in model.parameters() if p.requires_grad], lr=optim_cfg.lr,
                    weight_decay=optim_cfg.weight_decay)
    warmup, total = optim_cfg.warmup_steps, max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim_cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _all_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _all_min(value: int, world: int) -> int:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def augment_settings(model_settings: dict | None, data_cfg) -> dict:
    """The model config's augmentation settings with the training config's on top, checked."""
    from train.augment import check_settings

    return check_settings({**(model_settings or {}), **data_cfg.augment_settings}, "data.augment_settings")


def _tokenize(model, texts, device):
    tok = model.tokenize(texts)
    return tok["input_ids"].to(device), tok["attention_mask"].to(device), int(tok["truncated"].sum())


@torch.no_grad()
def validate(model, val_cache, vcfg, device, autocast) -> dict:
    """Loss and retrieval recall on the held-out pairs, in id order (rank 0 only: no collectives)."""
    model.eval()
    losses, weights, img_emb, txt_emb = [], [], [], []
    n = len(val_cache)
    for start in range(0, n, vcfg.batch_size):
        idx = np.arange(start, min(start + vcfg.batch_size, n))
        if len(idx) < 2:
            continue
        images, texts = val_cache.batch(idx, model.image_size, device=device)
        ids, mask, _ = _tokenize(model, texts, device)
        with autocast():
            features = model(images, ids, mask)
            loss = model.loss(features, gather=False)
            img_emb.append(model.embed_image(images).float().cpu().numpy())
            txt_emb.append(model.embed_text(ids, mask).float().cpu().numpy())
        losses.append(float(loss))
        weights.append(len(texts))
    model.train()
    if not weights:
        return {"val_loss": float("nan"), "val_skipped_images": val_cache.skipped}
    out = {"val_loss": float(np.average(losses, weights=weights)), "val_pairs": int(sum(weights)),
           "val_skipped_images": val_cache.skipped}
    out.update(retrieval_metrics(np.concatenate(img_emb), np.concatenate(txt_emb)))
    return out


def placement_group_id() -> str | None:
    """The worker group's placement group, named in rank 0's records: when Tune stops a trial it
    kills the trial's Train controller before it can release the group, and Ray Train's own
    cleaner needs the State API (a dashboard), which the embedded Ray has not got; workflows/tune.py
    releases it."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else None


def train_loop_per_worker(loop_cfg: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from train.models import load_model

    register_hooks(loop_cfg["hooks"])
    cfg = TrainConfig.model_validate(loop_cfg["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp)

    claim_priority()
    torch.set_num_threads(threads_for(cfg.scaling.cpus_per_worker))
    torch.manual_seed(cfg.seed + rank)
    with tempfile.TemporaryDirectory(prefix="syncxr-init-") as init_dir:  # identical start on every rank
        model = load_model(str(write_files(ray.get(loop_cfg["init_model"]), init_dir)))
    cache = read_cache(ray.train.get_dataset_shard(train_shard_name(rank)), model.resize_to)
    val_cache = read_cache(ray.train.get_dataset_shard("val"), model.resize_to) if rank == 0 else None
    # every rank takes the same number of steps (DDP): the planned count, or fewer if a shard is short
    steps_per_epoch = int(min(loop_cfg["steps_per_epoch"], _all_min(len(cache) // cfg.batch_size, world)))
    if steps_per_epoch < 1:
        raise RuntimeError(f"rank {rank}: {len(cache)} decodable training rows, fewer than one batch of "
                           f"{cfg.batch_size}")
    optimizer, scheduler = make_optimizer(model, cfg.optim, loop_cfg["steps_per_epoch"] * cfg.epochs)
    start_epoch, step = restore(model, optimizer, scheduler)
    ddp = ray.train.torch.prepare_model(model)  # DDP when world > 1; moves to the device
    core = ddp.module if hasattr(ddp, "module") else ddp
    # optimizer state restored on CPU: move it beside the parameters
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)
    group = {PLACEMENT_GROUP_KEY: placement_group_id()} if rank == 0 else {}
    hook = resolve_hook(cfg.validation.zero_shot)
    augment = augment_settings(model.config.get("augment"), cfg.data) if cfg.data.augment else None
    log_every = cfg.log_every_steps
    skipped = int(_all_sum([cache.skipped], world)[0])

    for epoch in range(start_epoch, cfg.epochs):
        t0, seen, loss_sum, n_steps, truncated = time.perf_counter(), 0, 0.0, 0, 0
        bad_step = None
        views = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, rank, 0))
        sentences = np.random.default_rng(epoch_seed(cfg.seed, epoch, rank, 1)) if cfg.data.random_sentence else None
        for idx in epoch_batches(len(cache), cfg.batch_size, steps_per_epoch, cfg.seed, epoch, rank):
            images, texts = cache.batch(idx, core.image_size, augment, views, sentences, device=device)
            ids, mask, n_trunc = _tokenize(core, texts, device)
            truncated += n_trunc
            with autocast():
                features = ddp(images, ids, mask)
                loss = core.loss(features, gather=world > 1)
            finite = _all_sum([float(not torch.isfinite(loss.detach()).item())], world)[0] == 0
            if not finite:
                bad_step = step + 1
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n_steps += 1
            seen += len(texts)
            loss_sum += float(loss.detach())
            if log_every and step % log_every == 0:  # every rank: a report is a barrier
                ray.train.report({"kind": "step", "epoch": epoch + 1, "step": step, "loss": float(loss.detach()),
                                  "lr": scheduler.get_last_lr()[0], **group})
        if bad_step is not None:
            # stop here: no checkpoint of the broken weights, the last good one stays the latest
            ray.train.report({"kind": "stopped", "epoch": epoch + 1, "step": bad_step, "nonfinite_step": bad_step,
                              **group})
            return
        seconds = time.perf_counter() - t0
        seen, truncated = (int(v) for v in _all_sum([seen, truncated], world))
        record = {"kind": "epoch", "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(n_steps, 1),
                  "samples_per_s": seen / seconds if seconds else 0.0, "epoch_seconds": seconds,
                  "train_pairs_seen": seen, "skipped_images": skipped, "truncated_reports": truncated,
                  "lr": scheduler.get_last_lr()[0], **group}
        state = None
        if rank == 0:
            record.update(validate(core, val_cache, cfg.validation, device, autocast))
            if hook is not None:
                core.eval()
                record.update(hook(core, device, cfg))
                core.train()
            state = training_state(core, optimizer, scheduler, epoch + 1, step)
        report_with_checkpoint(record, state)  # the driver takes the final weights from the last one
