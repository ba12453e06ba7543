"""`syncxr dedup`: near-duplicate removal over any table of (sample_id, embedding), e.g. a real
dataset or an old run, with the rule and walk of the synth run's global QC."""
from __future__ import annotations

import re
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
                    "Memory in-process: the embeddings once, plus qc.index.dedup_memory_mb of working "
                    "memory (default 1024), plus the cells being compared. "
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


READ_BUFFER = 1 << 20  # bytes of a column chunk read at a time


def read_embeddings(path: Path, column: str = "embedding") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample_ids in file order, an (n, d) float32 matrix whose rows are in sample_id order, the
    sample_id-order position of each file row) from parquet, read batch by batch into the matrix:
    memory is the matrix plus a read buffer and one batch, whatever the file's row groups.
    Errors name the file, column and row."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    try:
        data = pads.dataset(str(path), format="parquet")
        check_columns(path, data.schema.names, column)
        fragments = list(data.get_fragments())
        ids = [None if s is None else str(s) for f in fragments
               for s in f.to_table(columns=["sample_id"]).column("sample_id").to_pylist()]
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if not ids:
        raise UserError(f"{path}: no rows: nothing to deduplicate")
    if None in ids:
        raise UserError(f"{path}: row {ids.index(None)} has a null sample_id")
    kind = data.schema.field(column).type
    if not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)):
        raise UserError(f"{path}: column `{column}` must be a list of floats, got {kind}")
    names = np.asarray(ids, dtype=object)
    order = np.argsort(names, kind="stable")
    twice = np.flatnonzero(names[order[1:]] == names[order[:-1]])
    if len(twice):
        a, b = sorted((int(order[twice[0]]), int(order[twice[0] + 1])))
        raise UserError(f"{path}: sample_id {ids[a]!r} appears more than once (rows {a} and {b})")
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    matrix, row, width = None, 0, None
    for fragment in fragments:  # file by file, in the order the ids were read
        # small batches, the column chunk streamed through a small buffer: pre-buffering (the
        # default) holds a whole row group's column, which a file written as one group makes the
        # size of the input again (a dataset scanner reads many batches ahead as well)
        reader = pq.ParquetFile(fragment.path, buffer_size=READ_BUFFER, pre_buffer=False)
        for batch in reader.iter_batches(batch_size=8192, columns=[column]):
            emb = batch.column(0)
            if emb.null_count:
                bad = row + emb.is_null().to_pylist().index(True)
                raise UserError(f"{path}: row {bad} (sample_id {ids[bad]!r}) has a null {column}")
            lengths = np.diff(np.asarray(emb.offsets)) if not pa.types.is_fixed_size_list(emb.type) else \
                np.full(len(emb), emb.type.list_size)
            width = int(lengths[0]) if width is None and len(lengths) else width
            if len(lengths) and (lengths != width).any():
                bad = row + int(np.flatnonzero(lengths != width)[0])
                raise UserError(f"{path}: row {bad} (sample_id {ids[bad]!r}) has {lengths[bad - row]} values, "
                                f"row 0 has {width}")
            if matrix is None:
                matrix = np.empty((len(ids), width), np.float32)
            values = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(emb), width)
            matrix[rank[row:row + len(emb)]] = values
            row += len(emb)
    return ids, matrix, rank


def check_columns(path: Path, names: list[str], column: str) -> None:
    for col in ("sample_id", column):
        if col not in names:
            hint = " (choose one with --column)" if col == column else ""
            raise UserError(f"{path}: no `{col}` column{hint}; columns: {', '.join(names)}")


def dedup_local(path: Path, threshold: float, index_cfg, method: str, column: str = "embedding"):
    import pyarrow as pa

    from engine.qc.filters import dedup_method, near_duplicates

    ids, emb, rank = read_embeddings(path, column)
    kind = None if method == "auto" else method
    in_order = [ids[k] for k in np.argsort(rank)]  # the matrix's rows: sample_id order
    # the matrix is ours: normalised where it is, so the input is held once
    try:
        res = near_duplicates(emb, in_order, threshold, index_cfg, kind=kind, in_place=True)
    except UserError as exc:  # rows are counted in sample_id order there: name the file's row
        file_row = {sid: k for k, sid in enumerate(ids)}
        raise UserError(re.sub(r"row \d+ \(sample_id '([^']*)'\)",
                               lambda m: f"row {file_row.get(m.group(1), '?')} (sample_id '{m.group(1)}')",
                               str(exc))) from None
    table = pa.table({"sample_id": pa.array(ids, pa.string()), "kept": pa.array(res.keep[rank], pa.bool_()),
                      "duplicate_of": pa.array([res.duplicate_of[r] for r in rank.tolist()], pa.string()),
                      "similarity": pa.array(res.similarity[rank], pa.float32())})
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
