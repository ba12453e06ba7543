"""Cluster-then-compare near-duplicate removal: the cell pairs are exactly the pairs above the
threshold, the kept set matches exact search on planted groups (decoys just below the threshold
survive), it does not depend on input order or on the number of Ray partitions, and
`syncxr dedup` writes the table."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main as cli_main
from engine.core.config import IndexConfig
from engine.core.errors import UserError
from engine.qc import cluster_dedup as cd
from engine.qc.filters import near_duplicates, walk_pairs

T = 0.97
# small sets: exact_max=1 so "auto" picks the cluster path; 16 cells, 16 training rows each
CLUSTER = IndexConfig(exact_max=1, dedup_cells=16, dedup_train_per_cell=16, dedup_project_dim=16)
EXACT = IndexConfig()


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cone(n=3000, d=64, groups=60, decoys=40, seed=0):
    """Vectors in a narrow cone with cluster structure (pairwise cosine ~0.7-0.9), planted groups of
    2-4 (cosine >= 0.985 to the group's first member) and decoys at 0.95-0.965 to their partner."""
    rng = np.random.default_rng(seed)
    axis = unit(rng.standard_normal((1, d)))[0]
    centres = rng.standard_normal((30, d)) * 0.5 / np.sqrt(d)
    x = unit(axis + centres[rng.integers(0, 30, n)] + rng.standard_normal((n, d)) * 0.35 / np.sqrt(d))
    return plant(x, rng, groups, decoys)


def clustered(n=6000, d=256, centres=10, groups=40, decoys=30, seed=0):
    """Centres around a common direction (cosine ~0.7 between them), each row its centre plus
    isotropic noise (cosine ~0.85 inside a centre): the noise lies mostly outside the principal
    directions, so a projection onto them keeps nearly every pair of a centre as a candidate."""
    rng = np.random.default_rng(seed)
    axis = unit(rng.standard_normal((1, d)))[0]
    c = unit(axis + rng.standard_normal((centres, d)) * 0.75 / np.sqrt(d))
    x = unit(c[rng.integers(0, centres, n)] + rng.standard_normal((n, d)) * 0.42 / np.sqrt(d))
    return plant(x, rng, groups, decoys)


def plant(x, rng, groups, decoys):
    """Plant groups of 2-4 (cosine >= 0.985 to the group's first member) and decoys (0.95-0.965 to
    their partner) into x; returns (x, group of each row or -1, decoy partner or -1)."""
    n, d = x.shape
    perm = rng.permutation(n)
    pos, group, decoy = 0, np.full(n, -1), np.full(n, -1)

    def near(base, cos):
        u = rng.standard_normal(d)
        u -= (u @ base) * base
        return unit([base + np.sqrt(1 / cos ** 2 - 1) * u / np.linalg.norm(u)])[0]

    for g in range(groups):
        size = int(rng.integers(2, 5))
        mem = perm[pos:pos + size]
        pos += size
        for m in mem[1:]:
            x[m] = near(x[mem[0]], rng.uniform(0.985, 0.998))
        group[mem] = g
    for _ in range(decoys):
        b, dd = perm[pos], perm[pos + 1]
        pos += 2
        x[dd] = near(x[b], rng.uniform(0.95, 0.965))
        decoy[dd] = b
    return x.astype(np.float32), group, decoy


def ids_of(n):
    return [f"s{i:05d}" for i in range(n)]


def brute_pairs(x, t):
    g = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(g > t, k=1))
    return set(zip(i.tolist(), j.tolist()))


# ------------------------------------------------------------ pure functions

def test_cell_pairs_are_exactly_the_pairs_above_the_threshold():
    x, _, _ = cone(n=700)
    a, b, s = cd.cell_pairs(x, T, block=128)  # several blocks: the triangle is covered once
    got = list(zip(a.tolist(), b.tolist()))
    assert len(got) == len(set(got))
    assert set(got) == brute_pairs(x, T) and len(got) > 50
    np.testing.assert_allclose(s, np.einsum("ij,ij->i", x[a].astype(np.float64), x[b].astype(np.float64)), atol=1e-6)


def test_cell_pairs_compare_homes_with_everyone_and_never_spilled_with_spilled():
    x, _, _ = cone(n=700)
    homes = 300
    a, b, _ = cd.cell_pairs(x, T, n_home=homes, block=128)
    got = list(zip(a.tolist(), b.tolist()))
    want = {(i, j) for i, j in brute_pairs(x, T) if i < homes}  # i < j: a spilled i has a spilled j
    assert len(got) == len(set(got)) and set(got) == want
    assert len(want) > 20 and len(brute_pairs(x, T)) > len(want)  # some spilled-spilled pairs left out
    assert len(cd.cell_pairs(x, T, n_home=0)[0]) == 0


