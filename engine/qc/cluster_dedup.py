"""Cluster-then-compare near-duplicate search: pure functions, no Ray.

The idea behind SemDeDup / NeMo Curator's semantic dedup, written for our rule (cosine strictly
above a threshold t, kept set from the sample_id-order walk). For unit vectors, cosine > t is
distance < eps = sqrt(2 - 2t).

1. space: the top p principal directions of a deterministic sample's second moment (not centred:
   the cone axis stays in), chosen by a hash of the sample_id (the same rows whatever the order,
   batching or partitioning of the input). A projection onto orthonormal directions only shrinks
   distances, so it filters pairs without ever losing one (step 4).
2. cells: Euclidean k-means (faiss) of the projected sample.
3. assignment: every vector has a home cell (its nearest centroid) and is spilled into the other
   cells whose region could hold a neighbour within eps: those whose bisector with the home cell
   lies within `radius` of the vector (radius a fraction of eps; the whole eps would spill into
   nearly every cell of a narrow cone), nearest bisector first, at most `max_cells - 1`. A pair
   (x, y) meets in y's home cell when x is spilled there, so a pair that straddles a boundary is
   still compared; the bisector distance, unlike the rank of the centroid, measures how close
   that boundary is.
4. pairs: inside each cell, the home members against each other (upper-triangular blocks) and
   against the spilled ones, block by block. Candidates are the pairs within eps in the projected
   space (a superset of the answer: p-dimensional matrix multiplies, torch on the GPU when there
   is one). Where the projected filter would pass more than a few percent of a cell's pairs (the
   data's spread lies outside the principal directions, as in clustered embeddings), the cell is
   compared in the full space instead: cells the training sample shows to be such are marked when
   the cells are fitted (both paths use the mark), and a block of another cell whose filter turns
   out unselective is compared in the full space on the spot. Each candidate is then re-scored in float64 in the full
   space, one pair at a time, so a pair's cosine never depends on the shape of the block it was
   found in, and only the pairs above the threshold are kept: memory is bounded by the block
   size whatever the data. Beyond the blocks, the in-process path keeps the projection in
   float16 (the filter's chord widened by twice the rounding bound, so still no pair lost) and
   sorts the cells' memberships in passes, both within cfg.dedup_memory_mb. Spilled members are
   never compared with each other: cells near the cone axis collect many spilled rows (hubness)
   and comparing them all would cost the square of that.
5. fallback: when the cells would compare at least half of all n(n-1)/2 pairs (the data does not
   fall into cells at this threshold), everything is one cell in the full space: blocked exact
   search, never slower than comparing every pair.

The same functions serve the in-process path (`cluster_pairs`) and the Ray Data path
(engine/qc/dedup_distributed.py); only the grouping differs.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

# candidates within this (in cosine units) of the threshold in float32 are re-scored in float64
RESCORE_SLACK = 1e-4
BLOCK = 2048  # rows per matrix-multiply block inside a cell: bounds memory to BLOCK^2 floats
RESCORE_ROWS = 1024  # rows per vectorised step of the assignment: its gathers stay in cache
MOMENT_ROWS = 20_000  # sample rows (every k-th) behind the projection


@dataclass
class CellModel:
    """What the workers need to assign a vector to its cells: small (cells x p floats)."""

    proj: Optional[np.ndarray]  # (d, p) float32 orthonormal columns, or None: the full space
    centroids: np.ndarray  # (cells, p) float32, in the projected space
    # (cells,) bool: cells whose projected filter is predicted not to be selective (the Ray Data
    # path compares them in the full space); None: not measured
    full_space: Optional[np.ndarray] = None

    @property
    def cells(self) -> int:
        return int(len(self.centroids))


def default_cells(n: int, cfg) -> int:
    """Cells for n vectors: dedup_cells_per_sqrt * sqrt(n), bounded by the training sample
    (dedup_train_per_cell rows per cell). Assignment costs ~ n * cells, pairs ~ n^2 / cells, so
    cells ~ sqrt(n); the constant comes from runs at 200k here (benchmarks/results/dedup.md)."""
    cells = cfg.dedup_cells or int(round(cfg.dedup_cells_per_sqrt * math.sqrt(n)))
    return max(1, min(cells, n // max(cfg.dedup_train_per_cell, 1)))


def chord(threshold: float) -> float:
    """Distance between unit vectors at cosine `threshold`: cosine > t is distance < chord(t)."""
    return math.sqrt(max(2.0 - 2.0 * float(threshold), 0.0))


def spill_radius(threshold: float, cfg) -> float:
    return float(cfg.dedup_spill_radius) * chord(threshold)


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


class SampleRows:
    """Rows `rows` of x, gathered when indexed: the training sample without a full-width copy of
    it (at 2M x 768 that copy is ~480 MB); float32 like the arrays it stands in for."""

    def __init__(self, x: np.ndarray, rows: np.ndarray):
        self.x, self.rows = x, rows
        self.shape = (len(rows), x.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.x[self.rows[key]], dtype=np.float32)


SAMPLE_CHUNK = 8192  # sample rows gathered and projected at a time


def project_rows(x, proj: Optional[np.ndarray]) -> np.ndarray:
    """project() chunk by chunk, into one (n, p) float32 array: x may be a SampleRows."""
    out = np.empty((len(x), proj.shape[1] if proj is not None else x.shape[1]), np.float32)
    for c0 in range(0, len(x), SAMPLE_CHUNK):
        out[c0:c0 + SAMPLE_CHUNK] = project(x[c0:c0 + SAMPLE_CHUNK], proj)
    return out


def fit_cells(sample, cells: int, cfg) -> CellModel:
    """Projection and k-means centroids from a sample of unit vectors (in sample_id order): an
    array or a SampleRows."""
    import faiss

    n, d = sample.shape
    p = cfg.dedup_project_dim
    proj = None
    if 0 < p < d:
        # top-p eigenvectors of the second moment; eigh is deterministic for the same input, and
        # each column's sign is fixed so that its largest entry is positive
        from scipy.linalg import eigh

        # the principal directions settle long before k-means does
        part = np.asarray(sample[::max(1, n // MOMENT_ROWS)], dtype=np.float32)
        moment = (part.T @ part).astype(np.float64) / max(len(part), 1)
        _, vecs = eigh(moment, subset_by_index=[d - p, d - 1], driver="evr")  # the top p only
        vecs = vecs[:, ::-1]
        signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(p)])
        proj = np.ascontiguousarray(vecs * signs, dtype=np.float32)
    z = project_rows(sample, proj)
    cells = max(1, min(cells, n))
    if cells == 1:
        centroids = z.mean(axis=0, keepdims=True)
    else:
        km = faiss.Kmeans(z.shape[1], cells, niter=cfg.dedup_kmeans_iters, spherical=False, seed=cfg.dedup_seed,
                          verbose=False, min_points_per_centroid=1, max_points_per_centroid=max(n // cells + 1, 1))
        km.train(z)
        centroids = km.centroids
    return CellModel(proj=proj, centroids=np.ascontiguousarray(centroids, dtype=np.float32))


def unselective_cells(model: CellModel, sample, threshold: float) -> np.ndarray:
    """(cells,) bool: the cells whose projected candidate filter would pass more than UNSELECTIVE of
    their pairs, measured on the training sample's members of each cell (their spread is the
    cell's). A cell with fewer than two sample rows counts as selective. All False without a
    projection: the cells are already in the full space."""
    full = np.zeros(model.cells, bool)
    if model.proj is None or len(sample) < 2:
        return full
    z = project_rows(sample, model.proj)
    home = assign_cells(sample, model, 1, 0.0, chunk=SAMPLE_CHUNK, projected=z)[:, 0]
    order = np.argsort(home, kind="stable")
    bounds = np.flatnonzero(np.diff(home[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) < 2:
            continue
        passed = sum(int(hit.sum()) for _, _, hit in candidate_blocks(z[rows], threshold, len(rows)))
        full[home[rows[0]]] = passed > UNSELECTIVE * len(rows) * (len(rows) - 1) / 2
    return full


def project(x: np.ndarray, proj: Optional[np.ndarray]) -> np.ndarray:
    """Vectors in the cell space (float32): projected, not re-normalised (distances only shrink)."""
    x = np.asarray(x, dtype=np.float32)
    return x @ proj if proj is not None else x


def assign_cells(x: np.ndarray, model: CellModel, max_cells: int, radius: float, chunk: int = 65536,
                 projected: Optional[np.ndarray] = None) -> np.ndarray:
    """(n, max_cells) int32: column 0 the home cell (nearest centroid; ties: lower cell), then in
    ascending order the cells whose bisector with the home cell is within `radius` of the vector
    (the max_cells - 1 nearest bisectors when there are more; ties: lower cell), -1 after the
    last. Candidates are the max_cells + 2 nearest centroids. `projected`: project(x), when
    already computed.

    A row's cells must not depend on the batch it arrives in, and float32 BLAS rounding does
    depend on the batch's shape (by ~1e-6 here). So every decision is taken in float32 only where
    its margin is far above that rounding; rows with a decision inside the margin (a near tie for
    home, a bisector near the radius, a tie at the end of the candidate list or of the spill
    list: a few percent) are decided again one by one in float64."""
    import faiss

    m = max(1, min(max_cells, model.cells))
    extra = min(m + 2, model.cells)
    index = faiss.IndexFlatL2(model.centroids.shape[1])
    index.add(model.centroids)
    out = np.full((len(x), m), -1, dtype=np.int32)
    cent32, cent64 = model.centroids, model.centroids.astype(np.float64)
    sq32, sq64 = np.einsum("kp,kp->k", cent32, cent32), np.einsum("kp,kp->k", cent64, cent64)
    proj64 = model.proj.astype(np.float64) if model.proj is not None else None
    for start in range(0, len(x), chunk):
        xs = np.asarray(x[start:start + chunk], dtype=np.float32)
        zs = projected[start:start + chunk] if projected is not None else project(xs, model.proj)
        d2, cand = index.search(np.ascontiguousarray(zs, dtype=np.float32), min(extra + 1, model.cells))
        for s0 in range(0, len(xs), RESCORE_ROWS):  # sub-chunks: the (rows, extra, p) gather stays in cache
            rows = slice(s0, s0 + RESCORE_ROWS)
            cells, unsure = _spills(d2[rows], cand[rows], cent32, sq32, m, extra, radius, DECIDE_MARGIN)
            out[start + s0:start + s0 + len(cells)] = cells
            for r in s0 + np.flatnonzero(unsure):  # one row at a time: nothing depends on the batch
                z = xs[r:r + 1].astype(np.float64)
                if proj64 is not None:
                    z = z @ proj64
                c = cand[r:r + 1]  # with the cell beyond the list's end: a tie there is re-ranked here
                diff = cent64[c] - z[:, None, :]
                out[start + r] = _spills(np.einsum("rkp,rkp->rk", diff, diff), c, cent64, sq64, m, extra, radius)[0]
    return out


DECIDE_MARGIN = 2e-5  # 10x the largest float32 error of d2 seen here (1.9e-6 at 200k); closer decisions go to float64


def _spills(d2: np.ndarray, cand: np.ndarray, centroids: np.ndarray, sq: np.ndarray, m: int, extra: int,
            radius: float, margin: float = 0.0):
    """(cells (r, m) as assign_cells returns them, unsure (r,) bool) from the squared distances d2
    of each row to its candidate cells cand (r, >= extra columns); sq: the centroids' squared
    norms. margin > 0: float32 from faiss, nearest first; margin 0: float64, any order, every
    decision final."""
    k = d2.shape[1]
    r = np.arange(len(d2))[:, None]
    if margin > 0:  # faiss's order: nearest first; a tie it could break either way is unsure below
        c, dd = cand, d2
    else:
        order = np.lexsort((cand, d2), axis=1)
        c, dd = cand[r, order], d2[r, order]
    cc = centroids[c]  # |c - h| from |c|^2 + |h|^2 - 2 c.h (a batched matmul: 25x an einsum of c - h)
    gap = np.sqrt(np.maximum(sq[c] + sq[c[:, :1]] - 2.0 * np.matmul(cc, cc[:, 0, :, None])[..., 0], 0.0))
    # c is spilled when the bisector of (home h, c) lies within radius of the vector:
    # (|z-c|^2 - |z-h|^2) / (2 |c-h|) <= radius, compared in d2 units (no division)
    excess = (dd - dd[:, :1]) - 2.0 * radius * gap
    excess[:, 0] = -np.inf  # the home first
    near = excess <= 0
    near[:, extra:] = False
    key = np.where(near, excess / np.maximum(gap, 1e-12), np.inf)  # 2 x (bisector distance - radius)
    pick = np.lexsort((c, key), axis=1)[:, :m]
    cells = np.where(near[r, pick], c[r, pick], -1).astype(np.int32)
    # spilled cells in ascending order: their bisector order only decides a cut at m
    cells[:, 1:] = np.sort(np.where(cells[:, 1:] < 0, np.iinfo(np.int32).max, cells[:, 1:]), axis=1)
    cells[cells == np.iinfo(np.int32).max] = -1
    unsure = np.zeros(len(d2), bool)
    if margin <= 0:
        return cells, unsure
    if k > 1:
        unsure |= dd[:, 1] - dd[:, 0] < margin  # the home
        unsure |= (np.abs(excess[:, 1:extra]) < margin).any(axis=1)  # a spill decision
    if k > extra:  # the candidate list's end, where the cell beyond it could be spilled
        unsure |= (dd[:, extra] - dd[:, extra - 1] < margin) & (excess[:, extra - 1:extra + 1].min(axis=1) < margin)
    if extra > m:  # the spill list's end: a near tie of the m-th and (m+1)-th nearest bisectors
        ks = np.argsort(key, axis=1, kind="stable")[:, m - 1:m + 1]
        k0, k1 = key[r, ks].T
        g = gap[r, ks].min(axis=1)
        with np.errstate(invalid="ignore"):  # inf - inf: fewer than m + 1 near cells, no tie
            # key = excess / gap, so its float32 error is that of d2 over the gap: compare in d2 units
            unsure |= np.isfinite(k1) & ((k1 - k0) * g < margin)
    return cells, unsure


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


def candidate_blocks(z: np.ndarray, threshold: float, n_home: int, block: int = BLOCK,
                     device: Optional[str] = None, z_error: float = 0.0):
    """Yields (r0, c0, hit) per block of one cell's members z (in the cell space, homes first):
    rows r0.. of the homes against columns c0.. (upper-triangular among homes, then every
    spilled column); hit is the bool matrix of the pairs (a < b) closer than the threshold's chord
    in z, with float32 slack. A superset of the pairs above the threshold (a projection only
    shrinks distances). z_error: a bound on how far each row of z lies from its exact
    projection (a stored float16 copy: float16_error); the chord is widened by twice it, so the
    filter still loses no pair."""
    n = len(z)
    zs = np.ascontiguousarray(z, dtype=np.float32)
    half = 0.5 * np.einsum("ij,ij->i", zs, zs)
    # |za - zb|^2 < chord^2  <=>  za.zb - |za|^2/2 - |zb|^2/2 > -chord^2/2 (= threshold - 1 unwidened)
    cut = -0.5 * (chord(threshold) + 2.0 * float(z_error)) ** 2 - RESCORE_SLACK if z_error else \
        float(threshold) - 1.0 - RESCORE_SLACK
    zt = ht = None
    if device is not None:
        import torch

        zt, ht = torch.from_numpy(zs).to(device), torch.from_numpy(half).to(device)
    for r0 in range(0, n_home, block):
        r1 = min(r0 + block, n_home)
        for c0 in range(r0, n, block):
            c1 = min(c0 + block, n)
            if zt is not None:
                hit = (zt[r0:r1] @ zt[c0:c1].T - ht[r0:r1, None] - ht[None, c0:c1] > cut).cpu().numpy()
            else:
                g = zs[r0:r1] @ zs[c0:c1].T
                g -= half[r0:r1, None]
                g -= half[None, c0:c1]
                hit = g > cut
            if c0 == r0:  # the diagonal block: each pair once
                hit &= np.arange(r0, r1)[:, None] < np.arange(c0, c1)[None, :]
            yield r0, c0, hit


def cell_candidates(z: np.ndarray, threshold: float, n_home: Optional[int] = None, block: int = BLOCK,
                    device: Optional[str] = None):
    """Candidate pairs among one cell's members z (candidate_blocks, collected): home x home
    (a < b) and home x spilled (a home, b spilled); n_home None: every member is home.
    Returns (a, b), positions in z."""
    n = len(z)
    n_home = n if n_home is None else int(n_home)
    found_a, found_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    if n_home > 0 and n >= 2:
        for r0, c0, hit in candidate_blocks(z, threshold, n_home, block, device):
            a, b = np.nonzero(hit)
            found_a.append(a.astype(np.int64) + r0), found_b.append(b.astype(np.int64) + c0)
    return np.concatenate(found_a), np.concatenate(found_b)


# A block whose projected filter passes more than this share of its pairs is compared in the full
# space instead: re-scoring a candidate (a gather of two rows) costs ~30 full-space products of a
# BLAS block, so past a few percent the filter costs more than it saves (clustered data, where
# the spread within a cluster lies outside the principal directions, passes nearly every pair).
UNSELECTIVE = 0.02
EXACT_SHARE = 0.5  # of all n(n-1)/2 pairs: cells that would compare more fall back to one cell
RESCORE_PAIRS = 4096  # candidates re-scored per step: 2 x 4096 rows x d float64 at most in memory


def cell_pairs(z: np.ndarray, threshold: float, n_home: Optional[int] = None,
               full: Union[None, np.ndarray, Callable] = None, block: int = BLOCK, device: Optional[str] = None,
               stats: Optional[dict] = None, z_error: float = 0.0):
    """Pairs with cosine > threshold among one cell's members (homes first, each group in
    sample_id order), found block by block: home x home (a < b) and home x spilled (a home, b
    spilled). full: the members' unit vectors, an array or a function of member positions (None:
    z are the unit vectors). In each block, candidates are the pairs within the threshold's
    chord in z; where that filter passes more than UNSELECTIVE of the block, the block is
    compared in the full space (float32) instead; either way candidates are re-scored in float64
    and only the pairs above the threshold are kept, so memory is bounded by the block, not by
    the cell. stats (optional) counts blocks, full-space blocks and candidates; z_error as
    candidate_blocks takes it. Returns (a, b, sim), positions in z."""
    n = len(z)
    n_home = n if n_home is None else int(n_home)
    none = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    if n_home == 0 or n < 2:
        return none
    zs = np.ascontiguousarray(z, dtype=np.float32)
    if full is None:
        full = zs
    members = (lambda pos: np.asarray(full(pos), dtype=np.float32)) if callable(full) else \
        (lambda pos: np.asarray(full[pos], dtype=np.float32))
    projected = full is not zs
    counts = {"blocks": 0, "full_space_blocks": 0, "candidates": 0}
    found_a, found_b, found_s = [], [], []
    rows_full = None  # the full vectors of the current row block, fetched once for its columns
    for r0, c0, hit in candidate_blocks(zs, threshold, n_home, block, device, z_error):
        r1, c1 = r0 + hit.shape[0], c0 + hit.shape[1]
        if c0 == r0:
            rows_full = None
        counts["blocks"] += 1
        if projected and hit.sum() > UNSELECTIVE * hit.size:
            counts["full_space_blocks"] += 1
            if rows_full is None:
                rows_full = members(np.arange(r0, r1))
            cols_full = rows_full if (c0, c1) == (r0, r1) else members(np.arange(c0, c1))
            hit &= (rows_full @ cols_full.T) > float(threshold) - RESCORE_SLACK
        a, b = np.nonzero(hit)
        if len(a) == 0:
            continue
        a, b = a.astype(np.int64) + r0, b.astype(np.int64) + c0
        counts["candidates"] += len(a)
        for k in range(0, len(a), RESCORE_PAIRS):
            pa, pb = a[k:k + RESCORE_PAIRS], b[k:k + RESCORE_PAIRS]
            sim = rescore(full, pa, pb)
            keep = sim > threshold
            if keep.any():
                found_a.append(pa[keep]), found_b.append(pb[keep]), found_s.append(sim[keep].astype(np.float32))
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
    if not found_a:
        return none
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)


def rescore(full: Union[np.ndarray, Callable], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of members a[k], b[k] in float64, one pair at a time (shape-independent); full: the
    members' unit vectors, or a function of member positions returning them (only the members
    that appear in a pair are fetched)."""
    if len(a) == 0:
        return np.zeros(0, np.float64)
    rows, inverse = np.unique(np.r_[a, b], return_inverse=True)
    vecs = full(rows) if callable(full) else full[rows]
    vecs = np.asarray(vecs, dtype=np.float64)
    return np.einsum("ij,ij->i", vecs[inverse[:len(a)]], vecs[inverse[len(a):]])


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
    """cell_pairs over an iterable of (member_keys, n_home, load) cells, load() returning the
    cell's (z, full, z_error) as cell_pairs takes them (the gather, e.g. from a memory map, runs in
    the pool, so a cell's vectors exist only while it is compared); returns, per cell in input
    order, (keys[a], keys[b], sim, counts). CPU: cells in a thread pool (numpy releases the GIL in
    BLAS); GPU: one cell after another on the device. Order of results never depends on threads."""
    def one(cell, device=None):
        keys, n_home, load = cell
        z, full, z_error = load()
        counts: dict = {}
        a, b, s = cell_pairs(z, threshold, n_home, full, device=device, stats=counts, z_error=z_error)
        return keys[a], keys[b], s, counts

    device = _torch_device()
    if device is not None:
        for cell in cells:
            yield one(cell, device)
        return
    import os
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

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


