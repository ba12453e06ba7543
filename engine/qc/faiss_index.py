"""FAISS search for the QC filters: one index type per size, chosen by config.

Vectors are L2-normalised float32 and the metric is inner product, so every score is a cosine.
Exact (flat) search up to `exact_max` vectors, IVF-Flat, IVF-PQ or HNSW-Flat above it; IVF and flat
move to the GPU when faiss-gpu sees one. IVF-PQ keeps ~pq_m bytes per vector (a reference set of
MIMIC size, 377k x 768, is ~36 MB instead of 1.2 GB, cheap to broadcast to workers); its scores are
approximate, so the best `refine_k` candidates are re-scored exactly against the raw vectors (a
memory map of the bank's embeddings.npy serves: the page cache is shared by the workers of a node). All searches are knn searches in chunks of `query_chunk`
queries (HNSW's range_search aborts the process on large query sets, and GPU indexes have no
range search); a threshold search grows k until the last neighbour falls below the threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.core.errors import ConfigError, UserError

GPU_MAX_K = 2048  # faiss-gpu's largest k per search


def gpu_count() -> int:
    import faiss

    fn = getattr(faiss, "get_num_gpus", None)
    return int(fn()) if fn else 0


def wants_gpu(cfg) -> bool:
    if cfg.use_gpu == "never":
        return False
    n = gpu_count()
    if cfg.use_gpu == "always" and n == 0:
        raise ConfigError("qc.index.use_gpu is 'always' but faiss sees no GPU "
                          "(faiss-cpu installed, or no CUDA device)")
    return n > 0


def choose_kind(n: int, cfg) -> str:
    return "flat" if n <= cfg.exact_max else cfg.kind


def default_nlist(n: int, cfg) -> int:
    # 2*sqrt(n): k-means training cost grows with nlist^2 (40 points per list), and at 200k
    # vectors 894 lists with nprobe 16 already find the planted duplicates (bench_dedup)
    nlist = cfg.nlist or int(round(2 * math.sqrt(n)))
    # k-means needs about 39 points per centroid to train without faiss warnings
    return max(1, min(nlist, n // 39))


@dataclass
class SearchIndex:
    index: object  # a faiss.Index
    kind: str  # flat | ivf | ivfpq | hnsw
    dim: int
    on_gpu: bool
    chunk: int
    k0: int
    ef_search: int = 0
    vectors: object = None  # (ntotal, dim) unit float32 (array or memory map): exact re-scoring
    refine_k: int = 16

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours (cosine, id; id -1 where fewer exist), in chunks."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal))
        if self.on_gpu:
            k = min(k, GPU_MAX_K)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        sims = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        refine = self.kind == "ivfpq" and self.vectors is not None
        k_search = min(max(k, self.refine_k), self.ntotal) if refine else k
        for start in range(0, len(q), self.chunk):
            stop = start + self.chunk
            s, i = self.index.search(q[start:stop], k_search)
            if refine:
                s, i = self._rescore(q[start:stop], i, k)
            sims[start:stop], ids[start:stop] = s, i
        return sims, ids

    def _rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines of the PQ candidates, best k kept (ties: lower id)."""
        safe = np.where(cand >= 0, cand, 0)
        exact = np.einsum("qd,qkd->qk", q, np.asarray(self.vectors[safe.ravel()], np.float32).reshape(*cand.shape, -1))
        exact = np.where(cand >= 0, exact, -np.inf).astype(np.float32)
        order = np.lexsort((cand, -exact), axis=1)[:, :k]
        ids = np.take_along_axis(cand, order, axis=1)
        return np.where(ids >= 0, np.take_along_axis(exact, order, axis=1), -np.inf).astype(np.float32), ids

    def max_similarity(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.search(queries, 1)
        return sims[:, 0], ids[:, 0]

    def neighbours_above(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every indexed vector with cosine > threshold to each query, as CSR (lims, ids, sims).

        Starts at k0 neighbours and multiplies k by 4 for the queries whose k-th neighbour still
        passes, so a large duplicate group is found whole without a range search."""
        n = len(queries)
        found_ids: list = [None] * n
        found_sims: list = [None] * n
        todo = np.arange(n)
        k = self.k0
        while len(todo):
            sims, ids = self.search(queries[todo], k)
            k_used = sims.shape[1]
            full = (sims[:, -1] > threshold) & (ids[:, -1] >= 0) & (k_used < self.ntotal)
            if self.on_gpu and k_used >= GPU_MAX_K:
                full[:] = False  # cannot grow further on the GPU; keep what we have
            for row in np.flatnonzero(~full):
                hit = (sims[row] > threshold) & (ids[row] >= 0)
                found_ids[todo[row]] = ids[row][hit]
                found_sims[todo[row]] = sims[row][hit]
            todo = todo[full]
            k *= 4
        counts = np.array([len(x) for x in found_ids], dtype=np.int64)
        lims = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=lims[1:])
        if n == 0 or lims[-1] == 0:
            return lims, np.empty(0, np.int64), np.empty(0, np.float32)
        return lims, np.concatenate(found_ids).astype(np.int64), np.concatenate(found_sims).astype(np.float32)


def build_index(vectors: np.ndarray, cfg, kind: str | None = None) -> SearchIndex:
    """An index over `vectors` (n, d), unit-norm float32. `kind` overrides the size rule."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise UserError(f"cannot build a search index over an empty or non 2-d set (shape {x.shape})")
    n, d = x.shape
    kind = kind or choose_kind(n, cfg)
    gpu = wants_gpu(cfg) and kind != "hnsw"  # faiss-gpu has no HNSW; it stays on the CPU
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = default_nlist(n, cfg)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # fixed k-means seed: the same vectors give the same cells
        # Evenly spaced training rows, about 40 per list: deterministic (the caller's order is
        # sample_id order) and enough for k-means without faiss's too-few-points warning.
        step = max(1, n // (40 * nlist))
        index.train(x[::step])
        index.nprobe = min(cfg.nprobe, nlist)
    elif kind == "ivfpq":
        nlist = default_nlist(n, cfg)
        m = cfg.pq_m
        if d % m:
            raise ConfigError(f"qc.index.pq_m: {m} does not divide the embedding dimension {d}")
        bits = 8 if n >= 256 * 39 else max(1, int(math.log2(max(n // 39, 2))))  # PQ k-means needs ~39 rows a centroid
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        step = max(1, n // max(40 * nlist, 256 * 40))
        index.train(x[::step])
        index.nprobe = min(cfg.nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
    else:
        raise ConfigError(f"qc.index.kind: unknown index kind {kind!r} (flat, ivf, ivfpq, hnsw)")
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if kind == "hnsw" and cfg.hnsw_reproducible:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(x)
        finally:
            faiss.omp_set_num_threads(threads)
    else:
        index.add(x)
    return SearchIndex(index=index, kind=kind, dim=d, on_gpu=gpu, chunk=cfg.query_chunk,
                       k0=cfg.k, ef_search=cfg.hnsw_ef_search, vectors=x if kind == "ivfpq" else None,
                       refine_k=cfg.refine_k)


def save_index(idx: SearchIndex, path) -> None:
    import faiss

    index = faiss.index_gpu_to_cpu(idx.index) if idx.on_gpu else idx.index
    faiss.write_index(index, str(path))


def load_index(path, cfg, kind: str, vectors=None) -> SearchIndex:
    """A saved index; `vectors` (the indexed unit vectors, e.g. a memory map) lets IVF-PQ re-score."""
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise UserError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0]})") from None
    gpu = wants_gpu(cfg) and kind != "hnsw"
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    return SearchIndex(index=index, kind=kind, dim=int(index.d), on_gpu=gpu, chunk=cfg.query_chunk,
                       k0=cfg.k, ef_search=cfg.hnsw_ef_search, vectors=vectors, refine_k=cfg.refine_k)