def test_an_unselective_projection_stays_within_its_memory_budget():
    """Clustered data: in 16 principal directions the pairs of a centre are all candidates, and the
    cells are made large on purpose (4 cells of ~1,500 rows). The peak stays within the budget
    (dedup_memory_mb, 1 MB here) plus, per thread, the cell being compared: its vectors and one
    block's products (re-scoring every candidate pair of a cell at once would hold ~4 GB); exactly
    the pairs above the threshold are found."""
    import os
    import tracemalloc

    x, group, decoy = clustered()
    cfg = IndexConfig(exact_max=1, dedup_cells=4, dedup_train_per_cell=16, dedup_project_dim=16, dedup_memory_mb=1)
    sims = x @ x.T
    assert np.median(sims[group == -1][:, group == -1]) < 0.9  # not a cone: the centres are apart
    stats: dict = {}
    tracemalloc.start()
    i, j, s = cd.cluster_pairs(x, ids_of(len(x)), T, cfg, stats)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the sample marks the cells unselective: compared in the full space without a projected pass
    assert stats["full_space_cells"] == 4 and not stats["exact_fallback"]
    side = min(cd.BLOCK, stats["largest_cell"])
    per_cell = stats["largest_cell"] * x.shape[1] * 4 + 3 * side * side * 4  # vectors; products, mask, copy
    bound = (1 << 20) + (os.cpu_count() or 1) * per_cell
    assert peak < bound, f"peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"
    assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, T)
    np.testing.assert_allclose(s, [float(x[a].astype(np.float64) @ x[b].astype(np.float64)) for a, b in zip(i, j)],
                               atol=1e-6)
    kept = near_duplicates(x, ids_of(len(x)), T, cfg)
    assert kept.keep.tolist() == near_duplicates(x, ids_of(len(x)), T, EXACT).keep.tolist()
    assert kept.keep[decoy >= 0].all()


def test_a_float16_copy_of_the_projection_loses_no_pair_with_the_widened_chord():
    """The worst case of rounding: pairs whose every component rounds away from the partner (a up
    to its float16 by 0.49 of a unit in the last place, b down), about one chord apart. Rounded,
    pairs inside the chord fall outside the plain filter; none outside the chord widened by twice
    the bound."""
    rng = np.random.default_rng(3)
    p, ulp, n_pairs = 128, 2.0 ** -14, 200  # float16's spacing on [1/16, 1/8), where every value lies
    a16 = rng.integers(1024, 1080, (n_pairs, p)) * ulp
    steps = 355 + (rng.random((n_pairs, p)) < np.linspace(0, 1, n_pairs)[:, None])  # 355 or 356 units apart
    b16 = a16 + steps * ulp
    assert np.linalg.norm(b16, axis=1).max() < 1  # as projections of unit vectors are
    z = np.concatenate([a16 + 0.49 * ulp, b16 - 0.49 * ulp]).astype(np.float32)  # row k and n_pairs + k
    z16 = z.astype(np.float16).astype(np.float32)
    assert np.array_equal(z16, np.concatenate([a16, b16]).astype(np.float32))
    assert np.linalg.norm(z16 - z, axis=1).max() <= cd.float16_error(p)
    inside = {(k, n_pairs + k) for k in range(n_pairs)
              if np.linalg.norm(z[k].astype(np.float64) - z[n_pairs + k]) < cd.chord(T)}
    assert len(inside) >= 20

    def found(zz, z_error):
        hit = np.zeros((len(zz), len(zz)), bool)
        for r0, c0, h in cd.candidate_blocks(zz, T, len(zz), block=len(zz), z_error=z_error):
            hit[r0:r0 + h.shape[0], c0:c0 + h.shape[1]] = h
        return inside & set(zip(*(v.tolist() for v in np.nonzero(hit))))

    assert found(z, 0.0) == inside
    assert len(found(z16, 0.0)) < len(inside)  # rounding alone moves pairs out of the plain chord
    assert found(z16, cd.float16_error(p)) == inside


def test_cell_members_in_passes_are_the_cells_of_one_sort():
    """Every pass size (one membership, a few, all) yields each cell's rows as one sort of the
    whole table does: homes first, each group in row order."""
    rng = np.random.default_rng(4)
    n, m, cells = 500, 4, 23
    assigned = np.full((n, m), -1, np.int32)
    for r in range(n):
        k = int(rng.integers(1, m + 1))
        assigned[r, :k] = rng.choice(cells - 3, k, replace=False)  # the last 3 cells stay empty
    members, homes = cd.membership_counts(assigned, cells)
    want = []
    for c in range(cells):
        home = np.flatnonzero(assigned[:, 0] == c)
        spilled = np.flatnonzero((assigned[:, 1:] == c).any(axis=1))
        if len(home) + len(spilled):
            want.append((c, home.tolist() + spilled.tolist(), len(home)))
    assert [w[0] for w in want] == np.flatnonzero(members).tolist()
    assert [len(w[1]) for w in want] == members[members > 0].tolist() and homes.sum() == n
    for max_entries in (1, 37, n * m):
        got = [(c, rows.tolist(), h) for c, rows, h in cd.cell_members(assigned, members, max_entries)]
        assert got == want, max_entries


def test_the_memory_budget_chooses_a_stored_or_a_per_cell_projection_with_the_same_pairs():
    """A budget the float16 projection fits in stores it; one it does not fit in projects each
    cell from its gathered vectors, and sorts the memberships in passes: the pairs are the same,
    and exactly the pairs above the threshold."""
    x, group, decoy = cone(n=3000, d=192)
    found = {}
    for mb in (64, 1):  # 3,000 x 128 x 2 bytes = 750 KB: stored under 64 MB, not under 1 MB's half
        cfg = CLUSTER.model_copy(update={"dedup_project_dim": 128, "dedup_memory_mb": mb})
        stats: dict = {}
        i, j, s = cd.cluster_pairs(x, ids_of(len(x)), T, cfg, stats)
        assert stats["projection_stored"] == (mb == 64) and not stats["exact_fallback"]
        found[mb] = set(zip(i.tolist(), j.tolist()))
    assert found[64] == found[1] == brute_pairs(x, T)


