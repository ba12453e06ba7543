"""The entity data model shared by every stage: RaTE's five types, polarity, and the extractor
registry. An entity is a plain dict {"text": normalised name, "type": one of ENTITY_TYPES};
polarity lives in the type (NON-ABNORMALITY is a negated or normal-stated ABNORMALITY)."""
from __future__ import annotations

from typing import Iterable, Protocol

from engine.core.errors import UserError
from engine.core.registry import Registry

ABNORMALITY = "ABNORMALITY"
NON_ABNORMALITY = "NON-ABNORMALITY"
DISEASE = "DISEASE"
NON_DISEASE = "NON-DISEASE"
ANATOMY = "ANATOMY"

ENTITY_TYPES = (ABNORMALITY, NON_ABNORMALITY, DISEASE, NON_DISEASE, ANATOMY)
CLINICAL_TYPES = (ABNORMALITY, NON_ABNORMALITY, DISEASE, NON_DISEASE)
NEGATED_TYPES = (NON_ABNORMALITY, NON_DISEASE)
_FLIP = {ABNORMALITY: NON_ABNORMALITY, NON_ABNORMALITY: ABNORMALITY,
         DISEASE: NON_DISEASE, NON_DISEASE: DISEASE}


def check_type(entity_type: str, where: str = "") -> str:
    if entity_type not in ENTITY_TYPES:
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}unknown entity type {entity_type!r}; expected one of {', '.join(ENTITY_TYPES)}")
    return entity_type


def is_negated(entity_type: str) -> bool:
    return entity_type in NEGATED_TYPES


def flip_polarity(entity_type: str) -> str:
    """ABNORMALITY <-> NON-ABNORMALITY, DISEASE <-> NON-DISEASE; ANATOMY has no polarity."""
    return _FLIP.get(entity_type, entity_type)



def entity_key(entity: dict) -> tuple[str, str]:
    return (entity["text"], entity["type"])


def dedupe(entities: Iterable[dict]) -> list[dict]:
    """Keep first occurrences, preserving order."""
    seen, out = set(), []
    for e in entities:
        key = entity_key(e)
        if key not in seen:
            seen.add(key)
            out.append({"text": e["text"], "type": e["type"]})
    return out


class Extractor(Protocol):
    def extract(self, texts: list[str]) -> list[list[dict]]:
        """One list of entities per input text, in input order."""


EXTRACTORS = Registry("extractor")
EXTRACTORS.register("lexicon", "engine.text.lexicon_extractor:LexiconExtractor")
EXTRACTORS.register("transformers", "actors.ner:TransformersNER")


def build_extractor(cfg) -> Extractor:
    """Build the extractor an ExtractorConfig names (the plan and report QC share it)."""
    cls = EXTRACTORS.get(cfg.backend)
    return cls.from_config(cfg)
