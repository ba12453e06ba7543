"""The curated CXR vocabulary behind the lexicon extractor: load and validate a lexicon YAML
(the packaged engine/data/lexicon.yaml or a user's), look entries up by canonical name, and match
phrases in tokenised text.

Text is normalised to lowercase word tokens (hyphens and slashes split words, punctuation marks
are their own tokens), so "Air-space" and "air space" are the same phrase. Every synonym also
gets an automatic plural of its last word ("opacity" -> "opacities") unless another entry
spells that form explicitly.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional


from engine.text.entities import ABNORMALITY, ANATOMY, DISEASE, ENTITY_TYPES
from engine.core.errors import UserError
from engine.core.yaml_file import read_yaml

PACKAGED_LEXICON = Path(__file__).resolve().parent.parent / "data" / "lexicon.yaml"

ENTRY_TYPES = (ABNORMALITY, DISEASE, ANATOMY)  # polarity comes from context, never the lexicon
SIDES = ("left", "right", "bilateral", "none")
REGIONS = ("lung", "upper", "middle", "lower", "apex", "base", "hilum", "costophrenic", "diaphragm",
           "heart", "mediastinum", "airway", "vessel", "pleura", "bone", "soft tissue", "abdomen",
           "neck", "none")

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9\-/]")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens; punctuation marks (except - and /, which only split words) are
    tokens of their own so that clause ends stay visible."""
    return _TOKEN.findall(text.lower())


def normalise_phrase(text: str) -> str:
    return " ".join(tokenize(text))


def plural_forms(word: str) -> list[str]:
    """Regular English plurals of one (last) word, for radiology nouns."""
    if len(word) < 3 or not word.isalpha():
        return []
    if word.endswith("is"):  # atelectasis, metastasis
        return [word[:-2] + "es"]
    if word.endswith("ax"):  # thorax -> thoraces
        return [word[:-2] + "aces", word + "es"]
    if word.endswith("ex"):  # apex -> apices
        return [word[:-2] + "ices", word + "es"]
    if word.endswith(("ss", "sh", "ch", "x", "z")):
        return [word + "es"]
    if word.endswith("s"):  # already plural, or a Latin -us we leave to the curator
        return []
    if word.endswith("y") and word[-2] not in "aeiou":
        return [word[:-1] + "ies"]
    if word.endswith("ma"):  # granuloma -> granulomas, granulomata
        return [word + "s", word + "ta"]
    return [word + "s"]


@dataclass(frozen=True)
class Entry:
    name: str  # canonical normalised name: the entity text the extractor emits
    type: str  # ABNORMALITY, DISEASE or ANATOMY
    synonyms: tuple[str, ...] = ()
    side: str = "none"  # ANATOMY only
    region: str = "none"  # ANATOMY only

    @property
    def is_anatomy(self) -> bool:
        return self.type == ANATOMY


@dataclass(frozen=True)
class Statement:
    """A phrase pattern that states a finding without naming it ("heart size is normal" ->
    cardiomegaly, negated). Patterns are regexes over the normalised text (see tokenize)."""

    entity: str
    negated: bool
    pattern: re.Pattern
    index: int


@dataclass(frozen=True)
class Match:
    start: int  # token index, inclusive
    end: int  # token index, exclusive
    name: str
    negated: bool = False  # statements only: the statement itself denies the finding


@dataclass
class Lexicon:
    source: str
    entries: dict[str, Entry]
    statements: list[Statement] = field(default_factory=list)
    surfaces: dict[tuple[str, ...], str] = field(default_factory=dict)  # token tuple -> name
    max_len: int = 1

    # --- lookups ---------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise UserError(f"{self.source}: no lexicon entry named {name!r}") from None

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Optional[Entry]:
        return self.entries.get(name)

    def names(self, *types: str) -> list[str]:
        """Canonical names, optionally of the given types, in file order."""
        return [e.name for e in self.entries.values() if not types or e.type in types]

    def lookup(self, phrase: str) -> Optional[Entry]:
        """The entry a surface phrase (any synonym or variant) belongs to."""
        name = self.surfaces.get(tuple(tokenize(phrase)))
        return self.entries[name] if name else None

    # --- matching --------------------------------------------------------------------------
    def match_phrases(self, tokens: list[str]) -> list[Match]:
        """Leftmost-longest, non-overlapping phrase matches."""
        out, i, n = [], 0, len(tokens)
        surfaces, max_len = self.surfaces, self.max_len
        while i < n:
            for length in range(min(max_len, n - i), 0, -1):
                name = surfaces.get(tuple(tokens[i:i + length]))
                if name is not None:
                    out.append(Match(i, i + length, name))
                    i += length
                    break
            else:
                i += 1
        return out

    def match_statements(self, tokens: list[str], joined: Optional[str] = None) -> list[Match]:
        """Every statement match (they may overlap each other)."""
        joined = " ".join(tokens) if joined is None else joined
        starts = token_starts(tokens)
        out = []
        for st in self.statements:
            for m in st.pattern.finditer(joined):
                span = char_span_to_tokens(starts, m.start(), m.end())
                if span:
                    out.append(Match(span[0], span[1], st.entity, st.negated))
        return out


def token_starts(tokens: list[str]) -> list[int]:
    """Character offset of each token in " ".join(tokens)."""
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok) + 1
    return starts


def char_span_to_tokens(starts: list[int], a: int, b: int) -> Optional[tuple[int, int]]:
    """Token span [i, j) covering the characters [a, b) of the joined text."""
    if b <= a:
        return None
    i = bisect.bisect_right(starts, a) - 1
    j = bisect.bisect_left(starts, b)
    return (max(i, 0), j) if j > i else None