def test_a_block_whose_projected_filter_passes_most_pairs_is_compared_in_the_full_space():
    """The per-block rule, for the cells the sample did not mark: one cell of clustered data in its
    16 principal directions, given with its full vectors."""
    x, _, _ = clustered(n=1500, groups=20, decoys=10)
    proj = np.linalg.svd(x[::5].astype(np.float64), full_matrices=False)[2][:16].T.astype(np.float32)
    stats: dict = {}
    i, j, s = cd.cell_pairs(x @ proj, T, full=x, block=512, stats=stats)
    assert stats["full_space_blocks"] == stats["blocks"] > 1
    assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, T)


def test_cells_that_would_compare_most_pairs_fall_back_to_one_full_space_cell():
    x, _, _ = cone(n=1500, groups=20, decoys=10)
    stats: dict = {}
    i, j, _ = cd.cluster_pairs(x, ids_of(len(x)), T, IndexConfig(exact_max=1, dedup_cells=1, dedup_project_dim=16),
                               stats)
    assert stats["exact_fallback"] and stats["full_space_blocks"] == 0  # one cell, already in the full space
    assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, T)


def test_cell_pairs_threshold_is_strict():
    a = np.array([1.0, 0.0])
    b = np.array([0.5, np.sqrt(0.75)])  # cosine 0.5 exactly (0.5 is exact in float32)
    i, j, _ = cd.cell_pairs(np.stack([a, b]).astype(np.float32), 0.5)
    assert len(i) == 0
    i, j, _ = cd.cell_pairs(np.stack([a, b]).astype(np.float32), 0.49)
    assert (i.tolist(), j.tolist()) == ([0], [1])


def test_cell_pairs_in_the_projected_space_lose_no_pair():
    x, _, _ = cone(n=700)
    model = cd.fit_cells(x, 4, CLUSTER)
    assert model.proj.shape == (64, 16)
    z = cd.project(x, model.proj)
    a, b, s = cd.cell_pairs(z, T, full=x, block=128)
    assert set(zip(a.tolist(), b.tolist())) == brute_pairs(x, T)
    # the cosines come from the full vectors, also when they are fetched by position
    a2, b2, s2 = cd.cell_pairs(z, T, full=lambda pos: x[pos], block=128)
    assert (a2 == a).all() and (b2 == b).all() and (s2 == s).all()
    np.testing.assert_allclose(s, np.einsum("ij,ij->i", x[a].astype(np.float64), x[b].astype(np.float64)), atol=1e-6)


def _brute_cells(x, model, radius, m):
    """Home and spilled cells of each row from every centroid in float64 (the definition)."""
    z = x.astype(np.float64) @ model.proj.astype(np.float64)
    c = model.centroids.astype(np.float64)
    d2 = ((z[:, None, :] - c[None]) ** 2).sum(-1)
    out = []
    for r in range(len(x)):
        h = int(np.lexsort((np.arange(len(c)), d2[r]))[0])
        gap = np.linalg.norm(c - c[h], axis=1)
        bis = np.where(gap > 0, (d2[r] - d2[r, h]) / (2 * np.maximum(gap, 1e-300)), 0.0)
        spill = sorted((b, k) for k, b in enumerate(bis) if k != h and b <= radius)
        out.append([h] + sorted(k for _, k in spill[:m - 1]))
    return out


def test_assign_cells_home_is_nearest_and_spills_are_the_cells_within_the_radius():
    x, _, _ = cone(n=500)
    model = cd.fit_cells(x, 8, CLUSTER)
    radius = cd.spill_radius(T, CLUSTER)
    spills = {}
    for m in (8, 2):  # every cell a candidate; a cap that cuts the spill list
        cells = cd.assign_cells(x, model, m, radius)
        assert cells.shape == (500, m)
        want = _brute_cells(x, model, radius, m)
        assert [[c for c in row if c >= 0] for row in cells.tolist()] == want
        spills[m] = (cells[:, 1:] >= 0).sum()
    assert 0 < (cells[:, 1] >= 0).sum() < 500 and spills[8] > spills[2]  # some rows spill, and the cap cuts


def test_cells_of_a_row_do_not_depend_on_its_batch():
    x, _, _ = cone(n=600)
    model = cd.fit_cells(x, 16, CLUSTER)
    radius = cd.spill_radius(T, CLUSTER)
    whole = cd.assign_cells(x, model, 4, radius)
    assert (cd.assign_cells(x, model, 4, radius, chunk=7) == whole).all()  # faiss's small-batch code path
    assert all((cd.assign_cells(x[k:k + 1], model, 4, radius) == whole[k]).all() for k in range(0, 600, 37))


def test_spilling_up_to_the_whole_threshold_distance_finds_every_pair():
    """A neighbour within the threshold's distance of x lies in a cell whose bisector with x's home
    is at most that far from x: radius 1 (and no cap) is exact search, whatever the cells."""
    x, _, _ = cone(n=1500)
    cfg = CLUSTER.model_copy(update={"dedup_spill_radius": 1.0, "dedup_cells_per_vector": 16})
    i, j, _ = cd.cluster_pairs(x, ids_of(len(x)), T, cfg)
    assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, T)


