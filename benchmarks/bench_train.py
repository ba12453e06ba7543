"""Training throughput: Ray Train against a plain PyTorch loop on the same model, data and threads.

- plain: one process, no Ray: the frames decoded once (train/data/preprocess.py, collected with
  train/data/cache.py), then one optimizer step per batch, torch on the same number of threads
  as the Ray worker (`cpus_per_worker` of the config).
- Ray Train, 1 worker with every CPU of the machine: the `syncxr train` driver (images decoded
  once by Ray Data tasks before the worker starts, then the worker's in-memory cache).
Steady-state pairs/s is the last epoch's, measured inside each loop; start-up is reported apart.
Both in one run, on the same machine state. Figures go to benchmarks/results/train.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks import write_results

RESULTS = Path(__file__).parent / "results" / "train.md"


def bench_config(n: int, epochs: int, config: str):
    from train.config import load_train_config

    cfg, _ = load_train_config(config, {"data": {"limit": n}, "validation": {"size": 64, "zero_shot": None,
                                                                             "metric": "val_i2t_r10"},
                                        "epochs": epochs})
    return cfg


def plain_loop(cfg, sources, plan, init_dir: Path, epochs: int) -> dict:
    """The same model, optimizer, frames, batch size and thread count in one process."""
    import torch

    from train.data.cache import collect, epoch_batches
    from train.data.preprocess import decode_batch
    from train.loop import make_optimizer, threads_for
    from train.models import load_model

    torch.set_num_threads(threads_for(cfg.scaling.cpus_per_worker))
    torch.manual_seed(cfg.seed)
    model = load_model(init_dir)
    batches = [decode_batch(sources[name].to_arrow(ids).to_pydict(), model.resize_to) for name, ids in plan.train.items()]
    cache = collect(batches, model.resize_to)
    steps = len(cache) // cfg.batch_size
    opt, sched = make_optimizer(model, cfg.optim, steps * epochs)
    rates = []
    for epoch in range(epochs):
        t0, seen = time.perf_counter(), 0
        for idx in epoch_batches(len(cache), cfg.batch_size, steps, cfg.seed, epoch):
            images, texts = cache.batch(idx, model.image_size)
            tok = model.tokenize(texts)
            loss = model.loss(model(images, tok["input_ids"], tok["attention_mask"]), gather=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(texts)
        rates.append(seen / (time.perf_counter() - t0))
    return {"rates": rates, "steps_per_epoch": steps}


def ray_train(cfg, synthetic: str, out: Path) -> dict:
    from train.driver import run_training

    t0 = time.perf_counter()
    run_training(cfg, out, synthetic=synthetic, show_progress=False)
    wall = time.perf_counter() - t0
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_seconds = sum(e["epoch_seconds"] for e in epochs)
    return {"rates": [e["samples_per_s"] for e in epochs], "wall": wall, "startup": wall - train_seconds,
            "val_r10": epochs[-1].get("val_i2t_r10")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out/bench/synth-2000",
                   help="a `syncxr synth` dataset (made with the local config when absent)")
    p.add_argument("--n", type=int, default=1024, help="training pairs")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--config", default="configs/train-local.yaml", help="the training config measured")
    args = p.parse_args(argv)

    import ray

    from engine.core.ray_session import init_ray
    from train.data.pipeline import load_sources, plan_data, training_texts
    from train.driver import prepare_model
    from train.loop import threads_for

    if not (Path(args.data) / "manifest.json").is_file():
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "engine.cli", "synth", "--config", "configs/local.yaml", "--n", "2000",
                        "--out", args.data], check=True)
    cfg = bench_config(args.n, args.epochs, args.config)
    init_ray(cfg.engine)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    sources = load_sources(cfg.data, args.data, None)
    plan = plan_data(cfg, sources)
    init_run = work / "init"
    init_run.mkdir()
    model, init_dir = prepare_model(cfg, init_run, training_texts(sources, plan))

    plain = plain_loop(cfg, sources, plan, init_dir, args.epochs)
    one = ray_train(cfg, args.data, work / "w1")
    plain_rate, one_rate = plain["rates"][-1], one["rates"][-1]
    threads = threads_for(cfg.scaling.cpus_per_worker)
    text = "\n".join([
        f"# Training throughput ({cfg.model.name}, CPU)",
        "",
        f"`python -m benchmarks.bench_train`: {args.config}, {model.image_size} px, {plan.n_train} synthetic pairs "
        f"from {args.data}, batch {cfg.batch_size}, {args.epochs} epochs; steady state = the last epoch, measured "
        f"inside each loop. Both loops: torch on {threads} threads, frames decoded once before the first step, no "
        f"augmentation (the config's). Machine: 2 cores, no GPU, nothing else running.",
        "",
        "| run | pairs/s (last epoch) | vs plain | wall s | start-up s |",
        "|---|---|---|---|---|",
        f"| plain PyTorch loop, 1 process, {threads} threads | {plain_rate:.1f} | 1.00 | - | - |",
        f"| Ray Train, 1 worker x {cfg.scaling.cpus_per_worker:g} CPU ({threads} threads) | {one_rate:.1f} | "
        f"{one_rate / plain_rate:.2f} | {one['wall']:.1f} | {one['startup']:.1f} |",
        "",
        f"Per-epoch rates: plain {[round(r, 1) for r in plain['rates']]}, Ray Train "
        f"{[round(r, 1) for r in one['rates']]}. Start-up: Ray Train's wall time less its epochs (decoding, the "
        f"worker group, reading the shard into memory, per-epoch validation and checkpoints).",
    ])
    write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
