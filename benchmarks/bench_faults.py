"""Random fault campaign against `syncxr synth` run directories (issue 11).

Each trial takes a run directory (a fresh one, or a copy of a finished reference run), does
something hostile to it, then runs the same command again and classifies the outcome with
tests/fault_harness.py:

  kill       kill -9 of the driver's whole process group at a random time, or of the driver at
             a random named point (rounds, global QC, finalize) via tests/faulty_cli.py
  damage     1-3 files of random kinds deleted, truncated to a random length or with a byte flipped
  read-only  the output disk remounted read-only at a random point (a bind mount in a private
             mount namespace), the rerun then on the writable disk

Outcomes: identical dataset (the reference content hash), clear stop (exit 2, one
`syncxr synth: error:` line, the published dataset untouched), anything else (must be zero).

    .venv/bin/python -m benchmarks.bench_faults --trials 30 --seed 1
writes benchmarks/results/faults.md.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_harness import (HOW, KINDS, can_bind_mount, classify, content_hash, damage, readonly_wrap,  # noqa: E402
                           remount_ro_fault, synth_args, syncxr)

POINTS = ("plan-written", "round-batch", "global-qc", "global-qc-written", "finalize-built", "finalize-switched")


def write_config(path: Path) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    data["reports"]["prompt"] = str(ROOT / "configs" / "prompts" / "report_v1.yaml")
    data["images"]["size"] = 128
    data["images"]["resources"]["batch_size"] = 8  # several staged parts per round
    data["engine"]["num_cpus"] = 2
    path.write_text(yaml.safe_dump(data))
    return path


def trial(i: int, rng: random.Random, cfg: Path, n: int, reference_dir: Path, reference, ref_seconds: float,
          work: Path, ro_ok: bool) -> dict:
    out = work / f"t{i:03d}"
    kind = rng.choice(["kill", "kill", "damage", "damage", "damage+kill"] + (["read-only"] if ro_ok else []))
    fresh = kind.startswith("kill") and rng.random() < 0.5 and kind == "kill"
    if not fresh:
        shutil.copytree(reference_dir, out, symlinks=True)
        if kind != "damage":
            # an interrupted run rather than a finished one: the round unsealed, parts lost
            for done in out.glob("staging/round-*/DONE"):
                done.unlink()
            parts = sorted(out.glob("staging/round-*/part-*.parquet"))
            for p in rng.sample(parts, k=min(len(parts), rng.randint(1, 3))):
                p.unlink()
    record = {"trial": i, "kind": kind, "fault": "", "damaged": [], "first_rc": None}
    before = content_hash(out) if out.exists() else None
    if "damage" in kind:
        for _ in range(rng.randint(1, 3)):
            what, how = rng.choice(sorted(KINDS)), rng.choice(HOW)
            hit = damage(out, what, how, rng)
            if hit is not None:
                record["damaged"].append(f"{what} ({how})")
        before = content_hash(out)
    first = None
    if "kill" in kind:
        if rng.random() < 0.5:
            t = rng.uniform(2.0, ref_seconds) if fresh else rng.uniform(2.0, 12.0)
            record["fault"] = f"kill -9 at {t:.1f}s"
            first = syncxr(synth_args(cfg, n, out), kill_after_s=t)
        else:
            point = rng.choice(POINTS)
            count = rng.randint(1, 2) if point in ("round-batch", "finalize-switched") else 1
            record["fault"] = f"kill -9 at {point}@{count}"
            first = syncxr(synth_args(cfg, n, out), fault=f"{point}@{count}:kill")
    elif kind == "read-only":
        if not out.exists():
            out.mkdir(parents=True)
        point = rng.choice(POINTS)
        record["fault"] = f"read-only at {point}"
        first = syncxr(synth_args(cfg, n, out), fault=remount_ro_fault(point, out), wrap=readonly_wrap(out))
        if first.rc != 0 and not (len(first.error_lines) == 1 and "Read-only file system" in first.stderr):
            record["outcome"] = "other"
            record["why"] = "the read-only disk was not one clear line: " + first.stderr.strip()[-300:]
            return record
    if first is not None:
        record["first_rc"] = first.rc
        record["fired"] = first.rc == -9 if "kill" in kind else first.rc != 0
        if "Traceback" in first.stderr:
            record["outcome"] = "other"
            record["why"] = "traceback in the faulted run: " + first.stderr.strip().splitlines()[-1][:200]
            return record
    if out.exists():
        before = content_hash(out) if before is None else before
    again = syncxr(synth_args(cfg, n, out), timeout_s=900)
    record["outcome"] = classify(again, out, reference, before=before)
    record["rerun_s"] = round(again.seconds, 1)
    last = [line for line in again.stderr.strip().splitlines() if line.strip()]
    record["why"] = last[-1][:240] if last else ""
    if record["outcome"] == "clear stop" and again.rc == 2:
        pass
    return record


def table(records: list[dict], ref: tuple[int, str], started: float, seed: int) -> str:
    outcomes = Counter(r["outcome"] for r in records)
    kinds = Counter(r["kind"] for r in records)
    faults = Counter(r["fault"].split(" at ")[-1].split("@")[0] if "s" != r["fault"][-1:] else "random time"
                     for r in records if r["fault"])
    damaged = Counter(d.split(" (")[0] for r in records for d in r["damaged"])
    hows = Counter(d.split(" (")[1].rstrip(")") for r in records for d in r["damaged"])
    lines = [f"# Fault campaign (benchmarks/bench_faults.py, seed {seed})", "",
             f"{len(records)} trials on {ref[0]}-sample runs (configs/local.yaml at 128 px), "
             f"{time.time() - started:.0f} s in all.", "",
             "| outcome | trials |", "|---|---|"]
    for name in ("identical", "clear stop", "other"):
        lines.append(f"| {name} | {outcomes.get(name, 0)} |")
    lines += ["", "| trial kind | trials |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(kinds.items())]
    fired = Counter(r["fault"].split(" at ")[-1].split("@")[0] if "s" != r["fault"][-1:] else "random time"
                    for r in records if r["fault"] and r.get("fired"))
    lines += ["", "| kill / read-only point | faults | fired (the run was hit before it ended) |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {fired.get(k, 0)} |" for k, v in sorted(faults.items())]
    lines += ["", "| file damaged | times |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(damaged.items())]
    lines += ["", "| damage | times |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(hows.items())]
    lines += ["", "| # | kind | fault (fired?) | damaged | outcome | rerun s | last line of the rerun |",
              "|---|---|---|---|---|---|---|"]
    for r in records:
        why = r.get("why", "").replace("|", "/")
        fault = f"{r['fault']} ({'yes' if r.get('fired') else 'no'})" if r["fault"] else "-"
        lines.append(f"| {r['trial']} | {r['kind']} | {fault} | {', '.join(r['damaged']) or '-'} | "
                     f"{r['outcome']} | {r.get('rerun_s', '-')} | {why} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "faults.md"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="syncxr-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        cfg = write_config(work / "synth.yaml")
        reference_dir = work / "reference"
        ref_run = syncxr(synth_args(cfg, args.n, reference_dir))
        if ref_run.rc != 0:
            raise SystemExit(f"the reference run failed:\n{ref_run.stderr[-3000:]}")
        reference = content_hash(reference_dir)
        print(f"reference: {reference[0]} rows, {ref_run.seconds:.0f} s", flush=True)
        ro_ok = can_bind_mount()
        records = []
        for i in range(args.trials):
            rec = trial(i, rng, cfg, args.n, reference_dir, reference, ref_run.seconds, work, ro_ok)
            records.append(rec)
            print(f"trial {i}: {rec['kind']:<12} {rec['fault'] or '-':<34} {', '.join(rec['damaged']) or '-':<50} "
                  f"-> {rec['outcome']}  {rec.get('why', '')[:100]}", flush=True)
            shutil.rmtree(work / f"t{i:03d}", ignore_errors=True)
        text = table(records, reference, started, args.seed)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(text)
        print(text)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
