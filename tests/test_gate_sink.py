"""The engine's row-survival machinery, without Ray: Gated stages and atomic staged parts."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.core.gate import Gated
from engine.core.sink import PartWriter, read_parts, write_part
from engine.core.stage import object_column
from engine.synth.run import RoundTally, RunStopped, check_error_budget, fold_seed, pending_rows


class Doubler:
    """Fails on negative inputs, flags values above 100."""

    def __call__(self, batch):
        if (batch["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": batch["x"] * 2, "too_big": batch["x"] > 100}


def verdict(out):
    bad = np.asarray(out["too_big"], dtype=bool)
    return ~bad, [("doubler: too big" if b else None) for b in bad]


def batch(xs, ok=None):
    n = len(xs)
    return {"sample_id": np.array([f"s{i}" for i in range(n)], dtype=object), "x": np.array(xs),
            "ok": np.array(ok if ok is not None else [True] * n), "reasons": object_column([[] for _ in range(n)])}


def test_gated_runs_only_live_rows_and_applies_verdict():
    out = Gated("doubler", Doubler, verdict=verdict)(batch([1, 2, 300], ok=[True, False, True]))
    assert out["y"][0] == 2 and out["y"][1] is None and out["y"][2] == 600
    assert out["ok"].tolist() == [True, False, False]
    assert out["reasons"][2] == ["doubler: too big"]
    assert out["busy_doubler"][1] == 0.0 and out["busy_doubler"][0] > 0


def test_gated_isolates_the_row_that_raises():
    out = Gated("doubler", Doubler, verdict=verdict)(batch([1, -5, 3, 500]))
    assert out["ok"].tolist() == [True, False, True, False]
    assert out["reasons"][1][0].startswith("doubler: error: ValueError: negative input")
    assert out["reasons"][3] == ["doubler: too big"]
    assert [out["y"][i] for i in (0, 2)] == [2, 6]


class EchoDoubler(Doubler):
    """Returns sample_id too, as the image backends do."""

    def __call__(self, batch):
        return {"sample_id": batch["sample_id"], **super().__call__(batch)}


def test_gated_keeps_the_input_values_of_a_row_that_raised():
    out = Gated("doubler", EchoDoubler)(batch([1, -5, 3]))
    assert out["sample_id"].tolist() == ["s0", "s1", "s2"]
    assert out["ok"].tolist() == [True, False, True] and out["y"][1] is None


def test_error_budget_stops_with_a_clear_message(tmp_path):
    tally = RoundTally()
    b = Gated("doubler", Doubler)(batch([-1] * 10 + [1] * 20))
    tally.add(b)
    assert tally.errors == 10 and tally.passed == 20
    with pytest.raises(RunStopped, match=r"10 of 30 rows failed .* rerun the same command to resume"):
        check_error_budget(tally, 0.05, tmp_path)
    check_error_budget(tally, 0.5, tmp_path)  # within budget: no stop


def test_parts_are_atomic_content_named_and_idempotent(tmp_path):
    t = pa.table({"sample_id": ["b", "a"], "v": [1, 2]})
    p1 = write_part(t, tmp_path, "part")
    p2 = write_part(t, tmp_path, "part")  # a retried task rewrites the same file
    assert p1 == p2 and len(list(tmp_path.glob("*.parquet"))) == 1
    assert not list(tmp_path.glob(".*tmp"))
    other = pa.table({"sample_id": ["c"], "v": [None]})
    write_part(other, tmp_path, "part")
    merged = read_parts(tmp_path)
    assert sorted(merged.column("sample_id").to_pylist()) == ["a", "b", "c"]


def test_part_writer_passes_on_only_the_summary(tmp_path):
    out = PartWriter(str(tmp_path), "p")(Gated("doubler", Doubler)(batch([1, 2])))
    assert set(out) == {"sample_id", "ok", "reasons", "busy_doubler"}
    written = pq.read_table(next(tmp_path.glob("*.parquet")))
    assert written.column("y").to_pylist() == [2, 4]


def test_pending_rows_and_seed_folding():
    plan = pa.table({"sample_id": ["a", "b", "c"], "entities": [[], [], []], "seed": [1, 2, 3]})
    assert fold_seed(7, 0) == 7 and fold_seed(7, 1) != fold_seed(7, 2) != 7
    p = pending_rows(plan, {"b"}, attempt=1)
    assert p.column("sample_id").to_pylist() == ["a", "c"]
    assert p.column("seed").to_pylist() == [fold_seed(1, 1), fold_seed(3, 1)]
    assert p.column("plan_seed").to_pylist() == [1, 3]