def test_training_sample_depends_only_on_the_ids():
    ids = ids_of(5000)
    mask = cd.sample_mask(ids, 0.1)
    assert 400 < mask.sum() < 600
    perm = np.random.default_rng(0).permutation(5000)
    assert (cd.sample_mask([ids[p] for p in perm], 0.1) == mask[perm]).all()


def test_one_cell_is_exact_search():
    x, _, _ = cone(n=1500)
    cfg = CLUSTER.model_copy(update={"dedup_cells": 1})
    i, j, _ = cd.cluster_pairs(x, ids_of(len(x)), T, cfg)
    assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, T)


def test_cluster_kept_set_equals_exact_and_spares_decoys():
    x, group, decoy = cone()
    ids = ids_of(len(x))
    exact = near_duplicates(x, ids, T, EXACT)
    res = near_duplicates(x, ids, T, CLUSTER)
    assert exact.method == "flat" and res.method == "cluster"
    assert res.keep.tolist() == exact.keep.tolist()
    assert res.duplicate_of == exact.duplicate_of
    assert res.pairs == exact.pairs
    # each group keeps its earliest member (more when two members fall below the threshold to
    # each other); every removed row is a planted member pointing inside its own group
    pos = {s: k for k, s in enumerate(ids)}
    for g in range(group.max() + 1):
        assert res.keep[np.flatnonzero(group == g).min()]
    removed = np.flatnonzero(~res.keep)
    assert len(removed) > 100 and (group[removed] >= 0).all()
    assert all(group[pos[res.duplicate_of[k]]] == group[k] for k in removed)
    assert res.keep[decoy >= 0].all() and res.keep[decoy[decoy >= 0]].all()


def test_cluster_kept_set_for_any_input_order():
    x, _, _ = cone(n=2000, groups=40)
    ids = ids_of(len(x))
    ref = near_duplicates(x, ids, T, CLUSTER)
    perm = np.random.default_rng(5).permutation(len(x))
    res = near_duplicates(x[perm], [ids[p] for p in perm], T, CLUSTER)
    assert {ids[p]: k for p, k in zip(perm, res.keep)} == dict(zip(ids, ref.keep))
    assert {ids[p]: d for p, d in zip(perm, res.duplicate_of)} == dict(zip(ids, ref.duplicate_of))


def test_walk_over_pairs_by_id_matches_the_full_walk():
    x, _, _ = cone(n=1500)
    ids = ids_of(len(x))
    ref = near_duplicates(x, ids, T, EXACT)
    i, j = zip(*sorted(brute_pairs(x, T)))
    i, j = np.array(i), np.array(j)
    sim = np.einsum("ij,ij->i", x[i], x[j])
    names = np.array(ids)
    # pairs given in either orientation, repeated: the same walk
    dups = walk_pairs(np.r_[names[j], names[i]], np.r_[names[i], names[j]], np.r_[sim, sim])
    assert set(dups) == {ids[k] for k in np.flatnonzero(~ref.keep)}
    assert all(dups[ids[k]][0] == ref.duplicate_of[k] for k in np.flatnonzero(~ref.keep))


def test_default_cells_bounded_by_the_training_sample():
    assert cd.default_cells(200_000, IndexConfig()) == round(4.6 * 200_000 ** 0.5)
    assert cd.default_cells(100, IndexConfig()) == 5  # 100 // 20
    assert cd.default_cells(10, IndexConfig()) == 1


# ------------------------------------------------------------ Ray Data path

