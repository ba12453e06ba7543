"""`make demo`: the main job on the embedded default (configs/local.yaml), step by step, with
the figures printed as it goes. Each step is also a `syncxr` subcommand."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.commands.entities import format_long_tail, write_entities
from engine.commands.plan import format_plan_stats, write_plan
from engine.config import load_config
from engine.errors import UserError


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def run(config: str | None, out: Path, n_plan: int) -> None:
    cfg = load_config(config)
    out.mkdir(parents=True, exist_ok=True)

    t = step(f"1. entities of the {cfg.corpus.name} corpus ({cfg.extractor.backend} extractor)")
    table, stats = write_entities(cfg, out)
    print(format_long_tail(stats))
    print(f"({time.time() - t:.1f}s)")

    t = step(f"2. balanced plan of {n_plan} samples")
    plan, pstats = write_plan(cfg, n_plan, out, table)
    print(format_plan_stats(pstats))
    example = plan.slice(0, 1).to_pylist()[0]
    print("first sample:", example["sample_id"], json.dumps(example["entities"]))
    print(f"({time.time() - t:.1f}s)")

    print(f"\nwrote {out}/: entities.parquet, stats.json, rank_frequency.png, plan.parquet, plan_stats.json, plan_balance.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--n-plan", type=int, default=2000)
    args = ap.parse_args(argv)
    try:
        run(args.config, Path(args.out), args.n_plan)
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
