"""Which CPU recipe learns most in a fixed wall-clock budget: text tower, image size, learning
rate, batch size and schedule, one factor at a time around a reference arm.

Every arm: the same 2,000 engine pairs (1,800 train, 200 held out), the same seconds of training
on this machine's two cores (torch on 2 threads), the same model seed, a plain PyTorch loop over
frames decoded once (the library's own pieces: train/models/frame.py, train/data/cache.py,
train/loop.py's optimizer and schedule; no Ray, so the recipe is measured, not the runtime).
The budget is counted in this process's CPU time (2 cores x the seconds), so other work on the
machine takes wall time, not steps, from an arm; pairs/s is per second of two cores. The cosine
schedule's length is the step count the budget allows, timed on a few steps first.
Outcomes: zero-shot AUC per class and mean on the phantom-5x200 test split (200 images a class,
drawn at 256 px and put in the model's frame like `syncxr eval` does), held-out recall@10 both
ways (chance 10/200 = 0.05), pairs/s. Figures go to benchmarks/results/recipe.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks import write_results

RESULTS = Path(__file__).parent / "results" / "recipe.md"
# one line per finished arm, so an interrupted run keeps what it measured and `--arms` can add rows
ARM_LOG = Path(__file__).parent / "results" / "recipe-arms.jsonl"


@dataclass(frozen=True)
class Arm:
    label: str
    model: str = "convirt-resnet18-bow"
    size: int = 64
    lr: float = 1e-3
    batch: int = 64
    scheduler: str = "cosine"
    warmup: int = 50
    overrides: dict = field(default_factory=dict)


NO_NEGATION = {"text_encoder": {"negation": False, "token_weights": False}, "text": {"pooling": "mean"}}
REFERENCE = Arm("reference: bow, 64 px, AdamW 1e-3, batch 64, warm-up 50 + cosine", overrides=NO_NEGATION)
NEGATION = {"text_encoder": {"negation": True, "token_weights": False}, "text": {"pooling": "mean"}}
WEIGHTED = {"text_encoder": {"negation": True, "token_weights": True}, "text": {"pooling": "weighted"}}
ARMS = (
    REFERENCE,
    replace(REFERENCE, label="batch 32", batch=32),
    replace(REFERENCE, label="lr 3e-3", lr=3e-3),
    replace(REFERENCE, label="lr 3e-4", lr=3e-4),
    replace(REFERENCE, label="batch 128", batch=128),
    replace(REFERENCE, label="constant lr, no warm-up", scheduler="constant", warmup=0),
    replace(REFERENCE, label="image 96 px", size=96),
    replace(REFERENCE, label="image 128 px", size=128),
    replace(REFERENCE, label="text: 2-layer transformer", model="convirt-resnet18-smallbert",
            overrides={"text_encoder": {"num_hidden_layers": 2}}),
    replace(REFERENCE, label="text: 4-layer smallbert (today's tower)", model="convirt-resnet18-smallbert"),
    replace(REFERENCE, label="image 96 px + batch 32 (the two that helped)", size=96, batch=32),
    replace(REFERENCE, label="bow with negation scopes", overrides=NEGATION),
    replace(REFERENCE, label="batch 32 + lr 3e-3", batch=32, lr=3e-3),
    replace(REFERENCE, label="batch 32 + lr 3e-3 + negation scopes", batch=32, lr=3e-3, overrides=NEGATION),
    replace(REFERENCE, label="negation scopes + learned token weights (weighted pooling)", overrides=WEIGHTED),
)


def two_core_seconds() -> float:
    """CPU seconds of this process over the two cores: wall seconds on an idle machine."""
    return time.process_time() / 2


def resize_for(size: int) -> int:
    return round(size * 1.125)  # the 224/256 crop ratio of the paper configs


def load_pairs(data: str, n: int):
    """(ids, encoded images, reports) of the first n pairs of a `syncxr synth` run."""
    from engine.dataset import open_dataset, report_text

    table = open_dataset(data).to_arrow(["sample_id", "findings", "impression", "image"]).slice(0, n)
    rows = table.to_pylist()
    return ([r["sample_id"] for r in rows], [r["image"]["bytes"] for r in rows],
            [report_text(r["findings"], r["impression"]) for r in rows])


def cache_of(ids, images, reports, resize_to: int):
    from train.data.cache import collect
    from train.data.preprocess import decode_batch

    batch = decode_batch({"sample_id": ids, "image_bytes": images, "image_path": [None] * len(ids),
                          "report": reports}, resize_to)
    return collect([batch], resize_to)


def phantom_test_images(per_class: int, cache_file: Path):
    """The phantom-5x200 test split drawn once at 256 px (uint8), kept beside the data."""
    from eval.datasets import build_dataset

    ds = build_dataset("phantom-5x200", n=per_class, seed=0)
    rows = ds.split("test")
    if cache_file.is_file():
        images = np.load(cache_file)["images"]
    else:
        images = np.stack([ds.render(row)[0] for _, row in rows.iterrows()])
        np.savez_compressed(cache_file, images=images)
    return images, ds.labels(rows), list(ds.classes)


def recall_both_ways(model, val, image_size: int) -> tuple[float, float]:
    import torch

    from train.retrieval import retrieval_metrics

    model.eval()
    with torch.no_grad():
        images, texts = val.batch(np.arange(len(val)), image_size)
        tok = model.tokenize(texts)
        m = retrieval_metrics(model.embed_image(images).numpy(), model.embed_text(tok["input_ids"],
                                                                                   tok["attention_mask"]).numpy())
    model.train()
    return m["val_i2t_r10"], m["val_t2i_r10"]


def zero_shot(model, test_images, labels, classes, image_size: int, resize_to: int) -> dict:
    from eval.zero_shot import zero_shot_classification
    from train.models.frame import frame, to_input

    x = to_input(np.stack([frame(img, image_size, resize_to) for img in test_images]))
    return zero_shot_classification(model, x, labels, classes, "multiclass", batch_size=100)


def train_arm(arm: Arm, pairs, n_train: int, seconds: float, test) -> dict:
    import torch

    from train.config import OptimSection
    from train.data.cache import epoch_batches
    from train.loop import make_optimizer
    from train.models import create_model

    ids, images, reports = pairs
    resize_to = resize_for(arm.size)
    train = cache_of(ids[:n_train], images[:n_train], reports[:n_train], resize_to)
    val = cache_of(ids[n_train:], images[n_train:], reports[n_train:], resize_to)
    overrides = {"image": {"image_size": arm.size, "resize_to": resize_to}, **arm.overrides}

    def fresh():
        torch.manual_seed(0)
        return create_model(arm.model, text_corpus=train.reports, overrides=overrides)

    def step(model, optimizer, scheduler, idx):
        x, texts = train.batch(idx, arm.size)
        tok = model.tokenize(texts)
        loss = model.loss(model(x, tok["input_ids"], tok["attention_mask"]), gather=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    optim = OptimSection(optimizer="adamw", lr=arm.lr, weight_decay=1e-4, scheduler=arm.scheduler,
                         warmup_steps=arm.warmup)
    probe = fresh()  # time a few steps to size the schedule to the budget
    opt, sched = make_optimizer(probe, optim, 100)
    batches = epoch_batches(len(train), arm.batch, len(train) // arm.batch, 0, 0)
    step(probe, opt, sched, batches[0])
    t0 = two_core_seconds()
    for idx in batches[1:4]:
        step(probe, opt, sched, idx)
    planned = max(1, int(seconds / ((two_core_seconds() - t0) / 3)))
    del probe, opt, sched

    model = fresh()
    optimizer, scheduler = make_optimizer(model, optim, planned)
    per_epoch = len(train) // arm.batch
    losses, steps, t0, epoch = [], 0, two_core_seconds(), 0
    while steps < planned and two_core_seconds() - t0 < seconds:
        for idx in epoch_batches(len(train), arm.batch, per_epoch, 0, epoch):
            losses.append(step(model, optimizer, scheduler, idx))
            steps += 1
            if steps >= planned or two_core_seconds() - t0 >= seconds:
                break
        epoch += 1
    elapsed = two_core_seconds() - t0
    i2t, t2i = recall_both_ways(model, val, arm.size)
    res = zero_shot(model, *test, arm.size, resize_to)
    return {"steps": steps, "planned": planned, "pairs_per_s": steps * arm.batch / elapsed, "seconds": elapsed,
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
            "i2t_r10": i2t, "t2i_r10": t2i, "mean_auc": res["mean_auc"],
            "auc": {c: v["auc"] for c, v in res["per_class"].items()}}


def logged_arms() -> list[dict]:
    """The arms measured so far (the newest result of each label), in ARMS order."""
    if not ARM_LOG.is_file():
        return []
    latest = {}
    for line in ARM_LOG.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            latest[rec["label"]] = rec
    order = {a.label: i for i, a in enumerate(ARMS)}
    return sorted(latest.values(), key=lambda r: order.get(r["label"], len(order)))


def table(results: list[dict], classes: list[str]) -> list[str]:
    short = {"Pleural Effusion": "Effusion"}
    head = ["arm", "steps", "pairs/s", "loss first -> last 10", "i2t R@10", "t2i R@10",
            *[short.get(c, c) for c in classes], "mean AUC", "measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append(f"| {r['label']} | {r['steps']} | {r['pairs_per_s']:.0f} | {r['loss_first']:.2f} -> "
                     f"{r['loss_last']:.2f} | {r['i2t_r10']:.3f} | {r['t2i_r10']:.3f} | "
                     + " | ".join(f"{r['auc'][c]:.3f}" for c in classes) + f" | **{r['mean_auc']:.3f}** | "
                     f"{r.get('measured', '')} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out/bench/synth-2000",
                   help="a `syncxr synth` dataset (made with the local config when absent)")
    p.add_argument("--pairs", type=int, default=2000, help="pairs used (the last 200 held out)")
    p.add_argument("--seconds", type=float, default=300.0, help="training seconds per arm")
    p.add_argument("--per-class", type=int, default=200, help="phantom test images per class")
    p.add_argument("--arms", default="", help="comma-separated arm numbers (default: all)")
    p.add_argument("--quick", action="store_true", help="two arms, 20 s each, 20 test images a class")
    args = p.parse_args(argv)
    arms = list(ARMS)
    if args.arms:
        arms = [ARMS[int(i)] for i in args.arms.split(",")]
    if args.quick:
        arms, args.seconds, args.per_class = arms[:2], 20.0, 20
    import torch

    torch.set_num_threads(2)
    if not Path(args.data).is_dir():
        subprocess.run([sys.executable, "-m", "engine.cli", "synth", "--config", "configs/local.yaml", "--n",
                        str(args.pairs), "--out", args.data], check=True)
    pairs = load_pairs(args.data, args.pairs)
    n_train = len(pairs[0]) - 200
    test = phantom_test_images(args.per_class, Path(args.data).parent / f"phantom-5x{args.per_class}-test.npz")
    measured = []
    for arm in arms:
        res = train_arm(arm, pairs, n_train, args.seconds, test)
        measured.append({"label": arm.label, **res})
        if not args.quick:
            with ARM_LOG.open("a") as fh:
                fh.write(json.dumps({"label": arm.label, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                     "seconds_budget": args.seconds, **res}) + "\n")
        print(f"{arm.label}: {res['steps']} steps, {res['pairs_per_s']:.0f} pairs/s, loss {res['loss_first']:.2f} -> "
              f"{res['loss_last']:.2f}, R@10 {res['i2t_r10']:.3f}/{res['t2i_r10']:.3f}, "
              f"AUC {res['mean_auc']:.3f} " + " ".join(f"{v:.2f}" for v in res["auc"].values()), flush=True)
    lines = [
        "# CPU training recipe: what learns most in a fixed wall-clock budget",
        "",
        f"`python -m benchmarks.bench_recipe`: {args.pairs} engine pairs ({n_train} train, {args.pairs - n_train} "
        f"held out), {args.seconds:.0f} s of training per arm on 2 cores (torch 2 threads; counted in CPU time / 2), "
        f"plain loop over frames "
        f"decoded once, AdamW (weight decay 1e-4), ConVIRT loss (tau 0.1, lambda 0.75), whole report as the text, "
        f"no augmentation, model seed 0. Zero-shot: phantom-5x200 test split, {args.per_class} images a class "
        f"(chance AUC 0.5); recall@10 on the held-out pairs (chance 0.05). Each arm changes one thing from the "
        f"reference (first row) unless its label says more.",
        "",
        *table(measured if args.quick else logged_arms(), test[2])]
    text = "\n".join(lines)
    if args.quick:
        print(text)
    else:
        write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
