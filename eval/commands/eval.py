"""`syncxr eval`: checkpoints side by side on one dataset and task (eval/evaluate.py)."""
from __future__ import annotations

from engine.core.arg_types import nonneg_int, positive_int


def register(sub) -> None:
    from eval.datasets import DATASETS, TASKS

    p = sub.add_parser(
        "eval", help="evaluate checkpoints: zero-shot, grounding, linear probe or segmentation",
        description="Writes DIR/results.json (every metric, per checkpoint and class), DIR/results.md (a "
                    "Markdown table, one row per checkpoint), ROC curves (zero-shot: roc_*.png) and grounding "
                    "overlays (grounding_*.png).")
    p.exit_codes = {2: "bad input (checkpoint not a model or of another architecture than --expect-model, "
                       "unknown dataset, task the dataset lacks, images missing under --imgpath)"}
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="one or more training runs (RUN/model is used) or saved model directories")
    p.add_argument("--dataset", required=True, help="dataset name: " + ", ".join(DATASETS))
    p.add_argument("--task", required=True, choices=TASKS, help="what to evaluate")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--imgpath", default=None, help="the dataset's image root (public datasets)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="at most N images per split (phantom: N per class and split; default: all / 200)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="split, subset and training seed (default 0)")
    p.add_argument("--expect-model", default=None,
                   help="model name every checkpoint must hold (e.g. convirt-resnet18-smallbert)")
    p.add_argument("--phantom-size", type=positive_int, default=256, help="phantom image size in pixels (default 256)")
    p.add_argument("--epochs", type=positive_int, default=10, help="segmentation training epochs (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="inference batch size (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation with other inputs in --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from eval.evaluate import evaluate

    options = {"size": args.phantom_size} if args.dataset.startswith("phantom") else {}
    results = evaluate(args.checkpoint, args.dataset, args.task, args.out, imgpath=args.imgpath, n=args.n,
                       seed=args.seed, expect_model=args.expect_model, dataset_options=options,
                       overwrite=args.overwrite, epochs=args.epochs, batch_size=args.batch_size)
    from eval.report import markdown_table

    print(markdown_table(results), end="")
    print(f"written: {args.out}/results.json, {args.out}/results.md")
    return 0
