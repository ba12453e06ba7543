"""Which training recipe lets a from-scratch CPU model learn in minutes: the text view (one random
sentence, ConVIRT's, against the whole report) crossed with the ConVIRT augmentations (on/off).

A plain PyTorch loop (no Ray: the recipe, not the runtime, is measured) over the same engine pairs,
the same model init, seed and batches in every arm; images preprocessed with the training code
(train/data/preprocess.py). Baseline: ln(batch), the loss of embeddings that tell nothing apart,
and recall@10 chance = 10 / held-out pairs. Figures go to benchmarks/results/recipe.md.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import write_results

RESULTS = Path(__file__).parent / "results" / "recipe.md"
ARMS = (("whole report", False, False), ("whole report", True, False),
        ("random sentence", False, True), ("random sentence", True, True))


def as_batch(rows: list[dict], reports: list[str]) -> dict:
    """Engine rows in the shape train/data/preprocess.py reads."""
    return {"sample_id": [r["sample_id"] for r in rows], "image_bytes": [r["image"]["bytes"] for r in rows],
            "image_path": [None] * len(rows), "report": list(reports)}


def held_out_recall(model, images, reports, k: int = 10) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        tok = model.tokenize(reports)
        sim = model.embed_image(torch.from_numpy(images)) @ model.embed_text(tok["input_ids"], tok["attention_mask"]).t()
    model.train()
    rank = (sim > sim.diag()[:, None]).sum(1)
    return float((rank < k).float().mean())


def train_arm(rows, reports, val_images, n_train, steps, batch, size, model_name, augment, sentence, lr):
    import torch

    from train.data.preprocess import preprocess_batch
    from train.models import create_model
    from train.transforms import random_sentence

    torch.manual_seed(0)
    model = create_model(model_name, text_corpus=reports[:n_train],
                         overrides={"image": {"image_size": size, "resize_to": round(size * 1.125)}})
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6)
    rng = np.random.default_rng(0)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        idx = rng.choice(n_train, batch, replace=False)
        part = as_batch([rows[i] for i in idx], [reports[i] for i in idx])
        pre = preprocess_batch(part, size, round(size * 1.125), True, augment, model.config.get("augment"), False,
                               seed=step)
        texts = [random_sentence(reports[i], rng) if sentence else reports[i] for i in idx]
        tok = model.tokenize(texts)
        loss, _ = model.loss(model(torch.from_numpy(pre["image"]), tok["input_ids"], tok["attention_mask"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"first": float(np.mean(losses[:10])), "last": float(np.mean(losses[-10:])),
            "recall": held_out_recall(model, val_images, reports[n_train:]),
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out/bench/synth-2000",
                   help="a `syncxr synth` dataset (made with the local config when absent)")
    p.add_argument("--n", type=int, default=1200, help="training pairs")
    p.add_argument("--val", type=int, default=200, help="held-out pairs")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="image size (the experiment's)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--model", default="convirt-resnet18-smallbert")
    p.add_argument("--quick", action="store_true", help="40 steps, 400 pairs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.val = 400, 40, 100
    import torch

    from engine.dataset import open_dataset, report_text
    from train.data.preprocess import preprocess_batch

    torch.set_num_threads(2)
    if not Path(args.data).is_dir():
        subprocess.run([sys.executable, "-m", "engine.cli", "synth", "--config", "configs/local.yaml", "--n", "2000",
                        "--out", args.data], check=True)
    table = open_dataset(args.data).to_arrow(["sample_id", "findings", "impression", "image"])
    rows = table.slice(0, args.n + args.val).to_pylist()
    reports = [report_text(r["findings"], r["impression"]) for r in rows]
    held = rows[args.n:]
    val_images = preprocess_batch(as_batch(held, reports[args.n:]), args.size, round(args.size * 1.125),
                                  False)["image"]
    results = []
    for view, augment, sentence in ARMS:
        res = train_arm(rows, reports, val_images, args.n, args.steps, args.batch, args.size, args.model,
                        augment, sentence, args.lr)
        results.append((view, augment, res))
        print(f"{view}, augment {augment}: loss {res['first']:.3f} -> {res['last']:.3f}, "
              f"R@10 {res['recall']:.3f} ({res['seconds']:.0f} s)", flush=True)
    chance = min(10, args.val) / args.val
    lines = [
        "# training recipe of the from-scratch CPU model: text view x augmentation",
        "",
        f"`python -m benchmarks.bench_recipe` on {args.data}: {args.model} at {args.size} px, {args.n} training "
        f"pairs, {args.steps} Adam steps at lr {args.lr:g}, batch {args.batch}, the same init and batches in "
        f"every arm (plain loop, no Ray). Baselines: loss ln {args.batch} = {math.log(args.batch):.3f} "
        f"(nothing told apart), held-out image-to-text recall@10 chance {chance:.3f} ({args.val} pairs).",
        "",
        "| text view | ConVIRT augmentations | train loss, first 10 steps | train loss, last 10 steps | "
        "held-out i2t R@10 | x chance | seconds |",
        "|---|---|---|---|---|---|---|"]
    for view, augment, res in results:
        lines.append(f"| {view} | {'on' if augment else 'off'} | {res['first']:.3f} | {res['last']:.3f} | "
                     f"{res['recall']:.3f} | {res['recall'] / chance:.1f} | {res['seconds']:.0f} |")
    if not args.quick:
        write_results(RESULTS, "\n".join(lines))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
