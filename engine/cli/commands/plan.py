"""`syncxr plan`: the balanced entity plan (plan.parquet) with its stats and a balance plot."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from engine.core.config import load_config
from engine.core.errors import UserError
from engine.plan.sampler import build_plan, build_vocabulary, plan_counts, plan_stats
from engine.text.stats import plot_balance
from engine.text.vocabulary import extract_corpus, read_entity_table


def register(sub) -> None:
    p = sub.add_parser("plan", help="sample a balanced entity plan (plan.parquet)")
    p.add_argument("--config", default=None, help="YAML config (default: configs/local.yaml)")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--entities", default=None, help="reuse an entities.parquet instead of extracting the corpus")
    p.set_defaults(func=run)


def make_plan(cfg, n: int, table=None):
    """(plan table, vocabulary) from a corpus entity table (default: extract the config's corpus)."""
    table = table if table is not None else extract_corpus(cfg)[0]
    vocab = build_vocabulary(table, cfg.plan.min_count)
    if not vocab.clinical:
        raise UserError(f"no clinical entity reaches plan.min_count={cfg.plan.min_count} in the corpus")
    p = cfg.plan
    plan = build_plan(vocab, n, p.k, p.m, seed=p.seed, tau_max=p.tau_max, tau_factor=p.tau_factor,
                      exclusive_pairs=p.exclusive_pairs)
    return plan, vocab


def write_plan(cfg, n: int, out: Path, table=None):
    """Write plan.parquet, plan_stats.json and plan_balance.png. -> (plan, stats)"""
    out.mkdir(parents=True, exist_ok=True)
    plan, vocab = make_plan(cfg, n, table)
    pq.write_table(plan, out / "plan.parquet")
    stats = plan_stats(plan, vocab, cfg.plan.exclusive_pairs)
    (out / "plan_stats.json").write_text(json.dumps(stats, indent=2))
    counts = plan_counts(plan)
    plot_balance(vocab.corpus_counts, {k: counts.get(k, 0) for k in vocab.corpus_counts},
                 out / "plan_balance.png", f"entity balance: corpus vs plan (n={n})")
    return plan, stats


def run(args) -> int:
    cfg = load_config(args.config)
    out = Path(args.out)
    table = read_entity_table(Path(args.entities)) if args.entities else None
    _, stats = write_plan(cfg, args.n, out, table)
    print(format_plan_stats(stats))
    print(f"wrote {out / 'plan.parquet'}, {out / 'plan_stats.json'}, {out / 'plan_balance.png'}")
    return 0


def format_plan_stats(stats: dict) -> str:
    lines = [f"plan: {stats['samples']} samples, k={stats['k']} clinical + m={stats['m']} anatomy, "
             f"tau_max={stats['tau_max']}, samples with contradictions: {stats['samples_with_contradictions']}",
             f"{'group':<10}{'vocab':>7}{'corpus max/min':>16}{'plan max/min':>14}{'corpus gini':>13}{'plan gini':>11}"]
    for g in ("clinical", "anatomy"):
        s = stats[g]
        lines.append(f"{g:<10}{s['vocabulary']:>7}{_ratio(s['corpus']):>16}{_ratio(s['plan']):>14}"
                     f"{s['corpus']['gini']:>13.3f}{s['plan']['gini']:>11.3f}")
    return "\n".join(lines)


def _ratio(summary: dict) -> str:
    r = summary["max_min_ratio"]
    return "-" if r is None else f"{r:.2f}"
