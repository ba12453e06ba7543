"""`syncxr dedup`: near-duplicate removal over any table of (sample_id, embedding), e.g. a real
dataset or an old run, with the rule and walk of the synth run's global QC."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine.cli.args import command_parser
from engine.core.arg_types import cosine
from engine.core.errors import UserError
from engine.core.files import write_json
from engine.core.ownership import claim, input_digest, value_digest

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
                   help="a parquet file (or directory of them) with `sample_id` and an embedding column (list of floats)")
    p.add_argument("--column", default="embedding",
                   help="the embedding column (default: embedding; `syncxr embed` writes image_embedding, text_embedding)")
    p.add_argument("--threshold", type=cosine, required=True, help="cosine above which two rows are duplicates")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="auto (exact up to qc.index.exact_max rows, else qc.index.dedup_method), or one method")
    p.add_argument("--ray", action="store_true",
                   help="run the steps as Ray Data operations (embeddings never gather on the driver)")
    p.add_argument("--address", default=None, help="Ray address with --ray (default: engine.address or an embedded Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace the output of an earlier dedup with other inputs")
    p.set_defaults(func=run)


def read_embeddings(path: Path, column: str = "embedding") -> tuple[list[str], np.ndarray]:
    """sample_ids and an (n, d) float32 matrix from parquet; errors name the file, column, row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    check_columns(path, table.column_names, column)
    if table.num_rows == 0:
        raise UserError(f"{path}: no rows: nothing to deduplicate")
    ids = [None if s is None else str(s) for s in table.column("sample_id").to_pylist()]
    if None in ids:
        raise UserError(f"{path}: row {ids.index(None)} has a null sample_id")
    emb = table.column(column).combine_chunks()
    if not (pa.types.is_list(emb.type) or pa.types.is_fixed_size_list(emb.type) or pa.types.is_large_list(emb.type)):
        raise UserError(f"{path}: column `{column}` must be a list of floats, got {emb.type}")
    if emb.null_count:
        row = emb.is_null().to_pylist().index(True)
        raise UserError(f"{path}: row {row} (sample_id {ids[row]!r}) has a null {column}")
    if not pa.types.is_fixed_size_list(emb.type):
        lengths = np.diff(np.asarray(emb.offsets))
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise UserError(f"{path}: row {row} (sample_id {ids[row]!r}) has {lengths[row]} values, "
                            f"row 0 has {lengths[0]}")
    values = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, values.reshape(len(ids), -1)


def check_columns(path: Path, names: list[str], column: str) -> None:
    for col in ("sample_id", column):
        if col not in names:
            hint = " (choose one with --column)" if col == column else ""
            raise UserError(f"{path}: no `{col}` column{hint}; columns: {', '.join(names)}")


def dedup_local(path: Path, threshold: float, index_cfg, method: str, column: str = "embedding"):
    import pyarrow as pa

    from engine.qc.filters import dedup_method, near_duplicates

    ids, emb = read_embeddings(path, column)
    kind = None if method == "auto" else method
    res = near_duplicates(emb, ids, threshold, index_cfg, kind=kind)
    table = pa.table({"sample_id": pa.array(ids, pa.string()), "kept": pa.array(res.keep, pa.bool_()),
                      "duplicate_of": pa.array(res.duplicate_of, pa.string()),
                      "similarity": pa.array(res.similarity, pa.float32())})
    return table, {"rows": len(ids), "kept": int(res.keep.sum()), "pairs": int(res.pairs),
                   "method": dedup_method(len(ids), index_cfg, kind)}


def dedup_ray(path: Path, threshold: float, cfg, address, out_dir: Path, verbose: bool = False,
              column: str = "embedding") -> dict:
    from engine.core.ray_session import init_ray, quiet_ray_data
    from engine.qc.dedup_distributed import dedup_dataset

    ray = init_ray(cfg.engine, address, verbose=verbose)
    quiet_ray_data()
    ds = ray.data.read_parquet(str(path.resolve()))
    check_columns(path, ds.columns(), column)
    ds = ds.select_columns(["sample_id", column])
    if column != "embedding":
        ds = ds.rename_columns({column: "embedding"})
    res = dedup_dataset(ds, threshold, cfg.qc.index)
    if res.rows == 0:
        raise UserError(f"{path}: no rows: nothing to deduplicate")
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
    if path.resolve() == out.resolve() or path.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out}: holds the --embeddings input; write elsewhere")
    inputs = {"embeddings": input_digest(path) if path.is_file() else value_digest(sorted(
                  (str(p.relative_to(path)), input_digest(p)) for p in path.rglob("*.parquet"))),
              "column": args.column, "threshold": args.threshold, "method": args.method, "ray": args.ray,
              "index": cfg.qc.index.model_dump()}
    claim(out, "dedup", inputs, replace=args.overwrite)
    target = out / "dedup"
    if target.exists():
        import shutil

        shutil.rmtree(target)  # this command's own output, recomputed whole
    start = time.perf_counter()
    if args.ray:
        summary = dedup_ray(path, args.threshold, cfg, args.address, target, verbose=args.verbose, column=args.column)
    else:
        import pyarrow.parquet as pq

        table, summary = dedup_local(path, args.threshold, cfg.qc.index, args.method, args.column)
        target.mkdir(parents=True)
        pq.write_table(table, target / "part-00000.parquet")
    summary.update(threshold=args.threshold, seconds=round(time.perf_counter() - start, 3),
                   source=str(path), duplicates=summary["rows"] - summary["kept"])
    write_json(out / "summary.json", summary)
    print(f"{summary['kept']:,}/{summary['rows']:,} kept, {summary['duplicates']:,} near-duplicates "
          f"(cosine > {args.threshold}; {summary['pairs']:,} pairs, {summary['method']}, "
          f"{summary['seconds']:.1f} s) -> {target}")
    return 0
