"""The one ownership rule of every command that writes (engine/core/ownership.py), as pure
functions, then through the commands a careless user reaches first: each bad --out is refused
in one line and the user's files are byte-for-byte what they were."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.core.errors import UserError
from engine.core.ownership import MARKER, check_file_out, claim, input_digest, read_owner


def test_a_new_or_empty_directory_is_claimed_and_a_rerun_of_the_same_inputs_is_recognised(tmp_path):
    assert claim(tmp_path / "new", "dedup", {"threshold": 0.9}) is False
    marker = json.loads((tmp_path / "new" / MARKER).read_text())
    assert marker["kind"] == "dedup" and marker["inputs"] == {"threshold": 0.9}
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty", "dedup", {"threshold": 0.9}) is False
    (tmp_path / "new" / "summary.json").write_text("{}")
    assert claim(tmp_path / "new", "dedup", {"threshold": 0.9}) is True


def test_other_inputs_another_command_or_foreign_files_are_refused_naming_why(tmp_path):
    out = tmp_path / "d"
    claim(out, "dedup", {"threshold": 0.9, "column": "embedding"})
    (out / "summary.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds a `syncxr dedup` output of other inputs \(threshold: 0.9 then, "
                                        r"0.95 now\): use another --out or pass --overwrite"):
        claim(out, "dedup", {"threshold": 0.95, "column": "embedding"})
    assert claim(out, "dedup", {"threshold": 0.95, "column": "embedding"}, replace=True) is False
    with pytest.raises(UserError, match=r"holds the output of `syncxr dedup`, not of `syncxr train`"):
        claim(out, "train", {"config": "abc"})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match=r"is not empty and holds no syncxr output \(run.json is missing\)"):
        claim(mine, "eval", {})
    assert (mine / "notes.txt").read_text() == "the user's" and not (mine / MARKER).exists()
    (mine / MARKER).write_text("not json")
    with pytest.raises(UserError, match=r"run.json: unreadable"):
        read_owner(mine)


def test_an_attempt_that_wrote_only_its_marker_may_be_retried_with_other_inputs(tmp_path):
    claim(tmp_path / "t", "train", {"real": "a"})  # then failed before writing anything else
    assert claim(tmp_path / "t", "train", {"real": "b"}) is False
    assert json.loads((tmp_path / "t" / MARKER).read_text())["inputs"] == {"real": "b"}


def test_a_synth_run_is_another_commands_directory(tmp_path):
    run = tmp_path / "synth"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"syncxr": "syncxr-run/1", "kind": "synth", "config_digest": "x", "n": 3}))
    (run / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds the output of `syncxr synth`, not of `syncxr tune`"):
        claim(run, "tune", {})


def test_a_single_file_output_never_replaces_an_input_or_an_existing_file(tmp_path):
    table = tmp_path / "pairs.parquet"
    table.write_bytes(b"PAR1")
    data = tmp_path / "synth"
    data.mkdir()
    with pytest.raises(UserError, match=r"is an input of this command \(table:.*pairs.parquet\)"):
        check_file_out(table, [f"table:{table}"], overwrite=True)
    with pytest.raises(UserError, match=r"is inside .*synth, an input of this command"):
        check_file_out(data / "emb.parquet", [str(data)], overwrite=True)
    with pytest.raises(UserError, match=r"already exists \(pass --overwrite to replace it\)"):
        check_file_out(table, [], overwrite=False)
    with pytest.raises(UserError, match=r"is a directory"):
        check_file_out(data, [], overwrite=True)
    assert check_file_out(tmp_path / "sub" / "e.parquet", [str(data)], overwrite=False).parent.is_dir()
    assert table.read_bytes() == b"PAR1"


def test_input_digests_follow_content_not_names(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x\n1\n")
    b.write_text("x\n1\n")
    assert input_digest(f"table:{a}") == input_digest(str(b)) and input_digest(None) is None
    b.write_text("x\n2\n")
    assert input_digest(f"table:{a}") != input_digest(f"table:{b}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"n": 1}')
    before = input_digest(run)
    (run / "manifest.json").write_text('{"n": 2}')
    assert input_digest(run) != before


# ---------------------------------------------------------------- through the commands

def _table(path: Path) -> Path:
    pq.write_table(pa.table({"sample_id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 1.0]],
                             "image_path": ["x.png", "y.png"], "report": ["r", "s"]}), path)
    return path


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"syncxr {command}: error: "), err
    return err[0]


def test_embed_never_writes_over_its_own_input_table(tmp_path, capsys):
    from engine.cli import main

    table = _table(tmp_path / "pairs.parquet")
    before = table.read_bytes()
    assert main(["embed", "--checkpoint", str(tmp_path), "--data", f"table:{table}", "--out", str(table)]) == 2
    assert "is an input of this command" in _one_line(capsys, "embed")
    assert main(["embed", "--checkpoint", str(tmp_path), "--data", f"table:{table}",
                 "--out", str(table), "--overwrite"]) == 2
    assert "is an input of this command" in _one_line(capsys, "embed") and table.read_bytes() == before


def test_dedup_keeps_the_users_files_and_reads_an_embed_column(tmp_path, capsys):
    from engine.cli import main

    table = _table(tmp_path / "emb.parquet")
    out = tmp_path / "D"
    out.mkdir()
    (out / "summary.json").write_text("the user's own summary")
    assert main(["dedup", "--embeddings", str(table), "--threshold", "0.9", "--out", str(out)]) == 2
    assert "holds no syncxr output" in _one_line(capsys, "dedup")
    assert (out / "summary.json").read_text() == "the user's own summary"
    # `syncxr embed` names its columns image_embedding / text_embedding: --column picks one
    renamed = tmp_path / "embed.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"], "image_embedding": [[1.0, 0.0], [0.99, 0.1]]}), renamed)
    assert main(["dedup", "--embeddings", str(renamed), "--threshold", "0.9", "--out", str(tmp_path / "E")]) == 2
    assert "no `embedding` column (choose one with --column); columns: sample_id, image_embedding" in \
        _one_line(capsys, "dedup")
    assert main(["dedup", "--embeddings", str(renamed), "--threshold", "0.9", "--out", str(tmp_path / "E"),
                 "--column", "image_embedding"]) == 0
    assert "1/2 kept" in capsys.readouterr().out
    # a rerun with another threshold is refused, not mixed into the first one's directory
    assert main(["dedup", "--embeddings", str(renamed), "--threshold", "0.5", "--out", str(tmp_path / "E"),
                 "--column", "image_embedding"]) == 2
    assert "other inputs (threshold: 0.9 then, 0.5 now)" in _one_line(capsys, "dedup")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([], pa.string()),
                             "embedding": pa.array([], pa.list_(pa.float32()))}), empty)
    assert main(["dedup", "--embeddings", str(empty), "--threshold", "0.9", "--out", str(tmp_path / "F")]) == 2
    assert "no rows: nothing to deduplicate" in _one_line(capsys, "dedup")


def test_numbers_out_of_range_are_one_line_before_any_work(capsys):
    from engine.cli import main

    cases = [(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size: 0 is not"),
             (["eval", "--checkpoint", "c", "--dataset", "phantom-5x200", "--task", "segmentation", "--out", "o",
               "--epochs", "0"], "--epochs: 0 is not an integer of at least 1"),
             (["dedup", "--embeddings", "e", "--threshold", "1.5", "--out", "o"], "--threshold: 1.5 is not a cosine"),
             (["check-cluster", "--entrypoint-num-cpus", "-4"], "--entrypoint-num-cpus: -4 is not a number of at least 0"),
             (["synth", "--n", "x", "--out", "o"], "--n: 'x' is not an integer")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _one_line(capsys, argv[0])


def test_a_damaged_model_file_is_one_line_naming_it(tmp_path, capsys):
    from engine.cli import main
    from test_train_data import TINY_MODEL
    from train.models import create_model

    model = create_model("convirt-resnet18-smallbert", text_corpus=["no effusion", "mild edema"] * 5,
                         overrides=TINY_MODEL)
    saved = model.save_pretrained(tmp_path / "model")
    weights = sorted(p for p in saved.iterdir() if p.suffix in (".pt", ".safetensors", ".bin"))[0]
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert main(["eval", "--checkpoint", str(saved), "--dataset", "phantom-5x200", "--task", "zero-shot",
                 "--n", "2", "--out", str(tmp_path / "ev")]) == 2
    line = _one_line(capsys, "eval")
    assert f"{weights}: not a readable weights file (truncated or not saved by syncxr" in line
    assert "weights_only" not in line
    weights.write_bytes(b"\x00" * 64)  # random bytes
    assert main(["embed", "--checkpoint", str(saved), "--data", "nowhere", "--out", str(tmp_path / "e.parquet")]) == 2
    assert "not a readable weights file" in _one_line(capsys, "embed")


def test_eval_refuses_an_image_folder_that_is_not_there(tmp_path, capsys):
    from engine.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path), "--dataset", "phantom-5x200", "--task", "zero-shot",
                 "--imgpath", str(tmp_path / "missing"), "--out", str(tmp_path / "ev")]) == 2
    assert "--imgpath" in _one_line(capsys, "eval") and not (tmp_path / "ev").exists()


def test_check_cluster_refuses_what_the_command_would(tmp_path, capsys):
    from engine.cli import main

    bad_train = tmp_path / "train.yaml"
    bad_train.write_text("optim: {lr: -1}\nscaling: {num_workers: 1, cpus_per_worker: 1}\n")
    bad_tune = tmp_path / "tune.yaml"
    bad_tune.write_text(f"train_config: {bad_train}\n")
    bad_experiment = tmp_path / "experiment.yaml"
    bad_experiment.write_text("n: 20\nseeds: [1, 1]\n")
    for path, message in [(bad_train, "field 'optim.lr': Input should be greater than 0"),
                          (bad_tune, "field 'optim.lr'"), (bad_experiment, "field 'seeds': Value error, repeated: 1")]:
        assert main(["check-cluster", "--config", str(path)]) == 2
        assert message in _one_line(capsys, "check-cluster")
