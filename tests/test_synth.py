"""`syncxr synth`: pure round logic without Ray, then whole runs on the shared local Ray: output
layout and schema, resume after kill -9 of the driver, a killed worker actor, failing rows and the
error budget."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_head import kill_all, processes_of
import yaml

from engine.core.config import load_config
from engine.core.errors import UserError
from engine.core.status import RowStatus
from engine.synth.finalize import funnel, scan_staging
from engine.synth.run import RoundTally, RunStopped, check_error_budget
from engine.synth.round import ALL_COLUMNS, check_stage_resources, fixed_columns, gate_dataset_judge, \
    global_decisions

ROOT = Path(__file__).resolve().parent.parent


def small_config(tmp_path: Path, **sections) -> Path:
    """configs/local.yaml with overrides, written next to the test (prompt path made absolute)."""
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    data["reports"]["prompt"] = str(ROOT / "configs" / "prompts" / "report_v1.yaml")
    data["images"]["size"] = 128
    data["engine"]["num_cpus"] = 2
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- pure logic


def test_error_budget_stops_with_a_message_naming_the_cause(tmp_path):
    tally = RoundTally()
    tally.add({"ok": np.array([True] * 18 + [False, False]),
               "reasons": [[]] * 18 + [["images: error: RuntimeError: boom"], ["judge: lateral"]],
               "busy_images": np.ones(20)})
    assert tally.errors == 1 and tally.rejected_by == {"images": 1, "judge": 1} and tally.busy["images"] == 20
    check_error_budget(tally, 0.05, tmp_path)  # 1/20 is not above 5%
    with pytest.raises(RunStopped, match=r"1 of 20 rows failed.*images: error: RuntimeError: boom.*rerun"):
        check_error_budget(tally, 0.04, tmp_path)


def test_global_dedup_never_undoes_an_earlier_round():
    cfg = load_config(None)
    base = np.eye(4, dtype=np.float32)
    emb = np.stack([base[0], base[1], base[0] * 0.999 + base[2] * 0.01, base[3]])
    # round 1's "a" sorts before round 0's "z" by id, but round order comes first
    keys = ["00/z", "00/y", "01/a", "01/b"]
    out = global_decisions(cfg, keys, emb)
    assert out["00/z"] == (True, "")
    assert out["01/a"][0] is False and out["01/a"][1].startswith("dedup: cosine") and out["01/a"][1].endswith("to z")
    assert out["00/y"][0] and out["01/b"][0]


def test_reason_helpers_and_funnel():
    images = {"phantom": "images"}
    assert RowStatus.parse("phantom: error: RuntimeError: x", images) == RowStatus("images", "error", "RuntimeError: x")
    assert RowStatus.parse("judge: lateral", images).stage == "judge"
    status = RowStatus.parse("reports: candidate 1: missing: effusion (ABNORMALITY)")
    assert (status.stage, status.kind, status.detail, status.key()) == ("reports", "missing", "effusion (ABNORMALITY)",
                                                                     "reports: missing")
    assert RowStatus.parse("dedup: cosine 0.990 > 0.97 to r0-1").key() == "dedup"
    assert RowStatus.parse("candidate 2: extra: x", default_stage="reports").key(with_stage=False) == "extra"
    for text in ("diffusers: skipped: empty impression (no prompt)", "judge: lateral, rotated",
                 "privacy: cosine 0.991 > 0.97 to real image a/b.png", "reports: candidate 3: missing: edema (DISEASE)"):
        assert RowStatus.parse(text).text() == text  # the record round-trips to the staged line

    class Scan:
        tried = 10
        rejected_stage = {"reports": 2, "judge": 1, "dedup": 3}
    steps = dict(funnel(10, Scan()))
    assert steps["attempts"] == 10 and steps["after reports"] == 8 and steps["after judge"] == 7
    assert steps["after privacy"] == 4


def test_fixed_columns_keeps_types_for_steps_that_did_not_run():
    batch = {"sample_id": np.array(["a", "b"], dtype=object), "ok": np.array([True, False]),
             "reasons": np.array([[], ["x: y"]], dtype=object), "embedding": np.ones((2, 3), np.float32)}
    out = fixed_columns(batch)
    assert tuple(out) == ALL_COLUMNS
    assert out["reference_match"].tolist() == ["", ""] and np.isnan(out["reference_similarity"]).all()
    assert out["busy_images"].tolist() == [0.0, 0.0]
    assert out["embedding"][0].dtype == np.float32 and out["embedding"][0].shape == (3,)


def test_embeddings_of_batches_with_and_without_rejected_rows_join_in_one_block():
    """A batch where the report gate rejected a row (never embedded) and one where every row was
    embedded must build into one Ray block, as an actor's output buffer joins them. Without the
    embedder's dim the first is a column of objects and the second a tensor column, and Ray
    refuses to join them ("Found columns with both objects and tensors: embedding")."""
    from ray.data._internal.delegating_block_builder import DelegatingBlockBuilder

    def batch(embeddings):
        n = len(embeddings)
        return {"sample_id": np.array([f"s{i}" for i in range(n)], dtype=object), "ok": np.array([e is not None for e in embeddings]),
                "reasons": np.array([[] for _ in range(n)] + [None], dtype=object)[:n],
                "embedding": np.array(embeddings + [None], dtype=object)[:n]}

    with_rejected = batch([np.ones(3, np.float32), None])
    all_embedded = batch([np.ones(3, np.float32), np.full(3, 2.0, np.float32)])

    def join(dim):
        builder = DelegatingBlockBuilder()
        builder.add_batch(fixed_columns(with_rejected, dim))
        builder.add_batch(fixed_columns(all_embedded, dim))
        return builder.build()

    with pytest.raises(Exception, match="both objects and tensors"):
        join(None)
    block = join(3)
    assert block.num_rows == 4
    rows = np.stack(block.column("embedding").to_numpy(zero_copy_only=False))
    assert rows.shape == (4, 3) and rows[1].tolist() == [0, 0, 0] and rows[3].tolist() == [2, 2, 2]


def test_dataset_level_judge_counts_only_for_live_rows():
    n = 3
    batch = {k: np.array([None] * n, dtype=object) for k in ALL_COLUMNS}
    batch.update({"sample_id": np.array(["a", "b", "c"], dtype=object), "ok": np.array([True, True, False]),
                  "reasons": np.array([[], [], ["reports: missing: x"]], dtype=object),
                  "judge_flags": np.array([[], ["lateral"], ["blank"]], dtype=object),
                  "judge_problematic": np.array([False, True, True]), "judge_error": np.array(["", "", ""], dtype=object)})
    out = gate_dataset_judge(batch)
    assert out["ok"].tolist() == [True, False, False]
    assert list(out["reasons"][1]) == ["judge: lateral"]
    assert list(out["reasons"][2]) == ["reports: missing: x"]  # already rejected: the judge adds nothing


def test_stage_pools_that_fill_the_cluster_are_refused():
    class FakeRay:
        def __init__(self, cpus):
            self.cpus = cpus

        def cluster_resources(self):
            return {"CPU": self.cpus}

    cfg = load_config(None)
    check_stage_resources(FakeRay(2), cfg)  # the embedded default fits 2 CPUs
    with pytest.raises(UserError, match="minimum actor pools need .* CPUs .* cluster has 1"):
        check_stage_resources(FakeRay(1), cfg)


# ---------------------------------------------------------------- whole runs


def run(cfg_path: Path, n: int, out: Path, overrides: dict | None = None) -> dict:
    from engine.synth.run import run_synth

    return run_synth(load_config(cfg_path, overrides), n, out)


def flaky_config(tmp_path: Path, options: dict, images: dict | None = None, **sections) -> Path:
    """A config whose image backend is tests/synth_fakes.FlakyPhantom (the phantom, made to fail or wait)."""
    from engine.images.pipeline import IMAGE_BACKENDS

    IMAGE_BACKENDS.register("flaky", "synth_fakes:FlakyPhantom")
    return small_config(tmp_path, images={"backend": "flaky", "options": options, **(images or {})}, **sections)


def assert_same_samples(out: Path, ref_out: Path) -> None:
    """The same sample_ids, reports and image bytes as the reference run."""
    got, want = dataset_rows(out), dataset_rows(ref_out)
    assert sorted(got) == sorted(want)
    for sid, row in want.items():
        assert got[sid]["findings"] == row["findings"] and got[sid]["impression"] == row["impression"], sid
        assert got[sid]["image"]["bytes"] == row["image"]["bytes"], sid


def dataset_rows(out: Path) -> dict:
    t = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("part-*.parquet"))])
    return {r["sample_id"]: r for r in t.to_pylist()}


@pytest.fixture(scope="module")
def reference_run(ray_session, tmp_path_factory):
    """One uninterrupted run that the other runs are compared with."""
    tmp = tmp_path_factory.mktemp("synth-ref")
    cfg = small_config(tmp)
    out = tmp / "run"
    manifest = run(cfg, 60, out)
    return cfg, out, manifest


@pytest.mark.ray
def test_synth_writes_the_dataset_layout(reference_run):
    from datasets import load_dataset

    _, out, manifest = reference_run
    plan_ids = pq.read_table(out / "plan.parquet").column("sample_id").to_pylist()
    assert manifest["complete"] and manifest["kept"] == 60 and manifest["planned"] == 60
    ds = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert ds["sample_id"] == sorted(plan_ids)  # exactly the planned set, once each, in id order
    first = ds[0]
    assert first["image"].size == (128, 128) and first["image"].mode == "L"
    assert first["impression"] and first["entities"] and first["provenance"]["backend"] == "phantom"
    assert first["provenance"]["report_backend"] == "template" and first["attempts"]["round"] == 0
    emb = pa.concat_tables([pq.read_table(p) for p in sorted((out / "embeddings").glob("*.parquet"))])
    assert emb.column("sample_id").to_pylist() == ds["sample_id"]
    assert len(emb.column("embedding")[0].as_py()) > 100
    for name in ("manifest.json", "DATACARD.md", "plots/balance.png", "plots/funnel.png", "plots/samples.png",
                 "plots/throughput.png"):
        assert (out / name).is_file(), name
    assert manifest["counts"]["funnel"]["attempts"] == manifest["counts"]["attempts"] >= 60
    assert {"images", "embed", "judge", "report_qc"} <= set(manifest["stage_throughput"])
    assert manifest["versions"]["ray"] and manifest["config_digest"] == load_config(reference_run[0]).digest()
    card = (out / "DATACARD.md").read_text()
    assert "60 of 60 planned samples" in card and "load_dataset" in card


@pytest.mark.ray
def test_rerun_of_a_finished_run_changes_nothing(reference_run, capsys):
    cfg, out, manifest = reference_run
    before = dataset_rows(out)
    published = [p for d in ("data", "embeddings", "rejected", "plots") for p in sorted((out / d).iterdir())]
    published += [out / "manifest.json", out / "DATACARD.md"]
    stamps = {p: p.stat().st_mtime_ns for p in published}
    again = run(cfg, 60, out)
    err = capsys.readouterr().err
    assert again["kept"] == 60 and "(already done)" in err and "nothing rewritten" in err
    assert dataset_rows(out) == before
    assert {p: p.stat().st_mtime_ns for p in published} == stamps  # a reader of the dataset is undisturbed


@pytest.mark.ray
def test_other_settings_in_the_same_directory_are_refused(reference_run):
    cfg, out, _ = reference_run
    with pytest.raises(UserError, match="other settings"):
        run(cfg, 61, out)


@pytest.mark.ray
@pytest.mark.slow
def test_resume_after_kill_9_gives_the_uninterrupted_result(reference_run, tmp_path):
    cfg, ref_out, _ = reference_run
    out = tmp_path / "killed"
    # the child's embedded Ray lives here, so we can find what is left of it (short: socket paths)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sx-", dir="/tmp"))
    log = tmp_path / "driver.log"
    env = {**os.environ, "TMPDIR": str(ray_tmp), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "synth", "--config", str(cfg), "--n", "60",
                             "--out", str(out)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        deadline = time.time() + 180
        while not list((out / "staging" / "round-00").glob("part-*.parquet")):
            assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
            assert time.time() < deadline, "no staged part after 180 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_all(processes_of([str(ray_tmp)]))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    staged = list((out / "staging" / "round-00").glob("part-*.parquet"))
    assert staged and not (out / "staging" / "round-00" / "DONE").exists() and not (out / "data").exists()
    manifest = run(cfg, 60, out)  # the same command again
    assert manifest["complete"] and manifest["kept"] == 60
    assert_same_samples(out, ref_out)


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_actor_does_not_fail_the_run(reference_run, tmp_path):
    import psutil

    _, ref_out, _ = reference_run
    # the same images as the reference run (seeded per row, so batch sizes do not matter), drawn
    # by one actor in 15 slow blocks of 4 rows that every stage passes on one by one: the first
    # part is written while the actor still has blocks to draw. (With the stages' batches of 64,
    # the part waits for all 60 images, and the actor may be shut down before any part appears.)
    small = {"batch_size": 4, "min_actors": 1, "max_actors": 1}
    cfg = flaky_config(tmp_path, {"fail_every": 0, "sleep_s": 1.0},
                       images={"resources": {"num_cpus": 0.5, **small}},
                       reports={"resources": {"num_cpus": 0.25, **small}},
                       qc={"embedder": {"backend": "pixels", "resources": {"num_cpus": 0.4, **small}}})
    out = tmp_path / "worker-killed"
    result = {}
    thread = threading.Thread(target=lambda: result.update(manifest=run(cfg, 60, out)))
    thread.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and thread.is_alive() and time.time() < deadline:
        for proc in psutil.process_iter(["name", "cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])
            if "ImageStage" in title and list((out / "staging" / "round-00").glob("part-*.parquet")):
                proc.kill()
                killed = title
                break
        time.sleep(0.05)
    thread.join(300)
    assert killed, "never saw the image actor with a part already written"
    manifest = result["manifest"]
    assert manifest["complete"] and manifest["kept"] == 60
    assert_same_samples(out, ref_out)


@pytest.mark.ray
def test_failing_rows_are_rejected_with_their_reason_and_retried(ray_session, tmp_path):
    cfg = flaky_config(tmp_path, {"fail_every": 10, "fail_attempts": 1}, engine={"max_error_fraction": 0.5})
    out = tmp_path / "flaky"
    manifest = run(cfg, 40, out)
    assert manifest["complete"] and manifest["kept"] == 40
    assert [r["kept"] for r in manifest["rounds"]] == [36, 4]  # ids 0, 10, 20, 30 fail in round 0 only
    rejected = pa.concat_tables([pq.read_table(p) for p in (out / "rejected").glob("*.parquet")]).to_pylist()
    assert sorted(int(r["sample_id"].rsplit("-", 1)[1]) for r in rejected) == [0, 10, 20, 30]
    assert all(r["reasons"][0].startswith("images: error: RuntimeError: cannot draw") for r in rejected)
    assert manifest["counts"]["rejected_by_stage"] == {"images": 4}
    rows = dataset_rows(out)
    assert rows[rejected[0]["sample_id"]]["attempts"]["round"] == 1


@pytest.mark.ray
def test_too_many_errors_stop_the_run_and_keep_what_was_written(ray_session, tmp_path):
    cfg = flaky_config(tmp_path, {"fail_every": 3, "fail_attempts": 9}, engine={"max_error_fraction": 0.05})
    out = tmp_path / "stopped"
    with pytest.raises(RunStopped, match=r"rows failed with errors .* engine.max_error_fraction=5.0%"):
        run(cfg, 60, out)
    staged = pa.concat_tables([pq.read_table(p) for p in (out / "staging" / "round-00").glob("part-*.parquet")])
    assert staged.num_rows >= 20 and not (out / "staging" / "round-00" / "DONE").exists()
    scan = scan_staging(out / "staging", out, "flaky")
    assert scan.tried == 0  # an unfinished round is not part of any dataset yet


@pytest.mark.ray
def test_an_inline_round_stages_the_same_rows_as_the_ray_pipeline(reference_run, tmp_path):
    from engine.synth.run import pending_rows
    from engine.synth.round import can_run_inline, prepare_stages, run_round_inline

    cfg_path, ref_out, _ = reference_run
    cfg = load_config(cfg_path)
    stages = prepare_stages(cfg)
    assert can_run_inline(cfg, stages)
    plan = pq.read_table(ref_out / "plan.parquet")
    summaries = list(run_round_inline(cfg, stages, pending_rows(plan, set(), 0), tmp_path, "part-r00"))
    assert sum(len(s["sample_id"]) for s in summaries) == 60 and set(summaries[0]) >= {"ok", "reasons", "busy_images"}
    cols = ["sample_id", "findings", "impression", "image", "embedding", "ok"]

    def staged(d):
        t = pa.concat_tables([pq.read_table(p, columns=cols) for p in sorted(Path(d).glob("part-*.parquet"))])
        return sorted(t.to_pylist(), key=lambda r: r["sample_id"])
    assert staged(tmp_path) == staged(ref_out / "staging" / "round-00")


@pytest.mark.ray
@pytest.mark.slow
def test_synth_drives_the_diffusers_backend_from_the_impression(ray_session, tmp_path):
    """The real model path inside the engine: a tiny random-weight pipeline saved as a RoentGen
    checkout. Its noise images fail the judge: the run ends incomplete, every rejection recorded."""
    from actors.testing.tiny_diffusion import save_tiny_pipeline
    from engine.images.pipeline import decode_png

    pipe = save_tiny_pipeline(tmp_path / "tiny-sd", sample_size=32)
    cfg = small_config(tmp_path, images={"backend": "diffusers", "model": str(pipe), "size": 32, "steps": 2,
                                         "resources": {"num_cpus": 0.5, "batch_size": 4, "max_actors": 1}},
                       engine={"max_rounds": 1})
    out = tmp_path / "sd-run"
    manifest = run(cfg, 12, out)
    assert manifest["counts"]["funnel"]["after images"] == 12  # every impression was drawn
    staged = pa.concat_tables([pq.read_table(p) for p in (out / "staging" / "round-00").glob("part-*.parquet")])
    rows = staged.to_pylist()
    assert all(decode_png(r["image"]["bytes"]).shape == (32, 32) for r in rows)
    assert {r["provenance"]["backend"] for r in rows} == {"diffusers"}
    assert all(r["provenance"]["prompt"] == r["impression"] for r in rows if not r["provenance"]["prompt_truncated"])
    assert manifest["kept"] + manifest["counts"]["rejected_attempts"] == 12
    assert manifest["complete"] == (manifest["kept"] == 12)


def test_on_a_cluster_that_may_scale_the_pool_check_only_warns(capsys):
    class FakeRay:
        def cluster_resources(self):
            return {"CPU": 1}

    check_stage_resources(FakeRay(), load_config(None), strict=False)
    assert "warning: the stages' minimum actor pools need" in capsys.readouterr().err


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from engine.cli import main

    assert main(["synth", "--n", "0", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == ("syncxr synth: error: argument --n: 0 is not an integer of at least 1 "
                                               "(see syncxr synth --help)")
    cfg = small_config(tmp_path, qc={"bank": str(tmp_path / "no-bank")})
    assert main(["synth", "--config", str(cfg), "--n", "5", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-bank: QC bank not found (build it with `syncxr qc-bank" in err[0]


@pytest.mark.ray
def test_a_dataset_level_judge_gates_the_live_rows(ray_session, tmp_path):
    from engine.qc.stages import JUDGES

    JUDGES.register("fake-mllm", "synth_fakes:FakeDatasetJudge")
    cfg = small_config(tmp_path, qc={"judge": {"backend": "fake-mllm"}}, engine={"max_rounds": 1})
    out = tmp_path / "mllm"
    manifest = run(cfg, 24, out)
    assert manifest["kept"] == 18 and not manifest["complete"]  # ids 0, 4, ..., 20 flagged
    assert manifest["counts"]["rejected_by_reason"] == {"judge: lateral": 6}
    rows = dataset_rows(out)
    assert all(int(s.rsplit("-", 1)[1]) % 4 for s in rows)
    first = next(iter(rows.values()))
    assert first["impression"] and first["image"]["bytes"] and first["qc"]["judge_flags"] == []
