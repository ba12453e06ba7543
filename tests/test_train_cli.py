"""`syncxr train` and `syncxr embed` end to end on a 24-sample `syncxr synth` run mixed with a real
table holding one undecodable image; bad input answered with one line, before any training."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from test_train_data import TINY_MODEL, make_synthetic_dataset, make_table


def _config(path: Path, **top) -> Path:
    data = {"model": {"name": "convirt-resnet18-smallbert", "overrides": TINY_MODEL},
            "data": {"mix": {"mode": "concat"}, "batch_size": 12},
            "validation": {"size": 6, "batch_size": 6, "source": "synthetic"},
            "epochs": 1, "batch_size": 6, "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "engine": {"num_cpus": 2}}
    for key, value in top.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(args, capsys):
    from engine.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.slow
@pytest.mark.ray
def test_train_then_embed_end_to_end(synth_run, tmp_path, capsys):
    """The commands as `syncxr` runs them (in this process, on the session's Ray)."""
    from engine.cli import main

    table = make_table(tmp_path / "real", 6, bad=(2,))
    cfg = _config(tmp_path / "train.yaml")
    run = tmp_path / "run"
    code = main(["train", "--config", str(cfg), "--out", str(run), "--synthetic", str(synth_run),
                 "--real", f"table:{table}"])
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-3000:]
    # 18 synthetic (24 - 6 held out) + 6 real = 24 training pairs, 23 decode = 3 steps of 6
    assert "{'synthetic': 18, 'real': 6} pairs (1 images did not decode, left out), 6 held out, 1 epochs x 3 steps" in out
    assert "epoch 1/1, step 3/3" in out and "skipped images 1" in out
    assert "Traceback" not in err and " INFO " not in out
    (epoch,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epoch["skipped_images"] == 1 and epoch["train_pairs_seen"] == 18 and epoch["step"] == 3
    assert epoch["val_pairs"] == 6 and math.isfinite(epoch["val_loss"]) and 0 <= epoch["val_i2t_r1"] <= 1
    assert epoch["val_i2t_r10"] == 1.0  # 10 >= 6 candidates
    assert epoch["truncated_reports"] >= 0 and (run / "metrics.png").stat().st_size > 1000
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]["synthetic"]) == 6 and len(split["train"]["real"]) == 6
    from train.models import load_model
    assert load_model(run / "model").image_size == TINY_MODEL["image"]["image_size"]

    emb = tmp_path / "emb.parquet"
    code = main(["embed", "--checkpoint", str(run), "--data", str(synth_run), "--out", str(emb)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    table_out = pq.read_table(emb)
    assert table_out.column_names == ["sample_id", "image_embedding", "text_embedding"]
    assert table_out.num_rows == 24
    for col in ("image_embedding", "text_embedding"):
        vectors = np.asarray(table_out.column(col).to_pylist(), dtype=np.float64)
        assert vectors.shape == (24, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    code = main(["embed", "--checkpoint", str(run), "--data", f"table:{table}", "--out", str(tmp_path / "real.parquet")])
    out, _ = capsys.readouterr()
    assert code == 0 and "5 pairs embedded" in out and "1 images did not decode" in out


@pytest.mark.ray
def test_bad_input_is_one_line_before_training(ray_session, tmp_path, capsys):
    syn = make_synthetic_dataset(tmp_path / "syn", 30)
    old = make_synthetic_dataset(tmp_path / "old", 30, fmt="syncxr-dataset/0")
    cfg = _config(tmp_path / "ok.yaml", data={"mix": {"mode": "synthetic"}})
    code, err = _cli(["train", "--config", str(cfg), "--out", str(tmp_path / "r1"), "--synthetic", str(old)], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("syncxr train: error: ") and "format 'syncxr-dataset/0'" in err[0]

    many = _config(tmp_path / "many.yaml", scaling={"num_workers": 3, "cpus_per_worker": 1})
    code, err = _cli(["train", "--config", str(many), "--out", str(tmp_path / "r2"), "--synthetic", str(syn)], capsys)
    assert code == 2 and err == ["syncxr train: error: scaling: 3 workers x 1 CPU = 3 CPU, the cluster has 2"]

    unknown = _config(tmp_path / "unknown.yaml", model={"name": "convirt-vit-gpt", "overrides": {}})
    code, err = _cli(["train", "--config", str(unknown), "--out", str(tmp_path / "r3"), "--synthetic", str(syn)], capsys)
    assert code == 2 and len(err) == 1 and "unknown model 'convirt-vit-gpt'" in err[0]
    assert "convirt-resnet18-smallbert" in err[0]

    code, err = _cli(["train", "--config", str(cfg), "--out", str(tmp_path / "r4"), "--real", "csv:x"], capsys)
    assert code == 2 and "expected one of table:PATH, mimic:PATH, openi:PATH" in err[0]

    # every image undecodable: stopped before any worker starts, naming the first bad row
    broken = make_table(tmp_path / "broken", 20, bad=tuple(range(20)))
    real_only = _config(tmp_path / "real.yaml", data={"mix": {"mode": "real"}}, validation={"source": "real"})
    code, err = _cli(["train", "--config", str(real_only), "--out", str(tmp_path / "r5"), "--real", f"table:{broken}"],
                     capsys)
    assert code == 2 and len(err) == 1, err
    assert "no training image decodes (14 of 14 rows); first: real-10" in err[0] and "cannot be decoded" in err[0]
    assert not (tmp_path / "r5" / "model").exists() and not (tmp_path / "r5" / "ray").exists()


def test_train_commands_are_listed_with_their_outputs(capsys):
    from engine.cli import build_parser

    parser = build_parser()
    text = parser.format_help()
    assert "train" in text and "embed" in text and "tune" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "metrics.jsonl" in out and "--synthetic" in out
    assert "checkpoint.\n\noptions:" in out  # the description's paragraphs are kept apart


def test_every_command_lists_the_exit_codes_it_has():
    import argparse
    import re

    from engine.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    codes = {name: [int(c) for c in re.findall(r"^  (\d+) ", cmd.epilog, re.M)] for name, cmd in sub.choices.items()}
    assert all(c[:2] == [0, 2] and c[-2:] == [130, 143] for c in codes.values()), codes
    # the commands with an exit of their own (their code returns 3)
    assert {name for name, c in codes.items() if 3 in c} == {"synth", "train", "tune"}
    assert not [name for name, cmd in sub.choices.items() if "exit code" in (cmd.description or "").lower()]
