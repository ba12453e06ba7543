"""Report stage, pure parts: prompt template, LLM output parsing, QC comparison, candidate choice."""
from __future__ import annotations

import pytest

from engine.core.errors import ConfigError, UserError
from engine.reports.prompts import load_prompt, render_messages
from engine.reports.parse import parse_report
from engine.reports.qc import choose_candidates, compare_entities
from engine.text.sections import normalise_entity_text as normalise

PROMPT = "configs/prompts/report_v1.yaml"

ENTS = [
    {"text": "pleural effusion", "type": "ABNORMALITY"},
    {"text": "pneumothorax", "type": "NON-ABNORMALITY"},
    {"text": "pneumonia", "type": "DISEASE"},
    {"text": "tuberculosis", "type": "NON-DISEASE"},
    {"text": "left costophrenic angle", "type": "ANATOMY"},
]


# --- prompt -------------------------------------------------------------------------------------

def test_prompt_renders_every_entity_with_its_polarity():
    prompt = load_prompt(PROMPT)
    assert prompt.version == "report_v1"
    messages = render_messages(prompt, ENTS)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "- pleural effusion: present finding" in user
    assert "- pneumothorax: absent finding" in user
    assert "- pneumonia: present diagnosis" in user
    assert "- tuberculosis: absent diagnosis" in user
    assert "- left costophrenic angle: anatomical location" in user
    assert "exactly the following 5 entities" in user
    assert "FINDINGS:" in user and "IMPRESSION:" in user
    assert "{" not in user  # every placeholder filled


def test_prompt_rejects_empty_and_bad_entities():
    prompt = load_prompt(PROMPT)
    with pytest.raises(UserError, match="empty entity list"):
        render_messages(prompt, [])
    with pytest.raises(UserError, match="bad entity"):
        render_messages(prompt, [{"text": "opacity", "type": "FINDING"}])


@pytest.mark.parametrize("body, message", [
    ("version: x\n", "missing field"),
    ("- a\n- b\n", "expected a mapping"),
    ("version: v\nsystem: s\nuser: 'list {entity_lst}'\nentity_line: '{text}'\ntype_labels: "
     "{ABNORMALITY: a, NON-ABNORMALITY: b, DISEASE: c, NON-DISEASE: d, ANATOMY: e}\n", "unknown placeholder"),
    ("version: v\nsystem: s\nuser: u\nentity_line: '{text}'\ntype_labels: {ABNORMALITY: a}\n", "type_labels"),
    ("version: [unclosed\n", "malformed YAML"),
])
def test_prompt_file_errors_name_the_file(tmp_path, body, message):
    path = tmp_path / "bad_prompt.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as exc:
        load_prompt(path)
    assert "bad_prompt.yaml" in str(exc.value)
    with pytest.raises(ConfigError, match="not found"):
        load_prompt(tmp_path / "nope.yaml")


# --- parsing ------------------------------------------------------------------------------------

def test_parse_chatty_markdown_output():
    text = ("Sure! Here is the chest X-ray report you asked for:\n\n"
            "**FINDINGS:**\n- There is pleural effusion in the left costophrenic angle.\n- No pneumothorax.\n\n"
            "## Impression\n1. Findings consistent with pneumonia.\n2. No evidence of tuberculosis.\n\n"
            "Let me know if you would like any changes!")
    p = parse_report(text)
    assert p.ok
    assert p.findings == "There is pleural effusion in the left costophrenic angle. No pneumothorax."
    assert p.impression == "Findings consistent with pneumonia. No evidence of tuberculosis."


@pytest.mark.parametrize("text, findings, impression", [
    ("findings: a b.\nimpression: c.", "a b.", "c."),
    ("Findings - a b.\nImpression \u2014 c.", "a b.", "c."),
    ("FINDINGS: a b. IMPRESSION: c.", "a b.", "c."),
    ("```\nFINDINGS:\na b.\n\nCONCLUSION:\nc.\n```", "a b.", "c."),
    # No FINDINGS heading: the text before IMPRESSION is the findings (chatter dropped).
    ("Here is the report:\nThere is opacity.\nIMPRESSION: Opacity.", "There is opacity.", "Opacity."),
])
def test_parse_heading_forms(text, findings, impression):
    p = parse_report(text)
    assert (p.findings, p.impression, p.problems) == (findings, impression, [])


def test_parse_missing_sections_and_empty_output():
    assert parse_report("").problems == ["empty output"]
    assert parse_report(None).problems == ["empty output"]
    p = parse_report("FINDINGS: There is opacity.")
    assert p.problems == ["section missing: impression"] and p.findings == "There is opacity."
    p = parse_report("Sure, here you go! I hope this helps.")
    assert p.problems == ["section missing: findings", "section missing: impression"]
    garbage = parse_report("\x03\x15%l megaly pleu")
    assert "section missing: impression" in garbage.problems


