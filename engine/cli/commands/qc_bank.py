"""`syncxr qc-bank`: judge a set of real (or phantom) images, keep the problematic ones, embed them
and store the bank the reference filter compares synthetic images against.

SRC is a directory of PNG/JPEG files (searched recursively; sample ids are the relative paths)
or a parquet file with an `image` column ({bytes, path} struct or binary; optional sample_id).
With `--keep all` every image is stored unjudged: the form the privacy filter's real training set
takes (qc.privacy_images may point at such a bank).
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from engine.cli.args import command_parser
from engine.core.arg_types import positive_int
from engine.core.config import load_config
from engine.core.errors import UserError


def register(sub) -> None:
    p = command_parser(sub, "qc-bank", "build the bank of problematic reference images for image QC",
                       "Judges a set of images, keeps the problematic ones (or all, with --keep all), embeds them and writes the bank the reference (or privacy) filter compares synthetic images against: OUT/embeddings.npy, OUT/index.faiss, OUT/metadata.json. Prints the judge's counts per flag.",
                       out_help='bank directory to write')
    p.add_argument("--images", required=True, help="a directory of PNG/JPEG files or an images.parquet")
    p.add_argument("--keep", choices=["problematic", "all"], default="problematic",
                   help="store only the images the judge flags (default) or every image, unjudged")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    p.add_argument("--address", default=None, help="Ray address (default: engine.address or an embedded Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank at --out")
    p.set_defaults(func=run)


def _collect(ds, columns: list[str]) -> dict:
    parts: dict[str, list] = {c: [] for c in columns}
    for batch in ds.select_columns(columns).iter_batches(batch_size=1024, batch_format="numpy"):
        for c in columns:
            parts[c].extend(list(batch[c]))
    return parts


def build_bank(cfg, src, out, keep: str = "problematic", limit=None, address=None, overwrite=False,
               verbose: bool = False) -> dict:
    from engine.qc.bank import embedder_signature, save_bank
    from engine.qc.image_files import image_source_dataset
    from engine.qc.stages import check_backends, embed_dataset, judge_dataset
    from engine.core.ray_session import init_ray

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    check_backends(cfg.qc)
    started = time.time()
    ray = init_ray(cfg.engine, address, verbose=verbose)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = image_source_dataset(src, limit)
    judged = keep == "problematic"
    if judged:
        ds = judge_dataset(ds, cfg.qc.judge)
    ds = embed_dataset(ds, cfg.qc.embedder)
    cols = ["sample_id", "embedding", "embed_error"]
    if judged:
        cols += ["judge_flags", "judge_problematic", "judge_error"]
    rows = _collect(ds, cols)
    n = len(rows["sample_id"])
    embed_err = [str(e or "") for e in rows["embed_error"]]
    judge_err = [str(e or "") for e in rows["judge_error"]] if judged else [""] * n
    flags = [list(f) if f is not None else [] for f in rows["judge_flags"]] if judged else [[] for _ in range(n)]
    flagged = [bool(p) for p in rows["judge_problematic"]] if judged else [True] * n
    keep_rows = [i for i in range(n) if flagged[i] and not embed_err[i] and not judge_err[i]]
    stats = {
        "images": n,
        "judged": n if judged else 0,
        "problematic": int(sum(flagged)) if judged else None,
        "flags": dict(sorted(Counter(f for fl in flags for f in fl).items())),
        "judge_errors": sum(bool(e) for e in judge_err),
        "embed_errors": sum(bool(e) for e in embed_err),
        "kept": len(keep_rows),
        "first_errors": [f"{rows['sample_id'][i]}: {judge_err[i] or embed_err[i]}"
                         for i in range(n) if judge_err[i] or embed_err[i]][:3],
    }
    if not keep_rows:
        why = (f"none of the {n} images was judged problematic" if judged and not any(flagged)
               else "no image could be judged and embedded")
        raise UserError(f"{src}: {why}; nothing to store (see --keep all)")
    emb = np.stack([np.asarray(rows["embedding"][i], np.float32) for i in keep_rows])
    items = [{"id": str(rows["sample_id"][i]), "flags": flags[i]} for i in keep_rows]
    if out.exists() and overwrite:
        shutil.rmtree(out)
    meta = save_bank(out, emb, items, embedder_signature(cfg.qc.embedder), cfg.qc.index,
                     extra={"source": str(Path(src).resolve()), "keep": keep,
                            "judge": {"backend": cfg.qc.judge.backend, "model": cfg.qc.judge.model} if judged else None,
                            "stats": stats})
    stats.update(dim=meta["dim"], index_kind=meta["index_kind"], seconds=round(time.time() - started, 1))
    return stats


def format_stats(stats: dict) -> str:
    lines = [f"images read        {stats['images']}"]
    if stats["judged"]:
        lines.append(f"judged problematic {stats['problematic']}")
        for flag, count in stats["flags"].items():
            lines.append(f"  {flag:<16} {count}")
    lines += [f"judge errors       {stats['judge_errors']}", f"embed errors       {stats['embed_errors']}"]
    lines += [f"  {e}" for e in stats.get("first_errors", [])]
    lines += [f"stored             {stats['kept']} (dim {stats['dim']}, {stats['index_kind']} index)",
              f"time               {stats['seconds']} s"]
    return "\n".join(lines)


def run(args) -> int:
    cfg = load_config(args.config)
    stats = build_bank(cfg, Path(args.images), Path(args.out), keep=args.keep, limit=args.limit,
                       address=args.address, overwrite=args.overwrite, verbose=args.verbose)
    print(format_stats(stats))
    print(f"wrote {args.out}/: metadata.json, embeddings.npy, index.faiss")
    return 0
