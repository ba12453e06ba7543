"""What a training run shows a person: one progress line per record of RUN/metrics.jsonl (tailed by
the driver while Ray Train runs, so none of Ray's own logs are needed) and the loss/recall plot."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_record(r: dict, epochs: int, steps_total: int) -> str:
    if r.get("kind") == "step":
        return f"  epoch {r['epoch']}/{epochs} step {r['step']}/{steps_total} loss {r['loss']:.4f} lr {r['lr']:.2e}"
    if r.get("kind") == "stopped":
        return f"  stopped: non-finite loss at step {r['nonfinite_step']}"
    parts = [f"epoch {r['epoch']}/{epochs}", f"step {r['step']}/{steps_total}", f"train_loss {r['train_loss']:.4f}",
             f"val_loss {r.get('val_loss', float('nan')):.4f}"]
    for key in ("val_i2t_r1", "val_i2t_r10", "val_t2i_r10", "val_zero_shot_auc"):
        if key in r:
            parts.append(f"{key[4:]} {r[key]:.3f}")
    parts.append(f"{r.get('samples_per_s', 0):.1f} pairs/s")
    if r.get("skipped_images"):
        parts.append(f"skipped images {r['skipped_images']}")
    if r.get("truncated_reports"):
        parts.append(f"truncated {r['truncated_reports']}")
    return "  " + ", ".join(parts)


class Tail:
    """Print new records of a metrics file from a background thread until stopped."""

    def __init__(self, path: Path, epochs: int, steps_total: int, start_step: int = 0, interval: float = 0.5,
                 stream=None):
        self.path, self.epochs, self.steps_total, self.interval = Path(path), epochs, steps_total, interval
        self.stream = stream or sys.stdout
        # records up to the checkpoint a resumed run starts from were shown by an earlier attempt;
        # those past it (a killed attempt's) are rewritten by the new one
        self.last = (start_step, 1) if start_step else (0, -1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self):
        try:
            records = read_records(self.path)
        except (json.JSONDecodeError, OSError):
            return  # a line being written: next poll
        for r in records:
            key = _order(r)
            if key > self.last:
                print(format_record(r, self.epochs, self.steps_total), file=self.stream, flush=True)
                self.last = key


def _order(record: dict) -> tuple[int, int]:
    """Records in run order: by step; at one step, the step line before the epoch summary."""
    return record.get("step", 0), 0 if record.get("kind") == "step" else 1


def plot_metrics(records: list[dict], out: str | Path, chance: float | None = None) -> Path | None:
    """Loss (train, validation), recall@10 (both directions) and, when computed, the zero-shot AUC
    per epoch."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["epoch"] for r in epochs]
    fig, (ax_loss, ax_rec) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(x, [r["train_loss"] for r in epochs], marker="o", label="train")
    ax_loss.plot(x, [r.get("val_loss", float("nan")) for r in epochs], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="contrastive loss")
    ax_loss.legend()
    for key, label in (("val_i2t_r10", "image->text R@10"), ("val_t2i_r10", "text->image R@10"),
                       ("val_i2t_r1", "image->text R@1"), ("val_zero_shot_auc", "zero-shot AUC")):
        if any(key in r for r in epochs):
            ax_rec.plot(x, [r.get(key, float("nan")) for r in epochs], marker="o", label=label)
    if chance is not None:
        ax_rec.axhline(chance, color="grey", linestyle="--", label=f"chance R@10 ({chance:.3f})")
    ax_rec.set(xlabel="epoch", ylabel="recall / AUC", title="held-out retrieval", ylim=(0, 1))
    ax_rec.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
