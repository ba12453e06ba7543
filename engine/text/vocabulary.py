"""Corpus -> entity table: extract entities from every report of the configured corpus."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.text.corpora import load_corpus
from engine.text.entities import ENTITY_TYPES, build_extractor
from engine.core.errors import UserError
from engine.core.files import write_json, write_table
from engine.text.stats import count_entities, long_tail_stats, plot_rank_frequency

ENTITY_TABLE_COLUMNS = ("text", "type", "count")


def extract_corpus(cfg, batch_size: int = 256, progress: bool = True) -> tuple[pa.Table, int]:
    """(entity table, number of reports) for cfg.corpus with cfg.extractor."""
    reports, entity_lists = extract_reports(cfg, batch_size, progress)
    return count_entities(entity_lists), len(reports)


def extract_reports(cfg, batch_size: int = 256, progress: bool = True) -> tuple[list, list[list[dict]]]:
    """(reports, entities of each report) for cfg.corpus with cfg.extractor, in corpus order."""
    reports = load_corpus(cfg.corpus)
    extractor = build_extractor(cfg.extractor)
    entity_lists, start = [], time.time()
    for i in range(0, len(reports), batch_size):
        entity_lists.extend(extractor.extract([r.text for r in reports[i:i + batch_size]]))
        if progress:
            done = min(i + batch_size, len(reports))
            print(f"\rextracting entities: {done}/{len(reports)} reports ({time.time() - start:.1f}s)",
                  end="" if done < len(reports) else "\n", file=sys.stderr, flush=True)
    return reports, entity_lists


def read_entity_table(path: Path) -> pa.Table:
    """An entities.parquet written by `syncxr entities`, checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: entity table not found (write one with `syncxr entities`)")
    table = pq.read_table(path)
    missing = [c for c in ENTITY_TABLE_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    for i, t in enumerate(table.column("type").to_pylist()):
        if t not in ENTITY_TYPES:
            raise UserError(f"{path}: row {i}: unknown entity type {t!r}; expected one of {', '.join(ENTITY_TYPES)}")
    if table.num_rows == 0:
        raise UserError(f"{path}: entity table is empty")
    return table


def write_entities(cfg, out: Path):
    """Extract the corpus; write entities.parquet, stats.json, rank_frequency.png. -> (table, stats)"""
    out.mkdir(parents=True, exist_ok=True)
    table, n_reports = extract_corpus(cfg)
    write_table(table, out / "entities.parquet")
    stats = {"corpus": cfg.corpus.name, "reports": n_reports, **long_tail_stats(table)}
    write_json(out / "stats.json", stats)
    plot_rank_frequency(table, out / "rank_frequency.png", f"{cfg.corpus.name}: entity rank-frequency")
    return table, stats
