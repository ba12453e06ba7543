"""`syncxr dedup`: near-duplicate removal over any table of (sample_id, embedding), e.g. a real
dataset or an old run, with the rule and walk of the synth run's global QC."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from engine.cli.args import command_parser
from engine.core.errors import UserError

METHODS = ("auto", "flat", "cluster", "ivf", "ivfpq", "hnsw")


def register(sub) -> None:
    p = command_parser(
        sub, "dedup", "near-duplicate removal over a table of (sample_id, embedding)",
        "Walk the rows in sample_id order; a row whose cosine to an earlier kept row exceeds "
                    "--threshold is a duplicate of the most similar such row. Pairs come from exact search up "
                    "to qc.index.exact_max rows, cluster-then-compare above it (--method overrides). "
                    "Outputs: DIR/dedup/part-*.parquet (sample_id, kept, duplicate_of, similarity) and "
                    "DIR/summary.json; prints a summary line.",
        out_help="output directory (DIR)")
    p.add_argument("--embeddings", required=True,
                   help="a parquet file (or directory of them) with `sample_id` and `embedding` (list of floats)")
    p.add_argument("--threshold", type=float, required=True, help="cosine above which two rows are duplicates")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="auto (exact up to qc.index.exact_max rows, else qc.index.dedup_method), or one method")
    p.add_argument("--ray", action="store_true",
                   help="run the steps as Ray Data operations (embeddings never gather on the driver)")
    p.add_argument("--address", default=None, help="Ray address with --ray (default: engine.address or an embedded Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR/dedup")
    p.set_defaults(func=run)


def read_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    """sample_ids and an (n, d) float32 matrix from parquet; errors name the file, column, row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    for col in ("sample_id", "embedding"):
        if col not in table.column_names:
            raise UserError(f"{path}: no `{col}` column (columns: {', '.join(table.column_names)})")
    ids = [None if s is None else str(s) for s in table.column("sample_id").to_pylist()]
    if None in ids:
        raise UserError(f"{path}: row {ids.index(None)} has a null sample_id")
    emb = table.column("embedding").combine_chunks()
    if not (pa.types.is_list(emb.type) or pa.types.is_fixed_size_list(emb.type) or pa.types.is_large_list(emb.type)):
        raise UserError(f"{path}: column `embedding` must be a list of floats, got {emb.type}")
    if emb.null_count:
        row = emb.is_null().to_pylist().index(True)
        raise UserError(f"{path}: row {row} (sample_id {ids[row]!r}) has a null embedding")
    if not pa.types.is_fixed_size_list(emb.type):
        lengths = np.diff(np.asarray(emb.offsets))
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise UserError(f"{path}: row {row} (sample_id {ids[row]!r}) has {lengths[row]} values, "
                            f"row 0 has {lengths[0]}")
    values = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, values.reshape(len(ids), -1)


def dedup_local(path: Path, threshold: float, index_cfg, method: str):
    import pyarrow as pa

    from engine.qc.filters import dedup_method, near_duplicates

    ids, emb = read_embeddings(path)
    kind = None if method == "auto" else method
    res = near_duplicates(emb, ids, threshold, index_cfg, kind=kind)
    table = pa.table({"sample_id": pa.array(ids, pa.string()), "kept": pa.array(res.keep, pa.bool_()),
                      "duplicate_of": pa.array(res.duplicate_of, pa.string()),
                      "similarity": pa.array(res.similarity, pa.float32())})
    return table, {"rows": len(ids), "kept": int(res.keep.sum()), "pairs": int(res.pairs),
                   "method": dedup_method(len(ids), index_cfg, kind)}


def dedup_ray(path: Path, threshold: float, cfg, address, out_dir: Path, verbose: bool = False) -> dict:
    from engine.core.ray_session import init_ray, quiet_ray_data
    from engine.qc.dedup_distributed import dedup_dataset

    ray = init_ray(cfg.engine, address, verbose=verbose)
    quiet_ray_data()
    ds = ray.data.read_parquet(str(path.resolve())).select_columns(["sample_id", "embedding"])
    res = dedup_dataset(ds, threshold, cfg.qc.index)
    res.table.write_parquet(str(out_dir.resolve()))
    return {"rows": res.rows, "kept": res.rows - len(res.duplicates), "pairs": res.pairs,
            "method": f"cluster (Ray Data, {res.cells} cells)"}


def run(args) -> int:
    from engine.core.config import load_config
    from engine.qc.filters import _check_threshold

    _check_threshold(args.threshold, "--threshold")
    path = Path(args.embeddings)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if args.ray and args.method not in ("auto", "cluster"):
        raise UserError(f"--method {args.method}: --ray runs the cluster method only")
    cfg = load_config(args.config)
    out = Path(args.out)
    target = out / "dedup"
    if target.exists() and any(target.iterdir()) and not args.overwrite:
        raise UserError(f"{target}: already exists and is not empty (pass --overwrite to replace it)")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    start = time.perf_counter()
    if args.ray:
        summary = dedup_ray(path, args.threshold, cfg, args.address, target, verbose=args.verbose)
    else:
        import pyarrow.parquet as pq

        table, summary = dedup_local(path, args.threshold, cfg.qc.index, args.method)
        target.mkdir(parents=True)
        pq.write_table(table, target / "part-00000.parquet")
    summary.update(threshold=args.threshold, seconds=round(time.perf_counter() - start, 3),
                   source=str(path), duplicates=summary["rows"] - summary["kept"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['kept']:,}/{summary['rows']:,} kept, {summary['duplicates']:,} near-duplicates "
          f"(cosine > {args.threshold}; {summary['pairs']:,} pairs, {summary['method']}, "
          f"{summary['seconds']:.1f} s) -> {target}")
    return 0
