"""FAISS filters: input validation, reference/privacy semantics, and near-duplicate removal in
sample_id order (same kept set for any input order, with every index type)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.core.config import IndexConfig
from engine.core.errors import ConfigError, UserError
from engine.qc.faiss_index import build_index, default_nlist
from engine.qc.filters import (greedy_keep, near_duplicates, privacy_filter, reference_filter,
                               unit_vectors)

EXACT = IndexConfig()
IVF = IndexConfig(exact_max=10, kind="ivf", nlist=8, nprobe=8, dedup_method="index")
HNSW = IndexConfig(exact_max=10, kind="hnsw", dedup_method="index")
CLUSTER = IndexConfig(exact_max=10, dedup_cells=8, dedup_train_per_cell=16)  # the default above exact_max


def unit(rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(n=600, d=64, groups=40, size=3, noise=0.05, seed=0):
    """Random unit vectors plus `groups` near-duplicate groups (cosine to the base about 0.999)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    for g in range(groups):
        base = g * size
        for m in range(1, size):
            x[base + m] = x[base] + noise * rng.standard_normal(d)
    return unit(x)


# ------------------------------------------------------------ validation

@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 4)), "row 0 (sample_id 'a') is a zero vector"),
    (np.array([[1, 0, 0, 0], [np.nan, 1, 0, 0], [0, 1, 0, 0]]), "row 1 (sample_id 'b') contains NaN"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [np.inf, 0, 0, 0]]), "row 2 (sample_id 'c') contains NaN or infinite"),
    (np.ones(4), "expected a 2-d array"),
])
def test_bad_vectors_name_the_row(bad, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        unit_vectors(bad, "input", ids=["a", "b", "c"])


def test_dimension_mismatch_with_the_bank():
    bank = unit(np.eye(8)[:3])
    with pytest.raises(UserError, match="dimension 4 does not match the expected 8"):
        reference_filter(unit(np.ones((2, 4))), bank, 0.5, EXACT)


def test_empty_bank_and_empty_privacy_set_are_errors():
    with pytest.raises(UserError, match="reference filter: the reference set is empty"):
        reference_filter(unit(np.ones((2, 4))), np.zeros((0, 4)), 0.5, EXACT)
    with pytest.raises(UserError, match="privacy filter: the reference set is empty"):
        privacy_filter(unit(np.ones((2, 4))), np.zeros((0, 4)), 0.9, EXACT)


def test_nan_in_the_bank_is_an_error():
    bank = np.array([[1.0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(UserError, match="reference filter reference set: row 1 contains NaN"):
        reference_filter(unit([[1, 0, 0]]), bank, 0.5, EXACT)


def test_threshold_outside_cosine_range():
    with pytest.raises(UserError, match="outside"):
        reference_filter(unit([[1, 0]]), unit([[1, 0]]), 1.5, EXACT)


def test_use_gpu_always_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="use_gpu is 'always'"):
        build_index(unit(np.eye(4)), IndexConfig(use_gpu="always"))


# ------------------------------------------------------------ reference and privacy

def test_reference_filter_rejects_strictly_above_threshold():
    bank = unit([[1, 0, 0], [0, 1, 0]])
    c = np.cos(np.radians(60))  # exactly 0.5 to the first bank vector
    queries = unit([[1, 0, 0], [c, 0, np.sin(np.radians(60))], [0, 0, 1], [0.1, 0.995, 0]])
    res = reference_filter(queries, bank, 0.5, EXACT)
    assert res.reject.tolist() == [True, False, False, True]
    assert res.nearest.tolist()[0] == 0 and res.nearest.tolist()[3] == 1
    np.testing.assert_allclose(res.similarity[:3], [1.0, 0.5, 0.0], atol=1e-6)


def test_reference_filter_normalises_unnormalised_input():
    res = reference_filter(np.array([[10.0, 0.0]]), np.array([[0.5, 0.0]]), 0.99, EXACT)
    assert res.reject.tolist() == [True]
    assert res.similarity[0] == pytest.approx(1.0)


def test_privacy_filter_finds_the_copied_training_image():
    real = planted(n=300, groups=0, seed=3)
    rng = np.random.default_rng(4)
    synthetic = planted(n=20, groups=0, seed=5)
    synthetic[7] = real[123] + 0.01 * rng.standard_normal(real.shape[1])
    res = privacy_filter(synthetic, real, 0.97, EXACT)
    assert np.flatnonzero(res.reject).tolist() == [7]
    assert res.nearest[7] == 123


# ------------------------------------------------------------ near-duplicates

def test_chain_keeps_both_ends():
    # a~b and b~c pass, a~c does not: b is a duplicate of a, c is kept (b was dropped)
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.2), np.sin(0.2)])
    c = np.array([np.cos(0.4), np.sin(0.4)])
    t = float(np.cos(0.25))
    res = near_duplicates(np.stack([c, a, b]), ["s2", "s0", "s1"], t, EXACT)
    assert res.keep.tolist() == [True, True, False]
    assert res.duplicate_of == [None, None, "s0"]
    assert res.similarity[2] == pytest.approx(np.cos(0.2), abs=1e-6)


