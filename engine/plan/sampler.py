"""Balanced entity sampling: the plan every later stage consumes.

Each sample gets k clinical entities (the four non-anatomy types) and m anatomy entities from
the corpus vocabulary (entities seen at least `min_count` times). Rather than drawing from the
corpus distribution (which reproduces its long tail), every entity gets an equal share of the
n*k (or n*m) slots, capped at tau_max: the slots form a shuffled deck dealt k at a time. With
weighting "frequency" the shares follow the corpus counts instead and the cap alone flattens
the head, so tau_max sets how balanced the plan is (the paper's knob). A card
that would contradict the sample being dealt (same entity text with another polarity or type,
or a configured mutually exclusive partner) is swapped with a later compatible card, so counts
stay balanced and no sample holds a contradiction. Deterministic for a seed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.text.entities import ANATOMY, CLINICAL_TYPES, ENTITY_TYPES, is_negated
from engine.core.errors import UserError
from engine.core.ids import sample_id

PLAN_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("entities", pa.list_(pa.struct([("text", pa.string()), ("type", pa.string())]))),
    ("seed", pa.int64()),
])


@dataclass(frozen=True)
class Vocabulary:
    clinical: list[tuple[str, str]]
    anatomy: list[tuple[str, str]]
    corpus_counts: dict[tuple[str, str], int]


def build_vocabulary(entity_table: pa.Table, min_count: int) -> Vocabulary:
    """Corpus entities at or above min_count, split into clinical and anatomy."""
    for i, t in enumerate(entity_table.column("type").to_pylist()):
        if t not in ENTITY_TYPES:
            text = entity_table.column("text")[i].as_py()
            raise UserError(f"entity table row {i} ({text!r}): unknown entity type {t!r}; expected one of {', '.join(ENTITY_TYPES)}")
    counts = {
        (text, typ): int(c)
        for text, typ, c in zip(*(entity_table.column(name).to_pylist() for name in ("text", "type", "count")))
        if c >= min_count
    }
    ordered = sorted(counts, key=lambda key: (-counts[key], key))
    return Vocabulary(
        clinical=[key for key in ordered if key[1] in CLINICAL_TYPES],
        anatomy=[key for key in ordered if key[1] == ANATOMY],
        corpus_counts=counts,
    )


def sample_seeds(seed: int, n: int) -> np.ndarray:
    """Per-sample seeds: splitmix64 of (run seed, index), so sample i's seed does not depend on n."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)) + np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)  # non-negative int64


def _cap(n_slots: int, vocab_size: int, tau_max: int | None, tau_factor: float) -> int:
    fair = n_slots / vocab_size
    return tau_max if tau_max is not None else max(1, math.ceil(tau_factor * fair))


def capped_shares(n_slots: int, weights, cap: int) -> np.ndarray:
    """Integer slots per entity summing to n_slots, in proportion to `weights` and none above
    `cap`: the share an entity loses to the cap goes to the others in proportion (water-filling),
    then the fractions are rounded by largest remainder (ties to the earlier entity)."""
    w = np.asarray(weights, dtype=np.float64)
    share = np.zeros(len(w))
    capped = np.zeros(len(w), bool)
    left = float(n_slots)
    while True:
        free = np.flatnonzero(~capped)
        want = left * w[free] / w[free].sum()
        over = want > cap
        if not over.any():
            share[free] = want
            break
        share[free[over]] = cap
        capped[free[over]] = True
        left -= cap * int(over.sum())
    counts = np.minimum(np.floor(share + 1e-9).astype(np.int64), cap)
    order = np.lexsort((np.arange(len(w)), -(share - counts)))  # largest remainder first
    room = order[counts[order] < cap]
    counts[room[:n_slots - int(counts.sum())]] += 1
    return counts