def test_parse_truncated_output_drops_the_unfinished_sentence():
    text = "FINDINGS: There is opacity. No pleural eff"
    assert parse_report(text).findings.endswith("No pleural eff")  # not known to be cut: kept
    p = parse_report(text, truncated=True)
    assert p.findings == "There is opacity." and p.truncated
    assert p.problems == ["section missing: impression"]
    p = parse_report("FINDINGS: There is opacity.\nIMPRESSION: Opaci", truncated=True)
    assert p.problems == ["section missing: impression"]


# --- QC comparison ------------------------------------------------------------------------------

def test_compare_exact_match_ignores_case_and_order():
    found = [{"text": "Pneumonia", "type": "DISEASE"}] + [dict(e) for e in ENTS[::-1]]
    assert normalise("  Pleural  Effusion. ") == "pleural effusion"
    result = compare_entities(ENTS, found)
    assert result.accepted and result.reasons == []


def test_compare_reasons():
    found = [
        {"text": "pleural effusion", "type": "NON-ABNORMALITY"},  # flipped
        {"text": "pneumonia", "type": "ABNORMALITY"},  # type changed
        {"text": "tuberculosis", "type": "NON-DISEASE"},
        {"text": "left costophrenic angle", "type": "ANATOMY"},
        {"text": "cardiomegaly", "type": "ABNORMALITY"},  # extra
    ]  # pneumothorax missing
    result = compare_entities(ENTS, found)
    assert not result.accepted
    assert sorted(result.reasons) == sorted([
        "polarity flipped: pleural effusion (ABNORMALITY -> NON-ABNORMALITY)",
        "missing: pneumothorax (NON-ABNORMALITY)",
        "type changed: pneumonia (DISEASE -> ABNORMALITY)",
        "extra: cardiomegaly (ABNORMALITY)",
    ])


def test_compare_tolerance_counts_differences_but_never_flips():
    one_extra = ENTS + [{"text": "cardiomegaly", "type": "ABNORMALITY"}]
    assert not compare_entities(ENTS, one_extra, tolerance=0).accepted
    tolerant = compare_entities(ENTS, one_extra, tolerance=1)
    assert tolerant.accepted and tolerant.reasons == ["extra: cardiomegaly (ABNORMALITY)"]
    assert not compare_entities(ENTS, one_extra + [{"text": "edema", "type": "ABNORMALITY"}], tolerance=1).accepted
    flipped = [dict(e) for e in ENTS]
    flipped[1]["type"] = "ABNORMALITY"
    assert not compare_entities(ENTS, flipped, tolerance=5).accepted


# --- choosing among candidates ------------------------------------------------------------------

def _keyword_extract(texts):
    """A stand-in extractor for the choice logic: exact keywords, 'no X' negates."""
    vocab = {"opacity": "ABNORMALITY", "effusion": "ABNORMALITY"}
    out = []
    for t in texts:
        low = t.lower()
        ents = []
        for word, etype in vocab.items():
            if word in low:
                ents.append({"text": word, "type": ("NON-" + etype) if f"no {word}" in low else etype})
        out.append(ents)
    return out


def test_first_accepted_candidate_wins_and_rejections_keep_reasons():
    sampled = [[{"text": "opacity", "type": "ABNORMALITY"}, {"text": "effusion", "type": "NON-ABNORMALITY"}]] * 3
    good = "FINDINGS: There is opacity. No effusion.\nIMPRESSION: Opacity."
    bad_flip = "FINDINGS: There is opacity and effusion.\nIMPRESSION: Opacity."
    no_impr = "FINDINGS: There is opacity. No effusion."
    decisions = choose_candidates(sampled, [[bad_flip, good, good], [good], [no_impr, bad_flip]], _keyword_extract)
    first, second, third = decisions
    assert first.accepted and first.attempts == 2 and first.findings == "There is opacity. No effusion."
    assert first.reasons == []
    assert second.accepted and second.attempts == 1
    assert not third.accepted and third.attempts == 2
    assert third.reasons == ["candidate 1: section missing: impression",
                             "candidate 2: polarity flipped: effusion (NON-ABNORMALITY -> ABNORMALITY)"]
    assert third.findings == "There is opacity. No effusion."  # first candidate kept for inspection


def test_no_candidates_is_a_rejection():
    (d,) = choose_candidates([[{"text": "opacity", "type": "ABNORMALITY"}]], [[]], _keyword_extract)
    assert not d.accepted and d.reasons == ["no candidates generated"] and d.attempts == 0
