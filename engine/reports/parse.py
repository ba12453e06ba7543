"""Turn raw LLM output into FINDINGS and IMPRESSION. Real output has chatty preambles ("Sure,
here is..."), markdown, headings in any case or missing, sign-offs, and may be cut off at the
token limit; parsing never raises, it reports what is wrong in `problems`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.text.sections import clean_text, split_sections, split_sentences

SECTIONS = ("findings", "impression")

# Sentences that talk to the reader instead of describing the image.
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|here(?:'s| is| are)|below is|as requested|"
    r"i (?:have|hope|can|will|would|am)|i'(?:ve|m|ll|d)|let me|note\b|please|feel free|hope this|"
    r"this (?:is a|report|synthetic)|disclaimer|based on the (?:provided|given|entities|list))",
    re.IGNORECASE,
)
# "Findings - ..." / "IMPRESSION — ..." at a line start: a heading form sections.py does not take.
_DASH_HEADING = re.compile(
    r"^([ \t>*#_]*(?:findings?|impressions?|conclusions?)[ \t*_]*)[-\u2013\u2014][ \t]+",
    re.IGNORECASE | re.MULTILINE,
)
_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]*_]*)(?=\s|$)")


@dataclass
class ParsedReport:
    findings: str = ""
    impression: str = ""
    problems: list[str] = field(default_factory=list)  # each one rejects the candidate
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_chatter(line: str) -> bool:
    return bool(_CHATTER.match(line.strip().lstrip("*_#>- ")))


def drop_chatter(text: str) -> str:
    """Remove sentences addressed to the reader (preambles, sign-offs, notes)."""
    return " ".join(s for s in split_sentences(text) if not _is_chatter(s))


def strip_chatter_lines(text: str) -> str:
    """Drop whole chatter lines before the report and after it ("Sure, here is the report:")."""
    lines = text.splitlines()
    while lines and (not lines[0].strip() or _is_chatter(lines[0])):
        lines.pop(0)
    while lines and (not lines[-1].strip() or _is_chatter(lines[-1])):
        lines.pop()
    return "\n".join(lines)


def cut_incomplete(text: str) -> str:
    """Drop everything after the last complete sentence (output stopped at the token limit)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()] if ends else ""


def parse_report(text: str | None, truncated: bool = False) -> ParsedReport:
    """`truncated`: the backend knows generation hit its token limit; the unfinished last
    sentence is then dropped instead of being checked as if the model meant it."""
    raw = (text or "").strip()
    if not raw:
        return ParsedReport(problems=["empty output"], truncated=truncated)
    raw = _FENCE.sub("", raw)
    raw = _DASH_HEADING.sub(lambda m: m.group(1).rstrip() + ": ", raw)
    if truncated:
        raw = cut_incomplete(raw)
    raw = strip_chatter_lines(raw)
    sections = split_sections(raw)
    findings = drop_chatter(sections.get("findings", ""))
    impression = drop_chatter(sections.get("impression", ""))
    # Report text before any heading (no FINDINGS heading at all) still counts as findings.
    if not findings and "preamble" in sections:
        findings = drop_chatter(sections["preamble"])
    problems = [f"section missing: {name}" for name, body in zip(SECTIONS, (findings, impression)) if not body]
    return ParsedReport(findings=clean_text(findings), impression=clean_text(impression),
                        problems=problems, truncated=truncated)


def format_report(findings: str, impression: str) -> str:
    """The canonical text of a report (what the template backend emits and what is stored)."""
    return f"FINDINGS: {findings}\n\nIMPRESSION: {impression}"
