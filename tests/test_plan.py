import numpy as np
import pyarrow as pa
import pytest

from engine.core.errors import UserError
from engine.plan.sampler import build_plan, build_vocabulary, contradictions, plan_stats, sample_seeds
from engine.text.stats import count_entities, gini, top_share


def long_tail_table(n_findings=120, n_anatomy=30):
    rows = []
    for i in range(n_findings):
        rows.append((f"finding {i}", "ABNORMALITY", 2000 // (i + 1) + 1))
        if i % 2 == 0:
            rows.append((f"finding {i}", "NON-ABNORMALITY", 900 // (i + 1) + 1))
        if i % 10 == 0:
            rows.append((f"finding {i}", "DISEASE", 50 // (i + 1) + 3))
    for i in range(n_anatomy):
        rows.append((f"anatomy {i}", "ANATOMY", 500 // (i + 1) + 1))
    rows.append(("rare thing", "DISEASE", 1))
    return pa.table({"text": [r[0] for r in rows], "type": [r[1] for r in rows], "count": [r[2] for r in rows]})


PAIRS = [("finding 0", "finding 1"), ("finding 2", "finding 3")]


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(long_tail_table(), min_count=3)


def test_vocabulary_respects_min_count_and_splits_types(vocab):
    assert ("rare thing", "DISEASE") not in vocab.clinical
    assert all(t != "ANATOMY" for _, t in vocab.clinical)
    assert all(t == "ANATOMY" for _, t in vocab.anatomy)
    assert all(vocab.corpus_counts[key] >= 3 for key in vocab.clinical + vocab.anatomy)


def test_plan_shape_determinism_and_seeds(vocab):
    plan = build_plan(vocab, 500, k=4, m=2, seed=7, exclusive_pairs=PAIRS)
    assert plan.num_rows == 500
    assert plan.column("sample_id")[0].as_py() == "r7-00000000"
    rows = plan.to_pylist()
    for row in rows:
        types = [e["type"] for e in row["entities"]]
        assert sum(t != "ANATOMY" for t in types) == 4 and types.count("ANATOMY") == 2
    assert build_plan(vocab, 500, k=4, m=2, seed=7, exclusive_pairs=PAIRS).equals(plan)
    assert not build_plan(vocab, 500, k=4, m=2, seed=8, exclusive_pairs=PAIRS).equals(plan)
    assert len(set(plan.column("seed").to_pylist())) == 500
    # a sample's seed depends on the run seed and its index only
    assert np.array_equal(sample_seeds(7, 10), sample_seeds(7, 1000)[:10])


def test_plan_has_no_contradictions_and_is_balanced(vocab):
    plan = build_plan(vocab, 20_000, k=4, m=2, seed=0, exclusive_pairs=PAIRS)
    assert all(not contradictions(ents, PAIRS) for ents in plan.column("entities").to_pylist())
    stats = plan_stats(plan, vocab, PAIRS)
    assert stats["samples_with_contradictions"] == 0
    assert stats["clinical"]["corpus"]["max_min_ratio"] > 100  # the corpus's long tail ...
    assert stats["clinical"]["plan"]["max_min_ratio"] <= 1.5  # ... flattened by the plan
    assert stats["anatomy"]["plan"]["max_min_ratio"] <= 1.5
    assert stats["clinical"]["plan"]["max"] <= stats["tau_max"]["clinical"]


def test_contradictions_detects_negation_and_exclusive_partners():
    assert contradictions([{"text": "a", "type": "ABNORMALITY"}, {"text": "a", "type": "NON-ABNORMALITY"}])
    assert contradictions([{"text": "a", "type": "ABNORMALITY"}, {"text": "b", "type": "DISEASE"}], [("a", "b")])
    assert not contradictions([{"text": "a", "type": "NON-ABNORMALITY"}, {"text": "b", "type": "DISEASE"}], [("a", "b")])


def test_absolute_tau_max_too_small_and_k_too_large(vocab):
    with pytest.raises(UserError, match="tau_max=1 is too small"):
        build_plan(vocab, 1000, k=4, m=2, tau_max=1)
    with pytest.raises(UserError, match="plan.k=500 is larger than the clinical vocabulary"):
        build_plan(vocab, 10, k=500, m=2)
    with pytest.raises(UserError, match="plan.m=99 is larger than the anatomy vocabulary"):
        build_plan(vocab, 10, k=2, m=99)


def test_absolute_tau_max_caps_counts(vocab):
    n_clin = len(vocab.clinical)
    plan = build_plan(vocab, 1000, k=2, m=0, tau_max=2000 // n_clin + 2)
    stats = plan_stats(plan, vocab)
    assert stats["clinical"]["plan"]["max"] <= 2000 // n_clin + 2


def test_unknown_entity_type_names_the_row():
    table = pa.table({"text": ["x"], "type": ["FINDING"], "count": [5]})
    with pytest.raises(UserError, match=r"row 0 \('x'\): unknown entity type 'FINDING'"):
        build_vocabulary(table, 1)


def test_long_tail_measures():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 100]) == pytest.approx(0.75)
    assert top_share([100] + [1] * 99) == pytest.approx(100 / 199)
    table = count_entities([[{"text": "a", "type": "ANATOMY"}, {"text": "a", "type": "ANATOMY"}],
                            [{"text": "a", "type": "ANATOMY"}, {"text": "b", "type": "DISEASE"}]])
    assert table.to_pylist() == [{"text": "a", "type": "ANATOMY", "count": 2}, {"text": "b", "type": "DISEASE", "count": 1}]


def test_drawable_only_keeps_the_present_findings_the_image_backend_draws():
    """`plan.drawable_only`: the phantom draws "pleural effusion" and "pneumonia" but not
    "tortuous aorta" or "scoliosis"; negations and anatomy stay; a text-to-image backend keeps all."""
    from engine.core.config import load_config
    from engine.core.errors import ConfigError
    from engine.plan.write import make_plan

    rows = [("pleural effusion", "ABNORMALITY", 40), ("tortuous aorta", "ABNORMALITY", 30),
            ("pneumonia", "DISEASE", 20), ("scoliosis", "DISEASE", 25), ("tortuous aorta", "NON-ABNORMALITY", 10),
            ("left lung base", "ANATOMY", 30), ("right apex", "ANATOMY", 20)]
    table = pa.table({"text": [r[0] for r in rows], "type": [r[1] for r in rows], "count": [r[2] for r in rows]})
    plan_cfg = {"k": 2, "m": 1, "seed": 3}
    _, vocab = make_plan(load_config(None, {"plan": {**plan_cfg, "drawable_only": True}}), 40, table)
    assert sorted(vocab.clinical) == [("pleural effusion", "ABNORMALITY"), ("pneumonia", "DISEASE"),
                                      ("tortuous aorta", "NON-ABNORMALITY")]
    assert len(vocab.anatomy) == 2
    plan, _ = make_plan(load_config(None, {"plan": {**plan_cfg, "drawable_only": True}}), 40, table)
    texts = {(e["text"], e["type"]) for ents in plan.column("entities").to_pylist() for e in ents}
    assert ("scoliosis", "DISEASE") not in texts and ("tortuous aorta", "ABNORMALITY") not in texts
    assert ("pleural effusion", "ABNORMALITY") in texts
    _, everything = make_plan(load_config(None, {"plan": plan_cfg}), 40, table)
    assert len(everything.clinical) == 5
    _, diffusion = make_plan(load_config(None, {"plan": {**plan_cfg, "drawable_only": True},
                                                "images": {"backend": "diffusers"}}), 40, table)
    assert len(diffusion.clinical) == 5  # a text-to-image model draws any text
    with pytest.raises(ConfigError, match="drawable_only"):
        load_config(None, {"plan": {"mode": "corpus", "drawable_only": True}})


# ---------------------------------------------------------------- frequency weighting under the cap

def test_capped_shares_water_fill_and_round_by_largest_remainder():
    from engine.plan.sampler import capped_shares

    # 20 slots, cap 8: the head takes the cap, its excess goes to the next one (capped too), the
    # last 4 slots split evenly between the two equal tails
    assert capped_shares(20, [100, 10, 1, 1], 8).tolist() == [8, 8, 2, 2]
    # a cap that does not bind: plain proportions, the fractions rounded by largest remainder
    assert capped_shares(10, [5, 3, 2], 100).tolist() == [5, 3, 2]
    assert capped_shares(7, [1, 1, 1], 100).tolist() == [3, 2, 2]  # ties to the earlier entity
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.pareto(1.0, size=40) + 1e-3
        n = int(rng.integers(40, 400))
        cap = int(np.ceil(n / 40 * rng.uniform(1.0, 5.0)))
        got = capped_shares(n, w, cap)
        assert got.sum() == n and got.max() <= cap and got.min() >= 0
        # never a heavier entity with fewer slots than a lighter one, beyond rounding
        order = np.argsort(-w, kind="stable")
        assert all(a >= b - 1 for a, b in zip(got[order], got[order][1:]))


def test_frequency_weighting_lets_the_cap_set_the_balance(vocab):
    def clinical(plan):
        stats = plan_stats(plan, vocab, PAIRS)
        return stats["clinical"], stats["tau_max"]["clinical"]

    n = 2000
    even, _ = clinical(build_plan(vocab, n, k=4, m=2, seed=0, exclusive_pairs=PAIRS))
    capped, cap = clinical(build_plan(vocab, n, k=4, m=2, seed=0, exclusive_pairs=PAIRS, tau_factor=2.0,
                                      weighting="frequency"))
    uncapped, _ = clinical(build_plan(vocab, n, k=4, m=2, seed=0, exclusive_pairs=PAIRS, tau_factor=1000.0,
                                      weighting="frequency"))
    assert even["plan"]["max_min_ratio"] <= 1.5
    assert capped["plan"]["max"] <= cap < uncapped["plan"]["max"]
    # no cap: the plan's head is the corpus's head; the cap flattens it
    assert uncapped["plan"]["max_min_ratio"] > capped["plan"]["max_min_ratio"] > even["plan"]["max_min_ratio"]
    plan = build_plan(vocab, n, k=4, m=2, seed=0, exclusive_pairs=PAIRS, tau_factor=1000.0, weighting="frequency")
    assert all(not contradictions(ents, PAIRS) for ents in plan.column("entities").to_pylist())
    counts = {}
    for ents in plan.column("entities").to_pylist():
        for e in ents:
            counts[(e["text"], e["type"])] = counts.get((e["text"], e["type"]), 0) + 1
    head = max(vocab.clinical, key=lambda key: vocab.corpus_counts[key])
    assert counts[head] == max(counts[key] for key in vocab.clinical)
    with pytest.raises(UserError, match="plan.weighting 'corpus'"):
        build_plan(vocab, 10, k=2, m=1, weighting="corpus")
