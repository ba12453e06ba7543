"""`corpus` report backend: returns the real report a corpus-plan sample was made from (plan
mode `corpus`), so the "real-like" arm of an experiment pairs real texts with images drawn from
their own entities. No model; the corpus is read once per actor."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from engine.core.config import CorpusConfig
from engine.core.errors import UserError
from engine.core.ids import sample_index
from engine.reports.parse import format_report
from engine.reports.pipeline import CandidateStage
from engine.text.corpora import load_corpus


class CorpusOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus: CorpusConfig = Field(default_factory=CorpusConfig)  # the corpus the plan mirrored


class CorpusReportWriter(CandidateStage):
    name, Options = "corpus", CorpusOptions

    def __init__(self, num_candidates: int = 1, options: Optional[dict] = None):
        self.reports = load_corpus(self.options_of(options).corpus)

    def generate(self, rows: list[dict]) -> list[tuple[list[str], list[bool]]]:
        out = []
        for row in rows:
            index = sample_index(row["sample_id"])
            if not 0 <= index < len(self.reports):
                raise UserError(f"{row['sample_id']}: no corpus report {index} (is plan.mode corpus?)")
            report = self.reports[index]
            out.append(([format_report(report.findings, report.impression)], [False]))
        return out
