"""Cluster-then-compare near-duplicate removal as Ray Data operations: the embeddings never
gather on the driver.

    rows (sample_id, embedding)
      -> map_batches: keep the hash-chosen training rows      -> one task: fit the cells (k-means)
         and mark the cells where the projection would not filter (measured on the sample); the
         cells of a few thousand sample rows come back with the model
      -> driver: the cells into buckets, neighbouring cells together (a k-d tree of the
         centroids), as many as keep a bucket near 128 MB of shuffle; the rows shipped per input
         row are measured on the sample rows' cells
      -> map_batches: each row to its cells (its home cell and the cells it is spilled into), one
         output row per bucket they fall in (bucket, sample_id, z, its cells there, home), as its
         projection z (p of d floats), model and cell -> bucket map broadcast
      -> groupby(bucket).map_groups: inside each cell of a bucket of cells, the candidate pairs
         (closer than the threshold in z) among home members and between home and spilled ones
         (GPU when present)
      -> the same steps for the marked cells, whose rows travel as full vectors: there the
         pairs above the threshold are found directly, block by block in the full space (as the
         in-process path does for a block whose projected filter passes most pairs), so a
         clustered dataset never turns into a candidate list of every pair of a cell
      -> driver: the candidate list (small), as {sample_id: its pairs}, broadcast
      -> map_batches + groupby(pair bucket).map_groups: the two full vectors of each candidate
         pair meet and are re-scored in float64; the pairs above the threshold
      -> driver: the pair list (small) through the sample_id-order walk
      -> map_batches: (sample_id, kept, duplicate_of, similarity), the duplicates broadcast

The steps are the functions of engine/qc/cluster_dedup.py that the in-process path runs. Nothing
depends on how the rows are split into blocks: the training rows are chosen by a hash of their
sample_id and sorted before k-means, a row's cells depend on its vector alone, each cell is sorted
by sample_id before its pairs are found, pair cosines are re-scored one pair at a time, and the
walk runs in sample_id order; the buckets only decide which cells meet in one group. Only the
cell model (projection and centroids: (d + cells) x p floats), the sample rows' cells (a few
thousand x cells_per_vector), the candidate list and the pair list travel through the driver.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from engine.core.errors import UserError
from engine.qc.cluster_dedup import (CellModel, assign_cells, cell_candidates, cell_pairs, default_cells, fit_cells,
                                     project, rescore, sample_fraction, sample_mask, spill_radius,
                                     unselective_cells, _torch_device)
from engine.qc.filters import _check_threshold, unit_vectors, walk_pairs

ID, EMB = "sample_id", "embedding"


def batch_vectors(batch: dict, what: str = "near-duplicate removal") -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids as str, unit float32 vectors) of a numpy batch; a tensor column arrives 2-d, a
    list column as an object array of rows."""
    ids = np.asarray(batch[ID]).astype(str)
    emb = batch[EMB]
    if isinstance(emb, np.ndarray) and emb.dtype == object:
        if any(v is None for v in emb):
            i = next(k for k, v in enumerate(emb) if v is None)
            raise UserError(f"{what}: sample_id {ids[i]!r} has a null embedding")
        lens = {len(v) for v in emb}
        if len(lens) > 1:
            raise UserError(f"{what}: embeddings have different lengths {sorted(lens)[:4]}")
        emb = np.stack([np.asarray(v, np.float32) for v in emb]) if len(emb) else np.zeros((0, 0), np.float32)
    emb = np.asarray(emb, dtype=np.float32).reshape(len(ids), -1)
    try:
        return ids, unit_vectors(emb, what, ids=ids.tolist())
    except UserError as exc:  # a row number inside a block means nothing to the user: name the id
        raise UserError(re.sub(r"row \d+ \((sample_id '[^']*')\)", r"\1", str(exc))) from None


def sample_rows(batch: dict, fraction: float) -> dict:
    """map_batches: the rows of the k-means training sample (hash of sample_id below a cut)."""
    ids, vecs = batch_vectors(batch)
    keep = sample_mask(ids, fraction)
    return {ID: ids[keep], EMB: vecs[keep]}


SEEN_ROWS = 20_000  # training rows whose cells the fit task returns: the driver sizes the shuffle on them


