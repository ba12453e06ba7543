"""`syncxr images` and `syncxr phantom` from the command line: outputs, and bad input as one
clear line (exit 2), never a traceback or a crashed run."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.phantom import render_phantom
from engine.cli import main
from engine.images.pipeline import decode_png

ENTITY = pa.struct([("text", pa.string()), ("type", pa.string())])


def write_reports(path, rows):
    pq.write_table(pa.table({
        "sample_id": [r[0] for r in rows],
        "entities": pa.array([r[1] for r in rows], pa.list_(ENTITY)),
        "seed": pa.array([r[2] for r in rows], pa.int64()),
        "impression": [r[3] for r in rows],
        "accepted": [r[4] for r in rows],
    }), path)


ROWS = [
    ("a", [{"text": "pleural effusion", "type": "ABNORMALITY"}, {"text": "left lung base", "type": "ANATOMY"}], 1, "Left effusion.", True),
    ("b", [{"text": "pneumothorax", "type": "NON-ABNORMALITY"}, {"text": "cardiomegaly", "type": "ABNORMALITY"}], 2, "Cardiomegaly.", True),
    ("c", [{"text": "nodule", "type": "MYSTERY"}], 3, "Nodule.", True),
    ("d", [{"text": "mass", "type": "ABNORMALITY"}], 4, "Mass.", False),
    ("e", [], 5, "Normal chest.", True),
]


@pytest.mark.ray
def test_images_command_runs_the_phantom_stage_in_ray(ray_session, tmp_path, capsys):
    reports = tmp_path / "reports.parquet"
    write_reports(reports, ROWS)
    out = tmp_path / "out"
    assert main(["images", "--reports", str(reports), "--out", str(out), "--size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "4 rows, 3 drawn, 1 rejected" in printed
    table = pq.read_table(out / "images.parquet")
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == ["a", "b", "e"]  # d was not accepted by report QC
    for r, src in zip(rows, [ROWS[0], ROWS[1], ROWS[4]]):
        direct = render_phantom(src[1], src[2], 64)
        assert (decode_png(r["image"]["bytes"]) == direct.image).all()
        assert [m["finding"] for m in r["masks"]] == [m["finding"] for m in direct.masks]
    assert rows[0]["masks"][0]["side"] == "left" and rows[0]["provenance"]["negated"] == []
    assert rows[1]["provenance"]["negated"] == ["pneumothorax"] and rows[1]["provenance"]["ctr"] > 0.5
    rejected = pq.read_table(out / "images_rejected.parquet").to_pylist()
    assert rejected[0]["sample_id"] == "c" and "unknown type 'MYSTERY'" in rejected[0]["reasons"][0]
    summary = json.loads((out / "images_summary.json").read_text())
    assert summary["rejected_by"] == {"error: ValueError": 1}
    # HF datasets decodes the image column as an Image
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(out / "images.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (64, 64)


def test_phantom_command_writes_png_and_overlay(tmp_path, capsys):
    out = tmp_path / "x.png"
    ents = '[{"text": "pneumothorax", "type": "ABNORMALITY"}, {"text": "right apex", "type": "ANATOMY"}]'
    assert main(["phantom", "--entities", ents, "--seed", "4", "--size", "96", "--out", str(out), "--overlay"]) == 0
    img = decode_png(out.read_bytes())
    assert img.shape == (96, 96)
    assert (img == render_phantom(json.loads(ents), 4, 96).image).all()
    overlay = tmp_path / "x.overlay.png"
    assert overlay.is_file()
    report = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert report["masks"][0]["finding"] == "pneumothorax" and report["masks"][0]["side"] == "right"


@pytest.mark.parametrize("argv_tail,message", [
    (["--entities", "[{", "--out", "x.png"], "--entities: not valid JSON"),
    (["--entities", '{"text": "a"}', "--out", "x.png"], "expected a JSON list"),
    (["--entities", '[{"text": "a", "type": "BAD"}]', "--out", "x.png"], "unknown type 'BAD'"),
    (["--entities", "[]", "--out", "no/such/dir/x.png"], "directory does not exist"),
])
def test_phantom_command_bad_input(argv_tail, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["phantom", *argv_tail]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_images_command_bad_input_is_one_line(tmp_path, capsys):
    reports = tmp_path / "reports.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "seed": pa.array([1], pa.int64())}), reports)
    cases = [
        (["--reports", str(tmp_path / "none.parquet")], "input not found"),
        (["--reports", str(reports)], "needs column(s) entities"),
        (["--reports", str(reports), "--backend", "dalle"], "unknown image backend 'dalle'"),
        (["--reports", str(reports), "--backend", "diffusers", "--model", str(tmp_path)], "needs column(s) impression"),
    ]
    (tmp_path / "notes.txt").write_text("not parquet")
    cases.append((["--reports", str(tmp_path / "notes.txt")], "not a readable parquet file"))
    for tail, message in cases:
        assert main(["images", "--out", str(tmp_path / "o"), *tail]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (tail, err)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "seed": pa.array([1], pa.int64()), "impression": ["x"]}), good)
    assert main(["images", "--out", str(tmp_path / "o"), "--reports", str(good), "--backend", "diffusers",
                 "--model", str(tmp_path)]) == 2
    assert "not a diffusers pipeline directory (no model_index.json)" in capsys.readouterr().err
