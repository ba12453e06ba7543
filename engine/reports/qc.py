"""Report QC (the paper's check): the entities re-extracted from a generated report must equal the
sampled ones. Pure functions over entity lists; the Ray stage lives in engine/reports/pipeline.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from engine.text.entities import flip_polarity
from engine.text.sections import normalise_entity_text
from engine.reports.parse import ParsedReport, parse_report

Extract = Callable[[list[str]], list[list[dict]]]


def _keys(entities: Sequence[dict]) -> dict[tuple[str, str], str]:
    """(normalised text, type) -> text as first written."""
    out: dict[tuple[str, str], str] = {}
    for e in entities:
        out.setdefault((normalise_entity_text(e["text"]), str(e["type"])), str(e["text"]))
    return out


@dataclass
class QCResult:
    accepted: bool
    reasons: list[str] = field(default_factory=list)


def compare_entities(sampled: Sequence[dict], extracted: Sequence[dict], tolerance: int = 0) -> QCResult:
    """Accept when the extracted set equals the sampled set on (normalised text, type).

    A polarity flip (sampled present, written absent, or the reverse) always rejects: it makes
    the report say the opposite of the plan. Missing, extra and type-changed entities count as
    differences; up to `tolerance` of them are accepted (and still listed in `reasons`)."""
    want, got = _keys(sampled), _keys(extracted)
    reasons, differences, flips = [], 0, 0
    unmatched_got = {k: v for k, v in got.items() if k not in want}
    for (text, etype), shown in want.items():
        if (text, etype) in got:
            continue
        flipped = (text, flip_polarity(etype))
        if flipped != (text, etype) and flipped in unmatched_got:
            reasons.append(f"polarity flipped: {shown} ({etype} -> {flipped[1]})")
            unmatched_got.pop(flipped)
            flips += 1
            continue
        other = next((k for k in unmatched_got if k[0] == text), None)
        if other is not None:
            reasons.append(f"type changed: {shown} ({etype} -> {other[1]})")
            unmatched_got.pop(other)
        else:
            reasons.append(f"missing: {shown} ({etype})")
        differences += 1
    for (text, etype), shown in unmatched_got.items():
        reasons.append(f"extra: {shown} ({etype})")
        differences += 1
    return QCResult(accepted=flips == 0 and differences <= tolerance, reasons=reasons)


def check_report(sampled: Sequence[dict], parsed: ParsedReport, extracted: Sequence[dict],
                 tolerance: int = 0) -> QCResult:
    """QC of one parsed candidate: its parse problems plus the entity comparison."""
    result = compare_entities(sampled, extracted, tolerance)
    reasons = list(parsed.problems) + result.reasons
    if parsed.truncated and not (result.accepted and parsed.ok):
        reasons.append("truncated at the token limit")
    return QCResult(accepted=result.accepted and parsed.ok, reasons=reasons)


@dataclass
class ReportDecision:
    findings: str = ""
    impression: str = ""
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    attempts: int = 0


def extract_report(parsed_reports: Sequence[ParsedReport], extract: Extract) -> list[list[dict]]:
    """Entities of each report: findings and impression extracted separately (so negation scope
    never runs across the heading), then united."""
    texts = [t for p in parsed_reports for t in (p.findings, p.impression)]
    found = extract(texts) if texts else []
    return [list(found[2 * i]) + list(found[2 * i + 1]) for i in range(len(parsed_reports))]


def choose_candidates(
    sampled: Sequence[Sequence[dict]],
    candidates: Sequence[Sequence[str]],
    extract: Extract,
    tolerance: int = 0,
    truncated: Optional[Sequence[Sequence[bool]]] = None,
) -> list[ReportDecision]:
    """For each row the first candidate that passes QC wins. Candidates are checked in rounds
    (all rows' first candidates in one extractor call, then the second ones of rows still open),
    so a good generator costs one extraction per row. A rejected row keeps the first candidate's
    text, for inspection, and every candidate's reasons."""
    decisions = [ReportDecision() for _ in sampled]
    open_rows = [i for i, c in enumerate(candidates) if len(c)]
    for i, c in enumerate(candidates):
        if not len(c):
            decisions[i].reasons.append("no candidates generated")
    rnd = 0
    while open_rows:
        parsed = []
        for i in open_rows:
            cut = bool(truncated[i][rnd]) if truncated is not None and rnd < len(truncated[i]) else False
            parsed.append(parse_report(candidates[i][rnd], truncated=cut))
        extracted = extract_report(parsed, extract)
        still_open = []
        for i, p, found in zip(open_rows, parsed, extracted):
            d = decisions[i]
            result = check_report(sampled[i], p, found, tolerance)
            d.attempts = rnd + 1
            if rnd == 0 or result.accepted:
                d.findings, d.impression = p.findings, p.impression
            if result.accepted:
                d.accepted = True
                d.reasons = [f"accepted with: {r}" for r in result.reasons]
            else:
                d.reasons.extend(f"candidate {rnd + 1}: {r}" for r in (result.reasons or ["rejected"]))
                if rnd + 1 < len(candidates[i]):
                    still_open.append(i)
        open_rows, rnd = still_open, rnd + 1
    return decisions