def _dataset(ray, x, ids, blocks):
    table = pa.table({"sample_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    return ray.data.from_arrow(table).repartition(blocks)


def test_second_pass_rescores_each_candidate_from_both_full_vectors():
    """candidate_vectors + verify_pairs, the Ray Data verification pass, as plain functions over
    two batches: every candidate pair is re-scored once, and only those above the threshold stay."""
    from engine.qc.dedup_distributed import candidate_vectors, verify_pairs

    x, _, _ = cone(n=400, groups=10, decoys=5)
    ids = np.array(ids_of(len(x)))
    truth = sorted(brute_pairs(x, T))
    near_miss = [(i, j) for i, j in zip(*np.nonzero(np.triu((x @ x.T > 0.9) & (x @ x.T <= T), 1)))][:30]
    cand = sorted({(ids[i], ids[j]) for i, j in truth + near_miss})
    members = {}
    for k, (a, b) in enumerate(cand):
        for sid, side in ((a, 0), (b, 1)):
            members.setdefault(sid, ([], []))[0].append(k), members[sid][1].append(side)
    halves = [candidate_vectors({"sample_id": ids[sl], "embedding": x[sl]}, members, 3) for sl in (slice(0, 150), slice(150, None))]
    rows = {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}
    assert len(rows["pair"]) == 2 * len(cand) and len(near_miss) > 10
    out = verify_pairs(rows, T)
    got = {cand[k]: s for k, s in zip(out["pair"].tolist(), out["sim"].tolist())}
    pos = {sid: k for k, sid in enumerate(ids)}
    assert set(got) == {(ids[i], ids[j]) for i, j in truth}
    np.testing.assert_allclose([got[c] for c in sorted(got)],
                               [x[pos[a]].astype(np.float64) @ x[pos[b]].astype(np.float64) for a, b in sorted(got)],
                               atol=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_distributed_kept_set_independent_of_partitions(ray_session):
    from engine.qc.dedup_distributed import dedup_dataset

    x, _, decoy = cone(n=1000, groups=30, decoys=15)
    ids = ids_of(len(x))
    local = near_duplicates(x, ids, T, CLUSTER)
    expected = {ids[k]: (local.duplicate_of[k], local.similarity[k]) for k in np.flatnonzero(~local.keep)}
    assert len(expected) > 30
    # three blocks that split the groups unevenly give the in-process (unpartitioned) result
    res = dedup_dataset(_dataset(ray_session, x, ids, 3), T, CLUSTER)
    assert res.rows == len(x) and res.pairs == local.pairs
    assert {k: v[0] for k, v in res.duplicates.items()} == {k: v[0] for k, v in expected.items()}
    np.testing.assert_allclose([res.duplicates[k][1] for k in expected], [v[1] for v in expected.values()],
                               atol=1e-6)
    table = res.table.to_pandas().set_index("sample_id")
    assert len(table) == len(x)
    assert set(table.index[~table["kept"]]) == set(expected)
    assert table.loc[list(expected), "duplicate_of"].tolist() == [v[0] for v in expected.values()]
    assert not set(np.array(ids)[decoy >= 0]) & set(expected)


def test_cells_whose_projection_would_not_filter_are_marked_from_the_sample():
    """Clustered data: in 16 principal directions most pairs of a centre pass the projected filter
    (its cells are marked for the full space); in 48 the within-centre noise is seen and almost
    none do (measured on this data: 0.49-0.98 of a cell's sample pairs against 0-0.003)."""
    x, _, _ = clustered(n=2000, groups=10, decoys=5)
    marked = {}
    for p in (16, 48, 0):
        cfg = IndexConfig(exact_max=1, dedup_cells=8, dedup_train_per_cell=40, dedup_project_dim=p)
        sample = cd.training_sample(x, ids_of(len(x)), 8, cfg)
        marked[p] = cd.unselective_cells(cd.fit_cells(sample, 8, cfg), sample, T)
    assert marked[16].all() and not marked[48].any()
    assert not marked[0].any()  # no projection: the cells are in the full space already


def test_full_space_cells_of_a_shuffle_group_give_the_pairs_above_the_threshold():
    """pairs_of_bucket, the Ray Data step for the marked cells, as a plain function over two cells
    given in shuffled row order (each row in one cell, its home unless spilled): exactly the pairs
    above the threshold inside each cell (homes with homes and spilled rows, never spilled with
    spilled), a < b by sample_id, float64 cosines."""
    from engine.qc.dedup_distributed import pairs_of_bucket

    x, _, _ = clustered(n=600, d=64, groups=20, decoys=10)
    ids = np.array(ids_of(len(x)))
    cell = np.r_[np.zeros(300, int), np.ones(300, int)]
    spilled = np.zeros(600, bool)
    spilled[[5, 7, 305]] = True
    order = np.random.default_rng(1).permutation(600)
    out = pairs_of_bucket({"sample_id": ids[order], "cells": cell[order, None], "home": ~spilled[order],
                           "z": x[order]}, T)
    truth = {(int(i), int(j)) for i, j in brute_pairs(x, T) if cell[i] == cell[j] and not (spilled[i] and spilled[j])}
    got = {(int(a[1:]), int(b[1:])) for a, b in zip(out["a"], out["b"])}
    assert got == truth and len(truth) > 10
    np.testing.assert_allclose(out["sim"], [x[int(a[1:])].astype(np.float64) @ x[int(b[1:])].astype(np.float64)
                                            for a, b in zip(out["a"], out["b"])], atol=1e-6)


def _clustered_cells(n=6000, cells=96):
    """Clustered rows (12 centres, planted groups and decoys), a cell model of `cells` cells in 32
    principal directions and each row's cells (assign_cells with the default spill): neighbours."""
    x, _, _ = clustered(n=n, d=128, centres=12, groups=n // 60, decoys=n // 100)
    cfg = IndexConfig(exact_max=1, dedup_cells=cells, dedup_train_per_cell=20, dedup_project_dim=32)
    model = cd.fit_cells(cd.training_sample(x, ids_of(n), cells, cfg), cells, cfg)
    return x, cfg, model, cd.assign_cells(x, model, cfg.dedup_cells_per_vector, cd.spill_radius(T, cfg))


def test_locality_buckets_balance_the_cells_and_keep_a_rows_cells_together():
    """Cells to shuffle buckets by a k-d tree of the centroids: the same map every time, every cell
    in a bucket, each bucket its share (of cells, or of the rows the weights give), and a row's
    cells mostly in one bucket where `cell % buckets` spreads them over nearly as many buckets as
    it has cells (measured here: 1.32-1.98 against 2.85-4.36 of 4.96 cells, at 4-16 buckets)."""
    from engine.qc.dedup_distributed import buckets_per_row, locality_buckets, plan_buckets

    x, _, model, cells = _clustered_cells()
    assert (cells >= 0).sum(axis=1).mean() > 4
    rows = np.bincount(cells[cells >= 0], minlength=model.cells) + 1.0
    for b in (4, 8, 16):
        plain, weighted = locality_buckets(model.centroids, b), locality_buckets(model.centroids, b, rows)
        assert (plain == locality_buckets(model.centroids, b)).all() and plain.dtype == np.int32
        assert sorted(set(plain.tolist())) == sorted(set(weighted.tolist())) == list(range(b))
        assert np.bincount(plain).max() <= np.ceil(model.cells / b) + 1
        load = np.bincount(weighted, weights=rows)
        assert load.max() < 1.2 * load.mean()
        assert buckets_per_row(cells, weighted) < 0.6 * buckets_per_row(cells, np.arange(model.cells) % b)
    assert sorted(locality_buckets(model.centroids, 500).tolist()) == list(range(model.cells))  # one cell each
    # the driver's plan: at least `least` buckets, the copies per row measured on the rows it is given
    model.full_space = np.ones(model.cells, bool)
    buckets, bucket_of, copies = plan_buckets(model, cells, True, len(x), 4 * 128 + 64, least=8)
    assert buckets == 8 and copies == buckets_per_row(cells, bucket_of) < 2
    many, _, more = plan_buckets(model, cells, True, 100 * len(x), 4 * 768 + 64, least=8)
    assert many > 8 and more > copies  # 600k rows of 768 floats: buckets of ~128 MB, more boundaries crossed


def test_assign_rows_ships_a_row_once_per_bucket_and_the_groups_give_the_per_cell_pairs():
    """assign_rows + the group steps as plain functions over three shuffled batches, for both paths
    (a region of a third of the cells marked for the full space): each row travels once per bucket its cells of
    that path fall in, with those cells, and the pairs of the buckets are exactly those of
    cell_pairs / cell_candidates run on each cell directly (homes, then spilled rows, each in
    sample_id order: the per-cell layout). A sample_id given twice is a user error naming it."""
    from engine.qc.dedup_distributed import (assign_rows, batch_vectors, buckets_per_row, candidates_of_bucket,
                                             locality_buckets, pairs_of_bucket, path_cells)

    x, cfg, model, _ = _clustered_cells(n=2000, cells=32)
    model.full_space = locality_buckets(model.centroids, 3) == 0  # a region of a third of the cells
    ids = np.array(ids_of(len(x)))
    x = batch_vectors({"sample_id": ids, "embedding": x})[1]  # as assign_rows normalises them
    cells = cd.assign_cells(x, model, cfg.dedup_cells_per_vector, cd.spill_radius(T, cfg))
    bucket_of = locality_buckets(model.centroids, 5)
    radius = cd.spill_radius(T, cfg)
    perm = np.random.default_rng(2).permutation(len(x))
    for full_space in (True, False):
        mine = path_cells(cells, model, full_space)
        parts = [assign_rows({"sample_id": ids[rows], "embedding": x[rows]}, model, bucket_of,
                             cfg.dedup_cells_per_vector, radius, full_space) for rows in np.array_split(perm, 3)]
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        shipped = list(zip(out["sample_id"].tolist(), out["bucket"].tolist()))
        assert len(shipped) == len(set(shipped)) == round(buckets_per_row(mine, bucket_of) * len(x))
        assert len(shipped) < 0.7 * (mine >= 0).sum()  # the per-cell layout: a row once per cell
        pos = {sid: k for k, sid in enumerate(ids)}
        for sid, b, got, home in zip(out["sample_id"], out["bucket"], out["cells"], out["home"]):
            row = mine[pos[sid]]
            assert got[got >= 0].tolist() == [c for c in row if c >= 0 and bucket_of[c] == b]
            assert home == (row[0] >= 0 and got[0] == row[0])  # slot 0 is the home when the home is here
        want, found = [], []
        for c in np.unique(mine[mine >= 0]):
            at_home, spilled = np.flatnonzero(mine[:, 0] == c), np.flatnonzero((mine[:, 1:] == c).any(axis=1))
            members = np.r_[at_home, spilled]  # positions are sample_id order
            if full_space:
                a, b, s = cd.cell_pairs(x[members], T, len(at_home))
            else:
                a, b = cd.cell_candidates(cd.project(x[members], model.proj), T, len(at_home))
                s = np.zeros(len(a), np.float32)
            want += [(ids[members[i]], ids[members[j]], v) for i, j, v in zip(a, b, s)]
        for b in range(5):
            group = {k: v[out["bucket"] == b] for k, v in out.items()}
            if len(group["sample_id"]):
                got = pairs_of_bucket(group, T) if full_space else candidates_of_bucket(group, T)
                found += zip(got["a"], got["b"], got.get("sim", np.zeros(len(got["a"]), np.float32)))
        assert sorted(map(tuple, found)) == sorted((min(a, b), max(a, b), s) for a, b, s in want)
        assert len(want) > 20
    dup = int(np.flatnonzero(path_cells(cells, model, True)[:, 0] >= 0)[0])  # its home cell is a full-space one
    twice = np.r_[dup, perm[:200], dup]
    out = assign_rows({"sample_id": ids[twice], "embedding": x[twice]}, model, bucket_of,
                      cfg.dedup_cells_per_vector, radius, True)
    group = {k: v[out["bucket"] == bucket_of[cells[dup, 0]]] for k, v in out.items()}
    with pytest.raises(UserError, match=f"sample_id '{ids[dup]}' appears more than once"):
        pairs_of_bucket(group, T)


@pytest.mark.ray
@pytest.mark.slow
def test_distributed_compares_unselective_cells_in_the_full_space(ray_session):
    """Clustered data on the Ray Data path: the marked cells travel as full vectors and give their
    pairs directly, so the candidate list is not every pair of a centre; the kept set is exact's."""
    from engine.qc.dedup_distributed import dedup_dataset

    x, _, decoy = clustered(n=3000, groups=30, decoys=15)
    ids = ids_of(len(x))
    cfg = IndexConfig(exact_max=1, dedup_cells=8, dedup_train_per_cell=40, dedup_project_dim=16)
    res = dedup_dataset(_dataset(ray_session, x, ids, 3), T, cfg)
    exact = near_duplicates(x, ids, T, EXACT)
    assert res.stats["full_space_cells"] > 4 and res.stats["direct_pairs"] > 0
    assert res.stats["candidates"] < 10 * len(brute_pairs(x, T))  # not the ~10^6 pairs of the centres
    assert res.pairs == exact.pairs
    expected = {ids[k]: exact.duplicate_of[k] for k in np.flatnonzero(~exact.keep)}
    assert {k: v[0] for k, v in res.duplicates.items()} == expected
    assert not set(np.array(ids)[decoy >= 0]) & set(expected)


@pytest.mark.ray
def test_distributed_bad_rows_are_user_errors(ray_session):
    from engine.qc.dedup_distributed import dedup_dataset

    x, _, _ = cone(n=300, groups=5, decoys=0)
    x[17] = np.nan
    with pytest.raises(UserError, match=r"^near-duplicate removal: sample_id 's00017' contains NaN"):
        dedup_dataset(_dataset(ray_session, x, ids_of(300), 2), T, CLUSTER)
    ds = ray_session.data.from_items([{"sample_id": "a", "vec": [1.0, 0.0]}])
    with pytest.raises(UserError, match="no 'embedding' column"):
        dedup_dataset(ds, T, CLUSTER)


# ------------------------------------------------------------ syncxr dedup

def _write(path, x, ids, list_type=True):
    col = pa.array([list(map(float, r)) for r in x], pa.list_(pa.float32())) if list_type else \
        pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    pq.write_table(pa.table({"sample_id": ids, "embedding": col}), path)


def test_cli_writes_the_table_and_a_summary(tmp_path, capsys):
    x, _, _ = cone(n=800, groups=20, decoys=10)
    ids = ids_of(len(x))
    src = tmp_path / "emb.parquet"
    _write(src, x, ids)
    assert cli_main(["dedup", "--embeddings", str(src), "--threshold", str(T), "--out", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.strip()
    ref = near_duplicates(x, ids, T, EXACT)
    out = pq.read_table(tmp_path / "o" / "dedup")
    assert out.column_names == ["sample_id", "kept", "duplicate_of", "similarity"]
    assert out.column("kept").to_pylist() == ref.keep.tolist()
    assert out.column("duplicate_of").to_pylist() == ref.duplicate_of
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["kept"] == int(ref.keep.sum()) and summary["method"] == "flat"
    assert line.startswith(f"{int(ref.keep.sum())}/800 kept, {800 - int(ref.keep.sum())} near-duplicates")
    # the same command again refreshes its own output; another method is another output, refused
    # unless --overwrite; --method cluster gives the same kept set here
    assert cli_main(["dedup", "--embeddings", str(src), "--threshold", str(T), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert cli_main(["dedup", "--embeddings", str(src), "--threshold", str(T), "--out", str(tmp_path / "o"),
                     "--method", "cluster"]) == 2
    assert "other inputs (method: auto then, cluster now): use another --out or pass --overwrite" in \
        capsys.readouterr().err
    assert cli_main(["dedup", "--embeddings", str(src), "--threshold", str(T), "--out", str(tmp_path / "o"),
                     "--method", "cluster", "--overwrite"]) == 0
    assert pq.read_table(tmp_path / "o" / "dedup").column("kept").to_pylist() == ref.keep.tolist()


def test_cli_holds_the_input_once_plus_its_blocks(tmp_path):
    """`syncxr dedup` in-process on 41 MB of clustered embeddings in four shuffled files: the
    matrix is read batch by batch into sample_id order and normalised where it is, so numpy's
    peak is the input plus the blocks the cells are compared in (86.7 MB measured; reading the
    table whole, then copying to float32, normalising and sorting held 126.3 MB)."""
    import tracemalloc

    from engine.cli.commands.dedup import dedup_local

    x, _, decoy = clustered(n=40000, d=256, groups=200, decoys=100)
    ids = ids_of(len(x))
    perm = np.random.default_rng(0).permutation(len(x))
    for k in range(4):
        rows = perm[k * 10000:(k + 1) * 10000]
        _write(tmp_path / f"part-{k}.parquet", x[rows], [ids[i] for i in rows], list_type=False)
    cfg = IndexConfig(exact_max=1, dedup_project_dim=16)
    expected = near_duplicates(x, ids, T, cfg)  # the library on the array the files were written from
    del x
    tracemalloc.start()
    table, summary = dedup_local(tmp_path, T, cfg, "cluster")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40000 * 256 * 4 + 60e6, f"peak {peak / 1e6:.0f} MB"
    got = table.to_pydict()
    assert got["sample_id"] == [ids[i] for i in perm]  # the files' order
    kept = dict(zip(got["sample_id"], got["kept"]))
    assert [kept[s] for s in ids] == expected.keep.tolist() and summary["pairs"] == expected.pairs
    assert all(kept[ids[i]] for i in np.flatnonzero(decoy >= 0))


READ_PEAK = """
import sys
from pathlib import Path
import pyarrow as pa
from engine.cli.commands.dedup import read_embeddings
ids, matrix, _ = read_embeddings(Path(sys.argv[1]))
print(matrix.nbytes, pa.default_memory_pool().max_memory())
"""


def test_reading_a_file_of_one_row_group_holds_a_buffer_not_the_group(tmp_path):
    """Arrow's own memory (which tracemalloc does not see) while the embeddings are read, in a
    fresh process: a file written as one row group is streamed through the read buffer, so what
    Arrow holds is a few batches. With Parquet's pre-buffering, the default, the whole column
    chunk was held besides: more than the input's size again."""
    import subprocess
    import sys

    n, d = 100000, 64  # many batches of 8,192 rows in the one group: what is held is a few of them
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    src = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"sample_id": ids_of(n), "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(x.ravel()), d)}), src, row_group_size=n)
    assert pq.ParquetFile(src).metadata.num_row_groups == 1
    done = subprocess.run([sys.executable, "-c", READ_PEAK, str(src)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    matrix_bytes, arrow_peak = map(int, done.stdout.split())
    assert matrix_bytes == n * d * 4
    assert arrow_peak < 0.75 * matrix_bytes, f"Arrow held {arrow_peak / 1e6:.0f} MB for a {matrix_bytes / 1e6:.0f} MB input"


@pytest.mark.parametrize("table, message", [
    (pa.table({"sample_id": ["a"], "vec": [[1.0]]}), "no `embedding` column"),
    (pa.table({"sample_id": ["a", "b"], "embedding": [[1.0, 0.0], None]}), "row 1 (sample_id 'b') has a null embedding"),
    (pa.table({"sample_id": ["a", "b"], "embedding": [[1.0, 0.0], [1.0]]}), "row 1 (sample_id 'b') has 1 values"),
    (pa.table({"sample_id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 0.0]]}), "sample_id 'b') is a zero vector"),
    (pa.table({"sample_id": ["a", "a"], "embedding": [[1.0, 0.0], [0.0, 1.0]]}), "sample_id 'a' appears more than once"),
    # rows are named as the file orders them, not as the sample_id order the walk uses
    (pa.table({"sample_id": ["c", "a", "b"], "embedding": [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]}),
     "row 1 (sample_id 'a') is a zero vector"),
])
def test_cli_bad_input_names_the_row(tmp_path, capsys, table, message):
    src = tmp_path / "bad.parquet"
    pq.write_table(table, src)
    assert cli_main(["dedup", "--embeddings", str(src), "--threshold", "0.9", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("syncxr dedup: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_synth_global_qc_takes_the_cluster_path_above_exact_max():
    from engine.core.config import load_config
    from engine.synth.round import global_decisions

    x, group, _ = cone(n=1200, groups=30, decoys=10)
    keys = [f"{r:02d}/s{i:05d}" for i, r in zip(range(len(x)), np.arange(len(x)) % 2)]
    small = load_config(None, {"qc": {"index": {"exact_max": 100, "dedup_cells": 8, "dedup_train_per_cell": 16}}})
    exact = load_config(None)
    assert exact.qc.index.exact_max >= len(x) and small.qc.index.dedup_method == "cluster"
    got, ref = global_decisions(small, keys, x), global_decisions(exact, keys, x)
    assert got == ref and sum(not v[0] for v in got.values()) > 20
    assert near_duplicates(x, keys, small.qc.dedup_threshold, small.qc.index).method == "cluster"


# ------------------------------------------------------------ a saved IVF-PQ bank, re-scored

def test_ivfpq_rescored_best_cosine_matches_exact(tmp_path):
    from engine.qc.faiss_index import load_index
    from engine.qc.bank import save_bank

    real, _, _ = cone(n=12_000, groups=0, decoys=0, seed=1)
    cfg = IndexConfig(exact_max=100, kind="ivfpq", nlist=16, nprobe=16, pq_m=16)
    save_bank(tmp_path / "bank", real, [{"id": f"r{i}"} for i in range(len(real))],
              {"backend": "pixels", "model": None, "options": {}}, cfg)
    index = load_index(tmp_path / "bank" / "index.faiss", cfg, "ivfpq",
                       vectors=np.load(tmp_path / "bank" / "embeddings.npy", mmap_mode="r"))
    assert index.kind == "ivfpq" and index.vectors is not None
    assert index.index.code_size == 16  # bytes per vector, against 256 for the flat copy
    rng = np.random.default_rng(2)
    queries = unit(real[:300] + rng.standard_normal((300, real.shape[1])) * 0.02)
    sims, nearest = index.max_similarity(queries)
    exact = queries @ real.T
    assert (nearest == exact.argmax(axis=1)).mean() > 0.99
    np.testing.assert_allclose(sims, exact.max(axis=1), atol=1e-5)


@pytest.mark.ray
@pytest.mark.slow
def test_cli_on_ray_writes_the_same_table(ray_session, tmp_path, capsys):
    x, _, _ = cone(n=500, groups=15, decoys=5)
    ids = ids_of(len(x))
    src = tmp_path / "emb.parquet"
    _write(src, x, ids, list_type=False)
    assert cli_main(["dedup", "--embeddings", str(src), "--threshold", str(T), "--out", str(tmp_path / "o"),
                     "--ray"]) == 0
    assert "Ray Data" in capsys.readouterr().out
    ref = near_duplicates(x, ids, T, EXACT)
    out = pq.read_table(tmp_path / "o" / "dedup").to_pandas().set_index("sample_id").loc[ids]
    assert out["kept"].tolist() == ref.keep.tolist()
    assert [None if k else d for k, d in zip(out["kept"], out["duplicate_of"])] == ref.duplicate_of
