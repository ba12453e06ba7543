"""The lexicon and the lexicon + negation extractor (the CPU default)."""
from __future__ import annotations

import textwrap

import pytest

from engine.core.config import CorpusConfig, ExtractorConfig
from engine.text.corpora import load_corpus
from engine.text.entities import ENTITY_TYPES, build_extractor, flip_polarity
from engine.core.errors import UserError
from engine.text.lexicon import REGIONS, SIDES, load_lexicon, plural_forms, tokenize
from engine.text.lexicon_extractor import LexiconExtractor, check_canonical_roundtrip, split_sentences

A, NA, D, ND, AN = "ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY"


@pytest.fixture(scope="module")
def ex():
    return LexiconExtractor()


def pairs(ex, text):
    return [(e["text"], e["type"]) for e in ex.extract_one(text)]


# --- the packaged lexicon ----------------------------------------------------------------------
def test_packaged_lexicon_size_and_anatomy_fields():
    lx = load_lexicon()
    assert len(lx) >= 250
    types = {e.type for e in lx}
    assert types == {A, D, AN}
    for e in lx:
        if e.type == AN:
            assert e.side in SIDES and e.region in REGIONS
        else:
            assert (e.side, e.region) == ("none", "none")
    assert lx["left lower lobe"].side == "left" and lx["left lower lobe"].region == "lower"
    assert lx["right costophrenic angle"].region == "costophrenic"
    assert lx["lung bases"].side == "bilateral"
    assert lx["thoracic spine"].region == "bone"
    assert "chf" in lx["heart failure"].synonyms
    assert lx.lookup("CHF").name == "heart failure"
    assert lx.lookup("Pleural effusions").name == "pleural effusion"  # automatic plural
    assert lx.lookup("air-space disease").name == "airspace disease"
    with pytest.raises(UserError, match="no lexicon entry named 'nothing'"):
        lx["nothing"]


def test_required_vocabulary_is_present():
    lx = load_lexicon()
    for name in ["opacity", "pleural effusion", "consolidation", "atelectasis", "pneumothorax", "cardiomegaly",
                 "pulmonary edema", "nodule", "mass", "granuloma", "calcification", "scarring", "hyperinflation",
                 "low lung volumes", "interstitial markings", "fracture", "degenerative changes", "scoliosis",
                 "hiatal hernia", "central venous catheter", "endotracheal tube", "pacemaker", "sternotomy wires",
                 "pneumonia", "heart failure", "copd", "emphysema", "tuberculosis", "malignancy", "sarcoidosis",
                 "granulomatous disease", "left lung", "right lower lobe", "left costophrenic angle", "lung bases",
                 "right hilum", "heart", "mediastinum", "aorta", "thoracic spine"]:
        assert name in lx, name


def test_plural_forms():
    assert plural_forms("opacity") == ["opacities"]
    assert plural_forms("atelectasis") == ["atelectases"]
    assert plural_forms("thorax") == ["thoraces", "thoraxes"]
    assert plural_forms("apex") == ["apices", "apexes"]
    assert plural_forms("granuloma") == ["granulomas", "granulomata"]
    assert plural_forms("mass") == ["masses"]
    assert plural_forms("lungs") == []


def test_tokenize_splits_hyphens_and_keeps_punctuation():
    assert tokenize("Air-space disease; no PTX.") == ["air", "space", "disease", ";", "no", "ptx", "."]


