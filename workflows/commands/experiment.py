"""`syncxr experiment`: real-like vs synthetic vs mixed pretraining, scored zero-shot (workflows/experiment.py)."""
from __future__ import annotations

DESCRIPTION = (
    "The paper's comparison in a controlled world. Builds with the engine a 'synthetic' dataset of N "
    "pairs (the balanced plan, full QC), a 'synthetic-drawable' one (the plan restricted to what the "
    "phantom draws) and a 'real-like' one (the corpus's own reports drawn by the phantom from their own "
    "entities, a share unpaired, a share of low-quality images). Trains the same model with the same step "
    "budget on each arm (real, synthetic, synthetic-drawable, mixed-concat, mixed-ratio) for each seed, "
    "and the synthetic arm at the smaller sizes of `scale`; scores each zero-shot on the phantom test "
    "sets of the common and the rare findings. Writes DIR/results.json (runs, per-class AUCs, data "
    "cards, comparisons), DIR/results.md (mean and spread per arm, paired differences with t and "
    "bootstrap intervals, one sentence each), DIR/results.png and DIR/scale.png; datasets, runs and "
    "their raw test scores stay under DIR/data and DIR/runs. Rerunning reuses finished datasets and runs.")


def register(sub) -> None:
    p = sub.add_parser("experiment", help="real-like vs synthetic vs mixed pretraining, scored zero-shot",
                       description=DESCRIPTION)
    p.add_argument("--config", default="configs/experiment-local.yaml",
                   help="experiment YAML (default: configs/experiment-local.yaml)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from workflows.experiment import load_experiment_config, run_experiment

    cfg, _ = load_experiment_config(args.config)
    results = run_experiment(cfg, args.out)
    from pathlib import Path

    print((Path(args.out) / "results.md").read_text())
    print(f"results: {args.out}/results.json, {args.out}/results.png ({results['seconds']} s)")
    return 0
