"""Long-tail statistics of entity counts, and the plots that show them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.core.files import save_figure
from engine.text.entities import ENTITY_TYPES


def gini(counts) -> float:
    """Gini coefficient of a count vector: 0 = perfectly even, ->1 = one entity holds all."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * x).sum()) / (n * x.sum()) - (n + 1) / n)


def top_share(counts, fraction: float = 0.01) -> float:
    """Share of all mentions held by the most frequent `fraction` of entities (at least one)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if x.size == 0 or x.sum() == 0:
        return 0.0
    top = max(1, math.ceil(fraction * x.size))
    return float(x[:top].sum() / x.sum())


def count_summary(counts) -> dict:
    x = np.asarray(counts, dtype=np.int64)
    if x.size == 0:
        return {"unique": 0, "mentions": 0, "top1pct_share": 0.0, "gini": 0.0, "max": 0, "min": 0, "max_min_ratio": None}
    return {
        "unique": int(x.size),
        "mentions": int(x.sum()),
        "top1pct_share": round(top_share(x), 4),
        "gini": round(gini(x), 4),
        "max": int(x.max()),
        "min": int(x.min()),
        "max_min_ratio": round(float(x.max() / x.min()), 2) if x.min() > 0 else None,
    }


def long_tail_stats(table: pa.Table) -> dict:
    """Stats of an entity table (text, type, count): overall and per type."""
    types = table.column("type").to_pylist()
    counts = np.asarray(table.column("count").to_pylist(), dtype=np.int64)
    out = {"all": count_summary(counts), "by_type": {}}
    for t in ENTITY_TYPES:
        out["by_type"][t] = count_summary(counts[[ty == t for ty in types]] if types else counts[:0])
    out["unique_per_type"] = {t: out["by_type"][t]["unique"] for t in ENTITY_TYPES}
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rank_frequency(table: pa.Table, path: Path, title: str = "Entity rank-frequency") -> Path:
    """Log-log rank-frequency curve per entity type: the long tail at a glance."""
    plt = _plt()
    types = np.asarray(table.column("type").to_pylist())
    counts = np.asarray(table.column("count").to_pylist())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in ENTITY_TYPES:
        c = np.sort(counts[types == t])[::-1]
        if c.size:
            ax.loglog(np.arange(1, c.size + 1), c, marker=".", ms=3, lw=1, label=f"{t} ({c.size})")
    return finish_plot(plt, fig, ax, path, title, "rank", "reports mentioning the entity")


def finish_plot(plt, fig, ax, path: Path, title: str, xlabel: str, ylabel: str, legend: bool = True,
                grid: bool = True) -> Path:
    """Labels, title, grid and legend, then the figure saved atomically and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def entity_group(key) -> str:
    """'anatomy' or 'clinical' for an entity key (text, type): the plan balances each on its own."""
    return "anatomy" if isinstance(key, tuple) and key[1] == "ANATOMY" else "clinical"


def group_ratios(counts: dict, keys) -> str:
    """Max/min count per group, as the plan's stats table gives them: 'clinical 1.02, anatomy 1.03'."""
    parts = []
    for group in ("clinical", "anatomy"):
        x = np.array([counts[k] for k in keys if entity_group(k) == group and counts[k] > 0], dtype=float)
        if x.size:
            parts.append(f"{group} {x.max() / x.min():.2f}")
    return ", ".join(parts)


def plot_balance(corpus_counts: dict, plan_counts: dict, path: Path, title: str, label: str = "plan") -> Path:
    """Share of mentions per entity, ordered by corpus frequency: corpus vs. plan (or dataset).
    The legend gives max/min per group (clinical, anatomy): the cap balances each group separately."""
    plt = _plt()
    keys = sorted(set(corpus_counts) & set(plan_counts), key=lambda k: -corpus_counts[k])
    c = np.array([corpus_counts[k] for k in keys], dtype=float)
    p = np.array([plan_counts[k] for k in keys], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if keys:
        ranks = np.arange(1, len(keys) + 1)
        ax.semilogy(ranks, c / c.sum(), lw=1.5, label=f"corpus (max/min {group_ratios(corpus_counts, keys)})")
        ax.semilogy(ranks, p / max(p.sum(), 1), lw=1.5, label=f"{label} (max/min {group_ratios(plan_counts, keys)})")
    return finish_plot(plt, fig, ax, path, title, f"entity of the plan vocabulary ({len(keys)}), ranked by corpus frequency",
                       "share of mentions")


def count_entities(entity_lists) -> pa.Table:
    """Entity table (text, type, count): count = reports mentioning the entity; most frequent
    first, ties by text so the table is deterministic."""
    from collections import Counter

    counter = Counter((e["text"], e["type"]) for ents in entity_lists for e in {(x["text"], x["type"]): x for x in ents}.values())
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))
    return pa.table({
        "text": pa.array([k[0] for k, _ in items], pa.string()),
        "type": pa.array([k[1] for k, _ in items], pa.string()),
        "count": pa.array([v for _, v in items], pa.int64()),
    })
