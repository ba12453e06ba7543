"""The corpus plan: one sample per corpus report, carrying that report's own entities, so a run
reproduces the corpus's long tail instead of balancing it (the "real-like" arm of the paper's
comparison). The sample index is the report's position in the corpus, so the `corpus` report
backend can return the real text of the very report the entities came from."""
from __future__ import annotations

import json

import pyarrow as pa

from engine.core.errors import UserError
from engine.core.ids import sample_id
from engine.plan.sampler import PLAN_SCHEMA, sample_seeds
from engine.text.entities import dedupe


def mirror_plan(entity_lists: list[list[dict]], n: int, seed: int = 0) -> pa.Table:
    """The first n corpus reports that have entities, in corpus order (reports without any are
    skipped: there is nothing to draw or to check)."""
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}")
    chosen = [i for i, ents in enumerate(entity_lists) if ents][:n]
    if len(chosen) < n:
        raise UserError(f"plan.mode=corpus: the corpus has {len(chosen)} reports with entities, fewer than --n {n}")
    seeds = sample_seeds(seed, max(chosen) + 1)
    table = pa.table({
        "sample_id": [sample_id(seed, i) for i in chosen],
        "entities": [dedupe(entity_lists[i]) for i in chosen],
        "seed": [int(seeds[i]) for i in chosen],
    }, schema=PLAN_SCHEMA)
    meta = {"mode": "corpus", "seed": seed, "k": None, "m": None}
    return table.replace_schema_metadata({"syncxr.plan": json.dumps(meta)})
