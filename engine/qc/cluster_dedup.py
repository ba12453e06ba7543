"""Cluster-then-compare near-duplicate search: pure functions, no Ray.

The idea behind SemDeDup / NeMo Curator's semantic dedup, written for our rule (cosine strictly
above a threshold, kept set from the sample_id-order walk):

1. cells: spherical k-means (faiss) on a deterministic sample, chosen by a hash of the sample_id
   (the same rows whatever the order, batching or partitioning of the input). k-means and the
   assignment run in a reduced space: the top principal directions of the sample's second moment
   (not centred: the cone axis stays in). A projection only shrinks distances, so two near
   duplicates stay at least as close there, and assignment costs p/d of a full-space one.
2. assignment: every vector has a home cell (its nearest) and is spilled into its next `m - 1`
   nearest, so a pair that straddles a cell boundary still meets: y's home is among x's m cells.
3. pairs: inside each cell, the home members against each other (upper-triangular blocks) and
   against the spilled ones, all pairs above the threshold by matrix multiplies (torch when
   present, on the GPU when there is one). Spilled members are never compared with each other:
   cells near the cone axis collect many spilled rows (hubness) and comparing them all would cost
   the square of that. Candidates are re-scored one by one in float64, so a pair's cosine does not
   depend on the shape of the block it was found in.

The same functions serve the in-process path (`cluster_pairs`) and the Ray Data path
(engine/qc/dedup_distributed.py); only the grouping differs.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# candidates within this of the threshold in float32 are re-scored in float64 before deciding
RESCORE_SLACK = 1e-4
BLOCK = 2048  # rows per matrix-multiply block inside a cell: bounds memory to BLOCK^2 floats
RESCORE_ROWS = 4096  # rows per float64 re-scoring step of the assignment (10x faster than 65,536 here)


@dataclass
class CellModel:
    """What the workers need to assign a vector to its cells: small (cells x p floats)."""

    proj: Optional[np.ndarray]  # (d, p) float32, or None: k-means in the full space
    centroids: np.ndarray  # (cells, p) float32, unit rows

    @property
    def cells(self) -> int:
        return int(len(self.centroids))


def default_cells(n: int, cfg) -> int:
    """Cells for n vectors: about 2.3*sqrt(n), bounded by the training sample (dedup_train_per_cell
    rows per cell). Time is ~ n*cells*p (assignment, k-means) + (m*n)^2/cells*d (pairs), so cells
    ~ sqrt(n) balances the two (the constant 2.3 from a few trials here, not a tuned optimum)."""
    cells = cfg.dedup_cells or int(round(2.3 * math.sqrt(n)))
    return max(1, min(cells, n // max(cfg.dedup_train_per_cell, 1)))


def id_hash(sample_ids: Sequence) -> np.ndarray:
    """A stable 64-bit hash of each sample_id (blake2b: the same on every machine and run)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
                     for s in sample_ids], dtype=np.uint64)


def sample_mask(sample_ids: Sequence, fraction: float) -> np.ndarray:
    """Rows of the training sample: hash below fraction * 2^64. Depends only on each row's id."""
    if fraction >= 1.0:
        return np.ones(len(sample_ids), bool)
    cut = np.uint64(min(int(fraction * 2.0 ** 64), 2 ** 64 - 1))
    return id_hash(sample_ids) < cut


def sample_fraction(n: int, cells: int, cfg) -> float:
    # 20% headroom over cells*train_per_cell: the hash sample's size is binomial
    return min(1.0, 1.2 * cells * cfg.dedup_train_per_cell / max(n, 1))


