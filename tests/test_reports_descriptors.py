"""Descriptors: mined from report texts with the extractor's own rules, packaged from the real IU
X-ray reports, used by the template writer at the corpus's rate and never changing what report QC
reads back."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from actors.report_template import TemplateComposer, TemplateReportWriter
from engine.core.errors import UserError
from engine.core.config import load_config
from engine.text.corpora import load_corpus
from engine.text.descriptors import FORMAT, load_descriptors, mine_descriptors
from engine.text.entities import build_extractor


def test_only_positive_mentions_with_a_descriptor_word_said_often_enough_count():
    texts = ["Small pleural effusion.", "There is a small pleural effusion on the left.", "No small pleural effusion.",
             "Large pleural effusion.", "Pleural effusion is seen.", "Evidence of pleural effusion.",
             "Mild cardiomegaly.", "Mild cardiomegaly.", "To exclude mild pneumonia.", "Mild pneumonia?"]
    table = mine_descriptors(texts)
    # 5 positive effusions (the negated one does not count); "large" said once is dropped, "of" is no descriptor
    assert table["pleural effusion"] == {"mentions": 5, "words": {"small": 2}}
    assert table["cardiomegaly"] == {"mentions": 2, "words": {"mild": 2}}
    assert "pneumonia" not in table  # the hypothetical mention asserts nothing; the other is said once
    assert mine_descriptors(texts, min_count=1)["pleural effusion"]["words"] == {"small": 2, "large": 1}
    assert mine_descriptors([]) == {}


def test_a_word_that_changes_what_the_extractor_reads_is_not_kept():
    # the lexicon reads "plate" as orthopedic hardware and "hazy" as an opacity of its own
    texts = ["Plate-like opacity at the left base."] * 3 + ["Hazy density."] * 3 + ["Patchy opacity."] * 2
    table = mine_descriptors(texts)
    assert table == {"opacity": {"mentions": 8, "words": {"patchy": 2}}}  # "hazy" is itself a mention


def test_the_packaged_table_is_what_the_packaged_corpus_gives():
    packaged = load_descriptors()
    mined = mine_descriptors(r.text for r in load_corpus(load_config().corpus))
    assert packaged == mined
    # the corpus's own style, as counted in the 3,927 IU X-ray reports
    assert packaged["pleural effusion"]["words"]["small"] > 20 and packaged["cardiomegaly"]["words"]["mild"] > 100


def test_bad_tables_are_refused_naming_the_file_and_entity(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("{")
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_descriptors(path)
    path.write_text(json.dumps({"format": "other", "entities": {}}))
    with pytest.raises(UserError, match="not a descriptor table"):
        load_descriptors(path)
    path.write_text(json.dumps({"format": FORMAT, "entities": {"cardiomegaly": {"mentions": 2, "words": {"mild": 3}}}}))
    with pytest.raises(UserError, match="'cardiomegaly'"):
        load_descriptors(path)
    with pytest.raises(UserError, match="missing.json"):
        TemplateReportWriter.check(load_config().reports.model_copy(
            update={"options": {"descriptors": str(tmp_path / "missing.json")}}))


def test_the_writer_describes_findings_at_the_corpus_rate_and_qc_reads_the_plan_back():
    extractor = build_extractor(load_config().extractor)
    table = {"pleural effusion": {"mentions": 10, "words": {"small": 3, "large": 1}}}
    composer = TemplateComposer(descriptors=table)
    bare = TemplateComposer()
    entities = [{"text": "pleural effusion", "type": "ABNORMALITY"}, {"text": "pneumothorax", "type": "NON-ABNORMALITY"}]
    words = []
    for seed in range(400):
        findings, impression = composer.compose(entities, seed)
        plain = bare.compose(entities, seed)
        text = f"{findings} {impression}"
        found = re.findall(r"\b(small|large) pleural effusion", text, re.I)
        words.append(found[0].lower() if found else None)
        # the same descriptor in FINDINGS and IMPRESSION; everything else as without descriptors
        assert len({w.lower() for w in found}) <= 1
        assert re.sub(r"\b(small|large) (?=pleural)", "", text, flags=re.I).lower() == " ".join(plain).lower()
        assert sorted(map(str, extractor.extract_one(text))) == sorted(map(str, entities))
    rate = np.mean([w is not None for w in words])
    assert 0.3 < rate < 0.5  # 4 of 10 mentions carry a descriptor
    assert 2 < words.count("small") / max(words.count("large"), 1) < 4.5
    # off by default; "packaged" is the table mined from IU X-ray
    assert TemplateReportWriter().composer.compose(entities, 3) == bare.compose(entities, 3)
    assert TemplateReportWriter(options={"descriptors": "packaged"}).composer.descriptors == load_descriptors()