def training_sample(x: np.ndarray, sample_ids: Sequence, cells: int, cfg) -> SampleRows:
    """The sample k-means trains on, in the order of x (callers pass x in sample_id order)."""
    return SampleRows(x, np.flatnonzero(sample_mask(sample_ids, sample_fraction(len(x), cells, cfg))))


def float16_error(p: int, norm: float = 1.001) -> float:
    """A bound on |fl16(z) - z| for a vector z of p components and |z| <= norm: round to nearest
    is within 2^-11 of each normal component and 2^-25 of a subnormal one."""
    return 2.0 ** -11 * norm + 2.0 ** -25 * math.sqrt(p)


def membership_counts(assigned: np.ndarray, cells: int):
    """(members, homes) per cell, (cells,) int64 each, from assign_cells' (n, m) table."""
    members = np.zeros(cells, np.int64)
    for col in assigned.T:
        members += np.bincount(col[col >= 0], minlength=cells)
    return members, np.bincount(assigned[:, 0], minlength=cells).astype(np.int64)


SPILLED_BIT = 31  # memberships sort as one int64: cell << 32 | spilled << 31 | row


def cell_members(assigned: np.ndarray, members: np.ndarray, max_entries: int):
    """Yields (cell, rows, n_home) for each non-empty cell in cell order: the rows whose cells
    (assign_cells' table) include it, homes first, each group in row order. Memberships are
    sorted in passes over runs of cells holding at most max_entries of them (a larger cell on its
    own), so memory follows max_entries, not rows x cells per row."""
    if len(assigned) >= 2 ** SPILLED_BIT:
        raise ValueError(f"{len(assigned)} rows: the membership keys hold fewer than 2^31")
    ends = np.cumsum(members)
    lo = 0
    while lo < len(members):
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done + max_entries, side="right")))
        keys = []
        for j, col in enumerate(assigned.T):
            sel = np.flatnonzero((col >= lo) & (col < hi))
            keys.append((col[sel].astype(np.int64) << 32) | (int(j > 0) << SPILLED_BIT) | sel)
        key = np.concatenate(keys)
        del keys
        key.sort()
        bounds = np.flatnonzero(np.diff(key >> 32)) + 1
        for part in np.split(key, bounds):
            if len(part):
                spilled = (part >> SPILLED_BIT) & 1
                yield int(part[0] >> 32), part & ((1 << SPILLED_BIT) - 1), int(len(part) - spilled.sum())
        del key
        lo = hi


