"""DATACARD.md of a finished synth run, with its plots: entity balance (corpus vs dataset), the QC
funnel, a grid of samples, and per-stage throughput. Reads what finalize wrote."""
from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.core.files import save_figure, write_text
from engine.text.stats import _plt, count_summary, entity_group, finish_plot, plot_balance


def corpus_counts(out: Path, plan: pa.Table) -> tuple[dict, str]:
    """(entity -> count, what it is): the corpus entity table when the run wrote one, else the plan."""
    path = out / "entities.parquet"
    if path.is_file():
        t = pq.read_table(path)
        return {(a, b): c for a, b, c in zip(*(t.column(x).to_pylist() for x in ("text", "type", "count")))}, "corpus"
    counts = Counter((e["text"], e["type"]) for ents in plan.column("entities").to_pylist() for e in ents)
    return dict(counts), "plan"


def balance_rows(reference: dict, ref_name: str, dataset_counts: dict, keys) -> list[list]:
    """Per group (clinical, anatomy): entities, max/min count and Gini of the reference and the dataset."""
    rows = []
    for name, counts in ((ref_name, reference), ("dataset", dataset_counts)):
        for group in ("clinical", "anatomy"):
            values = [counts.get(k, 0) for k in keys if entity_group(k) == group and counts.get(k, 0) > 0]
            summary = count_summary(values) if values else {}
            rows.append([name, group, summary.get("unique", 0), summary.get("max_min_ratio") or "-",
                         summary.get("gini", "-")])
    return rows


def plot_funnel(funnel: dict, path: Path) -> Path:
    plt = _plt()
    names, values = list(funnel), list(funnel.values())
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), values, color="#4a7ab5")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    return finish_plot(plt, fig, ax, path, "QC funnel", "attempts (all rounds)", "", legend=False, grid=False)


def plot_throughput(stats: dict, path: Path) -> Path:
    plt = _plt()
    names = [k for k, v in stats.items() if v.get("rows_per_s")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [stats[k]["rows_per_s"] for k in names], color="#5a9e6f")
    ax.set_yscale("log")
    return finish_plot(plt, fig, ax, path, "per-stage throughput", "", "rows per busy second (one actor)",
                       legend=False, grid=False)


