"""Plan settings checked before sampling: entity names the config gives, and the memory a plan of
n samples needs."""
from __future__ import annotations

import os

import pyarrow as pa

from engine.core.errors import UserError


def check_exclusive_pairs(cfg, table: pa.Table) -> None:
    """Every plan.exclusive_pairs entry names an entity the lexicon or the corpus knows (a typo
    would silently constrain nothing)."""
    import difflib

    from engine.text.lexicon import load_lexicon

    lexicon_path = cfg.resolve(cfg.extractor.lexicon)
    lexicon = load_lexicon(lexicon_path)
    known = set(table.column("text").to_pylist()) | {e.name for e in lexicon}
    for i, pair in enumerate(cfg.plan.exclusive_pairs):
        for text in pair:
            if text not in known:
                close = difflib.get_close_matches(text, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserError(f"plan.exclusive_pairs[{i}]: {text!r} is not an entity of the lexicon "
                                f"({lexicon.source}) or the corpus{hint}")


PLAN_BYTES_PER_ENTITY = 400  # peak memory of sampling, measured: ~2.2 KB per sample of k+m=6


def available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def check_plan_memory(cfg, n: int) -> None:
    """Refuse a plan that cannot fit in memory before trying (numpy would fail half-way through)."""
    need = n * (cfg.plan.k + cfg.plan.m) * PLAN_BYTES_PER_ENTITY
    have = available_memory()
    if have is not None and need > have:
        raise UserError(f"--n {n}: the plan needs about {need / 2**30:.0f} GiB of memory, more than the "
                        f"{have / 2**30:.0f} GiB available: plan fewer samples")
