"""Writing evaluation results: results.json, a Markdown table with one row per checkpoint, ROC
curves and grounding overlays as PNG."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

# the headline columns of each task's table (key in a checkpoint's result, column title)
COLUMNS = {
    "zero-shot": [("mean_auc", "mean AUC"), ("mean_f1", "mean F1"), ("mean_accuracy", "mean acc. @F1"),
                  ("multiclass_accuracy", "argmax acc.")],
    "grounding": [("pointing_game", "pointing game"), ("iou", "IoU"), ("dice", "Dice"),
                  ("precision", "precision"), ("recall", "recall"), ("threshold", "threshold")],
    "linear-probe": [("auc_1%", "AUC 1%"), ("auc_10%", "AUC 10%"), ("auc_100%", "AUC 100%")],
    "segmentation": [("dice", "Dice @0.5"), ("valid_dice", "valid Dice"), ("steps", "steps")],
}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(results: dict) -> str:
    task = results["task"]
    cols = COLUMNS[task]
    lines = [f"# {task} on {results['dataset']}", "",
             f"n = {results.get('n_eval', '?')} images evaluated; seed {results.get('seed')}", "",
             "| checkpoint | model | " + " | ".join(t for _, t in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in results["checkpoints"]:
        lines.append(f"| {r['checkpoint']} | {r['model']} | " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
    per_class = [r for r in results["checkpoints"] if r.get("per_class")]
    if per_class:
        classes = sorted({c for r in per_class for c in r["per_class"]})
        lines += ["", "AUC per class:", "", "| checkpoint | " + " | ".join(classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for r in per_class:
            lines.append(f"| {r['checkpoint']} | " + " | ".join(_fmt(r["per_class"].get(c, {}).get("auc"))
                                                              for c in classes) + " |")
    skipped = {r["checkpoint"]: r["skipped"] for r in results["checkpoints"] if r.get("skipped")}
    if skipped:
        lines += ["", "Skipped (a single label in the split, AUC undefined): "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    (out / "results.md").write_text(markdown_table(results))
    return out / "results.json", out / "results.md"


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def roc_plot(labels: np.ndarray, scores: np.ndarray, classes: list[str], title: str, path: Path) -> Optional[Path]:
    """One ROC curve per class that has both labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    drawn = 0
    for c, cls in enumerate(classes):
        y = labels[:, c]
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, scores[:, c])
        ax.plot(fpr, tpr, label=f"{cls} ({roc_auc_score(y, scores[:, c]):.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlay_plot(frames: np.ndarray, maps: np.ndarray, masks: np.ndarray, captions: list[str], title: str,
                 path: Path, k: int = 8) -> Path:
    """k images spread over the set (classes come in blocks) with their similarity map (colour)
    and the target outline (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, min(k, len(frames)))
    picks = np.unique(np.linspace(0, len(frames) - 1, k).astype(int)) if len(frames) else []
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.6), squeeze=False)
    for j, ax in enumerate(axes[0]):
        if j < len(picks):
            i = picks[j]
            ax.imshow(frames[i], cmap="gray")
            ax.imshow(maps[i], cmap="jet", alpha=0.35, vmin=0, vmax=1)
            if masks[i].any():
                ax.contour(masks[i].astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(captions[i][:24], fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
