"""`syncxr reports`: write a report for every plan row (FINDINGS + IMPRESSION holding exactly the
sampled entities), with report QC, to DIR/reports.parquet."""
from __future__ import annotations

import json
from pathlib import Path

from engine.cli.args import backend_overrides, command_parser
from engine.core.config import load_config


def register(sub) -> None:
    p = command_parser(sub, "reports", "write and QC a report per plan row (reports.parquet)",
                       'Writes candidate reports for every plan row with the configured writer, re-extracts their entities and keeps the first candidate whose entities equal the sampled ones. Writes OUT/reports.parquet (every row, accepted or not, with reasons) and OUT/reports_summary.json.',
                       out_help='output directory')
    p.add_argument("--plan", required=True, help="plan.parquet written by `syncxr plan`")
    backend_overrides(p, "reports", "template, transformers, vllm, openai, corpus", "a directory or hub id")
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
    summary = run_reports(cfg, Path(args.plan), Path(args.out), verbose=args.verbose)
    (Path(args.out) / "reports_summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"wrote {summary['path']}")
    return 0
