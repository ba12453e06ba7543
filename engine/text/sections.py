"""Split free-text radiology reports into sections. Shared by the corpus readers (MIMIC-CXR
report files) and the LLM output parser, so both agree on what a heading is."""
from __future__ import annotations

import re

# Headings we keep, with the spellings seen in MIMIC-CXR, IU X-ray and LLM output.
_ALIASES = {
    "findings": "findings", "finding": "findings", "report": "findings", "description": "findings",
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "summary": "impression", "opinion": "impression",
    "indication": "indication", "history": "indication", "clinical history": "indication",
    "reason for exam": "indication", "comparison": "comparison", "technique": "technique",
    "examination": "technique", "exam": "technique", "wet read": "other", "notification": "other",
    "recommendation": "other", "recommendations": "other",
}
# A heading: optional markdown (#, **, __) then a known name, then ':' or end of line.
_HEADING = re.compile(
    r"^[ \t>]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(?P<name>" + "|".join(
        sorted((re.escape(k) for k in _ALIASES), key=len, reverse=True)
    ) + r")[ \t]*(?:\*\*|__)?[ \t]*(?::|(?=\n)|$)[ \t]*(?:\*\*|__)?",
    re.IGNORECASE | re.MULTILINE,
)
# Run-in headings inside a line ("... effusion. IMPRESSION: ..."): upper case with a colon only,
# so ordinary words such as "impression" in a sentence are not split on.
_INLINE_HEADING = re.compile(
    r"(?<=[\s.])(?P<name>" + "|".join(sorted((re.escape(k.upper()) for k in _ALIASES), key=len, reverse=True))
    + r")[ \t]*:[ \t]*"
)


def clean_text(text: str) -> str:
    """Collapse whitespace and drop markdown emphasis and list bullets."""
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = re.sub(r"^[ \t]*(?:[-*\u2022]|\d+[.)])[ \t]+", "", text, flags=re.MULTILINE)
    return re.sub(r"\s+", " ", text).strip()


def split_sections(text: str) -> dict[str, str]:
    """Map canonical section name -> cleaned text. Text before the first heading goes to
    'preamble'. A repeated heading's texts are joined."""
    out: dict[str, str] = {}
    text = text or ""
    found = {m.start(): m for m in _INLINE_HEADING.finditer(text)}
    found.update({m.start(): m for m in _HEADING.finditer(text)})
    starts, last_end = [], -1
    for pos in sorted(found):
        m = found[pos]
        if pos >= last_end:  # skip a match nested inside the previous heading
            starts.append((m.start(), m.end(), _ALIASES[m.group("name").lower()]))
            last_end = m.end()
    pre = text[: starts[0][0]] if starts else text
    if pre.strip():
        out["preamble"] = clean_text(pre)
    for i, (_, end, name) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        body = clean_text(text[end:stop])
        if body:
            out[name] = f"{out[name]} {body}".strip() if name in out else body
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_END = re.compile(r"(?<=[.!?;])\s+(?=\S)|\n+")


def split_sentences(text: str, clauses: bool = False) -> list[str]:
    """Sentences of a report, whitespace-trimmed, empties dropped; a period inside a number
    ("1.4 cm") does not split. `clauses=True` also splits at ';' and line breaks (what entity
    extraction reads one at a time)."""
    pattern = _CLAUSE_END if clauses else _SENTENCE_END
    return [s.strip() for s in pattern.split(text or "") if s and s.strip()]


def normalise_entity_text(text: str) -> str:
    """One spelling per entity: lower case, folded whitespace, no space around '-', '/' or an
    apostrophe ("air - space" -> "air-space"), no surrounding punctuation."""
    text = re.sub(r"\s+", " ", str(text).lower())
    text = re.sub(r"\s*([-/'’])\s*", r"\1", text)
    return text.strip(" \t.,;:!?()[]\"'")
