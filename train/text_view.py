"""The text view of a report for contrastive training: the whole report (findings and
impression), or ConVIRT's view, one sentence of it drawn at random each epoch."""
from __future__ import annotations

import numpy as np

from engine.text.sections import split_sections
from engine.text.sections import split_sentences as _sentences

# Sections whose sentences describe the image (indication, comparison, technique do not).
IMAGE_SECTIONS = ("preamble", "findings", "impression")


def split_sentences(text: str) -> list[str]:
    """Sentences of the report's findings and impression (text before any heading counts too),
    with the engine's section and sentence splitters: headings dropped, "2.5 cm" kept whole."""
    sections = split_sections(text or "")
    return [s for name, body in sections.items() if name in IMAGE_SECTIONS for s in _sentences(body)]


def random_sentence(report_text: str, rng: np.random.Generator) -> str:
    """ConVIRT's text view: one sentence of the report drawn uniformly; "" for an empty report."""
    sentences = split_sentences(report_text)
    return sentences[int(rng.integers(len(sentences)))] if sentences else ""
