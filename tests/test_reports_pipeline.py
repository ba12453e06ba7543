"""Report stage with the template backend: its phrasings against the real lexicon extractor, and
`syncxr reports` end to end on a local Ray (plus the bad inputs the CLI must refuse)."""
from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.report_template import PHRASES, STATEMENTS, TemplateComposer, TemplateReportWriter, fill, is_plural
from engine.cli import main
from engine.core.config import load_config
from engine.text.entities import ANATOMY, build_extractor, flip_polarity
from engine.text.lexicon import load_lexicon
from engine.plan.sampler import PLAN_SCHEMA
from engine.reports.parse import parse_report
from engine.reports.qc import choose_candidates, compare_entities


@pytest.fixture(scope="module")
def extractor():
    return build_extractor(load_config().extractor)


def _plan(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


ROWS = [
    {"sample_id": "r0-00000000", "seed": 11, "entities": [
        {"text": "pleural effusion", "type": "ABNORMALITY"}, {"text": "pneumothorax", "type": "NON-ABNORMALITY"},
        {"text": "pneumonia", "type": "DISEASE"}, {"text": "atelectasis", "type": "ABNORMALITY"},
        {"text": "left costophrenic angle", "type": "ANATOMY"}, {"text": "right lower lobe", "type": "ANATOMY"}]},
    {"sample_id": "r0-00000001", "seed": 12, "entities": [
        {"text": "cardiomegaly", "type": "NON-ABNORMALITY"}, {"text": "consolidation", "type": "NON-ABNORMALITY"},
        {"text": "tuberculosis", "type": "NON-DISEASE"}, {"text": "acute cardiopulmonary abnormality", "type": "NON-ABNORMALITY"},
        {"text": "heart", "type": "ANATOMY"}, {"text": "lungs", "type": "ANATOMY"}]},
    {"sample_id": "r0-00000002", "seed": 13, "entities": []},
    {"sample_id": "r0-00000003", "seed": 14, "entities": [
        {"text": "picc line", "type": "ABNORMALITY"}, {"text": "degenerative changes", "type": "ABNORMALITY"},
        {"text": "emphysema", "type": "DISEASE"}, {"text": "fracture", "type": "NON-ABNORMALITY"},
        {"text": "superior vena cava", "type": "ANATOMY"}, {"text": "thoracic spine", "type": "ANATOMY"}]},
    {"sample_id": "r0-00000004", "seed": 15, "entities": [{"text": "opacity", "type": "FINDING"}]},
]


# --- the composer against the extractor ---------------------------------------------------------

def test_every_phrasing_reads_back_for_every_lexicon_finding(extractor):
    """Each sentence form, filled with every canonical finding of the lexicon (and an anatomy of
    each region), yields exactly the entities it was given."""
    lex = load_lexicon()
    findings = [e for e in lex if e.type != ANATOMY]
    by_region = {}
    for e in lex:
        if e.type == ANATOMY:
            by_region.setdefault(e.region, e.name)
    anatomy = sorted(by_region.values())
    texts, wants = [], []
    for i, f in enumerate(findings):
        pos, neg = {"text": f.name, "type": f.type}, {"text": f.name, "type": flip_polarity(f.type)}
        y = anatomy[i % len(anatomy)]
        other = findings[(i + 1) % len(findings)]
        other_neg = {"text": other.name, "type": flip_polarity(other.type)}
        for kind, want in (("present", [pos]), ("absent", [neg]), ("diagnosis", [pos]), ("summary", [pos]),
                           ("excluded", [neg]), ("device", [pos])):
            for t in PHRASES[kind]:
                texts.append(fill(t, x=f.name)), wants.append(want)
        for kind, want in (("present_at", [pos]), ("absent_at", [neg]), ("diagnosis_at", [pos]),
                           ("summary_at", [pos]), ("device_at", [pos]), ("line_at", [pos])):
            for t in PHRASES[kind]:
                texts.append(fill(t, x=f.name, y=y)), wants.append(want + [{"text": y, "type": ANATOMY}])
        for t in PHRASES["absent_list"]:
            texts.append(fill(t, xs=[f.name, other.name])), wants.append([neg, other_neg])
    for y in anatomy:
        for t in PHRASES["anatomy_only"]:
            texts.append(fill(t, y=y)), wants.append([{"text": y, "type": ANATOMY}])
    for (x, etype, y), options in STATEMENTS.items():
        for t in options:
            texts.append(t), wants.append([{"text": x, "type": etype}, {"text": y, "type": ANATOMY}])
    failures = [(t, got) for t, want, got in zip(texts, wants, extractor.extract(texts))
                if not compare_entities(want, got).accepted]
    assert len(texts) > 5000
    assert not failures, f"{len(failures)} of {len(texts)} sentences read back wrong, e.g. {failures[:5]}"


def test_composer_is_deterministic_varied_and_grammatical(extractor):
    writer = TemplateReportWriter(num_candidates=4)
    rows = [r for r in ROWS if r["entities"] and r["entities"][0]["type"] != "FINDING"]
    first = writer.generate(rows)
    assert writer.generate(rows) == first  # same seed, same text
    for (texts, cut), row in zip(first, rows):
        assert len(set(texts)) >= 2 and cut == [False] * 4  # candidates differ
        for text in texts:
            p = parse_report(text)
            assert p.ok and "{" not in text and "  " not in text
            assert re.fullmatch(r"FINDINGS: .+\.\n\nIMPRESSION: .+\.", text, flags=re.S)
        decisions = choose_candidates([row["entities"]], [texts], extractor.extract)
        assert decisions[0].accepted and decisions[0].attempts == 1, decisions[0].reasons
    assert is_plural("degenerative changes") and is_plural("hila") and not is_plural("atelectasis")
    assert is_plural("kidneys") and not is_plural("pneumothorax")
    assert fill("{X} {is} seen.", x="degenerative changes") == "Degenerative changes are seen."
    # The anatomy sits with the finding it locates.
    text = " ".join(writer.generate([ROWS[3]])[0][0])
    assert re.search(r"picc line[^.]*superior vena cava|superior vena cava[^.]*picc line", text, re.I)
    assert re.search(r"degenerative changes[^.]*thoracic spine|thoracic spine[^.]*degenerative changes", text, re.I)
    effusion = TemplateComposer({"left costophrenic angle": "costophrenic", "right lower lobe": "lower"})
    findings, _ = effusion.compose(ROWS[0]["entities"], seed=1)
    assert re.search(r"effusion[^.]*left costophrenic angle|left costophrenic angle[^.]*effusion", findings, re.I)


def test_report_qc_stage_and_verdict():
    """The QC stage on a batch as Ray hands it over: generation failures, QC rejections and
    accepted rows side by side, extra columns carried on."""
    import numpy as np

    from engine.reports.pipeline import ReportQC, report_verdict
    from engine.core.stage import object_column

    ents = ROWS[0]["entities"][:2]
    good = ("FINDINGS: Pleural effusion is seen. No pneumothorax.\n\nIMPRESSION: Pleural effusion.")
    batch = {
        "sample_id": np.array(["a", "b", "c", "d"], dtype=object),
        "entities": object_column([ents, ents, [], ents]),
        "seed": np.array([1, 2, 3, 4]),
        "attempt": np.array([0, 0, 0, 1]),
        "candidates": object_column([["FINDINGS: Pneumothorax.", good], ["garbage"], [], []]),
        "truncated": object_column([[False, False], [True], [], []]),
        "gen_error": np.array(["", "", "empty entity list", "endpoint error: HTTP 503"], dtype=object),
    }
    out = ReportQC(load_config().extractor.model_dump())(batch)
    assert list(out["accepted"]) == [True, False, False, False]
    assert list(out["attempts"]) == [2, 1, 0, 0] and list(out["attempt"]) == [0, 0, 0, 1]
    assert "candidates" not in out and "gen_error" not in out
    assert out["findings"][0] == "Pleural effusion is seen. No pneumothorax."
    assert "candidate 1: section missing: impression" in out["reasons"][1]
    assert "candidate 1: truncated at the token limit" in out["reasons"][1]
    ok, reasons = report_verdict(out)
    assert list(ok) == [True, False, False, False] and reasons[0] is None
    assert reasons[1].startswith("reports: candidate 1: ")
    assert reasons[2] == "reports: empty entity list"  # the plan's fault, not an engine error
    assert reasons[3] == "reports: error: endpoint error: HTTP 503"


# --- the CLI ------------------------------------------------------------------------------------

@pytest.mark.ray
def test_cli_reports_template_end_to_end(ray_session, tmp_path, capsys):
    plan = tmp_path / "plan.parquet"
    pq.write_table(_plan(ROWS), plan)
    out = tmp_path / "out"
    assert main(["reports", "--plan", str(plan), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 rows, 3 accepted" in printed and "reports.parquet" in printed
    table = pq.read_table(out / "reports.parquet")
    assert table.column_names == ["sample_id", "entities", "seed", "findings", "impression", "accepted",
                                  "reasons", "attempts"]
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in ROWS]  # plan order
    assert [r["accepted"] for r in rows] == [True, True, False, True, False]
    assert rows[2]["reasons"] == ["empty entity list"] and rows[2]["attempts"] == 0
    assert rows[4]["reasons"] == ["unknown entity type 'FINDING' ('opacity')"]
    for r, plan_row in zip(rows, ROWS):
        assert r["entities"] == plan_row["entities"] and r["seed"] == plan_row["seed"]
        if r["accepted"]:
            assert r["attempts"] == 1 and r["reasons"] == [] and r["findings"] and r["impression"]
    assert (out / "reports_summary.json").is_file()


def _write_config(tmp_path, body: str):
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
    path.write_text(body)
    return str(path)


def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
    plan = tmp_path / "plan.parquet"
    pq.write_table(_plan(ROWS[:1]), plan)
    out = str(tmp_path / "out")

    cases = [
        (["--plan", str(tmp_path / "missing.parquet")], "missing.parquet: plan not found"),
        (["--plan", str(plan), "--backend", "gpt5"], "reports.backend: unknown reports backend 'gpt5'; known: corpus, openai, template, transformers, vllm"),
        (["--plan", str(plan), "--backend", "transformers", "--model", str(tmp_path / "no-model")],
         "reports.model: model directory"),
        (["--plan", str(plan), "--backend", "transformers"], "reports.model: the 'transformers' backend needs a model"),
        (["--plan", str(plan), "--config", _write_config(tmp_path, "reports: {prompt: nope.yaml}\n")],
         "nope.yaml: prompt file not found"),
        (["--plan", str(plan), "--config", _write_config(tmp_path, "reports: {options: {colour: red}}\n")],
         "reports.options.colour: Extra inputs are not permitted (backend 'template')"),
    ]
    bad_plan = tmp_path / "bad_plan.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "seed": [1]}), bad_plan)
    cases.append((["--plan", str(bad_plan)], "bad_plan.parquet: missing column(s) entities"))
    not_parquet = tmp_path / "plan.txt"
    not_parquet.write_text("sample_id,entities\n")
    cases.append((["--plan", str(not_parquet)], "plan.txt: not a readable Parquet plan"))
    for args, message in cases:
        assert main(["reports", "--out", out, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
