import json

import pytest

from engine.core.config import CorpusConfig
from engine.text.corpora import load_corpus, read_iu_xray
from engine.core.errors import UserError
from engine.text.sections import split_sections


@pytest.fixture(scope="module")
def iu_reports():
    return load_corpus(CorpusConfig())


def test_iu_xray_is_the_shipped_open_i_collection(iu_reports):
    raw = list(read_iu_xray())
    assert len(raw) == 3955  # every report in NLMCXR_reports.tgz
    assert len(iu_reports) == sum(1 for r in raw if not r.is_empty)
    assert len(iu_reports) > 3900
    assert sum(bool(r.findings) for r in iu_reports) > 3000
    assert all(r.mesh for r in iu_reports)
    assert not any("XXXX" in r.text for r in iu_reports)  # anonymisation marks dropped


def test_iu_xray_limit(iu_reports):
    assert [r.report_id for r in load_corpus(CorpusConfig(limit=5))] == [r.report_id for r in iu_reports[:5]]


def test_mimic_tree(tmp_path):
    d = tmp_path / "files" / "p10" / "p10000032"
    d.mkdir(parents=True)
    (d / "s50414267.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " INDICATION:  cough\n\n FINDINGS:  There is no focal consolidation,\n pleural effusion or pneumothorax.\n\n"
        " IMPRESSION:  No acute cardiopulmonary process.\n")
    (d / "s50000000.txt").write_text("   \n")
    reports = load_corpus(CorpusConfig(name="mimic-cxr", path=str(tmp_path / "files")))
    assert len(reports) == 1
    assert reports[0].report_id == "s50414267"
    assert reports[0].findings.startswith("There is no focal consolidation, pleural effusion")
    assert reports[0].impression == "No acute cardiopulmonary process."


def test_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text('id,report\n1,"FINDINGS: Small left effusion. IMPRESSION: Effusion."\n2,Heart is enlarged.\n3,\n')
    reports = load_corpus(CorpusConfig(name="csv", path=str(csv_path), text_column="report", id_column="id"))
    assert [(r.report_id, r.findings, r.impression) for r in reports] == [
        ("1", "Small left effusion.", "Effusion."), ("2", "Heart is enlarged.", "")]
    jl = tmp_path / "r.jsonl"
    jl.write_text(json.dumps({"text": "No pneumothorax."}) + "\n\n" + json.dumps({"text": "Clear lungs."}) + "\n")
    assert [r.findings for r in load_corpus(CorpusConfig(name="jsonl", path=str(jl)))] == ["No pneumothorax.", "Clear lungs."]


def test_bad_corpora_name_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="corpus file not found"):
        load_corpus(CorpusConfig(name="csv", path=str(tmp_path / "missing.csv")))
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n\n")
    with pytest.raises(UserError, match="has no reports with text"):
        load_corpus(CorpusConfig(name="csv", path=str(empty)))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("body\nsomething\n")
    with pytest.raises(UserError, match="no column 'text'"):
        load_corpus(CorpusConfig(name="csv", path=str(wrong)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl: line 2: invalid JSON"):
        load_corpus(CorpusConfig(name="jsonl", path=str(bad)))
    with pytest.raises(UserError, match="needs corpus.path"):
        load_corpus(CorpusConfig(name="jsonl"))


@pytest.mark.parametrize("text,expected", [
    ("FINDINGS: a.\nIMPRESSION: b.", {"findings": "a.", "impression": "b."}),
    ("Sure, here is the report:\n\n**Findings:**\n- Lungs clear.\n\n### IMPRESSION\nNormal.",
     {"preamble": "Sure, here is the report:", "findings": "Lungs clear.", "impression": "Normal."}),
    ("findings: only findings, truncated mid", {"findings": "only findings, truncated mid"}),
    ("Impression: first.\nConclusion: second.", {"impression": "first. second."}),
    ("", {}),
])
def test_split_sections(text, expected):
    assert split_sections(text) == expected
