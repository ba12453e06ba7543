"""A run directory that never loses data (issue 11), the fixed fault set: each case the issue saw,
as a real fault on a copy of one finished 24-sample run (conftest's synth_run), then the same
command again. The outcome is either exactly the planned dataset (the reference content hash) or
one `syncxr CMD: error: ...` line with nothing lost. The random campaign is
benchmarks/bench_faults.py."""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fault_harness import (can_bind_mount, classify, content_hash, damage, readonly_wrap, remount_ro_fault,
                           synth_args, syncxr, tree_digest)

N = 24


@pytest.fixture(scope="module")
def base(synth_run, tmp_path_factory):
    """(config file, finished run, its content hash): the shared 24-sample run, and a YAML file
    with its exact settings for the subprocess runs."""
    from engine.core.config import load_config

    cfg = load_config(None, {"images": {"size": 128}, "engine": {"num_cpus": 2}})
    path = tmp_path_factory.mktemp("integrity") / "synth.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(path).digest() == cfg.digest()  # the same run, as far as the directory can tell
    reference = content_hash(synth_run)
    assert reference is not None and reference[0] == N
    return path, synth_run, reference


def copy_of(base, tmp_path: Path, name: str = "run") -> Path:
    out = tmp_path / name
    shutil.copytree(base[1], out, symlinks=True)
    return out