def _deck(n_slots: int, vocab_size: int, cap: int, rng: np.random.Generator, what: str,
          weights=None) -> np.ndarray:
    """n_slots entity indices: as even as the cap allows (counts differ by at most one), or with
    `weights` in proportion to them under the cap."""
    if vocab_size * cap < n_slots:
        raise UserError(
            f"tau_max={cap} is too small: {vocab_size} {what} entities x {cap} = {vocab_size * cap} "
            f"slots, but the plan needs {n_slots}; raise tau_max, lower n, or lower min_count")
    if weights is not None:
        per_entity = capped_shares(n_slots, weights, cap)
    else:
        base, extra = divmod(n_slots, vocab_size)
        per_entity = np.full(vocab_size, base, dtype=np.int64)
        per_entity[rng.permutation(vocab_size)[:extra]] += 1  # who gets the remainder is random
    deck = np.repeat(np.arange(vocab_size), per_entity)
    return deck[rng.permutation(deck.size)]


def _conflict_table(vocab: list[tuple[str, str]], exclusive_pairs) -> tuple[np.ndarray, dict[int, set[int]]]:
    """Entities conflict when they share a text (negation or duplicate across types); positive
    mentions of an exclusive pair conflict too (`no A` with `B` is fine)."""
    texts = {}
    text_id = np.array([texts.setdefault(text, len(texts)) for text, _ in vocab], dtype=np.int64)
    partners: dict[str, set[str]] = {}
    for a, b in exclusive_pairs:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    positive_by_text: dict[str, list[int]] = {}
    for i, (text, typ) in enumerate(vocab):
        if not is_negated(typ):
            positive_by_text.setdefault(text, []).append(i)
    exclusive: dict[int, set[int]] = {}
    for i, (text, typ) in enumerate(vocab):
        if is_negated(typ) or text not in partners:
            continue
        others = {j for p in partners[text] for j in positive_by_text.get(p, [])}
        if others:
            exclusive[i] = others
    return text_id, exclusive


def _deal(deck: np.ndarray, per_sample: int, n: int, vocab, exclusive_pairs, rng, cap: int) -> list[list[int]]:
    text_id, exclusive = _conflict_table(vocab, exclusive_pairs)
    deck = deck.copy()
    counts = np.bincount(deck, minlength=len(vocab))
    samples = []
    for i in range(n):
        chosen: list[int] = []
        texts: set[int] = set()
        banned: set[int] = set()
        for pos in range(i * per_sample, (i + 1) * per_sample):
            card = int(deck[pos])
            if text_id[card] in texts or card in banned:
                card = _swap_in(deck, pos, text_id, texts, banned, rng)
                if card < 0:  # nothing compatible left in the deck: draw one under the cap
                    card = _draw_fresh(counts, cap, text_id, texts, banned, rng)
                    counts[card] += 1
                    counts[deck[pos]] -= 1
                    deck[pos] = card
            chosen.append(card)
            texts.add(int(text_id[card]))
            banned |= exclusive.get(card, set())
        samples.append(chosen)
    return samples


def _compatible(card: int, text_id, texts, banned) -> bool:
    return text_id[card] not in texts and card not in banned


def _swap_in(deck, pos, text_id, texts, banned, rng) -> int:
    end = deck.size
    if pos + 1 >= end:
        return -1
    for _ in range(8):  # random later cards first, so swaps do not cluster
        j = int(rng.integers(pos + 1, end))
        if _compatible(int(deck[j]), text_id, texts, banned):
            deck[pos], deck[j] = deck[j], deck[pos]
            return int(deck[pos])
    for j in range(pos + 1, end):
        if _compatible(int(deck[j]), text_id, texts, banned):
            deck[pos], deck[j] = deck[j], deck[pos]
            return int(deck[pos])
    return -1


def _draw_fresh(counts, cap, text_id, texts, banned, rng) -> int:
    order = rng.permutation(counts.size)
    for card in order[np.argsort(counts[order], kind="stable")]:
        if counts[card] < cap and _compatible(int(card), text_id, texts, banned):
            return int(card)
    raise UserError("cannot complete the plan without a contradiction: the vocabulary is too small for k/m")


