"""Engine efficiency and memory of `syncxr synth` with the CPU defaults (configs/local.yaml).

Efficiency = accepted samples per second of the whole pipeline (rounds, global QC; not the plan
or finalize) divided by the standalone rate of its slowest stage: each stage class called directly
on the same rows, one process, no Ray (the slowest stage gets one actor in the pipeline, so this
is the rate the pipeline cannot beat). Also reported: the ideal rate if all stages' work were
spread perfectly over the cores, which is the tighter bound on a 2-core machine.

Memory: peak RSS of the driver and of the largest Ray worker during a run at two sizes, sampled
every 0.2 s, each run in a fresh driver process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "synth.md"


def standalone_rates(cfg, plan, n: int) -> dict:
    """rows/s of each stage class on the same rows, called in this process (no Ray)."""
    from engine.synth.run import pending_rows
    from engine.synth.round import prepare_stages, stage_chain

    rows = pending_rows(plan.slice(0, n), set(), 0)
    chain = stage_chain(cfg, prepare_stages(cfg))
    names = ["report writing", "report QC", "images", "image QC (embed + judge)"]
    seconds = dict.fromkeys(names, 0.0)
    size = cfg.images.resources.batch_size
    for start in range(0, rows.num_rows, size):
        part = rows.slice(start, size)
        batch = {name: part.column(name).to_numpy() for name in part.column_names}  # as Ray hands it over
        for name, stage in zip(names, chain):
            t = time.perf_counter()
            batch = stage(batch)
            seconds[name] += time.perf_counter() - t
    return {k: rows.num_rows / v for k, v in seconds.items()}


def efficiency(n: int, out: Path) -> list[str]:
    from engine.core.config import load_config
    from engine.synth.run import read_or_write_plan

    cfg = load_config(None)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    plan = read_or_write_plan(cfg, n, out)
    rates = standalone_rates(cfg, plan, min(n, 400))
    cmd = [sys.executable, "-m", "engine.cli", "synth", "--n", str(n), "--out", str(out)]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = json.loads((out / "manifest.json").read_text())
    pipeline_s = manifest["seconds"]["pipeline"]
    rate = manifest["kept"] / pipeline_s
    slowest = min(rates, key=rates.get)
    cores = os.cpu_count() or 1
    ideal = cores / sum(1 / r for r in rates.values())
    lines = [f"## Efficiency at N={n} (configs/local.yaml, {cores} cores)", "",
             "| stage (standalone, one process) | rows/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in rates.items()]
    lines += ["", "| pipeline | value |", "|---|---|",
              f"| accepted | {manifest['kept']} of {manifest['planned']} |",
              f"| pipeline seconds (rounds + global QC) | {pipeline_s:.1f} |",
              f"| accepted / s | {rate:.1f} |",
              f"| efficiency vs slowest stage ({slowest}, {rates[slowest]:.1f}/s) | **{rate / rates[slowest]:.2f}** |",
              f"| ideal rate, all stage work spread over {cores} cores | {ideal:.1f}/s (pipeline at {rate / ideal:.2f} of it) |",
              "", "In-pipeline busy rates (rows per busy second of one actor, from the manifest):", "",
              "| stage | rows | busy s | rows/s |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['rows']} | {v['busy_s']} | {v['rows_per_s']} |" for k, v in manifest["stage_throughput"].items()]
    return lines


def _sample_memory(pid: int, marker: str, stop: threading.Event, peaks: dict) -> None:
    """Peak RSS of the driver and of every Ray worker of this run (they inherit TMPDIR=marker)."""
    import psutil

    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                line = " ".join(proc.info["cmdline"] or [])
                if proc.info["pid"] == pid:
                    peaks["driver"] = max(peaks.get("driver", 0), proc.memory_info().rss)
                elif line.startswith("ray::") and proc.environ().get("TMPDIR") == marker:
                    key = line.split()[0]
                    peaks[key] = max(peaks.get(key, 0), proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        stop.wait(0.2)


def memory_run(n: int, out: Path) -> dict:
    """Peak RSS (MiB) of the driver and of each kind of worker during one fresh run."""
    shutil.rmtree(out, ignore_errors=True)
    marker = tempfile.mkdtemp(prefix="sxm-", dir="/tmp")  # the run's Ray workers inherit TMPDIR
    env = {**os.environ, "TMPDIR": marker, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "synth", "--n", str(n), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(proc.pid, marker, stop, peaks))
    sampler.start()
    proc.wait()
    stop.set()
    sampler.join()
    shutil.rmtree(marker, ignore_errors=True)
    manifest = json.loads((out / "manifest.json").read_text())
    workers = {k: v for k, v in peaks.items() if k != "driver"}
    largest = max(workers, key=workers.get) if workers else "-"
    return {"n": n, "kept": manifest["kept"], "seconds": manifest["seconds"]["pipeline"],
            "driver_mib": peaks.get("driver", 0) / 2**20, "largest_worker": largest,
            "largest_worker_mib": workers.get(largest, 0) / 2**20,
            "workers": {k: round(v / 2**20) for k, v in sorted(workers.items())}}


def memory(sizes: list[int], out: Path) -> list[str]:
    runs = [memory_run(n, out / f"mem-{n}") for n in sizes]
    lines = ["## Memory (peak RSS, MiB)", "", "| N | accepted | pipeline s | driver | largest worker | which |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['kept']} | {r['seconds']:.0f} | {r['driver_mib']:.0f} | {r['largest_worker_mib']:.0f} | "
              f"{r['largest_worker']} |" for r in runs]
    lines += ["", "Every worker's peak:", ""]
    lines += [f"- N={r['n']}: " + ", ".join(f"{k} {v}" for k, v in r["workers"].items()) for r in runs]
    return lines


def neighbour_section(run_dir: Path) -> list[str]:
    """How close distinct samples of a run are under its embedder: the share whose nearest other
    sample is above each cosine (what a dedup threshold removes), exact search."""
    import faiss

    from engine.synth.round import passed_rows

    _, _, emb = passed_rows(run_dir / "staging", 0)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    nearest = index.search(emb, 2)[0][:, 1]
    thresholds = (0.95, 0.97, 0.98, 0.985, 0.99)
    return [f"## Nearest-neighbour cosine of distinct samples ({len(emb)} passed round 0 of {run_dir.name}, "
            "`pixels` embedder)", "",
            "| threshold | " + " | ".join(str(t) for t in thresholds) + " |", "|---|" + "---|" * len(thresholds),
            "| share with a neighbour above it | " + " | ".join(f"{(nearest > t).mean():.4f}" for t in thresholds) + " |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--memory-sizes", default="1000,10000")
    ap.add_argument("--quick", action="store_true", help="N=300, memory at 200 and 600")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-synth"))
    ap.add_argument("--neighbours-of", default=None, help="only: the neighbour table of an existing run dir")
    args = ap.parse_args(argv)
    if args.neighbours_of:
        print("\n".join(neighbour_section(Path(args.neighbours_of))))
        return 0
    n, sizes = (300, [200, 600]) if args.quick else (args.n, [int(s) for s in args.memory_sizes.split(",")])
    out = Path(args.out)
    lines = ["# syncxr synth: engine efficiency and memory", "", f"Run {time.strftime('%Y-%m-%d %H:%M')}, "
             f"`python -m benchmarks.bench_synth{' --quick' if args.quick else ''}`.", ""]
    lines += efficiency(n, out / "efficiency")
    print("\n".join(lines), flush=True)
    mem = memory(sizes, out)
    print("\n".join(mem))
    lines += [""] + mem
    nn = neighbour_section(out / f"mem-{max(sizes)}")
    print("\n".join(nn))
    lines += [""] + nn
    if not args.quick:
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
