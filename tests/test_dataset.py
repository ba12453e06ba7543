"""The published dataset: a finished run opens as Arrow, pandas, Ray Data and a Hugging Face
dataset; a directory of another format version, or one missing a column, is one clear error."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from engine.dataset import FIELDS, FORMAT, DatasetError, open_dataset, report_text
from engine.images.pipeline import decode_png


def test_a_finished_run_opens_in_every_form(synth_run):
    ds = open_dataset(synth_run)
    assert ds.manifest["syncxr_format"] == FORMAT and len(ds) == 24
    table = ds.to_arrow()
    assert list(FIELDS) == [c for c in table.column_names if c in FIELDS]
    ids = table.column("sample_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 24
    frame = ds.to_pandas(["sample_id", "findings"])
    assert list(frame["sample_id"]) == ids and frame["findings"].str.len().min() > 0
    hf = ds.to_hf()
    assert hf[0]["image"].size == (128, 128) and hf[0]["sample_id"] == ids[0]  # decoded PIL image
    rows = ds.to_ray(["sample_id", "image"]).take_all()
    assert sorted(r["sample_id"] for r in rows) == ids
    assert decode_png(rows[0]["image"]["bytes"]).shape == (128, 128)
    emb = ds.embeddings()
    assert emb.column("sample_id").to_pylist() == ids
    assert open_dataset(synth_run / "data").root == synth_run  # the data/ folder works too


def test_another_format_version_or_a_missing_column_is_one_line(synth_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(synth_run, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["syncxr_format"] = "syncxr-dataset/0"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"format 'syncxr-dataset/0', this reader supports 'syncxr-dataset/1'"):
        open_dataset(other)

    broken = tmp_path / "broken"
    shutil.copytree(synth_run, broken)
    part = sorted((broken / "data").glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(part).drop_columns(["impression"]), part)
    with pytest.raises(DatasetError) as err:
        open_dataset(broken)
    assert str(err.value).startswith(f"{part}: column 'impression' missing") and "\n" not in str(err.value)

    with pytest.raises(DatasetError, match="no manifest.json"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such dataset directory"):
        open_dataset(tmp_path / "absent")


def test_report_text_joins_the_sections():
    assert report_text(" Lungs are clear. ", "No acute disease.") == "Lungs are clear. No acute disease."
    assert report_text(None, "Normal.") == "Normal." and report_text("", None) == ""
