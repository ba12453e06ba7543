"""Plan sampling speed and balance at 2k..200k samples on the IU X-ray vocabulary.

Baseline in the same run: the naive sampler the paper describes (draw each entity uniformly
from those under the cap, rejecting contradictions), written as a plain loop. Figures: time,
speed-up over the baseline, max/min count among entities, contradictions.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks import write_results
from engine.core.config import load_config
from engine.plan.sampler import build_plan, build_vocabulary, contradictions, plan_stats
from engine.text.vocabulary import extract_corpus

RESULTS = Path(__file__).parent / "results" / "plan.md"


def naive_plan(vocab, n, k, m, seed, tau, exclusive_pairs):
    """The straightforward sampler: uniform among entities under the cap, reject conflicts."""
    rng = np.random.default_rng(seed)
    counts = {key: 0 for key in vocab.clinical + vocab.anatomy}
    rows = []
    for _ in range(n):
        chosen = []
        for pool, need in ((vocab.clinical, k), (vocab.anatomy, m)):
            got = 0
            while got < need:
                key = pool[int(rng.integers(len(pool)))]
                ents = chosen + [{"text": key[0], "type": key[1]}]
                if counts[key] >= tau[pool is vocab.anatomy] or contradictions(ents, exclusive_pairs):
                    continue
                chosen = ents
                counts[key] += 1
                got += 1
        rows.append(chosen)
    return rows, counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="stop at 20k samples")
    args = ap.parse_args(argv)
    cfg = load_config()
    table, _ = extract_corpus(cfg, progress=False)
    vocab = build_vocabulary(table, cfg.plan.min_count)
    p = cfg.plan
    lines = [
        f"# Plan sampling: {len(vocab.clinical)} clinical + {len(vocab.anatomy)} anatomy entities "
        f"(IU X-ray, min_count={p.min_count}), k={p.k}, m={p.m}, tau_factor={p.tau_factor}",
        "",
        "| n | deck sampler s | naive sampler s | speed-up | clinical max/min (plan) | clinical max/min (corpus) | anatomy max/min | contradictions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sizes = [2_000, 20_000] if args.quick else [2_000, 20_000, 200_000]
    for n in sizes:
        t0 = time.perf_counter()
        plan = build_plan(vocab, n, p.k, p.m, seed=p.seed, tau_factor=p.tau_factor, exclusive_pairs=p.exclusive_pairs)
        t_deck = time.perf_counter() - t0
        st = plan_stats(plan, vocab, p.exclusive_pairs)
        taus = (st["tau_max"]["clinical"], st["tau_max"]["anatomy"])
        naive_n = min(n, 20_000)  # the naive loop is slow; time it on up to 20k and scale linearly
        t0 = time.perf_counter()
        naive_plan(vocab, naive_n, p.k, p.m, p.seed, taus, p.exclusive_pairs)
        t_naive = (time.perf_counter() - t0) * n / naive_n
        est = "" if naive_n == n else " (est.)"
        lines.append(
            f"| {n:,} | {t_deck:.2f} | {t_naive:.2f}{est} | {t_naive / t_deck:.1f}x | "
            f"{st['clinical']['plan']['max_min_ratio']} | {st['clinical']['corpus']['max_min_ratio']} | "
            f"{st['anatomy']['plan']['max_min_ratio']} | {st['samples_with_contradictions']} |")
    text = "\n".join(lines) + "\n"
    write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
