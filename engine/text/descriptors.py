"""How a corpus's radiologists qualify each finding: the descriptor words ("mild", "small",
"patchy", "stable", ...) written right before a positive mention, counted per entity.

The CPU report writer uses the counts to phrase findings the way the corpus does ("Small pleural
effusion is seen." as often as the corpus says "small" of an effusion), which an LLM writer does
on its own. Only words of a fixed descriptor vocabulary count, and a word is kept for an entity
only when the extractor reads "<word> <entity>" as the entity alone, so a described finding
still passes report QC.

The packaged table (engine/data/descriptors.json) is mined from the packaged IU X-ray reports:
`python -m engine.text.descriptors --out engine/data/descriptors.json` writes it again.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional

from engine.text.entities import ABNORMALITY, ANATOMY, DISEASE

PACKAGED_DESCRIPTORS = Path(__file__).resolve().parent.parent / "data" / "descriptors.json"
FORMAT = "syncxr-descriptors/1"

# Severity, extent, pattern and course words of chest X-ray reports; hyphenated ones are written
# as the tokenizer splits them ("plate like") and printed with their hyphen.
DESCRIPTOR_WORDS = frozenset("""
minimal mild mildly moderate moderately marked markedly severe slight slightly borderline small
smaller large larger tiny trace extensive diffuse focal patchy scattered streaky strandy dense
faint subtle vague hazy linear bandlike subsegmental segmental lobar multilobar multifocal
nodular round rounded loculated layering chronic acute early stable persistent residual new
increasing increased decreasing decreased worsening improving resolving prominent minor
plate_like ill_defined well_defined
""".split())
MIN_COUNT = 2  # a word said once of an entity is anecdote, not the corpus's style


def _descriptor_of(tokens: list[str], start: int, end: int, covered: set[int]) -> Optional[str]:
    """The descriptor of the mention tokens[start:end]: its own first word when the lexicon spells
    the descriptor into a synonym ("mild cardiomegaly"), else the word (or hyphenated pair) right
    before it."""
    if end - start > 1 and tokens[start] in DESCRIPTOR_WORDS:
        return tokens[start]
    if start >= 2 and {start - 1, start - 2}.isdisjoint(covered):
        pair = f"{tokens[start - 2]}_{tokens[start - 1]}"
        if pair in DESCRIPTOR_WORDS:
            return pair
    if start >= 1 and start - 1 not in covered and tokens[start - 1] in DESCRIPTOR_WORDS:
        return tokens[start - 1]
    return None


def count_descriptors(texts: Iterable[str], lexicon) -> tuple[Counter, dict[str, Counter]]:
    """(positive mentions per entity, descriptor counts per entity) over report texts, read
    with the lexicon extractor's own matching and negation rules."""
    from engine.text.lexicon import tokenize
    from engine.text.lexicon_extractor import find_mentions, hypothetical_flags, negated_flags, split_sentences

    mentions: Counter = Counter()
    words: dict[str, Counter] = defaultdict(Counter)
    for text in texts:
        for sentence in split_sentences(text):
            tokens = tokenize(sentence)
            if not tokens:
                continue
            joined = " ".join(tokens)
            found = find_mentions(lexicon, tokens, joined)
            covered = {i for m in found for i in range(m.start, m.end)}
            for m, negated, hypo in zip(found, negated_flags(tokens, found, joined),
                                        hypothetical_flags(tokens, found, joined)):
                if m.type == ANATOMY or negated or hypo or m.stated_negative:
                    continue
                mentions[m.name] += 1
                word = _descriptor_of(tokens, m.start, m.end, covered)
                if word:
                    words[m.name][word] += 1
    return mentions, words


def spell(word: str) -> str:
    return word.replace("_", "-")


def keeps_entities(extractor, word: str, entity: str, etype: str) -> bool:
    """Does the extractor read the described finding as the finding alone?"""
    plain = extractor.extract_one(f"{entity} is seen.")
    described = extractor.extract_one(f"{spell(word)} {entity} is seen.")
    return described == plain and {"text": entity, "type": etype} in plain


def mine_descriptors(texts: Iterable[str], lexicon=None, min_count: int = MIN_COUNT) -> dict:
    """{entity: {"mentions": positive mentions, "words": {descriptor: count}}} for the entities
    that have at least one descriptor said `min_count` times and kept by the extractor."""
    from engine.text.lexicon import load_lexicon
    from engine.text.lexicon_extractor import LexiconExtractor

    lexicon = lexicon or load_lexicon(None)
    extractor = LexiconExtractor(lexicon=lexicon)
    mentions, words = count_descriptors(texts, lexicon)
    table = {}
    for entity in sorted(words):
        etype = lexicon.entries[entity].type
        if etype not in (ABNORMALITY, DISEASE):
            continue
        kept = {spell(w): c for w, c in sorted(words[entity].items(), key=lambda wc: (-wc[1], wc[0]))
                if c >= min_count and keeps_entities(extractor, w, entity, etype)}
        if kept:
            table[entity] = {"mentions": int(mentions[entity]), "words": kept}
    return table


def load_descriptors(path: str | Path | None = None) -> dict[str, dict]:
    """A descriptor table (the packaged one by default), checked: names the file and entity."""
    from engine.core.errors import UserError

    path = Path(path) if path else PACKAGED_DESCRIPTORS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the descriptor table: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entities"), dict):
        raise UserError(f"{path}: not a descriptor table (expected format {FORMAT!r} with an 'entities' mapping)")
    for entity, entry in data["entities"].items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("mentions"), int) and entry["mentions"] > 0
              and isinstance(entry.get("words"), dict)
              and all(isinstance(c, int) and c > 0 for c in entry["words"].values())
              and sum(entry["words"].values()) <= entry["mentions"])
        if not ok:
            raise UserError(f"{path}: entity {entity!r}: expected mentions > 0 and words {{word: count}} "
                            f"whose counts are positive and sum to at most mentions")
    return data["entities"]


def main(argv=None) -> int:
    from engine.core.config import load_config
    from engine.text.corpora import load_corpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="engine config whose corpus to read (default: the packaged one)")
    ap.add_argument("--out", default=str(PACKAGED_DESCRIPTORS))
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    table = mine_descriptors(r.text for r in load_corpus(cfg.corpus))
    Path(args.out).write_text(json.dumps({"format": FORMAT, "corpus": cfg.corpus.name, "entities": table},
                                         indent=1, sort_keys=True) + "\n")
    print(f"{args.out}: descriptors of {len(table)} entities from the {cfg.corpus.name} corpus")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