def compile_pattern(pattern: str) -> re.Pattern:
    """A regex over normalised text, anchored to whole words."""
    return re.compile(r"(?<![a-z0-9])(?:" + pattern + r")(?![a-z0-9])")


# --- loading and validation ------------------------------------------------------------------
_ENTRY_KEYS = {"name", "type", "synonyms", "side", "region"}
_STATEMENT_KEYS = {"entity", "negated", "patterns"}


def _check_mapping(raw, where: str, allowed: set[str], expected: str) -> None:
    """A lexicon item is a mapping of known fields; anything else names the item and the field."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping with {expected}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _entry_from(raw, where: str) -> Entry:
    _check_mapping(raw, where, _ENTRY_KEYS, "name and type")
    name = raw.get("name")
    if not isinstance(name, str) or not normalise_phrase(name):
        raise UserError(f"{where}: 'name' must be a non-empty string")
    where = f"{where} ({name!r})"
    if name != name.strip().lower() or "  " in name:
        raise UserError(f"{where}: canonical names are lowercase with single spaces")
    etype = raw.get("type")
    if etype not in ENTRY_TYPES:
        hint = ("; negated types come from the text, not the lexicon" if etype in ENTITY_TYPES
                else "")
        raise UserError(f"{where}: unknown entity type {etype!r}; expected one of {', '.join(ENTRY_TYPES)}{hint}")
    synonyms = raw.get("synonyms") or []
    if not isinstance(synonyms, list) or not all(isinstance(s, str) and normalise_phrase(s) for s in synonyms):
        raise UserError(f"{where}: 'synonyms' must be a list of non-empty strings")
    side, region = raw.get("side"), raw.get("region")
    if etype == ANATOMY:
        if side not in SIDES:
            raise UserError(f"{where}: ANATOMY needs 'side', one of {', '.join(SIDES)} (got {side!r})")
        if region not in REGIONS:
            raise UserError(f"{where}: ANATOMY needs 'region', one of {', '.join(REGIONS)} (got {region!r})")
    elif side is not None or region is not None:
        raise UserError(f"{where}: 'side' and 'region' are for ANATOMY entries only")
    return Entry(name=name, type=etype, synonyms=tuple(synonyms),
                 side=side or "none", region=region or "none")


def _statement_from(raw, where: str, entries: dict[str, Entry], index: int) -> Statement:
    _check_mapping(raw, where, _STATEMENT_KEYS, "entity and patterns")
    entity = raw.get("entity")
    if entity not in entries:
        raise UserError(f"{where}: 'entity' {entity!r} is not a canonical name of this lexicon")
    if entries[entity].is_anatomy:
        raise UserError(f"{where}: 'entity' {entity!r} is ANATOMY; statements state findings")
    negated = raw.get("negated", False)
    if not isinstance(negated, bool):
        raise UserError(f"{where}: 'negated' must be true or false")
    patterns = raw.get("patterns")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise UserError(f"{where}: 'patterns' must be a non-empty list of regex strings")
    for k, pattern in enumerate(patterns):
        try:
            compile_pattern(pattern)
        except re.error as exc:
            raise UserError(f"{where}: pattern {k + 1} ({pattern!r}): invalid regex: {exc}") from None
    # One alternation per statement: a single scan of the text instead of one per pattern.
    combined = compile_pattern("|".join(f"(?:{p})" for p in patterns))
    return Statement(entity=entity, negated=negated, pattern=combined, index=index)


def build_lexicon(data, source: str) -> Lexicon:
    """Validate parsed YAML into a Lexicon; every error names the source and the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UserError(f"{source}: expected a mapping with an 'entries' list")
    unknown = sorted(set(data) - {"version", "entries", "statements"})
    if unknown:
        raise UserError(f"{source}: unknown top-level field(s) {', '.join(unknown)}")
    entries: dict[str, Entry] = {}
    explicit: dict[tuple[str, ...], str] = {}
    for i, raw in enumerate(data["entries"]):
        entry = _entry_from(raw, f"{source}: entries[{i}]")
        if entry.name in entries:
            raise UserError(f"{source}: entries[{i}]: duplicate canonical name {entry.name!r}")
        entries[entry.name] = entry
        for surface in (entry.name, *entry.synonyms):
            key = tuple(tokenize(surface))
            owner = explicit.get(key)
            if owner is not None and owner != entry.name:
                raise UserError(f"{source}: entries[{i}] ({entry.name!r}): synonym {surface!r} "
                                f"already belongs to {owner!r}")
            explicit[key] = entry.name
    surfaces = dict(explicit)
    for key, name in explicit.items():  # automatic plurals never override an explicit spelling
        for plural in plural_forms(key[-1]):
            surfaces.setdefault(key[:-1] + (plural,), name)
    statements: list[Statement] = []
    for j, raw in enumerate(data.get("statements") or []):
        statements.append(_statement_from(raw, f"{source}: statements[{j}]", entries, j))
    if not entries:
        raise UserError(f"{source}: the lexicon has no entries")
    return Lexicon(source=source, entries=entries, statements=statements, surfaces=surfaces,
                   max_len=max(len(k) for k in surfaces))


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The packaged lexicon (cached) or a user YAML file."""
    if path is None:
        return _packaged()
    return _load(Path(path).expanduser())


@lru_cache(maxsize=1)
def _packaged() -> Lexicon:
    return _load(PACKAGED_LEXICON)


def _load(path: Path) -> Lexicon:
    return build_lexicon(read_yaml(path, "lexicon"), str(path))
