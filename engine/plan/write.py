"""A plan from a config: vocabulary from the corpus entities, balanced sampling, plan.parquet with
its stats and balance plot. Shared by `syncxr plan` and the synth run."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import write_json, write_table
from engine.plan.checks import check_exclusive_pairs, check_plan_memory
from engine.plan.sampler import Vocabulary, build_plan, build_vocabulary, plan_counts, plan_stats
from engine.text.stats import plot_balance
from engine.plan.mirror import mirror_plan
from engine.text.stats import count_entities
from engine.text.entities import is_negated
from engine.text.vocabulary import extract_corpus, extract_reports


def make_plan(cfg, n: int, table=None):
    """(plan table, vocabulary) from a corpus entity table (default: extract the config's corpus).
    plan.mode=corpus mirrors the corpus report by report instead of sampling."""
    p = cfg.plan
    if p.mode == "corpus":
        reports, entity_lists = extract_reports(cfg, progress=False)
        # a report needs both sections to be written back as one (report QC checks them)
        usable = [ents if r.findings and r.impression else [] for r, ents in zip(reports, entity_lists)]
        return mirror_plan(usable, n, p.seed), build_vocabulary(count_entities(entity_lists), p.min_count)
    table = table if table is not None else extract_corpus(cfg)[0]
    check_exclusive_pairs(cfg, table)
    vocab = build_vocabulary(table, cfg.plan.min_count)
    if p.drawable_only:
        vocab = drawable_vocabulary(vocab, cfg.images.backend)
    if not vocab.clinical:
        raise UserError(f"no clinical entity reaches plan.min_count={cfg.plan.min_count} in the corpus"
                        + (f" among those the {cfg.images.backend!r} image backend draws" if p.drawable_only else ""))
    plan = build_plan(vocab, n, p.k, p.m, seed=p.seed, tau_max=p.tau_max, tau_factor=p.tau_factor,
                      exclusive_pairs=p.exclusive_pairs, weighting=p.weighting)
    return plan, vocab


def drawable_vocabulary(vocab: Vocabulary, backend: str) -> Vocabulary:
    """The vocabulary without the present findings the image backend cannot draw."""
    from engine.images.pipeline import IMAGE_BACKENDS

    can_draw = IMAGE_BACKENDS.get(backend).can_draw
    keep = [key for key in vocab.clinical if is_negated(key[1]) or can_draw(key[0])]
    return replace(vocab, clinical=keep)


def write_plan(cfg, n: int, out: Path, table=None):
    """Write plan.parquet, plan_stats.json and plan_balance.png. -> (plan, stats)"""
    check_plan_memory(cfg, n)
    out.mkdir(parents=True, exist_ok=True)
    plan, vocab = make_plan(cfg, n, table)
    write_table(plan, out / "plan.parquet")
    stats = plan_stats(plan, vocab, cfg.plan.exclusive_pairs)
    write_json(out / "plan_stats.json", stats)
    counts = plan_counts(plan)
    plot_balance(vocab.corpus_counts, {k: counts.get(k, 0) for k in vocab.corpus_counts},
                 out / "plan_balance.png", f"entity balance: corpus vs plan (n={n})")
    return plan, stats
