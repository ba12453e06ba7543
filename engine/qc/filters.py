"""Image QC filters over embeddings: pure functions, no Ray.

All similarities are cosines (inner products of L2-normalised vectors); "too close" always means
strictly greater than the threshold.

- reference_filter: reject a sample whose best cosine to the bank of problematic images exceeds
  the threshold (the paper's rule, 0.5 by default).
- near_duplicates: walk the samples in sample_id order; a sample is a duplicate when its cosine
  to an earlier *kept* sample exceeds the threshold, and then points at the most similar such
  sample (the earliest on ties). The kept set depends only on the (sample_id, vector) pairs,
  never on input order or batching. A chain a~b~c where only a~b and b~c pass keeps a and c.
  The pairs come from exact (flat) search up to index.exact_max vectors, above it from
  cluster-then-compare (engine/qc/cluster_dedup.py; index.dedup_method "cluster", the default)
  or a threshold search of an IVF/HNSW index ("index"). The walk is the same for all.
- privacy_filter: reject a sample whose best cosine to any real training image exceeds the
  threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from engine.core.errors import UserError
from engine.qc.faiss_index import SearchIndex, build_index


@dataclass
class SimilarityResult:
    reject: np.ndarray  # bool, input order
    similarity: np.ndarray  # float32: best cosine to the reference set
    nearest: np.ndarray  # int64: row of that best match in the reference set


@dataclass
class DedupResult:
    keep: np.ndarray  # bool, input order
    duplicate_of: list  # sample_id of the kept sample each duplicate matched; None when kept
    similarity: np.ndarray  # float32: cosine to that sample; 0 when kept
    pairs: int  # candidate pairs above the threshold the index found
    method: str = "flat"  # where the pairs came from: flat | ivf | hnsw | cluster


def _row_name(i: int, ids: Optional[Sequence]) -> str:
    return f"row {i} (sample_id {ids[i]!r})" if ids is not None else f"row {i}"


UNIT_CHUNK = 8192  # rows validated and normalised at a time: temporaries stay ~25 MB at 768-d, whatever n


def unit_vectors(x, what: str, dim: Optional[int] = None, ids: Optional[Sequence] = None,
                 out: Optional[np.ndarray] = None, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """Validate an (n, d) embedding matrix and return it L2-normalised float32.

    Zero and non-finite rows are errors, not silently dropped: a zero vector has no direction,
    so its cosine to anything is undefined. Works chunk by chunk into `out` (a new array by
    default; x itself to normalise in place); `rows` takes x's rows in that order (a gather done
    chunk by chunk, so the result is the only copy)."""
    arr = np.asarray(x)
    if arr.dtype == object:
        raise UserError(f"{what}: embeddings have ragged rows (different lengths)")
    if arr.ndim != 2:
        raise UserError(f"{what}: expected a 2-d array (n, dim), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{what}: embeddings must be numeric, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise UserError(f"{what}: embedding dimension {arr.shape[1]} does not match the expected {dim} "
                        "(embedded with a different model?)")
    n = len(arr) if rows is None else len(rows)
    if out is None:
        out = np.empty((n, arr.shape[1]), np.float32)
    for c0 in range(0, n, UNIT_CHUNK):
        c1 = min(c0 + UNIT_CHUNK, n)
        chunk = np.asarray(arr[c0:c1] if rows is None else arr[rows[c0:c1]], dtype=np.float32)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = ~np.isfinite(np.asarray(arr, dtype=np.float32)).all(axis=1)
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{what}: {_row_name(i, ids)} contains NaN or infinite values "
                            f"({int(bad.sum())} such rows)")
        norms = np.linalg.norm(chunk, axis=1)
        if (norms < 1e-12).any():
            zero = np.linalg.norm(np.asarray(arr, dtype=np.float32), axis=1) < 1e-12
            i = int(np.flatnonzero(zero)[0])
            raise UserError(f"{what}: {_row_name(i, ids)} is a zero vector (cosine undefined; "
                            f"{int(zero.sum())} such rows)")
        out[c0:c1] = chunk / norms[:, None]
    return out


def _check_threshold(threshold: float, what: str) -> float:
    t = float(threshold)
    if not -1.0 <= t <= 1.0:
        raise UserError(f"{what}: threshold {t} outside [-1, 1] (it is a cosine)")
    return t


def _reference_index(reference, what: str, index_cfg) -> SearchIndex:
    if isinstance(reference, SearchIndex):
        if reference.ntotal == 0:
            raise UserError(f"{what}: the reference set is empty")
        return reference
    ref = np.asarray(reference)
    if ref.ndim != 2 or len(ref) == 0:
        raise UserError(f"{what}: the reference set is empty (shape {ref.shape})")
    return build_index(unit_vectors(ref, f"{what} reference set"), index_cfg)


def nearest_reference(embeddings, reference, threshold: float, index_cfg, what: str,
                      ids: Optional[Sequence] = None) -> SimilarityResult:
    """Best cosine of each embedding to a reference set (array or prebuilt SearchIndex)."""
    t = _check_threshold(threshold, what)
    index = _reference_index(reference, what, index_cfg)
    q = unit_vectors(embeddings, f"{what} input", dim=index.dim, ids=ids)
    if len(q) == 0:
        return SimilarityResult(np.zeros(0, bool), np.zeros(0, np.float32), np.zeros(0, np.int64))
    sims, nearest = index.max_similarity(q)
    return SimilarityResult(reject=sims > t, similarity=sims.astype(np.float32), nearest=nearest.astype(np.int64))


def reference_filter(embeddings, bank, threshold: float, index_cfg, ids=None) -> SimilarityResult:
    """Reject samples too similar to any problematic image of the bank."""
    return nearest_reference(embeddings, bank, threshold, index_cfg, "reference filter", ids)


def privacy_filter(embeddings, real, threshold: float, index_cfg, ids=None) -> SimilarityResult:
    """Reject samples too similar to any real training image (memorisation / leakage)."""
    return nearest_reference(embeddings, real, threshold, index_cfg, "privacy filter", ids)


def _sorted_order(sample_ids: Sequence) -> np.ndarray:
    ids = [str(s) for s in sample_ids]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    for a, b in zip(order, order[1:]):
        if ids[a] == ids[b]:
            raise UserError(f"near-duplicate removal: sample_id {ids[a]!r} appears more than once "
                            f"(rows {min(a, b)} and {max(a, b)})")
    return np.asarray(order, dtype=np.int64)


def candidate_pairs(unit: np.ndarray, threshold: float, index_cfg, kind: Optional[str] = None,
                    index: Optional[SearchIndex] = None):
    """All pairs (i < j) of rows of `unit` with cosine > threshold that the index finds.

    Returns (i, j, sim) arrays. Approximate indexes may miss pairs; a pair found from either
    side counts once. `index` (over `unit`, same row order) skips building one."""
    index = index if index is not None else build_index(unit, index_cfg, kind=kind)
    lims, nbr, sims = index.neighbours_above(unit, threshold)
    query = np.repeat(np.arange(len(unit), dtype=np.int64), np.diff(lims))
    lo, hi = np.minimum(query, nbr), np.maximum(query, nbr)
    mask = lo != hi
    if not mask.any():
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    key = lo[mask] * len(unit) + hi[mask]
    key, first = np.unique(key, return_index=True)
    return key // len(unit), key % len(unit), sims[mask][first]


def greedy_keep(n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray):
    """The sample_id-order walk over pairs (i < j, positions in sorted order).

    Returns keep (bool), match (int, -1 when kept), match_sim, in sorted order."""
    keep = np.ones(n, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    match_sim = np.zeros(n, dtype=np.float32)
    # group the earlier partners of each j; visiting j ascending means partner i < j is final
    order = np.lexsort((i, j))
    i, j, sim = i[order], j[order], sim[order]
    bounds = np.flatnonzero(np.diff(j)) + 1
    for grp_i, grp_sim, jj in zip(np.split(i, bounds), np.split(sim, bounds), j[np.r_[0, bounds]] if len(j) else []):
        alive = keep[grp_i]
        if not alive.any():
            continue
        cand_i, cand_sim = grp_i[alive], grp_sim[alive]
        best = np.lexsort((cand_i, -cand_sim))[0]  # highest cosine, earliest on ties
        keep[jj] = False
        match[jj] = cand_i[best]
        match_sim[jj] = cand_sim[best]
    return keep, match, match_sim


def dedup_method(n: int, cfg, kind: Optional[str] = None) -> str:
    """How the pairs of n vectors are found: flat | ivf | hnsw | cluster (`kind` overrides)."""
    if kind:
        return kind
    if n <= cfg.exact_max:
        return "flat"
    return "cluster" if cfg.dedup_method == "cluster" else cfg.kind


def walk_pairs(a: Sequence, b: Sequence, sim) -> dict:
    """The sample_id-order walk over pairs named by sample_id (a[k], b[k], sim[k]), for callers
    that hold only the pairs (the distributed path): a row in no pair is kept and changes
    nothing, so the walk runs over the ids that appear in a pair. Repeats of a pair count once.
    Returns {duplicate sample_id: (sample_id of the kept sample it matched, cosine)}."""
    if len(a) == 0:
        return {}
    a = np.asarray(a).astype(str)
    b = np.asarray(b).astype(str)
    names, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)  # sorted: sample_id order
    pa, pb = inverse[:len(a)], inverse[len(a):]
    lo, hi = np.minimum(pa, pb).astype(np.int64), np.maximum(pa, pb).astype(np.int64)
    key, first = np.unique(lo * len(names) + hi, return_index=True)
    keep, match, match_sim = greedy_keep(len(names), key // len(names), key % len(names),
                                         np.asarray(sim, np.float32)[first])
    return {str(names[p]): (str(names[match[p]]), float(match_sim[p])) for p in np.flatnonzero(~keep)}


def near_duplicates(embeddings, sample_ids: Sequence, threshold: float, index_cfg,
                    kind: Optional[str] = None, in_place: bool = False) -> DedupResult:
    """Global near-duplicate removal in sample_id order (see the module docstring). `kind`
    (flat, ivf, hnsw, cluster) overrides the size rule. in_place: the caller's float32 matrix may
    be normalised where it is (a caller that owns it saves a copy of the input)."""
    t = _check_threshold(threshold, "near-duplicate removal")
    arr = np.asarray(embeddings)
    if len(sample_ids) != len(arr):
        raise UserError(f"near-duplicate removal: {len(arr)} embeddings but {len(sample_ids)} sample_ids")
    if len(arr) == 0:
        return DedupResult(np.zeros(0, bool), [], np.zeros(0, np.float32), 0)
    order = _sorted_order(sample_ids)
    identity = bool((order == np.arange(len(order))).all())
    # one normalised copy in sample_id order (or none: in_place, already in order, float32)
    in_place = in_place and identity and arr.dtype == np.float32 and arr.flags.writeable and arr.flags.c_contiguous
    unit = unit_vectors(arr, "near-duplicate removal", ids=sample_ids, out=arr if in_place else None,
                        rows=None if identity else order)
    method = dedup_method(len(unit), index_cfg, kind)
    if method == "cluster":
        from engine.qc.cluster_dedup import cluster_pairs

        i, j, sim = cluster_pairs(unit, [str(sample_ids[o]) for o in order], t, index_cfg)
    else:
        i, j, sim = candidate_pairs(unit, t, index_cfg, kind=method)
    keep_s, match_s, sim_s = greedy_keep(len(unit), i, j, sim)
    keep = np.empty(len(arr), bool)
    keep[order] = keep_s
    sims = np.empty(len(arr), np.float32)
    sims[order] = sim_s
    dup_of: list = [None] * len(arr)
    for pos in np.flatnonzero(~keep_s):
        dup_of[order[pos]] = str(sample_ids[order[match_s[pos]]])
    return DedupResult(keep=keep, duplicate_of=dup_of, similarity=sims, pairs=len(i), method=method)
