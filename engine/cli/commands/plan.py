"""`syncxr plan`: the balanced entity plan (plan.parquet) with its stats and a balance plot."""
from __future__ import annotations

from pathlib import Path

from engine.core.arg_types import positive_int
from engine.core.config import load_config
from engine.text.vocabulary import read_entity_table


def register(sub) -> None:
    p = sub.add_parser("plan", help="sample a balanced entity plan (plan.parquet)",
                       description='Samples N entity sets in a balanced way (k clinical + m anatomy entities each, a global cap per entity, no contradictory pairs). Writes OUT/plan.parquet (sample_id, entities, seed), OUT/plan_stats.json and OUT/plan_balance.png (with the corpus entity table unless --entities is given) and claims OUT for this plan (OUT/run.json); `syncxr synth` with the same settings and --out continues from it. OUT must be new, empty or a plan directory with the same settings: the directory of a synth run is never rewritten.')
    p.add_argument("--config", default=None, help="YAML config (default: configs/local.yaml)")
    p.add_argument("--n", type=positive_int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--entities", default=None, help="reuse an entities.parquet instead of extracting the corpus")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.synth.integrity import check_out_arg, identity
    from engine.synth.run import owned_run, settle_plan

    out = check_out_arg(args.out)
    cfg = load_config(args.config)
    table = read_entity_table(Path(args.entities)) if args.entities else None
    mine = identity(cfg, args.n, "plan", {"entities": Path(args.entities)} if args.entities else None)
    theirs = owned_run(out, mine)
    _, stats = settle_plan(cfg, args.n, out, mine, theirs, table, rewrite=True)
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