def rerun(base, out: Path, **overrides) -> dict:
    from engine.core.config import load_config
    from engine.synth.run import run_synth

    return run_synth(load_config(base[0], overrides or None), N, out)


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    from engine.cli import main

    rc = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def one_line(err: list[str], command: str = "synth") -> str:
    errors = [line for line in err if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith(f"syncxr {command}: error: "), err
    return errors[0]


def staged_part(out: Path) -> Path:
    return sorted((out / "staging" / "round-00").glob("part-*.parquet"))[0]


def all_first_attempts(out: Path) -> bool:
    rows = [r for p in sorted((out / "data").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return len(rows) == N and all(r["attempts"]["round"] == 0 for r in rows)


# ---------------------------------------------------------------- 1. staged parts missing or damaged


@pytest.mark.ray
@pytest.mark.parametrize("how", ["truncate", "delete", "flip"])
def test_a_damaged_or_missing_staged_part_is_recomputed_never_dropped(base, tmp_path, capsys, how):
    out = copy_of(base, tmp_path)
    part = staged_part(out)
    if how == "truncate":
        os.truncate(part, part.stat().st_size // 3)
    elif how == "delete":
        part.unlink()
    else:  # one flipped byte inside the file: still readable Parquet perhaps, but not the part written
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    manifest = rerun(base, out)
    err = capsys.readouterr().err
    assert "missing or damaged, recomputing their rows" in err and part.name in err
    assert manifest["complete"] and manifest["kept"] == N
    assert content_hash(out) == base[2] and all_first_attempts(out)  # same rows, same attempt, same seeds


@pytest.mark.ray
@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_a_lost_global_qc_is_decided_again_not_regenerated(base, tmp_path, how):
    out = copy_of(base, tmp_path)
    qc = out / "staging" / "round-00" / "global_qc.parquet"
    qc.unlink() if how == "delete" else os.truncate(qc, 10)
    manifest = rerun(base, out)
    assert manifest["complete"] and [r["tried"] for r in manifest["rounds"]] == [N]  # nothing regenerated
    assert content_hash(out) == base[2] and all_first_attempts(out)


@pytest.mark.ray
@pytest.mark.parametrize("kind,how", [("data part", "flip"), ("data part", "delete"), ("embeddings part", "truncate"),
                                      ("manifest", "truncate"), ("data card", "delete"), ("stray part", "add")])
def test_a_damaged_published_file_is_rebuilt_from_the_sealed_rounds(base, tmp_path, capsys, kind, how):
    out = copy_of(base, tmp_path)
    if kind == "stray part":  # a file the manifest does not record, among the rejected attempts
        (out / "rejected").mkdir(exist_ok=True)
        shutil.copyfile(staged_part(out), out / "rejected" / "part-stray.parquet")
    else:
        assert damage(out, kind, how, random.Random(0)) is not None, f"the shared run has no {kind}"
    manifest = rerun(base, out)
    assert "nothing rewritten" not in capsys.readouterr().err
    assert manifest["complete"] and [r["tried"] for r in manifest["rounds"]] == [N]  # nothing regenerated
    assert content_hash(out) == base[2] and (out / "DATACARD.md").is_file()
    assert sorted(p.name for p in (out / "rejected").iterdir()) == sorted(p.name for p in (base[1] / "rejected").iterdir())


# ---------------------------------------------------------------- 2. kill -9 in finalize, global QC, a round


@pytest.mark.ray
@pytest.mark.parametrize("point", ["finalize-built", "finalize-switched"])
def test_kill_9_during_finalize_of_a_rerun_leaves_the_dataset(base, tmp_path, point):
    out = copy_of(base, tmp_path)
    (out / "DATACARD.md").unlink()  # a rerun rebuilds a finished run only when something is not as recorded
    killed = syncxr(synth_args(base[0], N, out), fault=f"{point}:kill")
    assert killed.rc == -9, killed.stderr[-2000:]
    assert content_hash(out) == base[2]  # at the instant of the kill: one complete dataset
    again = syncxr(synth_args(base[0], N, out))
    assert classify(again, out, base[2]) == "identical", again.stderr[-2000:]
    assert not list(out.glob("*.new")) and not list(out.glob("*.old"))


@pytest.mark.ray
@pytest.mark.parametrize("point,prepare", [("global-qc-written", "reopen"), ("round-batch", "lose part")])
def test_kill_9_during_global_qc_or_a_round_then_rerun_is_identical(base, tmp_path, point, prepare):
    out = copy_of(base, tmp_path)
    (out / "staging" / "round-00" / "DONE").unlink()
    if prepare == "lose part":
        staged_part(out).unlink()
    killed = syncxr(synth_args(base[0], N, out), fault=f"{point}:kill")
    assert killed.rc == -9, killed.stderr[-2000:]
    assert not (out / "staging" / "round-00" / "DONE").exists()
    again = syncxr(synth_args(base[0], N, out))
    assert classify(again, out, base[2]) == "identical", again.stderr[-2000:]


# ---------------------------------------------------------------- 3. --out is protected


def test_a_directory_syncxr_did_not_make_is_refused_and_untouched(base, tmp_path, capsys):
    out = tmp_path / "theirs"
    (out / "data").mkdir(parents=True)
    shutil.copy(next((base[1] / "data").glob("part-*.parquet")), out / "data" / "part-00000.parquet")
    before = tree_digest(out)
    rc, err = cli(synth_args(base[0], N, out), capsys)
    assert rc == 2 and "holds no syncxr run" in one_line(err)
    assert tree_digest(out) == before and sorted(p.name for p in out.iterdir()) == ["data"]


def test_plan_never_rewrites_a_synth_run_or_another_plan(base, tmp_path, capsys):
    out = copy_of(base, tmp_path)
    before = tree_digest(out)
    rc, err = cli(["plan", "--config", str(base[0]), "--n", "30", "--out", str(out)], capsys)
    assert rc == 2 and "is a synth run directory" in one_line(err, "plan")
    assert tree_digest(out) == before
    planned = tmp_path / "planned"
    assert cli(["plan", "--config", str(base[0]), "--n", "30", "--out", str(planned)], capsys)[0] == 0
    plan_bytes = (planned / "plan.parquet").read_bytes()
    rc, err = cli(["plan", "--config", str(base[0]), "--n", "31", "--out", str(planned)], capsys)
    assert rc == 2 and "other settings" in one_line(err, "plan")
    assert (planned / "plan.parquet").read_bytes() == plan_bytes
    # the same settings again: allowed (the same plan), and synth adopts the plan directory
    assert cli(["plan", "--config", str(base[0]), "--n", "30", "--out", str(planned)], capsys)[0] == 0
    assert (planned / "plan.parquet").read_bytes() == plan_bytes
    assert json.loads((planned / "run.json").read_text())["kind"] == "plan"


def test_out_must_name_a_directory(base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in (["synth", "--config", str(base[0]), "--n", "3"], ["plan", "--n", "3"]):
        rc, err = cli(command + ["--out", ""], capsys)
        assert rc == 2 and "--out must name a directory" in one_line(err, command[0])
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    rc, err = cli(["synth", "--config", str(base[0]), "--n", "3", "--out", str(a_file)], capsys)
    assert rc == 2 and f"{a_file}: --out names a file" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written into the cwd


# ---------------------------------------------------------------- 4. connecting fails fast


def test_an_unreachable_address_fails_fast_and_writes_nothing(base, tmp_path, monkeypatch, capsys):
    import engine.core.ray_session as session

    monkeypatch.setattr(session, "CONNECT_TIMEOUT_S", 1.0)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()  # nothing listens there now
    silent = socket.socket()  # accepts, never answers: not a Ray server
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        cases = {f"127.0.0.1:{free_port}": "Connection refused", "notahost:abc": "port 'abc' is not a number",
                 "notahost.invalid:6379": "cannot resolve host", f"ray://127.0.0.1:{silent.getsockname()[1]}":
                 "not a Ray server"}
        for address, why in cases.items():
            out = tmp_path / f"run-{len(address)}"
            started = time.time()
            rc, err = cli(synth_args(base[0], N, out) + ["--address", address], capsys)
            line = one_line(err)
            assert rc == 2 and address in line and why in line, line
            assert time.time() - started < 15 and not out.exists()  # bounded, and before the claim
    finally:
        silent.close()


# ---------------------------------------------------------------- 5. one line instead of a traceback


@pytest.mark.skipif(not can_bind_mount(), reason="needs root and unshare for a read-only bind mount")
def test_a_read_only_out_directory_is_one_line_naming_it(base, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind "{parent}" "{parent}" && mount -o remount,ro,bind "{parent}" "{parent}" && exec "$0" "$@"']
    result = syncxr(synth_args(base[0], N, parent / "run"), wrap=wrap)
    assert result.rc == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.error_lines == [f"syncxr synth: error: {parent / 'run'}: Read-only file system"]


@pytest.mark.ray
@pytest.mark.skipif(not can_bind_mount(), reason="needs root and unshare for a read-only bind mount")
def test_the_disk_turning_read_only_mid_run_stops_with_one_line_and_resumes(base, tmp_path):
    out = copy_of(base, tmp_path)
    staged_part(out).unlink()  # the rerun recomputes it, in batches: the disk goes read-only after the first
    before_data = content_hash(out)
    stopped = syncxr(synth_args(base[0], N, out), fault=remount_ro_fault("round-batch", out), wrap=readonly_wrap(out))
    assert classify(stopped, out, base[2], before=before_data) == "clear stop", stopped.stderr[-2000:]
    assert "Read-only file system" in stopped.error_lines[0] and str(out) in stopped.error_lines[0]
    again = syncxr(synth_args(base[0], N, out))
    assert classify(again, out, base[2]) == "identical", again.stderr[-2000:]


@pytest.mark.ray
def test_ray_task_failures_are_unwrapped_to_their_os_error(ray_session, tmp_path):
    import errno

    from engine.cli import explain

    target = str(tmp_path / "staging" / "part-x.parquet")

    def fail(batch):
        raise OSError(errno.EROFS, "Read-only file system", target)

    with pytest.raises(Exception) as info:  # Ray Data: UserCodeException over a RayTaskError chain
        ray_session.data.range(4).map_batches(fail).materialize()
    assert explain(info.value) == f"{target}: Read-only file system"

    @ray_session.remote
    def task():
        raise OSError(errno.ENOSPC, "No space left on device", target)

    with pytest.raises(Exception) as info:
        ray_session.get(task.remote())
    assert explain(info.value) == f"{target}: No space left on device"
    assert explain(RuntimeError("a bug of ours")) is None  # bugs keep their traceback


def test_bad_files_are_one_line(base, tmp_path, capsys):
    out = copy_of(base, tmp_path)
    (out / "run.json").write_text('{"config_digest": ')  # corrupt marker
    before = content_hash(out)
    rc, err = cli(synth_args(base[0], N, out), capsys)
    assert rc == 2 and "run.json: unreadable run marker" in one_line(err) and content_hash(out) == before
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(base[0].read_bytes() + "# r\xe9sum\xe9\n".encode("latin-1"))
    rc, err = cli(synth_args(latin, N, tmp_path / "x"), capsys)
    assert rc == 2 and "not UTF-8 text" in one_line(err) and str(latin) in err[-1]
    rc, err = cli(["plan", "--n", "1000000000", "--out", str(tmp_path / "huge")], capsys)
    assert rc == 2 and "GiB of memory" in one_line(err, "plan") and not (tmp_path / "huge").exists()


# ---------------------------------------------------------------- 6. what used to be silent


def test_a_key_written_twice_is_refused(tmp_path, capsys):
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("plan:\n  k: 3\n  seed: 1\n  k: 5\n")
    rc, err = cli(["plan", "--config", str(cfg), "--n", "3", "--out", str(tmp_path / "p")], capsys)
    assert rc == 2 and "duplicate key at line 4" in one_line(err, "plan") and "'k'" in err[-1]


def test_an_exclusive_pair_naming_no_entity_is_refused(base, tmp_path, capsys):
    data = yaml.safe_load(base[0].read_text())
    data["plan"]["exclusive_pairs"] = [["cardiomegaly", "small heart"], ["pneumothorx", "effusion"]]
    cfg = tmp_path / "pairs.yaml"
    cfg.write_text(yaml.safe_dump(data))
    rc, err = cli(["plan", "--config", str(cfg), "--n", "3", "--out", str(tmp_path / "p")], capsys)
    line = one_line(err, "plan")
    assert rc == 2 and "plan.exclusive_pairs[1]: 'pneumothorx' is not an entity" in line and "pneumothorax" in line
    assert not (tmp_path / "p").exists()


def test_a_lost_marker_or_a_changed_input_is_refused(base, tmp_path, capsys):
    out = copy_of(base, tmp_path)
    (out / "run.json").unlink()
    before = tree_digest(out)
    data = yaml.safe_load(base[0].read_text())
    data["plan"]["seed"] = 7
    other_seed = tmp_path / "seed7.yaml"
    other_seed.write_text(yaml.safe_dump(data))
    rc, err = cli(synth_args(other_seed, N, out), capsys)
    assert rc == 2 and "holds no syncxr run" in one_line(err) and tree_digest(out) == before
    # the same settings, but the prompt file edited between runs
    out = copy_of(base, tmp_path, "prompt-edited")
    prompt_dir = tmp_path / "prompts"
    prompt_dir.mkdir()
    from engine.reports.pipeline import prompt_path
    from engine.core.config import load_config

    shutil.copy(prompt_path(load_config(base[0])), prompt_dir / "report_v1.yaml")
    moved = tmp_path / "synth.yaml"
    shutil.copy(base[0], moved)  # prompts/report_v1.yaml now resolves next to it: same config, same text
    marker = json.loads((out / "run.json").read_text())
    assert load_config(moved).digest() == marker["config_digest"]
    with (prompt_dir / "report_v1.yaml").open("a") as f:
        f.write("\n# edited\n")
    rc, err = cli(synth_args(moved, N, out), capsys)
    assert rc == 2 and "another prompt file" in one_line(err)


@pytest.mark.ray
def test_a_failed_preflight_check_does_not_claim_the_directory(base, tmp_path, capsys):
    data = yaml.safe_load(base[0].read_text())
    data["images"]["resources"].update({"min_actors": 8, "max_actors": 8})
    cfg = tmp_path / "greedy.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "new"
    out.mkdir()
    rc, err = cli(synth_args(cfg, N, out), capsys)
    assert rc == 2 and "minimum actor pools need" in one_line(err)
    assert list(out.iterdir()) == []  # still anyone's: no run.json, no plan
