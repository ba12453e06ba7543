"""Report stage (template backend): QC pass rate on a balanced plan, throughput on one core, and
the stage inside Ray Data against a plain loop over the same rows (the baseline of the ratio).

The plan comes from the default config (IU X-ray corpus, lexicon extractor, k=4, m=2), exactly
as `syncxr plan` builds it; QC uses the same extractor.

    .venv/bin/python -m benchmarks.bench_reports [--quick] [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import write_results
from engine.core.config import load_config
from engine.reports.qc import choose_candidates

RESULTS = Path(__file__).parent / "results" / "reports.md"


def timed(fn, *args, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return out, best


def numpy_batches(table, size: int):
    for start in range(0, table.num_rows, size):
        part = table.slice(start, size)
        yield {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}


def tile(table, times: int):
    """`times` copies of a plan with distinct sample ids."""
    import pyarrow as pa

    parts = []
    for k in range(times):
        ids = pa.array([f"{sid}-x{k}" for sid in table.column("sample_id").to_pylist()])
        parts.append(table.set_column(table.column_names.index("sample_id"), "sample_id", ids))
    return pa.concat_tables(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="plan rows (default 2000; --quick 500)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = args.n or (500 if args.quick else 2000)

    from actors.report_template import TemplateReportWriter
    from engine.plan.write import make_plan
    from engine.text.entities import build_extractor
    from engine.reports.pipeline import ReportQC

    cfg = load_config()
    num_candidates = cfg.reports.num_candidates
    plan, _ = make_plan(cfg, n)
    rows = plan.to_pylist()
    extractor = build_extractor(cfg.extractor)
    writer = TemplateReportWriter(num_candidates=num_candidates)

    # 1. QC pass rate: the first candidate, every candidate, and the stage's decision.
    outs, t_compose = timed(writer.generate, rows, repeat=3)
    sampled = [r["entities"] for r in rows]
    per_candidate = []
    for c in range(num_candidates):
        decided = choose_candidates(sampled, [[o[0][c]] for o in outs], extractor.extract)
        per_candidate.append(sum(d.accepted for d in decided))
    decisions, t_qc = timed(choose_candidates, sampled, [o[0] for o in outs], extractor.extract)
    accepted = sum(d.accepted for d in decisions)
    attempts = Counter(d.attempts for d in decisions)
    reasons = Counter(r.split(": ", 2)[1] for d in decisions if not d.accepted for r in d.reasons)

    # 2. One core: compose only, and compose + QC (extraction of every accepted report).
    single = writer.generate(rows)  # warm
    _, t_one = timed(lambda: TemplateReportWriter(num_candidates=1).generate(rows), repeat=3)
    _, t_one_qc = timed(lambda: choose_candidates(sampled, [o[0][:1] for o in single], extractor.extract), repeat=3)

    # 3. The stage (generate -> QC) as a plain loop over batches vs inside Ray Data, at the plan's
    # size and at `scale` times it (Ray's fixed costs per run amortise over more rows).
    batch_size = cfg.reports.resources.batch_size
    qc = ReportQC(cfg.extractor.model_dump(), cfg.reports.tolerance)
    scale = 4 if args.quick else 10
    big = tile(plan, scale)

    def loop(table):
        done = 0
        for batch in numpy_batches(table, batch_size):
            done += int(qc(writer(batch))["accepted"].sum())
        return done

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from engine.core.ray_session import init_ray
    from engine.reports.pipeline import build_report_dataset

    t0 = time.perf_counter()
    init_ray(cfg.engine)
    t_init = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    compare = []
    with tempfile.TemporaryDirectory() as tmp:
        def ray_run(path):
            ds = build_report_dataset(cfg, path)
            return sum(int(b["accepted"].sum()) for b in ds.iter_batches(batch_format="numpy", batch_size=None))

        for label, table in (("warm-up (first run, starts workers)", plan.slice(0, 200)), (f"{n} rows", plan),
                             (f"{scale * n} rows", big)):
            path = Path(tmp) / f"plan-{table.num_rows}.parquet"
            pq.write_table(table, path)
            ray_accepted, t_ray = timed(ray_run, path)
            loop_accepted, t_loop = timed(loop, table)
            assert ray_accepted == loop_accepted
            compare.append((label, table.num_rows, t_loop, t_ray))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    ray.shutdown()

    lines = [
        "# Report stage benchmark (template backend)",
        "",
        f"Plan: {n} rows from `configs/local.yaml` (IU X-ray corpus, lexicon extractor, k={cfg.plan.k}, "
        f"m={cfg.plan.m}); {num_candidates} candidates per row; QC with the same extractor, tolerance "
        f"{cfg.reports.tolerance}.",
        "",
        "## QC pass rate",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows accepted (first passing candidate) | {accepted}/{n} = {accepted / n:.2%} |",
        *(f"| candidate {c + 1} alone passes | {k}/{n} = {k / n:.2%} |" for c, k in enumerate(per_candidate)),
        f"| attempts used | {dict(sorted(attempts.items()))} |",
        f"| rejection reasons | {dict(reasons.most_common(5)) or 'none'} |",
        "",
        "## Throughput, one core (in-process, best of 3)",
        "",
        "| step | time | reports/s | ratio to compose only |",
        "|---|---|---|---|",
        f"| compose 1 report per row | {t_one:.3f} s | {n / t_one:,.0f} | 1.00 |",
        f"| QC (parse + extract + compare) of those | {t_one_qc:.3f} s | {n / t_one_qc:,.0f} | {t_one_qc / t_one:.2f} |",
        f"| compose {num_candidates} candidates per row | {t_compose:.3f} s | {n / t_compose:,.0f} rows/s | {t_compose / t_one:.2f} |",
        f"| QC with first-accepted-wins over {num_candidates} | {t_qc:.3f} s | {n / t_qc:,.0f} rows/s | {t_qc / t_one:.2f} |",
        "",
        f"## The stage inside Ray Data vs a plain loop (same rows, generate -> QC, batch {batch_size})",
        "",
        f"Local Ray with {cpus} CPUs; each stage one actor of {cfg.reports.resources.num_cpus} CPU "
        "(configs/local.yaml); timings are single runs. Ray start-up is reported apart.",
        "",
        "| rows | plain loop (baseline) | Ray Data | Ray rows/s | Ray / loop time |",
        "|---|---|---|---|---|",
        *(f"| {label} | {t_loop:.2f} s | {t_ray:.2f} s | {rows_ / t_ray:,.0f} | {t_ray / t_loop:.2f} |"
          for label, rows_, t_loop, t_ray in compare),
        f"| Ray start-up (`init_ray`) | | {t_init:.2f} s | | |",
        "",
        "The template writer needs well under a millisecond per row, so what Ray adds per run (task and",
        "actor start-up, scheduling, Arrow conversions) dominates at this size on 2 CPUs; the LLM",
        "backends spend seconds per row, where it does not matter.",
        "",
        "## Examples",
        "",
    ]
    for row, out in list(zip(rows, outs))[:3]:
        ents = ", ".join(f"{e['text']} ({e['type']})" for e in row["entities"])
        lines += [f"Entities: {ents}", "", "```", out[0][0], "```", ""]
    text = "\n".join(lines)
    write_results(RESULTS, text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
