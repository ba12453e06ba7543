"""`syncxr tune`: Ray Tune over the synthetic:real ratio and the learning rate (train/tune.py)."""
from __future__ import annotations

from pathlib import Path

from train.data.sources import REAL_HELP

DESCRIPTION = """\
Sweep the synthetic fraction of a fixed-size training set (grid `search.ratios`) and the
learning rate (grid `search.lrs`) with Ray Tune; every trial is a Ray Train run of the training
config (`train_config:` file and/or inline `train:`), scored on the same held-out pairs; ASHA
stops weak trials on validation.metric.

Outputs in DIR: results.csv and results.md (one row per trial: ratio, lr, epochs done, stopped
early, best and last metric), ratio.png (metric against ratio), trials/<name>/ (each trial's run
directory, as `syncxr train` writes it), ray/ (Tune state)."""
EXIT_CODES = {0: "done: every trial finished or was stopped by ASHA", 3: "a trial failed (its error is in results.md)"}


def register(sub) -> None:
    p = sub.add_parser("tune", help="Ray Tune over synthetic:real ratio and lr (ASHA)", description=DESCRIPTION)
    p.add_argument("--config", default="configs/tune-local.yaml", help="tune YAML (default: configs/tune-local.yaml)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--synthetic", default=None, help="a `syncxr synth` dataset directory (overrides the config)")
    p.add_argument("--real", default=None, help=REAL_HELP)
    p.add_argument("--address", default=None, help="Ray address of an existing cluster (default: an embedded Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output")
    p.exit_codes = EXIT_CODES
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.core.ray_session import init_ray
    from train.tune import load_tune_config, run_tune

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
        print(f"best: ratio {best['ratio']:g} lr {best['lr']:g} {metric} {best[f'{metric}_best']:.3f}")
    print(f"{len(rows)} trials ({sum(r['stopped_early'] for r in rows)} stopped by ASHA, {len(failed)} failed): "
          f"{out / 'results.md'}, {out / 'results.csv'}, {out / 'ratio.png'}")
    return 3 if failed else 0