def fit_cells(sample: np.ndarray, cells: int, cfg) -> CellModel:
    """Projection and spherical k-means centroids from a sample of unit vectors (sample_id order)."""
    import faiss

    x = np.ascontiguousarray(sample, dtype=np.float32)
    n, d = x.shape
    p = cfg.dedup_project_dim
    proj = None
    if 0 < p < d:
        # top-p eigenvectors of the second moment; eigh is deterministic for the same input, and
        # each column's sign is fixed so that its largest entry is positive
        from scipy.linalg import eigh

        moment = (x.T @ x).astype(np.float64) / max(n, 1)
        _, vecs = eigh(moment, subset_by_index=[d - p, d - 1], driver="evr")  # the top p only
        vecs = vecs[:, ::-1]
        signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(p)])
        proj = np.ascontiguousarray(vecs * signs, dtype=np.float32)
    z = reduce(x, proj)
    cells = max(1, min(cells, n))
    if cells == 1:
        centroids = _unit(z.mean(axis=0, keepdims=True))
    else:
        km = faiss.Kmeans(z.shape[1], cells, niter=cfg.dedup_kmeans_iters, spherical=True, seed=cfg.dedup_seed,
                          verbose=False, min_points_per_centroid=1, max_points_per_centroid=max(n // cells + 1, 1))
        km.train(z)
        centroids = _unit(km.centroids)
    return CellModel(proj=proj, centroids=np.ascontiguousarray(centroids, dtype=np.float32))


def _unit(z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norms, 1e-12)).astype(np.float32)


def reduce(x: np.ndarray, proj: Optional[np.ndarray]) -> np.ndarray:
    """Vectors in the k-means space: projected (when there is a projection) and re-normalised."""
    x = np.asarray(x, dtype=np.float32)
    return _unit(x @ proj) if proj is not None else _unit(x)


def assign_cells(x: np.ndarray, model: CellModel, m: int, chunk: int = 65536) -> np.ndarray:
    """(n, m) int32: the m cells of largest cosine to each vector, best first (ties: lower cell);
    column 0 is the home cell.

    A row's cells must not depend on the batch it arrives in, and float32 BLAS rounding does
    depend on the batch's shape. So faiss proposes m + 2 cells in float32 and those are re-scored
    one row at a time in float64 (the projection too) before the best m are taken: a rounding
    difference could only matter if three cells tied within ~1e-6."""
    import faiss

    m = max(1, min(m, model.cells))
    extra = min(m + 2, model.cells)
    index = faiss.IndexFlatIP(model.centroids.shape[1])
    index.add(model.centroids)
    cent64 = model.centroids.astype(np.float64)
    proj64 = model.proj.astype(np.float64) if model.proj is not None else None
    out = np.empty((len(x), m), dtype=np.int32)
    for start in range(0, len(x), chunk):
        xs = np.asarray(x[start:start + chunk], dtype=np.float32)
        cand = index.search(reduce(xs, model.proj), extra)[1]
        # float64 re-scoring in sub-chunks: the (rows, extra, dim) gather stays in cache
        for s0 in range(0, len(xs), RESCORE_ROWS):
            z = xs[s0:s0 + RESCORE_ROWS].astype(np.float64)
            if proj64 is not None:
                z = z @ proj64
            z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
            c = cand[s0:s0 + RESCORE_ROWS]
            scores = np.einsum("nd,nkd->nk", z, cent64[c])
            order = np.lexsort((c, -scores), axis=1)[:, :m]
            out[start + s0:start + s0 + len(z)] = np.take_along_axis(c, order, axis=1)
    return out


def _torch_device():
    """"cuda" when torch sees a GPU (the cell matmuls go there), else None (numpy BLAS). Torch is
    imported only where a GPU may exist: its import alone costs hundreds of MB of RSS."""
    import os
    import sys

    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return "cuda" if torch.cuda.is_available() else None


def rescore(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of rows a[k], b[k] of unit x in float64, one pair at a time (shape-independent)."""
    if len(a) == 0:
        return np.zeros(0, np.float64)
    xa = x[a].astype(np.float64)
    xb = x[b].astype(np.float64)
    return np.einsum("ij,ij->i", xa, xb)


def cell_pairs(x: np.ndarray, threshold: float, n_home: Optional[int] = None, block: int = BLOCK,
               device: Optional[str] = None):
    """Pairs with cosine > threshold among one cell's members x (unit float32, homes first, each
    group in sample_id order): home x home (a < b) and home x spilled (a home, b spilled); n_home
    None: every member is home. Returns (a, b, sim), positions in x, sim from the float64
    re-score."""
    n = len(x)
    n_home = n if n_home is None else int(n_home)
    empty = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    if n_home == 0 or n < 2:
        return empty
    xs = np.ascontiguousarray(x, dtype=np.float32)
    xt = None
    if device is not None:
        import torch

        xt = torch.from_numpy(xs).to(device)
    cut = threshold - RESCORE_SLACK
    found_a, found_b = [], []
    for r0 in range(0, n_home, block):
        r1 = min(r0 + block, n_home)
        for c0 in range(r0, n, block):  # upper-triangular among homes, then every spilled column
            c1 = min(c0 + block, n)
            if xt is not None:
                hit = (xt[r0:r1] @ xt[c0:c1].T > cut).nonzero().cpu().numpy()
            else:
                hit = np.argwhere(xs[r0:r1] @ xs[c0:c1].T > cut)
            if len(hit) == 0:
                continue
            a, b = hit[:, 0] + r0, hit[:, 1] + c0
            upper = a < b
            found_a.append(a[upper]), found_b.append(b[upper])
    if not found_a:
        return empty
    a = np.concatenate(found_a).astype(np.int64)
    b = np.concatenate(found_b).astype(np.int64)
    sim = rescore(xs, a, b)
    keep = sim > threshold
    return a[keep], b[keep], sim[keep].astype(np.float32)


def _one_blas_thread():
    """Cells are many and small: one BLAS thread per cell and cells side by side in threads beats
    a multi-threaded BLAS on each (whose spinning threads fight faiss's OpenMP ones)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def pairs_in_cells(cells, threshold: float, workers: Optional[int] = None):
    """cell_pairs over an iterable of (member_keys, vectors, n_home) cells, vectors an array or a
    function returning one (then the gather, e.g. from a memory map, runs in the pool too);
    returns, per cell in input order, (keys[a], keys[b], sim). CPU: cells in a thread pool (numpy
    releases the GIL in BLAS); GPU: one cell after another on the device. Order of results never
    depends on threads."""
    device = _torch_device()
    if device is not None:
        for keys, vecs, n_home in cells:
            a, b, s = cell_pairs(vecs() if callable(vecs) else vecs, threshold, n_home, device=device)
            yield keys[a], keys[b], s
        return
    import os
    from concurrent.futures import ThreadPoolExecutor

    def one(cell):
        keys, vecs, n_home = cell
        a, b, s = cell_pairs(vecs() if callable(vecs) else vecs, threshold, n_home)
        return keys[a], keys[b], s

    from collections import deque

    workers = workers or os.cpu_count() or 1
    # a bounded window of cells in flight: pool.map would gather every cell's vectors at once
    with _one_blas_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque = deque()
        for cell in cells:
            window.append(pool.submit(one, cell))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def unique_pairs(i: np.ndarray, j: np.ndarray, sim: np.ndarray, n: int):
    """Drop the repeats of a pair found in several cells (i < j, positions below n)."""
    if len(i) == 0:
        return i.astype(np.int64), j.astype(np.int64), sim.astype(np.float32)
    key = i.astype(np.int64) * n + j.astype(np.int64)
    key, first = np.unique(key, return_index=True)
    return key // n, key % n, sim[first]


def training_sample(x: np.ndarray, sample_ids: Sequence, cells: int, cfg) -> np.ndarray:
    """The sample k-means trains on, in the order of x (callers pass x in sample_id order)."""
    mask = sample_mask(sample_ids, sample_fraction(len(x), cells, cfg))
    return np.asarray(x[np.flatnonzero(mask)], dtype=np.float32)


def cluster_pairs(x: np.ndarray, sample_ids: Sequence, threshold: float, cfg, stats: Optional[dict] = None):
    """In-process cluster-then-compare over x (n, d) unit float32 in sample_id order (an array or a
    memory map). Returns (i, j, sim): positions i < j with cosine > threshold where one's home
    cell is among the other's cells."""
    import time

    n = len(x)
    clock = [time.perf_counter()]
    cells = default_cells(n, cfg)
    model = fit_cells(training_sample(x, sample_ids, cells, cfg), cells, cfg)
    clock.append(time.perf_counter())
    assigned = assign_cells(x, model, cfg.dedup_cells_per_vector)
    m = assigned.shape[1]
    cell_of = assigned.ravel()
    row_of = np.repeat(np.arange(n, dtype=np.int64), m)
    spilled = np.tile(np.arange(m) > 0, n)
    order = np.lexsort((row_of, spilled, cell_of))  # by cell, homes first, then position (= sample_id order)
    cell_of, row_of, spilled = cell_of[order], row_of[order], spilled[order]
    bounds = np.flatnonzero(np.diff(cell_of)) + 1
    clock.append(time.perf_counter())
    groups = np.split(row_of, bounds)
    homes = [int(len(g) - k) for g, k in zip(groups, (int(v.sum()) for v in np.split(spilled, bounds)))]
    parts_i, parts_j, parts_s = [], [], []

    def gather(rows):
        return lambda: np.asarray(x[rows], dtype=np.float32)

    cells_iter = ((rows, gather(rows), h) for rows, h in zip(groups, homes) if h)
    for a, b, s in pairs_in_cells(cells_iter, threshold):
        if len(a):
            parts_i.append(np.minimum(a, b)), parts_j.append(np.maximum(a, b)), parts_s.append(s)
    if stats is not None:
        sz, hz = np.asarray([len(g) for g in groups]), np.asarray(homes)
        clock.append(time.perf_counter())
        stats.update(cells=model.cells, largest_cell=int(sz.max(initial=0)), largest_home=int(hz.max(initial=0)),
                     compared=int((hz * (hz - 1) // 2 + hz * (sz - hz)).sum()), fit_s=clock[1] - clock[0],
                     assign_s=clock[2] - clock[1], pairs_s=clock[3] - clock[2])
    if not parts_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return unique_pairs(np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s), n)
