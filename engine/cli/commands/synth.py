"""`syncxr synth`: a plan in, a finished quality-controlled dataset out (engine/synth/run.py)."""
from __future__ import annotations

from engine.core.arg_types import positive_int
from engine.core.config import load_config


def register(sub) -> None:
    p = sub.add_parser("synth", help="plan -> reports -> images -> QC -> dataset, in rounds, resumable",
                       description='The whole engine: plans N samples, then in rounds writes reports, checks them, draws images, judges and embeds them, filters against the QC bank, removes near-duplicates and images too close to real training images, and regenerates what was rejected, up to engine.max_rounds. Writes OUT/data/ (the published dataset, format syncxr-dataset/1), OUT/rejected/, OUT/embeddings/, OUT/manifest.json and OUT/DATACARD.md with plots. Kill it at any moment and rerun the same command: it resumes, after checking every file it reuses against its record (a missing or damaged staged part is recomputed); a rerun of a finished run rewrites nothing unless a published file is not as recorded. OUT must be new, empty, a plan directory with the same settings or the directory of this same run (run.json): syncxr never writes into another run or a directory it did not create.')
    p.add_argument("--config", default=None, help="YAML config (default: configs/local.yaml)")
    p.add_argument("--n", type=positive_int, required=True, help="number of samples to plan and synthesize")
    p.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("--address", default=None,
                   help="Ray address of an existing cluster (default: engine.address, RAY_ADDRESS, else an embedded Ray)")
    p.exit_codes = {3: "the run ended with fewer samples than planned (max_rounds reached, or an error budget)"}
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.synth.run import run_synth

    from engine.synth.integrity import check_out_arg

    out = check_out_arg(args.out)
    cfg = load_config(args.config)
    manifest = run_synth(cfg, args.n, out, args.address, verbose=args.verbose)
    print(f"{manifest['kept']}/{manifest['planned']} samples in {out / 'data'}; "
          f"rejected attempts: {manifest['counts']['rejected_attempts']} ({out / 'rejected'}); "
          f"data card: {out / 'DATACARD.md'}")
    return 0 if manifest["complete"] else 3