def fit_from_blocks(cells: int, cfg_dict: dict, threshold: float, *blocks) -> tuple[CellModel, np.ndarray]:
    """Ray task body: the sample's blocks (arrow tables), sorted by sample_id, to a CellModel with
    its unselective cells marked, and the cells (assign_cells) of at most SEEN_ROWS of the sample's
    rows (every k-th): what a row's cells look like, for plan_buckets."""
    import pyarrow as pa

    from engine.core.config import IndexConfig

    table = pa.concat_tables([b for b in blocks if b.num_rows]) if blocks else None
    if table is None or table.num_rows == 0:
        raise UserError("near-duplicate removal: the k-means training sample is empty")
    ids = np.asarray(table.column(ID).to_pylist()).astype(str)
    col = table.column(EMB).combine_chunks()
    vecs = _arrow_matrix(col, len(ids))[np.argsort(ids, kind="stable")]
    cfg = IndexConfig(**cfg_dict)
    model = fit_cells(vecs, cells, cfg)
    model.full_space = unselective_cells(model, vecs, threshold)
    seen = vecs[::max(1, -(-len(vecs) // SEEN_ROWS))]  # every k-th row, k rounded up: at most SEEN_ROWS
    return model, assign_cells(seen, model, cfg.dedup_cells_per_vector, spill_radius(threshold, cfg))


def _arrow_matrix(col, n: int) -> np.ndarray:
    """A (fixed-size) list or Ray tensor column as an (n, d) float32 array."""
    try:
        from ray.air.util.tensor_extensions.arrow import ArrowTensorArray

        if isinstance(col, ArrowTensorArray):
            return np.asarray(col.to_numpy(), np.float32).reshape(n, -1)
    except ImportError:  # pragma: no cover
        pass
    flat = col.flatten() if hasattr(col, "flatten") else col.storage.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, -1)


def _resolve(ref):
    """A value broadcast as [ObjectRef] (a nested ref is not resolved by Ray; we get it here)."""
    import ray

    return ray.get(ref[0]) if isinstance(ref, list) else ref


def locality_buckets(centroids: np.ndarray, buckets: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """(cells,) int32: each cell's shuffle bucket, neighbouring cells in one bucket. The cells are
    split in two across their widest (weighted principal) direction, at the weighted quantile that
    gives each side its share of the buckets, and each side again (a k-d tree of the centroids,
    one leaf per bucket). A row's cells are its home's neighbours, so they mostly fall into one
    leaf; `cell % buckets` scatters them over as many buckets as they are cells. weights: expected
    rows per cell (None: 1 each), balanced to within one cell per split. Deterministic (no random
    start); about 0.1 s for 6,500 cells of 128 floats here."""
    c = np.asarray(centroids, np.float64)
    w = np.ones(len(c)) if weights is None else np.maximum(np.asarray(weights, np.float64), 1e-9)
    out = np.zeros(len(c), np.int32)
    todo = [(np.arange(len(c)), 0, max(1, min(int(buckets), len(c))))]
    while todo:
        idx, first, k = todo.pop()
        if k == 1:
            out[idx] = first
            continue
        x = c[idx] - np.average(c[idx], axis=0, weights=w[idx])
        axis = x[np.argmax(np.einsum("ij,ij->i", x, x))]  # from the farthest cell, power steps to the widest direction
        for _ in range(8):
            axis = (x * w[idx, None]).T @ (x @ axis)
            axis /= max(float(np.linalg.norm(axis)), 1e-300)
        order = idx[np.lexsort((idx, x @ axis))]
        left = k // 2
        cum = np.cumsum(w[order])
        cut = int(np.argmin(np.abs(cum - cum[-1] * left / k))) + 1  # the left side's share of the weight
        cut = min(max(cut, left), len(order) - (k - left))  # every bucket keeps at least one cell
        todo += [(order[:cut], first, left), (order[cut:], first + left, k - left)]
    return out


def _in_path(model: CellModel, full_space: bool) -> np.ndarray:
    """(cells,) bool: the cells the model marks unselective (full_space=True) or the others."""
    marked = model.full_space if model.full_space is not None else np.zeros(model.cells, bool)
    return marked == full_space


def path_cells(cells: np.ndarray, model: CellModel, full_space: bool) -> np.ndarray:
    """cells (rows, m) of assign_cells with the cells of the other path set to -1."""
    return np.where((cells >= 0) & _in_path(model, full_space)[np.maximum(cells, 0)], cells, -1)


def buckets_per_row(cells: np.ndarray, bucket_of: np.ndarray) -> float:
    """The mean number of distinct buckets among each row's cells (-1: none): the copies of a row
    that assign_rows ships."""
    if len(cells) == 0:
        return 0.0
    b = np.sort(np.where(cells >= 0, bucket_of[np.maximum(cells, 0)], -1), axis=1)
    new = np.ones_like(b, bool)
    new[:, 1:] = b[:, 1:] != b[:, :-1]
    return float((new & (b >= 0)).sum() / len(b))


GROUP_BYTES = 128e6  # shuffle bytes per bucket


def plan_buckets(model: CellModel, seen: np.ndarray, full_space: bool, n: int, row_bytes: float,
                 least: int) -> tuple[int, np.ndarray, float]:
    """(buckets, cell -> bucket, copies per row) for one path: buckets of ~GROUP_BYTES of shuffle
    (n x copies x row_bytes), at least `least`, at most the path's cells, from locality_buckets
    over the path's cells weighted by their rows in `seen` (a sample's assign_cells). The copies
    per row are measured on `seen`; they grow with the bucket count, so the count is sized once
    more on the copies its first guess gives."""
    cells = path_cells(seen, model, full_space)
    mine = np.flatnonzero(_in_path(model, full_space))
    rows = np.bincount(cells[cells >= 0], minlength=model.cells)[mine] + 1.0
    bucket_of = np.full(model.cells, -1, np.int32)
    copies = float((cells >= 0).any(axis=1).mean()) if len(cells) else 1.0  # at least one per row it touches
    buckets = 0
    for _ in range(2):
        size = max(1, min(len(mine), max(least, int(np.ceil(n * copies * row_bytes / GROUP_BYTES)))))
        if size == buckets:
            break
        buckets = size
        bucket_of[mine] = locality_buckets(model.centroids[mine], buckets, rows)
        copies = buckets_per_row(cells, bucket_of)
    return buckets, bucket_of, copies


def assign_rows(batch: dict, model_ref, bucket_ref, max_cells: int, radius: float, full_space: bool = False) -> dict:
    """map_batches: each row to its cells (home, then spilled) of one path: the cells the model
    marks unselective (full_space=True) or the others (False). One output row per (row, bucket of
    its cells), bucket_ref the broadcast cell -> bucket map (plan_buckets): bucket, sample_id,
    z (the row's full vector in the full space, its projection, p of its d floats, otherwise),
    cells (its cells in that bucket, in assign_cells order, -1 after the last: (rows, m) int32)
    and home (cells[0] is the row's home cell). A row travels once per bucket it touches, not
    once per cell: on clustered data a full-space row has ~10 cells but touches 1.1-1.8 locality
    buckets (20k rows, 4-32 buckets). Buckets, not one group per cell: Ray Data's per-group cost
    would be paid thousands of times."""
    ids, vecs = batch_vectors(batch)
    model, bucket_of = _resolve(model_ref), np.asarray(_resolve(bucket_ref))
    z = project(vecs, model.proj)
    cells = path_cells(assign_cells(vecs, model, max_cells, radius, projected=z), model, full_space)
    m = cells.shape[1]
    row, slot = np.nonzero(cells >= 0)  # row-major: each row's cells in their order
    cell = cells[row, slot]
    key = row.astype(np.int64) * len(bucket_of) + bucket_of[cell]
    order = np.argsort(key, kind="stable")  # by (row, bucket), each row's cells still in order
    key, cell, slot = key[order], cell[order], slot[order]
    start = np.r_[True, key[1:] != key[:-1]]
    out = np.cumsum(start) - 1  # output row of each (row, cell)
    first = np.flatnonzero(start)
    packed = np.full((len(first), m), -1, np.int32)
    packed[out, np.arange(len(key)) - first[out]] = cell
    src = key[first] // len(bucket_of)
    return {"bucket": (key[first] % len(bucket_of)).astype(np.int32), ID: ids[src],
            "z": (vecs if full_space else z)[src].reshape(len(src), -1), "cells": packed, "home": slot[first] == 0}


def _cells_of_group(group: dict):
    """The cells of one shuffle group (rows as assign_rows packs them), each sorted (homes first,
    then by sample_id), so block layout never matters: yields (ids, z, n_home) per cell. A row's
    vector is gathered per cell, one cell at a time: the group holds each row once."""
    ids = np.asarray(group[ID]).astype(str)
    z = np.asarray(group["z"], np.float32).reshape(len(ids), -1)
    cells = np.asarray(group["cells"], np.int32).reshape(len(ids), -1)
    row, slot = np.nonzero(cells >= 0)
    cell = cells[row, slot]
    spilled = (slot > 0) | ~np.asarray(group["home"], bool)[row]
    order = np.lexsort((ids[row], spilled, cell))
    row, cell, spilled = row[order], cell[order], spilled[order]
    member = ids[row]
    by_id = np.lexsort((member, cell))  # a sample_id twice in one cell: given twice in the input
    same = (member[by_id][1:] == member[by_id][:-1]) & (cell[by_id][1:] == cell[by_id][:-1])
    if same.any():
        twice = str(member[by_id][int(np.flatnonzero(same)[0])])
        raise UserError(f"near-duplicate removal: sample_id {twice!r} appears more than once")
    bounds = np.flatnonzero(np.diff(cell)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(row)]):
        yield member[lo:hi], z[row[lo:hi]], int((~spilled[lo:hi]).sum())


def _ordered(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = a < b
    return np.where(first, a, b), np.where(first, b, a)


def candidates_of_bucket(group: dict, threshold: float) -> dict:
    """map_groups: the candidate pairs inside each cell of one bucket (cluster_dedup.cell_candidates),
    as (a, b) with a < b by sample_id."""
    device = _torch_device()
    a_all, b_all = [np.empty(0, str)], [np.empty(0, str)]
    for ids, z, n_home in _cells_of_group(group):
        a, b = cell_candidates(z, threshold, n_home, device=device)
        a, b = _ordered(ids[a], ids[b])
        a_all.append(a), b_all.append(b)
    return {"a": np.concatenate(a_all), "b": np.concatenate(b_all)}


def pairs_of_bucket(group: dict, threshold: float) -> dict:
    """map_groups: over the full vectors of the cells of one bucket, the pairs above the threshold
    (cluster_dedup.cell_pairs, block by block, float64 cosines), as (a, b, sim) with a < b."""
    device = _torch_device()
    a_all, b_all, s_all = [np.empty(0, str)], [np.empty(0, str)], [np.empty(0, np.float32)]
    for ids, x, n_home in _cells_of_group(group):
        a, b, sim = cell_pairs(x, threshold, n_home, device=device)
        a, b = _ordered(ids[a], ids[b])
        a_all.append(a), b_all.append(b), s_all.append(sim)
    return {"a": np.concatenate(a_all), "b": np.concatenate(b_all), "sim": np.concatenate(s_all)}


def candidate_vectors(batch: dict, members_ref, buckets: int) -> dict:
    """map_batches: each row that is in candidate pairs, once per pair (bucket, pair, side,
    embedding), from the broadcast {sample_id: (pair numbers, sides)}; the other rows drop out."""
    members = _resolve(members_ref)
    ids, vecs = batch_vectors(batch)
    rows, pairs, sides = [], [], []
    for r, sid in enumerate(ids.tolist()):
        hit = members.get(sid)
        if hit is not None:
            rows.extend([r] * len(hit[0])), pairs.extend(hit[0]), sides.extend(hit[1])
    pairs = np.asarray(pairs, np.int64)
    return {"bucket": (pairs % buckets).astype(np.int32), "pair": pairs, "side": np.asarray(sides, np.int8),
            EMB: vecs[np.asarray(rows, np.int64)].reshape(len(rows), vecs.shape[1])}


def verify_pairs(group: dict, threshold: float) -> dict:
    """map_groups: the candidate pairs of one bucket re-scored in float64 from both members' full
    vectors (cluster_dedup.rescore: the same cosine as the in-process path); those above the
    threshold, as (pair, sim)."""
    pair = np.asarray(group["pair"], np.int64)
    side = np.asarray(group["side"], np.int8)
    order = np.lexsort((side, pair))
    pair, side = pair[order], side[order]
    vecs = np.asarray(group[EMB], np.float32).reshape(len(pair), -1)[order]
    first = side == 0
    if not (first.sum() == (~first).sum() and (pair[first] == pair[~first]).all()):
        raise RuntimeError("near-duplicate removal: a candidate pair lost a member between passes")
    sim = rescore(vecs, np.flatnonzero(first), np.flatnonzero(~first))
    keep = sim > threshold
    return {"pair": pair[first][keep], "sim": sim[keep].astype(np.float32)}


def mark_rows(batch: dict, dups_ref) -> dict:
    """map_batches: the output table, from the broadcast {duplicate: (kept match, cosine)}."""
    dups = _resolve(dups_ref)
    ids = np.asarray(batch[ID]).astype(str)
    hit = [dups.get(s) for s in ids]
    return {ID: ids, "kept": np.array([h is None for h in hit], bool),
            "duplicate_of": np.array([None if h is None else h[0] for h in hit], dtype=object),
            "similarity": np.array([0.0 if h is None else h[1] for h in hit], np.float32)}


@dataclass
class DistributedDedup:
    table: object  # ray Dataset: sample_id, kept, duplicate_of, similarity (lazy)
    duplicates: dict  # duplicate sample_id -> (kept sample_id, cosine)
    rows: int
    pairs: int
    cells: int
    stats: dict = field(default_factory=dict)


_REMOTE_USER_ERROR = re.compile(r"engine\.core\.errors\.(?:UserError|ConfigError): (.+)")


def _user_error(exc: BaseException) -> Optional[UserError]:
    """The UserError a Ray task raised, however Ray wrapped it (RayTaskError around Ray Data's
    UserCodeException keeps the original only as traceback text)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = _REMOTE_USER_ERROR.search(str(exc))
        if found:
            return UserError(found.group(1).strip())
        if isinstance(exc, UserError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def dedup_dataset(ds, threshold: float, cfg, num_gpus: Optional[float] = None,
                  num_partitions: Optional[int] = None) -> DistributedDedup:
    """Near-duplicate removal over a Ray dataset with `sample_id` and `embedding` columns."""
    try:
        return _dedup_dataset(ds, threshold, cfg, num_gpus, num_partitions)
    except Exception as exc:
        err = _user_error(exc)
        if err is not None and err is not exc:
            raise err from None
        raise


def _dedup_dataset(ds, threshold: float, cfg, num_gpus: Optional[float], num_partitions: Optional[int]) -> DistributedDedup:
    import time

    import ray

    t = _check_threshold(threshold, "near-duplicate removal")
    missing = [c for c in (ID, EMB) if c not in ds.columns()]
    if missing:
        raise UserError(f"near-duplicate removal: no {', '.join(repr(c) for c in missing)} column "
                        f"(columns: {', '.join(ds.columns())})")
    clock = [time.perf_counter()]
    n = ds.count()
    if n == 0:
        return DistributedDedup(ds.select_columns([ID]).map_batches(mark_rows, fn_kwargs={"dups_ref": {}},
                                                                    batch_format="numpy"), {}, 0, 0, 0)
    cells = default_cells(n, cfg)
    sample = ds.select_columns([ID, EMB]).map_batches(
        sample_rows, fn_kwargs={"fraction": sample_fraction(n, cells, cfg)},
        batch_format="numpy").materialize()
    fit = ray.remote(fit_from_blocks).options(num_cpus=1, num_returns=2)
    model_ref, seen_ref = fit.remote(cells, cfg.model_dump(), t, *sample.to_arrow_refs())
    model, seen = ray.get([model_ref, seen_ref])  # small: (d + cells) x p floats, SEEN_ROWS x m cells
    full_cells = int(model.full_space.sum()) if model.full_space is not None else 0
    clock.append(time.perf_counter())
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    cpus = int(ray.cluster_resources().get("CPU", 1))
    dim = np.asarray(ds.take_batch(1, batch_format="numpy")[EMB][0]).size
    p = dim if cfg.dedup_project_dim <= 0 or cfg.dedup_project_dim >= dim else cfg.dedup_project_dim
    shipped = {False: (0, 0.0), True: (0, 0.0)}  # per path: (buckets, rows shipped per input row)

    def grouped(full_space: bool, width: int, fn):
        """Rows of the marked (or other) cells, `width` floats each, once per bucket of cells they
        touch: shuffle groups of ~GROUP_BYTES, at least two per CPU; the partition count only sets
        how the shuffle is spread, never which pairs are found."""
        row_bytes = 4 * width + 4 * seen.shape[1] + 64  # z, the cells, the sample_id and Arrow's overhead
        buckets, bucket_of, copies = plan_buckets(model, seen, full_space, n, row_bytes, 2 * cpus)
        shipped[full_space] = (buckets, copies)
        rows = ds.select_columns([ID, EMB]).map_batches(
            assign_rows, fn_kwargs={"model_ref": [model_ref], "bucket_ref": [ray.put(bucket_of)],
                                    "max_cells": cfg.dedup_cells_per_vector, "radius": spill_radius(t, cfg),
                                    "full_space": full_space},
            batch_format="numpy")
        return rows.groupby("bucket", num_partitions=num_partitions or buckets).map_groups(
            fn, fn_kwargs={"threshold": t}, batch_format="numpy", num_gpus=num_gpus)

    cand, direct = set(), {}
    if full_cells < cells:
        found = grouped(False, p, candidates_of_bucket)
        for batch in found.iter_batches(batch_size=65536, batch_format="numpy"):
            cand.update(zip(np.asarray(batch["a"]).astype(str).tolist(), np.asarray(batch["b"]).astype(str).tolist()))
    if full_cells:
        found = grouped(True, dim, pairs_of_bucket)
        for batch in found.iter_batches(batch_size=65536, batch_format="numpy"):
            direct.update(zip(zip(np.asarray(batch["a"]).astype(str).tolist(), np.asarray(batch["b"]).astype(str).tolist()),
                              np.asarray(batch["sim"], np.float32).tolist()))
    cand = sorted(cand - set(direct))  # a pair found in two cells is re-scored once
    clock.append(time.perf_counter())
    a, b, s = _verify(ds, cand, t, cpus, dim, num_partitions)
    clock.append(time.perf_counter())
    if direct:  # disjoint from the verified candidates; the same float64 cosine whichever cell found a pair
        a = np.concatenate([a, np.array([x for x, _ in direct], dtype=str)])
        b = np.concatenate([b, np.array([y for _, y in direct], dtype=str)])
        s = np.concatenate([s, np.array(list(direct.values()), np.float32)])
    dups = walk_pairs(a, b, s)
    table = ds.select_columns([ID]).map_batches(mark_rows, fn_kwargs={"dups_ref": [ray.put(dups)]},
                                                batch_format="numpy")
    return DistributedDedup(table, dups, n, len(a), cells,
                            {"fit_s": clock[1] - clock[0], "candidates_s": clock[2] - clock[1],
                             "verify_s": clock[3] - clock[2], "candidates": len(cand),
                             "full_space_cells": full_cells, "direct_pairs": len(direct),
                             "buckets": shipped[False][0], "copies": shipped[False][1],
                             "full_space_buckets": shipped[True][0], "full_space_copies": shipped[True][1]})


def _verify(ds, cand: list, threshold: float, cpus: int, dim: int, num_partitions: Optional[int]):
    """The second pass: each candidate pair's two full vectors meet in a shuffle group (a row
    travels once per candidate pair it is in: a few percent of the rows) and are re-scored there.
    Returns (a, b, sim) of the pairs above the threshold."""
    import ray

    if not cand:
        return np.empty(0, str), np.empty(0, str), np.empty(0, np.float32)
    members: dict = {}
    for k, (x, y) in enumerate(cand):
        for sid, side in ((x, 0), (y, 1)):
            hit = members.setdefault(sid, ([], []))
            hit[0].append(k), hit[1].append(side)
    buckets = max(1, min(len(cand), max(2 * cpus, int(np.ceil(2 * len(cand) * (4 * dim + 32) / GROUP_BYTES)))))
    rows = ds.select_columns([ID, EMB]).map_batches(
        candidate_vectors, fn_kwargs={"members_ref": [ray.put(members)], "buckets": buckets}, batch_format="numpy")
    checked = rows.groupby("bucket", num_partitions=num_partitions or buckets).map_groups(
        verify_pairs, fn_kwargs={"threshold": threshold}, batch_format="numpy")
    pair, sim = [], []
    for batch in checked.iter_batches(batch_size=65536, batch_format="numpy"):
        pair.append(np.asarray(batch["pair"], np.int64)), sim.append(np.asarray(batch["sim"], np.float32))
    pair = np.concatenate(pair) if pair else np.empty(0, np.int64)
    sim = np.concatenate(sim) if sim else np.empty(0, np.float32)
    names = np.array(cand, dtype=str).reshape(-1, 2)
    return names[pair, 0], names[pair, 1], sim