def _write(tmp_path, text, name="lex.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("body, message", [
    ("entries:\n- {name: blob, type: FINDING}\n", r"entries\[0\] \('blob'\): unknown entity type 'FINDING'"),
    ("entries:\n- {name: blob, type: NON-ABNORMALITY}\n", "negated types come from the text"),
    ("entries:\n- {name: lung, type: ANATOMY}\n", r"entries\[0\] \('lung'\): ANATOMY needs 'side'"),
    ("entries:\n- {name: lung, type: ANATOMY, side: up, region: lung}\n", "ANATOMY needs 'side'"),
    ("entries:\n- {name: blob, type: ABNORMALITY, side: left}\n", "for ANATOMY entries only"),
    ("entries:\n- {name: blob, type: ABNORMALITY}\n- {name: blob, type: DISEASE}\n", r"entries\[1\]: duplicate"),
    ("entries:\n- {name: a, type: ABNORMALITY, synonyms: [x]}\n- {name: b, type: DISEASE, synonyms: [x]}\n",
     "synonym 'x' already belongs to 'a'"),
    ("entries:\n- {name: blob, type: ABNORMALITY, colour: red}\n", "unknown field"),
    ("entries:\n- {name: Blob, type: ABNORMALITY}\n", "lowercase"),
    ("entries:\n- {name: blob, type: ABNORMALITY}\nstatements:\n- {entity: nothing, patterns: [x]}\n",
     r"statements\[0\]: 'entity' 'nothing' is not a canonical name"),
    ("entries:\n- {name: blob, type: ABNORMALITY}\nstatements:\n- {entity: blob, patterns: ['(x']}\n",
     "pattern 1 .*invalid regex"),
    ("entries: 3\n", "expected a mapping with an 'entries' list"),
    ("entries: [\n", "malformed YAML"),
])
def test_bad_lexicon_errors_name_file_and_entry(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(UserError, match=message) as err:
        load_lexicon(path)
    assert str(path) in str(err.value)


def test_missing_lexicon_file(tmp_path):
    with pytest.raises(UserError, match="lexicon file not found"):
        load_lexicon(tmp_path / "none.yaml")


def test_user_lexicon_through_config(tmp_path):
    path = _write(tmp_path, """\
        entries:
        - {name: widget, type: ABNORMALITY, synonyms: [gizmo]}
        - {name: left side, type: ANATOMY, side: left, region: lung}
        statements:
        - {entity: widget, negated: true, patterns: ['all is (?:well|fine)']}
        """)
    ex = build_extractor(ExtractorConfig(lexicon=str(path)))
    assert ex.extract(["A gizmo in the left side. No widget.", "All is well."]) == [
        [{"text": "widget", "type": A}, {"text": "left side", "type": AN}, {"text": "widget", "type": NA}],
        [{"text": "widget", "type": NA}],
    ]


# --- negation, uncertainty, statements ---------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax, pleural effusion, or focal consolidation.",
     [("pneumothorax", NA), ("pleural effusion", NA), ("consolidation", NA)]),
    ("There is a small left pleural effusion.", [("left hemithorax", AN), ("pleural effusion", A)]),
    ("Negative for pneumonia.", [("pneumonia", ND)]),
    ("The lungs are free of infiltrate.", [("lungs", AN), ("infiltrate", NA)]),
    ("Lungs are hyperinflated without focal consolidation or effusion.",
     [("lungs", AN), ("hyperinflation", A), ("consolidation", NA), ("pleural effusion", NA)]),
    ("Interval resolution of the right lower lobe pneumonia.", [("right lower lobe", AN), ("pneumonia", ND)]),
    ("The previously seen left effusion has resolved.", [("left hemithorax", AN), ("pleural effusion", NA)]),
    ("Pneumothorax is not seen.", [("pneumothorax", NA)]),
    # scope ends at a clause boundary
    ("No pneumothorax, but there is a small effusion.", [("pneumothorax", NA), ("pleural effusion", A)]),
    ("No effusion; mild cardiomegaly.", [("pleural effusion", NA), ("cardiomegaly", A)]),
    ("No pneumothorax, stable cardiomegaly.", [("pneumothorax", NA), ("cardiomegaly", A)]),
    ("No pleural effusion. Atelectasis in the left base.",
     [("pleural effusion", NA), ("atelectasis", A), ("left lung base", AN)]),
    ("No focal consolidation is seen and the heart is enlarged.",
     [("consolidation", NA), ("cardiomegaly", A), ("heart", AN)]),
    # uncertainty is not negation
    ("Cannot exclude pneumonia.", [("pneumonia", D)]),
    ("Pneumonia cannot be excluded.", [("pneumonia", D)]),
    ("Opacity may represent atelectasis.", [("opacity", A), ("atelectasis", A)]),
    ("Possible small left effusion.", [("left hemithorax", AN), ("pleural effusion", A)]),
    ("Questionable nodule in the right apex.", [("nodule", A), ("right apex", AN)]),
    ("No effusion, possible pneumonia.", [("pleural effusion", NA), ("pneumonia", D)]),
    # pseudo-negation
    ("No change in the left pleural effusion.", [("left hemithorax", AN), ("pleural effusion", A)]),
    ("No significant interval change in cardiomegaly.", [("cardiomegaly", A)]),
    ("The effusion has not completely resolved.", [("pleural effusion", A)]),
    ("The catheter tip is not visualized.", [("central venous catheter", A)]),
    # hypothetical mentions assert nothing
    ("If there is concern for fracture, consider further imaging.", []),
    # statements of normality and enlargement
    ("Heart size is normal and lungs are clear.",
     [("heart", AN), ("cardiomegaly", NA), ("lungs", AN), ("airspace disease", NA)]),
    ("The heart is enlarged.", [("cardiomegaly", A), ("heart", AN)]),
    ("Heart is not enlarged.", [("heart", AN), ("cardiomegaly", NA)]),
    ("No acute cardiopulmonary abnormality.", [("acute cardiopulmonary abnormality", NA)]),
    ("No acute disease.", [("acute cardiopulmonary abnormality", NA)]),
    ("Lung volumes are low.", [("lungs", AN), ("low lung volumes", A)]),
    ("Calcified right lower lobe granuloma.", [("calcified granuloma", A), ("right lower lobe", AN)]),
    # longest match and normalisation
    ("CHF with bilateral effusions.", [("heart failure", D), ("lungs", AN), ("pleural effusion", A)]),
    ("Subcutaneous emphysema and emphysema.", [("subcutaneous emphysema", A), ("emphysema", D)]),
    ("Right IJ central venous catheter tip in the SVC.",
     [("right internal jugular vein", AN), ("central venous catheter", A), ("superior vena cava", AN)]),
])
def test_extract_cases(ex, text, expected):
    assert pairs(ex, text) == expected


