"""`syncxr reports`: write a report for every plan row (FINDINGS + IMPRESSION holding exactly the
sampled entities), with report QC, to DIR/reports.parquet."""
from __future__ import annotations

import json
from pathlib import Path

from engine.core.config import load_config


def register(sub) -> None:
    p = sub.add_parser("reports", help="write and QC a report per plan row (reports.parquet)",
                       description='Writes candidate reports for every plan row with the configured writer, re-extracts their entities and keeps the first candidate whose entities equal the sampled ones. Writes OUT/reports.parquet (every row, accepted or not, with reasons) and OUT/reports_summary.json.')
    p.add_argument("--config", default=None, help="YAML config (default: configs/local.yaml)")
    p.add_argument("--plan", required=True, help="plan.parquet written by `syncxr plan`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--backend", default=None, help="override reports.backend (template, transformers, vllm, openai)")
    p.add_argument("--model", default=None, help="override reports.model")
    p.set_defaults(func=run)


def format_summary(summary: dict) -> str:
    lines = [f"reports ({summary['backend']}, prompt {summary['prompt_version']}): {summary['rows']} rows, "
             f"{summary['accepted']} accepted ({summary['pass_rate']:.1%}), {summary['rejected']} rejected "
             f"in {summary['seconds']}s"]
    if summary["rejection_reasons"]:
        lines.append("rejection reasons (all candidates): " + ", ".join(
            f"{k} x{v}" for k, v in list(summary["rejection_reasons"].items())[:8]))
    return "\n".join(lines)


def run(args) -> int:
    from engine.reports.pipeline import run_reports

    overrides = {k: v for k, v in (("backend", args.backend), ("model", args.model)) if v is not None}
    cfg = load_config(args.config, overrides={"reports": overrides} if overrides else None)
    summary = run_reports(cfg, Path(args.plan), Path(args.out))
    (Path(args.out) / "reports_summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"wrote {summary['path']}")
    return 0
