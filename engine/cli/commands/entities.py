"""`syncxr entities`: the corpus's entities, their long tail, and a rank-frequency plot."""
from __future__ import annotations

from pathlib import Path

from engine.cli.args import command_parser
from engine.core.config import load_config
from engine.text.vocabulary import write_entities


def register(sub) -> None:
    p = command_parser(sub, "entities", "extract corpus entities; write counts, long-tail stats and a plot",
                       'Extracts the entities of every report of the configured corpus (IU X-ray by default) with the configured extractor. Writes OUT/entities.parquet (text, type, count), OUT/stats.json (long-tail figures per type) and OUT/rank_frequency.png; prints the long-tail table.',
                       out_help='output directory')
    p.add_argument("--corpus", default=None, help="override corpus.name (iu-xray, mimic-cxr, csv, jsonl)")
    p.add_argument("--corpus-path", default=None, help="override corpus.path")
    p.set_defaults(func=run)


def corpus_overrides(args) -> dict:
    corpus = {k: v for k, v in (("name", args.corpus), ("path", args.corpus_path)) if v}
    return {"corpus": corpus} if corpus else {}


def run(args) -> int:
    out = Path(args.out)
    _, stats = write_entities(load_config(args.config, corpus_overrides(args)), out)
    print(format_long_tail(stats))
    print(f"wrote {out / 'entities.parquet'}, {out / 'stats.json'}, {out / 'rank_frequency.png'}")
    return 0


def format_long_tail(stats: dict) -> str:
    lines = [f"{stats['corpus']}: {stats['reports']} reports, {stats['all']['unique']} unique entities, "
             f"{stats['all']['mentions']} mentions",
             f"{'type':<16}{'unique':>8}{'mentions':>10}{'top1%':>8}{'gini':>7}{'max/min':>9}"]
    for t, s in stats["by_type"].items():
        ratio = "-" if s["max_min_ratio"] is None else f"{s['max_min_ratio']:.0f}"
        lines.append(f"{t:<16}{s['unique']:>8}{s['mentions']:>10}{s['top1pct_share']:>8.2f}{s['gini']:>7.2f}{ratio:>9}")
    s = stats["all"]
    ratio = "-" if s["max_min_ratio"] is None else f"{s['max_min_ratio']:.0f}"
    lines.append(f"{'all':<16}{s['unique']:>8}{s['mentions']:>10}{s['top1pct_share']:>8.2f}{s['gini']:>7.2f}{ratio:>9}")
    return "\n".join(lines)