def plot_samples(data_dir: Path, path: Path, n: int = 8) -> Path | None:
    """The first n samples: image with its sampled entities underneath."""
    from engine.images.pipeline import decode_png

    parts = sorted(data_dir.glob("part-*.parquet"))
    if not parts:
        return None
    rows = pq.read_table(parts[0], columns=["sample_id", "image", "entities"]).slice(0, n).to_pylist()
    if not rows:
        return None
    plt = _plt()
    cols = min(4, len(rows))
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(decode_png(row["image"]["bytes"]), cmap="gray", vmin=0, vmax=255)
        words = "; ".join(("no " if e["type"].startswith("NON-") else "") + e["text"] for e in row["entities"])
        ax.set_title(row["sample_id"], fontsize=8)
        ax.text(0.5, -0.02, textwrap.fill(words, 38), transform=ax.transAxes, ha="center", va="top", fontsize=6.5)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_datacard(out: Path, manifest: dict, kept_entities: Counter, plan: pa.Table) -> Path:
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    reference, ref_name = corpus_counts(out, plan)
    planned_keys = {(e["text"], e["type"]) for ents in plan.column("entities").to_pylist() for e in ents}
    dataset_counts = {k: kept_entities.get(k, 0) for k in planned_keys}
    plot_balance(reference, dataset_counts, plots / "balance.png",
                 f"entity balance: {ref_name} vs dataset (n={manifest['kept']})", label="dataset")
    plot_funnel(manifest["counts"]["funnel"], plots / "funnel.png")
    plot_throughput(manifest["stage_throughput"], plots / "throughput.png")
    grid = plot_samples(out / "data", plots / "samples.png")
    cfg = manifest["config"]
    reasons = list(manifest["counts"]["rejected_by_reason"].items())[:12]
    rate = manifest["kept"] / manifest["seconds"]["pipeline"] if manifest["seconds"]["pipeline"] else 0
    text = f"""# SynCXR synthetic dataset

{manifest['kept']} of {manifest['planned']} planned samples{'' if manifest['complete'] else ' (INCOMPLETE: rerun the same command to resume, or raise engine.max_rounds)'},
made by syncxr {manifest['versions'].get('syncxr', '?')} on {manifest['created']} in {len(manifest['rounds'])} round(s),
{manifest['seconds']['pipeline']} s ({rate:.1f} samples/s). Config digest `{manifest['config_digest']}`.

| stage | backend | model |
|---|---|---|
| entity extraction | {cfg['extractor']['backend']} | {cfg['extractor'].get('model') or '-'} |
| reports | {cfg['reports']['backend']} | {cfg['reports'].get('model') or '-'} |
| images | {cfg['images']['backend']} ({cfg['images']['size']} px) | {cfg['images'].get('model') or '-'} |
| embedding | {cfg['qc']['embedder']['backend']} | {cfg['qc']['embedder'].get('model') or '-'} |
| quality judge | {cfg['qc']['judge']['backend']} | {cfg['qc']['judge'].get('model') or '-'} |

Load it:

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_dir="{out / 'data'}", split="train")
ds[0]["image"]  # a PIL image
```

Each row: `sample_id`, `entities` (list of {{text, type}}, RaTE types), `findings`, `impression`,
`image` ({{bytes: PNG, path}}), `masks` (per drawn finding: PNG mask and bbox), `seed`,
`attempts` (round, report candidates tried), `qc` (judge flags and scores, reference similarity),
`provenance` (backends, models, seeds). Embeddings: `embeddings/` (same part layout, keyed by sample_id).
Every attempt not kept is in `rejected/` with its reasons.

## Entity balance

![balance](plots/balance.png)

Counted over the plan vocabulary: the {len(planned_keys)} entities seen at least
plan.min_count times in the corpus (the corpus itself has more unique entities; `stats.json`
counts them all). Clinical and anatomy entities are balanced separately, as in `plan_stats.json`.

{_table(['', 'group', 'entities', 'max/min count', 'Gini'], balance_rows(reference, ref_name, dataset_counts, planned_keys))}

## Quality control

![funnel](plots/funnel.png)

{_table(['step', 'attempts left'], [[k, v] for k, v in manifest['counts']['funnel'].items()])}

Most frequent rejection reasons (first reason of each rejected attempt):

{_table(['reason', 'attempts'], [[k, v] for k, v in reasons]) if reasons else 'none'}

Thresholds: reference filter cosine > {cfg['qc']['reference_threshold']} (bank: {cfg['qc'].get('bank') or 'none'}),
near-duplicates cosine > {cfg['qc']['dedup_threshold']}, privacy cosine > {cfg['qc']['privacy_threshold']}
(real images: {cfg['qc'].get('privacy_images') or 'none'}).

## Samples

{'![samples](plots/samples.png)' if grid else 'no samples'}

## Throughput

![throughput](plots/throughput.png)

{_table(['stage', 'rows', 'busy s', 'rows / busy s'], [[k, v['rows'], v['busy_s'], v['rows_per_s']] for k, v in manifest['stage_throughput'].items()])}

Busy time is measured inside each stage's actor; report generation by ray.data.llm (vLLM, OpenAI)
is not included.

## Rounds

{_table(['round', 'tried', 'passed the stages', 'kept', 'seconds'], [[r['round'], r['tried'], r['passed_stages'], r['kept'], r['seconds']] for r in manifest['rounds']])}

## Limits

{_limits(cfg)}
"""
    path = out / "DATACARD.md"
    write_text(path, text)
    return path


def _limits(cfg: dict) -> str:
    notes = []
    if cfg["images"]["backend"] == "phantom":
        notes.append("- Images come from the procedural phantom: anatomy and findings are schematic, for testing "
                     "pipelines and models end to end, not for clinical conclusions.")
    if cfg["reports"]["backend"] == "template":
        notes.append("- Reports come from the template composer: correct by construction but with little variety.")
    if not cfg["qc"].get("bank"):
        notes.append("- No reference bank was set: the reference filter against problematic images did not run.")
    if not cfg["qc"].get("privacy_images"):
        notes.append("- No real training images were set: the privacy filter did not run.")
    return "\n".join(notes) or "- none recorded"