def test_duplicate_points_at_the_most_similar_earlier_kept_sample():
    x = unit([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0.0], [0.75, 0.66, 0]])
    # s2: 0.6 to s0, 0.8 to s1 -> duplicate of s1. s3: 0.75 to s0, 0.66 to s1, 0.98 to s2, but s2
    # was dropped, so it matches the best *kept* earlier sample, s0.
    res = near_duplicates(x, ["s0", "s1", "s2", "s3"], 0.7, EXACT)
    assert res.keep.tolist() == [True, True, False, False]
    assert res.duplicate_of[2] == "s1"
    assert res.duplicate_of[3] == "s0"


def test_exact_copies_tie_to_the_earliest():
    v = unit([[1, 2, 3]])[0]
    res = near_duplicates(np.stack([v, v, v]), ["c", "a", "b"], 0.99, EXACT)
    assert res.keep.tolist() == [False, True, False]
    assert res.duplicate_of == ["a", None, "a"]


def test_repeated_sample_id_is_an_error():
    with pytest.raises(UserError, match="sample_id 'x' appears more than once"):
        near_duplicates(unit(np.eye(3)), ["x", "y", "x"], 0.9, EXACT)


def test_empty_input_is_fine():
    res = near_duplicates(np.zeros((0, 4)), [], 0.9, EXACT)
    assert res.keep.size == 0 and res.pairs == 0


@pytest.mark.parametrize("cfg, method", [(EXACT, "flat"), (IVF, "ivf"), (HNSW, "hnsw"), (CLUSTER, "cluster")],
                         ids=["exact", "ivf", "hnsw", "cluster"])
def test_same_kept_set_for_any_input_order(cfg, method):
    x = planted()
    ids = [f"id{i:04d}" for i in range(len(x))]
    ref = near_duplicates(x, ids, 0.97, cfg)
    assert ref.method == method
    kept_ref = {ids[i] for i in np.flatnonzero(ref.keep)}
    assert len(kept_ref) == len(x) - 40 * 2
    rng = np.random.default_rng(11)
    for _ in range(3):
        perm = rng.permutation(len(x))
        res = near_duplicates(x[perm], [ids[p] for p in perm], 0.97, cfg)
        assert {ids[p] for p, k in zip(perm, res.keep) if k} == kept_ref
        assert {ids[p]: d for p, d in zip(perm, res.duplicate_of)} == dict(zip(ids, ref.duplicate_of))


def test_group_larger_than_k_is_found_whole():
    x = planted(n=200, groups=0)
    rng = np.random.default_rng(2)
    x[:50] = unit(x[0] + 0.01 * rng.standard_normal((50, x.shape[1])))  # one group of 50
    res = near_duplicates(x, [f"{i:03d}" for i in range(200)], 0.97, IndexConfig(k=4))
    assert res.keep[:50].sum() == 1 and res.keep[50:].all()
    assert res.pairs == 50 * 49 // 2


def test_greedy_keep_directly():
    # pairs over positions 0..4: (0,1), (1,2), (2,3), (0,4)
    i = np.array([0, 1, 2, 0])
    j = np.array([1, 2, 3, 4])
    s = np.array([0.99, 0.99, 0.99, 0.98], np.float32)
    keep, match, _ = greedy_keep(5, i, j, s)
    assert keep.tolist() == [True, False, True, False, False]
    assert match.tolist() == [-1, 0, -1, 2, 0]


def test_ivf_nlist_is_bounded_by_training_points():
    assert default_nlist(1000, IndexConfig()) == 25  # 1000 // 39
    assert default_nlist(200_000, IndexConfig(nlist=1024)) == 1024
    assert default_nlist(200_000, IndexConfig()) == 894  # 2 * sqrt(n)
