"""Plan mode `corpus` and the `corpus` report backend: the real-like arm of the experiment. Each
sample is one real report with its own entities, and the report written for it is that report."""
from __future__ import annotations

import pytest

from actors.report_corpus import CorpusReportWriter
from engine.core.config import load_config
from engine.core.errors import UserError
from engine.core.ids import sample_index
from engine.plan.mirror import mirror_plan
from engine.plan.write import make_plan
from engine.reports.qc import choose_candidates
from engine.text.corpora import load_corpus
from engine.text.entities import build_extractor


def test_mirror_plan_skips_reports_without_entities_and_keeps_corpus_positions():
    lists = [[{"text": "edema", "type": "DISEASE"}], [], [{"text": "heart", "type": "ANATOMY"}] * 2]
    plan = mirror_plan(lists, 2, seed=3)
    assert plan.column("sample_id").to_pylist() == ["r3-00000000", "r3-00000002"]
    assert plan.column("entities").to_pylist()[1] == [{"text": "heart", "type": "ANATOMY"}]  # deduplicated
    with pytest.raises(UserError, match="2 reports with entities, fewer than --n 3"):
        mirror_plan(lists, 3)


def test_corpus_reports_pass_report_qc_against_their_own_entities():
    cfg = load_config(None, {"plan": {"mode": "corpus"}, "reports": {"backend": "corpus"}})
    plan, _ = make_plan(cfg, 200)
    rows = plan.to_pylist()
    reports = load_corpus(cfg.corpus)
    writer = CorpusReportWriter(1, {})
    texts = writer.generate(rows)
    first = rows[0]
    assert texts[0][0][0].startswith("FINDINGS: ") and reports[sample_index(first["sample_id"])].impression in texts[0][0][0]
    decisions = choose_candidates([r["entities"] for r in rows], [t for t, _ in texts],
                                  build_extractor(cfg.extractor).extract, 0, [f for _, f in texts])
    accepted = sum(d.accepted for d in decisions)
    assert accepted >= 190, [d.reasons for d in decisions if not d.accepted][:3]
