"""The CPU default entity extractor: curated lexicon + negation rules, RaTE's five types.

Per report: tokenise, find lexicon phrases (longest match wins) and statements ("heart size is
normal"), then decide polarity with NegEx-style cues:

- a pre-negation cue ("no", "without", "negative for", "free of", "clear of", "resolution of",
  ...) negates the findings after it until its scope ends: a clause end (. ; : "but" "however"
  "which" "with", a verb such as "is", a comma followed by a new assertion such as
  ", stable ..."), or a long gap without findings. Lists ("no A, B, or C") stay in scope;
- a post-negation cue ("is not seen", "has resolved", "absent") negates the findings of its
  own clause before it;
- pseudo-negations ("no change in", "cannot be excluded", "not completely resolved") and
  uncertainty ("possible", "may represent", "questionable") never negate;
- hypothetical mentions ("if there is concern for fracture", "to exclude pneumonia") assert
  nothing, so their findings are left out.

A negated ABNORMALITY becomes NON-ABNORMALITY, a negated DISEASE NON-DISEASE; anatomy is never
negated. Output per report: unique (text, type) in order of first mention.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from engine.core.gate import isolate_by_key
from engine.text.sections import split_sentences as split_clauses
from engine.text.entities import ANATOMY, flip_polarity
from engine.text.lexicon import Lexicon, char_span_to_tokens, compile_pattern, load_lexicon, token_starts, tokenize

# --- cue vocabularies (regexes over normalised text: lowercase tokens joined by single spaces) ---
_PRE_NEGATION = [
    r"no", r"not", r"without", r"nor", r"neither", r"never", r"negative for", r"free of", r"clear of",
    r"absence of", r"absent", r"resolved", r"resolution of", r"interval resolution of", r"resolution",
    r"removal of", r"interval removal of", r"clearing of", r"disappearance of", r"rather than",
    r"rules out", r"ruled out",
]
_POST_NEGATION = [
    r"(?:is |are |was |were |has |have |had )?(?:been )?not (?:been )?(?:clearly |definitely |convincingly |"
    r"visibly |definitively |confidently |currently |now |again |significantly )?(?:seen|identified|visualized|"
    r"visible|demonstrated|appreciated|evident|present|noted|detected|apparent|observed|confirmed|shown|found|"
    r"included|appreciable|demonstrable|identifiable|redemonstrated|re demonstrated)",
    r"(?:is |are )?no longer (?:clearly )?(?:seen|visualized|visible|present|identified|evident|apparent|"
    r"demonstrated|noted|appreciated|detected|there)",
    r"(?:has |have |had )?(?:since |now |completely |entirely |fully |interval )?(?:resolved|cleared|"
    r"disappeared|been removed|been resolved|gone)",
    r"(?:is |are |was |were )?(?:now )?(?:absent|removed|excluded|ruled out)",
]
_PSEUDO = [
    # change statements: "no change in the left effusion" keeps the effusion
    r"no (?:significant |interval |appreciable |substantial |definite |gross |radiographic |major |other |"
    r"acute |further |visible |significant interval |notable |marked |real )*(?:change|changes|increase|decrease|"
    r"worsening|progression|improvement|enlargement in size|difference|differences)",
    r"not (?:significantly |substantially |much |markedly |appreciably |changed or )?(?:changed|increased|"
    r"decreased|improved|worsened|progressed|different)",
    r"without (?:significant |interval |appreciable |substantial )*(?:change|changes|worsening|progression)",
    # uncertainty is not negation
    r"(?:cannot|can not|could not|can t|couldn t|could|does not|not) (?:be )?(?:entirely |completely |totally |fully |"
    r"definitely |confidently |definitively |reliably |yet )?(?:excluded|exclude|ruled out|rule out|excluding)",
    r"(?:difficult|impossible|hard|unable) to (?:entirely |completely |fully |definitely )?(?:exclude|rule out)",
    r"not (?:entirely |completely |totally |fully |definitely )?(?:excluded|ruled out)",
    r"(?:not|nor) (?:completely |entirely |fully |totally |yet |quite )?(?:resolved|cleared)",
    r"(?:partially|incompletely|partly|nearly|almost|largely|mostly|not fully|slowly|gradually|near completely|"
    r"not completely|not entirely|predominantly|essentially) (?:resolved|cleared|resolving|clearing)",
    r"(?:partial|incomplete|near complete|near|partial interval|slight|some) (?:resolution|clearing)",
    r"not (?:well |optimally |adequately |fully |clearly |well |entirely |completely |as well |as )?"
    r"(?:seen|visualized|evaluated|assessed|demonstrated|characterized|delineated|imaged|included) "
    r"(?:on|in|due|secondary|because|given|owing)",
    r"not (?:well |optimally |adequately |fully |entirely |completely )(?:seen|visualized|evaluated|assessed|"
    r"demonstrated|characterized|delineated|imaged|included)",
    r"tips? (?:is |are |was )?(?:not|no longer) (?:well |clearly |definitely |definitively )?(?:seen|visualized|"
    r"visible|identified|evident|apparent|delineated)",
    r"not only", r"no doubt", r"not necessarily",
]
# End a pre-negation scope (the stop token itself is outside the scope).
_FORWARD_STOPS = [
    r"[.;:!?()\[\]]", r"but", r"however", r"although", r"though", r"except", r"which", r"whereas", r"while",
    r"yet", r"nevertheless", r"apart from", r"aside from", r"other than", r"besides", r"with the exception of",
    r"with", r"is", r"are", r"was", r"were", r"has", r"have", r"had", r"remains?", r"persists?",
    r"demonstrates?", r"shows?", r"reveals?", r"there", r"possible", r"possibly", r"probable", r"probably",
    r"likely", r"may", r"might",
    r"unchanged", r"stable", r"persistent", r"again", r"status post",
    r"(?:, |and )(?:mild|mildly|moderate|moderately|severe|severely|marked|markedly|minimal|minimally|slight|"
    r"slightly|there|the|this|stable|unchanged|persistent|again|new|possible|probable|likely|increased|"
    r"decreased|improved|improving|worsening|worsened|resolving|known|chronic|old|prior|otherwise|a|an)",
]
_BACKWARD_STOPS = [
    r"[.;:!?,()\[\]]", r"but", r"however", r"although", r"though", r"which", r"whereas", r"while",
    r"with", r"there", r"than", r"and there", r"after",
]
# Hypothetical mentions assert nothing either way: their findings are dropped (the IU X-ray
# indexers never tag "if there is concern for fracture, ..."). Scope: to the next punctuation.
_HYPOTHETICAL = [
    r"if", r"whether", r"rule out", r"to exclude", r"to rule out", r"evaluate for", r"evaluation for",
    r"for evaluation of", r"to evaluate for", r"assess for", r"to assess for", r"screen for", r"screening for",
    r"in case of", r"unless",
]
_HYPOTHETICAL_STOPS = [r"[.;:!?,()\[\]]", r"then", r"but", r"however"]
MAX_GAP = 7  # tokens allowed between a cue (or the previous finding in its scope) and a finding


def _alternation(patterns: list[str]) -> re.Pattern:
    return compile_pattern("|".join(f"(?:{p})" for p in patterns))


_PRE_RE = _alternation(_PRE_NEGATION)
_POST_RE = _alternation(_POST_NEGATION)
_PSEUDO_RE = _alternation(_PSEUDO)
_HYPO_RE = _alternation(_HYPOTHETICAL)
_HYPO_STOP_RE = re.compile(r"(?<![a-z0-9])(?:" + "|".join(f"(?:{p})" for p in _HYPOTHETICAL_STOPS) + r")(?![a-z0-9])")
_FWD_RE = re.compile(r"(?<![a-z0-9])(?:" + "|".join(f"(?:{p})" for p in _FORWARD_STOPS) + r")(?![a-z0-9])")
_BWD_RE = re.compile(r"(?<![a-z0-9])(?:" + "|".join(f"(?:{p})" for p in _BACKWARD_STOPS) + r")(?![a-z0-9])")

def split_sentences(text: str) -> list[str]:
    """Sentences and ;-clauses: the units negation scope is read in."""
    return split_clauses(text, clauses=True)


def _spans(regex: re.Pattern, joined: str, starts: list[int]) -> list[tuple[int, int]]:
    out = []
    for m in regex.finditer(joined):
        span = char_span_to_tokens(starts, m.start(), m.end())
        if span:
            out.append(span)
    return out


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    name: str
    type: str  # the entry's positive type, or ANATOMY
    stated_negative: bool  # a statement that itself denies the finding ("heart size is normal")


def find_mentions(lexicon: Lexicon, tokens: list[str], joined: Optional[str] = None) -> list[Mention]:
    """Lexicon phrases and statements in token order. A statement claims its span from the
    findings (not the anatomy) it overlaps: "heart is enlarged" is cardiomegaly plus the heart."""
    joined = " ".join(tokens) if joined is None else joined
    statements = lexicon.match_statements(tokens, joined)
    out = []
    for m in lexicon.match_phrases(tokens):
        entry = lexicon.entries[m.name]
        if entry.type != ANATOMY and any(_overlaps((m.start, m.end), (s.start, s.end)) for s in statements):
            continue
        out.append(Mention(m.start, m.end, m.name, entry.type, False))
    for s in statements:
        out.append(Mention(s.start, s.end, s.name, lexicon.entries[s.name].type, s.negated))
    out.sort(key=lambda m: (m.start, m.end))
    return out


def hypothetical_flags(tokens: list[str], mentions: list[Mention], joined: Optional[str] = None) -> list[bool]:
    """For each mention: is it a hypothetical ("if ... fracture", "to exclude pneumonia")?"""
    joined = " ".join(tokens) if joined is None else joined
    starts = token_starts(tokens)
    cues = _spans(_HYPO_RE, joined, starts)
    flags = [False] * len(mentions)
    if not cues:
        return flags
    stop = [False] * (len(tokens) + 1)
    for a, _ in _spans(_HYPO_STOP_RE, joined, starts):
        stop[a] = True
    for _, c_end in cues:
        for i, m in enumerate(mentions):
            if m.type == ANATOMY or m.start < c_end:
                continue
            if m.start - c_end > 2 * MAX_GAP or any(stop[k] for k in range(c_end, m.start)):
                break
            flags[i] = True
    return flags


def negated_flags(tokens: list[str], mentions: list[Mention], joined: Optional[str] = None) -> list[bool]:
    """For each mention: is it in the scope of a negation cue? (Anatomy is never negated.)"""
    joined = " ".join(tokens) if joined is None else joined
    starts = token_starts(tokens)
    pseudo = _spans(_PSEUDO_RE, joined, starts)
    pre = [c for c in _spans(_PRE_RE, joined, starts) if not any(_overlaps(c, p) for p in pseudo)]
    post = [c for c in _spans(_POST_RE, joined, starts) if not any(_overlaps(c, p) for p in pseudo)]
    flags = [False] * len(mentions)
    if not pre and not post:
        return flags
    # A stop word inside a recognised phrase ("status post cabg", ", chronic lung disease") is
    # part of that phrase, not a clause boundary.
    covered = [False] * (len(tokens) + 1)
    for m in mentions:
        for k in range(m.start, m.end):
            covered[k] = True
    fwd_stop = [False] * (len(tokens) + 1)
    for a, b in _spans(_FWD_RE, joined, starts):
        if not any(covered[k] for k in range(a, b)):
            fwd_stop[a] = True
    bwd_stop = [False] * (len(tokens) + 1)
    for a, b in _spans(_BWD_RE, joined, starts):
        if not any(covered[k] for k in range(a, b)):
            bwd_stop[b - 1] = True
    clinical = [i for i, m in enumerate(mentions) if m.type != ANATOMY]

    # Forward scopes: walk from each cue through the findings after it.
    for c_start, c_end in pre:
        pos = c_end  # end of the cue or of the last finding reached in its scope
        for i in clinical:
            m = mentions[i]
            if m.start < c_end:
                continue
            if m.start - pos > MAX_GAP or any(fwd_stop[k] for k in range(pos, m.start)):
                break
            flags[i] = True
            pos = max(pos, m.end)
    # Backward scopes: the findings of the clause before a post cue.
    for c_start, _ in post:
        pos = c_start
        for i in reversed(clinical):
            m = mentions[i]
            if m.end > c_start:
                continue
            if pos - m.end > MAX_GAP or any(bwd_stop[k] for k in range(m.end, pos)):
                break
            flags[i] = True
            pos = min(pos, m.start)
    return flags


class LexiconExtractor:
    """`extract(texts)` -> one list of {"text", "type"} per text. Also a Ray Data stage:
    `__call__(batch)` reads the `text` column and adds `entities` (and `extract_error`)."""

    def __init__(self, cfg=None, lexicon: Optional[Lexicon] = None):
        from engine.core.config import ExtractorConfig

        if isinstance(cfg, dict):
            cfg = ExtractorConfig(**cfg)
        self.cfg = cfg or ExtractorConfig()
        self.lexicon = lexicon or load_lexicon(self.cfg.lexicon)

    @classmethod
    def from_config(cls, cfg) -> "LexiconExtractor":
        return cls(cfg)

    def extract_one(self, text: str) -> list[dict]:
        tokens = tokenize(text or "")
        if not tokens:
            return []
        joined = " ".join(tokens)
        mentions = find_mentions(self.lexicon, tokens, joined)
        flags = negated_flags(tokens, mentions, joined)
        hypothetical = hypothetical_flags(tokens, mentions, joined)
        out, seen = [], set()
        for m, negated, hypo in zip(mentions, flags, hypothetical):
            if hypo:
                continue
            etype = m.type
            if etype != ANATOMY and (m.stated_negative or negated):
                etype = flip_polarity(etype)
            key = (m.name, etype)
            if key not in seen:
                seen.add(key)
                out.append({"text": m.name, "type": etype})
        return out

    def extract(self, texts: list[str]) -> list[list[dict]]:
        return [self.extract_one(t) for t in texts]

    def __call__(self, batch: dict) -> dict:
        return stage_call(self.extract, batch)


def stage_call(extract, batch: dict) -> dict:
    """Ray Data stage body shared by the extractors: read `text`, add `entities` and
    `extract_error` ("" when fine). A row that is not text, or that the extractor fails on,
    gets [] and a reason; the rest of the batch is unaffected."""
    from engine.core.stage import object_column

    if "text" not in batch:
        raise KeyError(f"extraction stage needs a 'text' column, got {sorted(batch)}")
    values = list(batch["text"])
    entities: list = [[] for _ in values]
    errors = ["" for _ in values]
    good = []
    for i, v in enumerate(values):
        if v is None or isinstance(v, str):
            good.append(i)
        else:
            errors[i] = f"text must be a string, got {type(v).__name__}"
    found, failed = isolate_by_key(extract, {i: values[i] or "" for i in good})
    for i, ents in found.items():
        entities[i] = ents
    for i, exc in failed.items():
        errors[i] = f"extraction failed: {type(exc).__name__}: {exc}"
    out = dict(batch)
    out["entities"] = object_column(entities)
    out["extract_error"] = object_column(errors)
    return out


def check_canonical_roundtrip(lexicon: Optional[Lexicon] = None, anatomy_sample: Optional[list[str]] = None) -> list[str]:
    """The contract the template composer relies on. For every ABNORMALITY/DISEASE canonical
    name X: "There is X." and "X is present." extract exactly [X], "No X." exactly [X negated],
    "X in the Y." (Y an ANATOMY canonical name) exactly [X, Y] and "No X in the Y." exactly
    [X negated, Y]. Returns the violations (empty: the contract holds)."""
    lexicon = lexicon or load_lexicon()
    ex = LexiconExtractor(lexicon=lexicon)
    problems = []
    findings = [e for e in lexicon if e.type != ANATOMY]
    anatomy = anatomy_sample if anatomy_sample is not None else lexicon.names(ANATOMY)
    for e in findings:
        pos, neg = {"text": e.name, "type": e.type}, {"text": e.name, "type": flip_polarity(e.type)}
        for sentence, want in ((f"There is {e.name}.", [pos]), (f"{e.name.capitalize()} is present.", [pos]),
                               (f"No {e.name}.", [neg])):
            got = ex.extract_one(sentence)
            if got != want:
                problems.append(f"{sentence!r}: got {got}, want {want}")
        for y in anatomy:
            where = {"text": y, "type": ANATOMY}
            for sentence, want in ((f"{e.name.capitalize()} in the {y}.", [pos, where]),
                                   (f"No {e.name} in the {y}.", [neg, where])):
                got = ex.extract_one(sentence)
                if got != want:
                    problems.append(f"{sentence!r}: got {got}, want {want}")
    return problems
