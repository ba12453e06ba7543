"""`syncxr tune`: Ray Tune over the synthetic:real ratio, the learning rate and the seed (workflows/tune.py)."""
from __future__ import annotations

import json
from pathlib import Path

from train.data.sources import REAL_HELP

DESCRIPTION = """\
Sweep the synthetic fraction of a fixed-size training set (grid `search.ratios`), the learning
rate (grid `search.lrs`) and the seed (grid `search.seeds`) with Ray Tune. Every trial is the
experiment's trial: a Ray Train run of the training config (`train_config:` file and/or inline
`train:`) validated on the same held-out pairs, then scored zero-shot on the phantom test sets of
the common and the rare findings; ASHA, when on, stops weak trials on validation.metric. Without
--synthetic/--real (and none in the config) the sweep builds both through the engine (`data:`):
a balanced synthetic set and a real-like set from the corpus, as `syncxr experiment` does.
With `search.synth` (engine settings by dotted key, e.g. plan.k) each trial synthesises its own
dataset with its settings (cached in DIR/data by the engine config's digest, reused by a rerun),
trains on it alone and keeps its data card beside its scores; results.md then names the best
setting against the runner-up with paired intervals, and synth.png maps AUC over the settings.

Outputs in DIR: results.csv, results.json and results.md (one row per trial: ratio, lr, seed,
epochs done, stopped early, validation metric, zero-shot AUC; then mean ± sd over seeds per
ratio), ratio.png (AUC against ratio, every seed and the spread), trials/<id>/ (each trial's run
directory with scores.json), data/ (built datasets), test-sets/ (drawn test frames), ray/ (Tune
state). Rerunning the same command reuses the built datasets."""
EXIT_CODES = {0: "done: every trial finished or was stopped by ASHA", 3: "a trial failed (its error is in results.md)"}


def register(sub) -> None:
    p = sub.add_parser("tune", help="Ray Tune over synthetic:real ratio and lr (ASHA)", description=DESCRIPTION)
    p.add_argument("--config", default="configs/tune-local.yaml", help="tune YAML (default: configs/tune-local.yaml)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--synthetic", default=None,
                   help="a `syncxr synth` dataset directory (overrides the config; with --real; without both the sweep "
                        "builds its own data)")
    p.add_argument("--real", default=None, help=REAL_HELP)
    p.add_argument("--address", default=None, help="Ray address of an existing cluster (default: an embedded Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output")
    p.exit_codes = EXIT_CODES
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.core.ray_session import init_ray
    from workflows.tune import load_tune_config, run_tune

    tcfg, cfg, _ = load_tune_config(args.config)
    init_ray(cfg.engine, args.address, verbose=args.verbose)
    rows = run_tune(tcfg, cfg, args.out, synthetic=args.synthetic, real=args.real, verbose=args.verbose)
    out = Path(args.out)
    failed = [r for r in rows if r["error"]]
    metric = cfg.validation.metric
    sign = 1 if tcfg.mode == "max" else -1
    scored = [r for r in rows if not r["error"] and r[f"{metric}_best"] == r[f"{metric}_best"]]  # not NaN
    best = max(scored, key=lambda r: sign * r[f"{metric}_best"], default=None)
    if best:
        print(f"best by validation: ratio {best['ratio']:g} lr {best['lr']:g} seed {best['seed']} "
              f"{metric} {best[f'{metric}_best']:.3f}")
    if rows:
        print(json.loads((out / "results.json").read_text())["summary"])
    print(f"{len(rows)} trials ({sum(r['stopped_early'] for r in rows)} stopped by ASHA, {len(failed)} failed): "
          f"{out / 'results.md'}, {out / 'results.csv'}, {out / 'ratio.png'}")
    return 3 if failed else 0
