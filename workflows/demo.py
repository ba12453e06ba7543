"""`make demo`: the whole loop on the embedded default (configs/local.yaml), step by step, with
the figures printed as it goes: corpus entities, a balanced plan, a QC bank, a synthesized
dataset, ConVIRT pretraining on it, and zero-shot evaluation on the phantom test set. Each step
is also a `syncxr` subcommand (entities, plan, qc-bank, synth, train, eval).

It runs the engine's steps through their public functions and the training and evaluation
commands by name, as a user would, reading the dataset only through what they write."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.cli.commands.entities import format_long_tail
from engine.cli.commands.plan import format_plan_stats
from engine.core.arg_types import positive_int
from engine.core.config import load_config
from engine.core.errors import UserError
from engine.plan.write import write_plan
from engine.text.vocabulary import write_entities


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def done(phases: dict, name: str, started: float) -> None:
    phases[name] = time.time() - started
    print(f"({phases[name]:.1f}s)")


def write_problem_images(out: Path, n_clean: int = 8, seed: int = 101) -> Path:
    """Degraded phantoms (lateral, inverted, cropped, blank, text, ...): the stand-in for the real
    problematic images a cluster run judges with the MLLM."""
    from actors.degrade import clean_phantoms, labelled_bank
    from engine.images.pipeline import encode_png

    src = out / "problem-images"
    src.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(labelled_bank(clean_phantoms(n_clean, seed=seed), seed=seed)):
        (src / f"{item['label']}-{i:03d}.png").write_bytes(encode_png(item["image"]))
    return src


def run(config: str | None, out: Path, n_plan: int, n_synth: int, train_config: str = "train-demo.yaml",
        eval_per_class: int = 200) -> None:
    cfg = load_config(config)
    out.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    began = time.time()

    t = step(f"1. entities of the {cfg.corpus.name} corpus ({cfg.extractor.backend} extractor)")
    table, stats = write_entities(cfg, out)
    print(format_long_tail(stats))
    done(phases, "entities", t)

    t = step(f"2. balanced plan of {n_plan} samples")
    plan, pstats = write_plan(cfg, n_plan, out, table)
    print(format_plan_stats(pstats))
    example = plan.slice(0, 1).to_pylist()[0]
    print("first sample:", example["sample_id"], json.dumps(example["entities"]))
    done(phases, "plan", t)

    print(f"\nwrote {out}/: entities.parquet, stats.json, rank_frequency.png, plan.parquet, plan_stats.json, plan_balance.png")

    t = step("3. QC bank: the rules judge over degraded phantoms, the problematic ones embedded")
    from engine.cli.commands.qc_bank import build_bank, format_stats

    bank = out / "qc-bank"
    print(format_stats(build_bank(cfg, write_problem_images(out), bank, overwrite=True)))
    done(phases, "qc-bank", t)

    t = step(f"4. synth: {n_synth} samples through reports, images and QC on a local Ray")
    import shutil

    from engine.synth.run import run_synth

    run_dir = out / "synth"
    shutil.rmtree(run_dir, ignore_errors=True)  # a demo starts over; a real run resumes
    cfg = load_config(config, {"qc": {"bank": str(bank.resolve())}})
    manifest = run_synth(cfg, n_synth, run_dir)
    funnel = manifest["counts"]["funnel"]
    print("QC funnel: " + " -> ".join(f"{k} {v}" for k, v in funnel.items()))
    print(f"{manifest['kept']}/{manifest['planned']} samples in {run_dir / 'data'}")
    print(f"data card: {run_dir / 'DATACARD.md'}")
    done(phases, "synth", t)

    train_config = train_config if "/" in train_config else f"configs/{train_config}"
    t = step(f"5. train ConVIRT on the {manifest['kept']} synthetic pairs ({train_config})")
    train_dir = out / "train"
    shutil.rmtree(train_dir, ignore_errors=True)
    _subcommand(["train", "--config", train_config, "--synthetic", str(run_dir), "--out", str(train_dir)])
    done(phases, "train", t)

    t = step(f"6. zero-shot classification on the phantom test set of five findings ({eval_per_class} images each)")
    eval_dir = out / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)  # the model was trained anew: a new evaluation
    _subcommand(["eval", "--checkpoint", str(train_dir), "--dataset", "phantom-5x200", "--task", "zero-shot",
                 "--n", str(eval_per_class), "--out", str(eval_dir)], show=False)
    results = json.loads((eval_dir / "results.json").read_text())
    print((eval_dir / "results.md").read_text().strip())
    done(phases, "zero-shot", t)
    print(f"\ndemo: {time.time() - began:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items()) + ")")
    print(f"\nmean zero-shot AUC: {results['checkpoints'][0]['mean_auc']:.3f}")


def _subcommand(argv: list[str], show: bool = True) -> None:
    """One `syncxr` subcommand in this process, as `syncxr ARGV...` would run it."""
    from engine.cli import main as cli_main

    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer if not show else sys.stdout):
        code = cli_main(argv)
    if code != 0:
        raise UserError(f"`syncxr {' '.join(argv)}` exited with {code}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--n-plan", type=positive_int, default=2000)
    ap.add_argument("--n-synth", type=positive_int, default=2000)
    ap.add_argument("--train-config", default="train-demo.yaml", help="a training config: a name in configs/ or a path")
    ap.add_argument("--eval-per-class", type=positive_int, default=200, help="phantom test images per finding")
    args = ap.parse_args(argv)
    try:
        run(args.config, Path(args.out), args.n_plan, args.n_synth, args.train_config, args.eval_per_class)
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