def test_dedup_keeps_first_mention_and_both_polarities(ex):
    text = "No pneumothorax. Cardiomegaly. Pneumothorax on the prior study. Stable cardiomegaly."
    assert pairs(ex, text) == [("pneumothorax", NA), ("cardiomegaly", A), ("pneumothorax", A)]


def test_anatomy_is_never_negated(ex):
    ents = ex.extract_one("No effusion in the left costophrenic angle or the right hemithorax.")
    assert {"text": "left costophrenic angle", "type": AN} in ents
    assert {"text": "right hemithorax", "type": AN} in ents
    assert {"text": "pleural effusion", "type": NA} in ents


def test_empty_and_odd_inputs(ex):
    assert ex.extract(["", "   ", "1.4 cm.", "XXXX"]) == [[], [], [], []]


def test_split_sentences_keeps_decimals():
    assert split_sentences("A 1.4 cm nodule. No effusion!  Stable; unchanged.\nNext") == [
        "A 1.4 cm nodule.", "No effusion!", "Stable;", "unchanged.", "Next"]


# --- the composer contract -----------------------------------------------------------------------
def test_canonical_roundtrip_contract():
    """Every ABNORMALITY/DISEASE name X: "There is X.", "X is present." -> [X]; "No X." -> [X negated];
    "X in the Y." -> [X, Y] and "No X in the Y." -> [X negated, Y] for every ANATOMY name Y."""
    assert check_canonical_roundtrip() == []


def test_canonical_names_in_negated_lists(ex):
    lx = load_lexicon()
    names = lx.names(A, D)
    for i in range(0, len(names) - 2):
        a, b, c = names[i:i + 3]
        got = ex.extract_one(f"There is no {a}, {b}, or {c}.")
        assert got == [{"text": n, "type": flip_polarity(lx[n].type)} for n in (a, b, c)], (a, b, c)


def test_roundtrip_check_reports_a_broken_lexicon(tmp_path):
    path = _write(tmp_path, """\
        entries:
        - {name: effusion, type: ABNORMALITY}
        - {name: small effusion, type: ABNORMALITY}
        - {name: "no", type: ANATOMY, side: none, region: none}
        """)
    problems = check_canonical_roundtrip(load_lexicon(path))
    assert any("'No effusion.'" in p for p in problems)


# --- on the real corpus ----------------------------------------------------------------------------
def test_iu_xray_corpus_output_is_well_formed(ex):
    reports = load_corpus(CorpusConfig(limit=400))
    out = ex.extract([r.text for r in reports])
    assert len(out) == len(reports)
    lx = load_lexicon()
    n = 0
    for ents in out:
        keys = [(e["text"], e["type"]) for e in ents]
        assert len(keys) == len(set(keys))
        for e in ents:
            assert e["type"] in ENTITY_TYPES and e["text"] in lx
            n += 1
    assert n / len(reports) > 5  # IU X-ray reports carry ~10 entities each
    normal = [ents for r, ents in zip(reports, out) if r.mesh == ["normal"]]
    assert normal and all(e["type"] in (NA, ND, AN) for ents in normal[:50] for e in ents if
                          e["text"] in ("pleural effusion", "pneumothorax", "consolidation"))