def cluster_pairs(x: np.ndarray, sample_ids: Sequence, threshold: float, cfg, stats: Optional[dict] = None):
    """In-process cluster-then-compare over x (n, d) unit float32 in sample_id order (an array or a
    memory map). Returns (i, j, sim): positions i < j with cosine > threshold where one's home
    cell is among the other's cells.

    Memory beyond x (cfg.dedup_memory_mb): the projection is stored in float16 (the candidate
    filter widened by its rounding bound, so no pair is lost) when it fits half the budget, and
    is computed cell by cell from the gathered vectors when it does not; the memberships are
    sorted in passes of an eighth of it; the cells in the pool hold their own vectors while they
    are compared."""
    import time

    n = len(x)
    budget = int(cfg.dedup_memory_mb) << 20
    clock = [time.perf_counter()]
    cells = default_cells(n, cfg)
    sample = training_sample(x, sample_ids, cells, cfg)
    model = fit_cells(sample, cells, cfg)
    # cells whose projected filter the sample shows to pass most pairs go to the full space at
    # once (the per-block rule below still catches the blocks the sample did not foresee)
    model.full_space = unselective_cells(model, sample, threshold)
    del sample
    clock.append(time.perf_counter())
    p = model.proj.shape[1] if model.proj is not None else 0
    stored = np.empty((n, p), np.float16) if p and n * p * 2 <= budget // 2 else None
    m = max(1, min(cfg.dedup_cells_per_vector, model.cells))
    assigned = np.empty((n, m), np.int32)
    radius = spill_radius(threshold, cfg)
    for c0 in range(0, n, 65536):  # projected once per chunk: for the cells, and kept when it fits
        xs = x[c0:c0 + 65536]
        zs = project(xs, model.proj)
        assigned[c0:c0 + len(xs)] = assign_cells(xs, model, m, radius, projected=zs)
        if stored is not None:
            stored[c0:c0 + len(xs)] = zs
    sz, hz = membership_counts(assigned, model.cells)
    clock.append(time.perf_counter())
    compared = int((hz * (hz - 1) // 2 + hz * (sz - hz)).sum())
    # the cells would compare at least EXACT_SHARE of what comparing every pair does (the data
    # does not cluster at this threshold): one cell of everything, in the full space, is cheaper
    exact = compared >= EXACT_SHARE * (n * (n - 1) // 2)
    z_error = float16_error(p)

    def cell(c, rows, n_home):
        def load():
            if exact:  # every row, in order: the input itself, not a gathered copy of it
                return np.asarray(x, dtype=np.float32), None, 0.0
            if p == 0 or model.full_space[c]:
                return np.asarray(x[rows], dtype=np.float32), None, 0.0
            if stored is not None:
                return stored[rows].astype(np.float32), (lambda pos: np.asarray(x[rows[pos]], dtype=np.float32)), z_error
            vecs = np.asarray(x[rows], dtype=np.float32)
            return project(vecs, model.proj), vecs, 0.0
        return rows, n_home, load

    if exact:
        stored = assigned = None
        groups = iter([cell(0, np.arange(n, dtype=np.int64), n)])
    else:
        max_entries = max(1, budget // 8 // 32)  # a key, its sort and the per-cell slices: ~32 bytes each
        groups = (cell(c, rows, h) for c, rows, h in cell_members(assigned, sz, max_entries) if h)
    parts_i, parts_j, parts_s = [], [], []
    counts = {"blocks": 0, "full_space_blocks": 0, "candidates": 0}
    for a, b, s, c in pairs_in_cells(groups, threshold):
        for key, value in c.items():
            counts[key] += value
        if len(a):
            parts_i.append(np.minimum(a, b)), parts_j.append(np.maximum(a, b)), parts_s.append(s)
    if stats is not None:
        clock.append(time.perf_counter())
        stats.update(cells=model.cells, largest_cell=int(sz.max(initial=0)), largest_home=int(hz.max(initial=0)),
                     spilled_per_vector=float(sz.sum() - n) / max(n, 1), compared=compared, exact_fallback=exact,
                     full_space_cells=int(model.full_space.sum()), projection_stored=stored is not None,
                     fit_s=clock[1] - clock[0], assign_s=clock[2] - clock[1], pairs_s=clock[3] - clock[2], **counts)
    if not parts_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return unique_pairs(np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s), n)
