"""`syncxr extract` and the extractor as a Ray Data stage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main
from engine.core.config import ExtractorConfig, StageResources
from engine.text.lexicon_extractor import LexiconExtractor


def run_cli(capsys, *argv):
    code = main(["extract", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_prints_one_json_list(capsys):
    code, out, err = run_cli(capsys, "--text", "No pneumothorax. Mild cardiomegaly in the left hemithorax.")
    assert code == 0 and err == ""
    assert json.loads(out) == [
        {"text": "pneumothorax", "type": "NON-ABNORMALITY"}, {"text": "cardiomegaly", "type": "ABNORMALITY"},
        {"text": "left hemithorax", "type": "ANATOMY"}]


def test_types_filter(capsys):
    code, out, _ = run_cli(capsys, "--text", "No pneumothorax. Cardiomegaly in the heart.", "--types", "anatomy,ABNORMALITY")
    assert code == 0
    assert json.loads(out) == [{"text": "cardiomegaly", "type": "ABNORMALITY"}, {"text": "heart", "type": "ANATOMY"}]


def test_file_plain_lines_in_order(tmp_path, capsys):
    path = tmp_path / "reports.txt"
    path.write_text("No effusion.\n\nPossible pneumonia.\nHeart size is normal.\n")
    code, out, _ = run_cli(capsys, "--file", str(path))
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines == [[{"text": "pleural effusion", "type": "NON-ABNORMALITY"}], [],
                     [{"text": "pneumonia", "type": "DISEASE"}],
                     [{"text": "heart", "type": "ANATOMY"}, {"text": "cardiomegaly", "type": "NON-ABNORMALITY"}]]


def test_file_jsonl_text_field(tmp_path, capsys):
    path = tmp_path / "reports.jsonl"
    rows = [{"id": 1, "text": "Small left pleural effusion."}, {"id": 2, "text": "No acute disease."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, _ = run_cli(capsys, "--file", str(path))
    assert code == 0
    assert [json.loads(x) for x in out.splitlines()] == [
        [{"text": "left hemithorax", "type": "ANATOMY"}, {"text": "pleural effusion", "type": "ABNORMALITY"}],
        [{"text": "acute cardiopulmonary abnormality", "type": "NON-ABNORMALITY"}]]


def test_custom_lexicon_from_config_relative_path(tmp_path, capsys):
    (tmp_path / "lex.yaml").write_text("entries:\n- {name: widget, type: DISEASE}\n")
    (tmp_path / "cfg.yaml").write_text("extractor: {backend: lexicon, lexicon: lex.yaml}\n")
    code, out, _ = run_cli(capsys, "--text", "No widget.", "--config", str(tmp_path / "cfg.yaml"))
    assert code == 0 and json.loads(out) == [{"text": "widget", "type": "NON-DISEASE"}]


@pytest.mark.parametrize("setup, argv, message", [
    (None, ["--file", "{tmp}/missing.txt"], "missing.txt: file not found"),
    ('{"text": "ok"}\n{"text": \n', ["--file", "{tmp}/in.jsonl"], "in.jsonl: line 2: invalid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', ["--file", "{tmp}/in.jsonl"], "in.jsonl: line 2: no 'text' field"),
    ('{"text": 3}\n', ["--file", "{tmp}/in.jsonl"], "line 1: 'text' must be a string"),
    (None, ["--text", "x", "--types", "FINDING"], "unknown entity type 'FINDING'"),
    (None, ["--text", "x", "--backend", "spacy"], "unknown extractor backend 'spacy'"),
    (None, ["--text", "x", "--backend", "transformers"], "extractor.model"),
    (None, ["--text", "x", "--backend", "transformers", "--model", "{tmp}/no-model"], "model directory not found"),
    (None, ["--text", "x", "--lexicon", "{tmp}/none.yaml"], "none.yaml: lexicon file not found"),
    (None, ["--text", "x", "--config", "{tmp}/none.yaml"], "none.yaml: config file not found"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, setup, argv, message):
    if setup is not None:
        (tmp_path / "in.jsonl").write_text(setup)
    code, out, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("syncxr extract: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_lexicon_stage_in_ray_data(ray_session):
    from engine.core.stage import entity_lists, map_stage

    rows = [{"sample_id": f"s{i}", "text": t} for i, t in enumerate(
        ["No pneumothorax.", "Cardiomegaly.", "", "Possible pneumonia in the right lower lobe."] * 5)]
    ds = ray_session.data.from_items(rows)
    res = StageResources(num_cpus=0.5, batch_size=4, min_actors=1, max_actors=1)
    out = map_stage(ds, LexiconExtractor, res, {"cfg": ExtractorConfig().model_dump()})
    got = sorted(out.take_all(), key=lambda r: int(r["sample_id"][1:]))
    assert [r["sample_id"] for r in got] == [f"s{i}" for i in range(20)]
    ents = entity_lists([r["entities"] for r in got])
    assert ents[0] == [{"text": "pneumothorax", "type": "NON-ABNORMALITY"}]
    assert ents[2] == []
    assert ents[3] == [{"text": "pneumonia", "type": "DISEASE"}, {"text": "right lower lobe", "type": "ANATOMY"}]
    assert all(r["extract_error"] == "" for r in got)


def test_stage_call_isolates_bad_rows():
    ex = LexiconExtractor()
    out = ex({"text": np.array(["No effusion.", 42, None], dtype=object), "k": np.array([1, 2, 3])})
    assert list(out["k"]) == [1, 2, 3]
    assert out["entities"][0] == [{"text": "pleural effusion", "type": "NON-ABNORMALITY"}]
    assert out["entities"][1] == [] and "text must be a string, got int" in out["extract_error"][1]
    assert out["entities"][2] == [] and out["extract_error"][2] == ""
