"""`syncxr train`: pretrain ConVIRT or GLoRIA on synthetic, real or mixed pairs with Ray Train."""
from __future__ import annotations

from pathlib import Path

from train.data.sources import REAL_HELP

DESCRIPTION = """\
Pretrain a vision-language model (ConVIRT or GLoRIA) with Ray Train on a synthetic dataset
(--synthetic, a `syncxr synth` run), real pairs (--real table:PATH | mimic:ROOT | openi:PNGDIR)
or both, mixed as data.mix in the config says.

Outputs in RUN: metrics.jsonl (one record per epoch: losses, held-out recall@1/5/10 both ways,
skipped images, truncated reports), metrics.png, model/ (final model, for `syncxr embed` and
evaluation), split.json (training and validation ids), model_init/, ray/ (checkpoints), run.json.
Rerun the same command to resume from the latest checkpoint."""
EXIT_CODES = {2: "bad input (config, data, resources)",
              3: "stopped on a non-finite loss (the last good checkpoint is kept)"}


def register(sub) -> None:
    p = sub.add_parser("train", help="pretrain ConVIRT/GLoRIA with Ray Train (resumable)", description=DESCRIPTION)
    p.add_argument("--config", default="configs/train-local.yaml", help="training YAML (default: configs/train-local.yaml)")
    p.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("--synthetic", default=None, help="a `syncxr synth` dataset directory (overrides data.synthetic)")
    p.add_argument("--real", default=None, help=REAL_HELP)
    p.add_argument("--address", default=None, help="Ray address of an existing cluster (default: an embedded Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress bars")
    p.exit_codes = EXIT_CODES
    p.set_defaults(func=run)


def load_for_cli(config_path: str):
    """The config, with its data paths resolved against the config file's folder."""
    from train.config import load_train_config
    from train.data.pipeline import resolve_path

    cfg, found = load_train_config(config_path)
    base = Path(found).resolve().parent
    cfg.data.synthetic = resolve_path(cfg.data.synthetic, base)
    cfg.data.real = resolve_path(cfg.data.real, base)
    return cfg


def run(args) -> int:
    from engine.core.ray_session import init_ray
    from train.driver import TrainingStopped, run_training

    cfg = load_for_cli(args.config)
    init_ray(cfg.engine, args.address, verbose=args.verbose)
    try:
        final = run_training(cfg, args.out, synthetic=args.synthetic, real=args.real, verbose=args.verbose)
    except TrainingStopped as exc:
        print(f"syncxr train: stopped: {exc}")
        return 3
    out = Path(args.out)
    metric = cfg.validation.metric
    print(f"done: step {final.get('step')}, {metric} {final.get(metric, float('nan')):.3f}; "
          f"model: {out / 'model'}; metrics: {out / 'metrics.jsonl'}, {out / 'metrics.png'}")
    return 0