def build_plan(vocab: Vocabulary, n: int, k: int, m: int, seed: int = 0,
               tau_max: int | None = None, tau_factor: float = 1.1, exclusive_pairs=(),
               weighting: str = "even") -> pa.Table:
    """The plan table (sample_id, entities, seed) for n samples."""
    if weighting not in ("even", "frequency"):
        raise UserError(f"plan.weighting {weighting!r}: choose even or frequency")
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}")
    n_clinical_texts = len({text for text, _ in vocab.clinical})
    n_anatomy_texts = len({text for text, _ in vocab.anatomy})
    if k > n_clinical_texts:
        raise UserError(f"plan.k={k} is larger than the clinical vocabulary ({n_clinical_texts} distinct entities at or above min_count)")
    if m > n_anatomy_texts:
        raise UserError(f"plan.m={m} is larger than the anatomy vocabulary ({n_anatomy_texts} entities at or above min_count)")
    rng = np.random.default_rng(seed)
    groups, caps = [], {}
    for vocab_list, per_sample, what in ((vocab.clinical, k, "clinical"), (vocab.anatomy, m, "anatomy")):
        if per_sample == 0:
            groups.append([[] for _ in range(n)])
            continue
        cap = caps[what] = _cap(n * per_sample, len(vocab_list), tau_max, tau_factor)
        weights = [vocab.corpus_counts[key] for key in vocab_list] if weighting == "frequency" else None
        deck = _deck(n * per_sample, len(vocab_list), cap, rng, what, weights)
        pairs = exclusive_pairs if what == "clinical" else ()
        groups.append(_deal(deck, per_sample, n, vocab_list, pairs, rng, cap))
    entities = [
        [{"text": vocab.clinical[c][0], "type": vocab.clinical[c][1]} for c in clin]
        + [{"text": vocab.anatomy[a][0], "type": vocab.anatomy[a][1]} for a in anat]
        for clin, anat in zip(*groups)
    ]
    table = pa.table({
        "sample_id": [sample_id(seed, i) for i in range(n)],
        "entities": entities,
        "seed": sample_seeds(seed, n),
    }, schema=PLAN_SCHEMA)
    meta = {"k": k, "m": m, "seed": seed, "tau_clinical": caps.get("clinical"), "tau_anatomy": caps.get("anatomy"),
            "weighting": weighting}
    return table.replace_schema_metadata({"syncxr.plan": json.dumps(meta)})


def contradictions(entities: list[dict], exclusive_pairs=()) -> list[str]:
    """What is contradictory in one sample's entities (empty when consistent)."""
    problems = []
    by_text: dict[str, list[str]] = {}
    for e in entities:
        by_text.setdefault(e["text"], []).append(e["type"])
    for text, types in by_text.items():
        if len(types) > 1:
            problems.append(f"{text!r} appears as {' and '.join(types)}")
    positive = {e["text"] for e in entities if e["type"] != ANATOMY and not is_negated(e["type"])}
    for a, b in exclusive_pairs:
        if a in positive and b in positive:
            problems.append(f"{a!r} with its exclusive partner {b!r}")
    return problems


def plan_counts(plan: pa.Table) -> dict[tuple[str, str], int]:
    from collections import Counter

    return dict(Counter((e["text"], e["type"]) for ents in plan.column("entities").to_pylist() for e in ents))


def plan_stats(plan: pa.Table, vocab: Vocabulary, exclusive_pairs=()) -> dict:
    from engine.text.stats import count_summary

    counts = plan_counts(plan)
    n_contra = sum(1 for ents in plan.column("entities").to_pylist() if contradictions(ents, exclusive_pairs))

    def group(keys):
        plan_c = [counts.get(key, 0) for key in keys]
        corpus_c = [vocab.corpus_counts[key] for key in keys]
        return {"vocabulary": len(keys), "plan": count_summary(plan_c), "corpus": count_summary(corpus_c)}

    meta = json.loads((plan.schema.metadata or {}).get(b"syncxr.plan", b"{}"))
    return {
        "samples": plan.num_rows,
        "k": meta.get("k"), "m": meta.get("m"),
        "tau_max": {"clinical": meta.get("tau_clinical"), "anatomy": meta.get("tau_anatomy")},
        "clinical": group(vocab.clinical),
        "anatomy": group(vocab.anatomy),
        "samples_with_contradictions": n_contra,
    }
