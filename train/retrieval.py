"""Retrieval recall@k between paired image and text embeddings (pure numpy; row i of each is a pair).

Image-to-text recall@k: the fraction of images whose own text is among the k most similar texts.
Ties count against the pair (a constant similarity scores 0, not 1), so chance stays k/N.
"""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def ranks_of_pairs(similarity: np.ndarray) -> np.ndarray:
    """0-based rank of the true pair in each row: how many candidates score >= it, minus itself."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square, got {sim.shape}")
    true = np.diag(sim)[:, None]
    return (sim >= true).sum(axis=1) - 1


def recall_at_k(similarity: np.ndarray, ks=KS) -> dict[int, float]:
    ranks = ranks_of_pairs(similarity)
    return {k: float((ranks < k).mean()) for k in ks}


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, ks=KS, prefix: str = "val_") -> dict[str, float]:
    """{prefix}i2t_r{k} and {prefix}t2i_r{k} for L2-normalised embeddings (cosine similarity)."""
    sim = np.asarray(image_emb, dtype=np.float64) @ np.asarray(text_emb, dtype=np.float64).T
    out = {f"{prefix}i2t_r{k}": v for k, v in recall_at_k(sim, ks).items()}
    out.update({f"{prefix}t2i_r{k}": v for k, v in recall_at_k(sim.T, ks).items()})
    return out
