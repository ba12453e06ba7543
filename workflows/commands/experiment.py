"""`syncxr experiment`: real-like vs synthetic vs mixed pretraining, scored zero-shot (workflows/experiment.py)."""
from __future__ import annotations

DESCRIPTION = (
    "The paper's comparison in a controlled world. Builds two datasets of N pairs with the engine: "
    "'synthetic' (the balanced plan, full QC) and 'real-like' (the corpus's own reports, drawn by the "
    "phantom from their own entities, with a share of unpaired pairs and of low-quality images), then "
    "trains the same model with the same step budget on real, synthetic, mixed-concat and mixed-ratio "
    "data for each seed, and scores each zero-shot on the phantom test sets of the common and the rare "
    "findings. Writes DIR/results.json, DIR/results.md (mean and spread over seeds per arm) and "
    "DIR/results.png; datasets, runs and per-run evaluations stay under DIR/data, DIR/runs, DIR/eval. "
    "Rerunning reuses finished datasets.")


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
