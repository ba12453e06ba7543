"""Near-duplicate removal at scale: exact vs IVF vs HNSW, 20k to 200k embeddings of dim 768.

Data: unit vectors with cluster structure (centres with spread, like image embeddings: same-
cluster cosines ~0.5-0.8, far below the threshold) and planted near-duplicate groups (2% of the
rows, groups of 2-5, cosine ~0.98-0.995 to the group's base). The truth is exact brute force
(faiss flat search) at the same size; each method runs the product code path (build_index,
the threshold search in chunks with growing k, the sample_id-order walk) in its own process, so
peak RSS (ru_maxrss) is per method. Figures: build / search / walk time, peak RSS and what the
index added over the loaded data, recall and precision of the pairs above the threshold, agreement
of the kept set with exact, speed-up over exact, and growth from the smallest to the largest n.

    python -m benchmarks.bench_dedup            # 20k, 50k, 200k; exact up to 50k
    python -m benchmarks.bench_dedup --full     # also exact at 200k (~7+ min on 2 cores)
    python -m benchmarks.bench_dedup --quick    # 20k only
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import write_results

RESULTS = Path(__file__).parent / "results" / "dedup.md"
DIM = 768
THRESHOLD = 0.97


def make_data(n: int, dim: int = DIM, seed: int = 0, dup_fraction: float = 0.02) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n_centres = max(10, n // 100)
    centres = rng.standard_normal((n_centres, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_centres, n)]
    # noise of norm ~0.6 around a unit centre: two members of a cluster have cosine ~0.74
    x += rng.standard_normal((n, dim)).astype(np.float32) * np.float32(0.6 / math.sqrt(dim))
    planted = 0
    pos = 0
    budget = int(n * dup_fraction)
    order = rng.permutation(n)  # group members scattered over the sample_id order
    while planted < budget:
        size = int(rng.integers(2, 6))
        members = order[pos:pos + size]
        pos += size
        base = x[members[0]] / np.linalg.norm(x[members[0]])
        for m in members[1:]:
            x[m] = base + rng.standard_normal(dim).astype(np.float32) * np.float32(rng.uniform(0.1, 0.2) / math.sqrt(dim))
        planted += size
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), planted


def rss_mb() -> float:
    """Peak resident set of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def worker(data_path: str, method: str, out_dir: str) -> None:
    from engine.core.config import IndexConfig
    from engine.qc.faiss_index import build_index
    from engine.qc.filters import candidate_pairs, greedy_keep

    x = np.load(data_path)
    rss_data = current_rss_mb()
    cfg = IndexConfig(exact_max=1, kind="ivf" if method == "ivf" else "hnsw", use_gpu="auto")
    kind = "flat" if method == "exact" else method
    t0 = time.perf_counter()
    index = build_index(x, cfg, kind=kind)
    t1 = time.perf_counter()
    i, j, s = candidate_pairs(x, THRESHOLD, cfg, index=index)
    t2 = time.perf_counter()
    keep, _, _ = greedy_keep(len(x), i, j, s)
    t3 = time.perf_counter()
    np.savez(Path(out_dir) / f"{method}.npz", i=i, j=j, keep=keep)
    info = {"build_s": t1 - t0, "search_s": t2 - t1, "walk_s": t3 - t2, "rss_data_mb": rss_data,
            "rss_peak_mb": rss_mb(), "pairs": int(len(i)), "gpu": bool(index.on_gpu),
            "nlist": int(getattr(index.index, "nlist", 0) or 0)}
    (Path(out_dir) / f"{method}.json").write_text(json.dumps(info))


def run_method(data_path: Path, method: str, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_dedup", "--worker", str(data_path), method, str(out_dir)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads((out_dir / f"{method}.json").read_text())


def pair_keys(npz, n: int) -> np.ndarray:
    return npz["i"].astype(np.int64) * n + npz["j"].astype(np.int64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true", help="run the exact baseline at every size, 200k included")
    ap.add_argument("--sizes", default=None, help="comma-separated sizes")
    ap.add_argument("--exact-max", type=int, default=50_000, help="largest n for the exact baseline (without --full)")
    ap.add_argument("--worker", nargs=3, metavar=("DATA", "METHOD", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--make-data", nargs=2, metavar=("N", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_data:
        np.save(args.make_data[1], make_data(int(args.make_data[0]))[0])
        return 0
    if args.worker:
        worker(*args.worker)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([20_000] if args.quick else [20_000, 50_000, 200_000])
    import faiss

    lines = ["# near-duplicate removal: exact vs IVF vs HNSW", "",
             f"dim {DIM}, threshold {THRESHOLD}, 2% of rows in planted groups of 2-5; faiss {faiss.__version__}, "
             f"{faiss.omp_get_max_threads()} threads, GPUs seen: {getattr(faiss, 'get_num_gpus', lambda: 0)()}. "
             "IVF: IVFFlat, nlist = 2*sqrt(n), nprobe 16; HNSW: HNSWFlat M 32, efConstruction 40, built on one thread (reproducible graph), efSearch 64 (raised to k). "
             "Searches are knn in chunks of 1024 queries, k from 16 growing x4 while the k-th neighbour still passes.", "",
             "| n | method | build s | search s | walk s | total s | speed-up vs exact | peak RSS MB | peak over loaded data MB | pairs found | pair recall | pair precision | kept-set agreement | kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    totals: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        for n in sizes:
            # generated in a child process: ru_maxrss survives fork/exec, so a parent that once held
            # the data would leak its peak into every method's figure
            data_path = Path(tmp) / f"x{n}.npy"
            subprocess.run([sys.executable, "-m", "benchmarks.bench_dedup", "--make-data", str(n), str(data_path)],
                           check=True, cwd=Path(__file__).resolve().parent.parent)
            out = Path(tmp) / f"n{n}"
            out.mkdir()
            methods = (["exact"] if (args.full or n <= args.exact_max) else []) + ["ivf", "hnsw"]
            res = {}
            for m in methods:
                print(f"n={n:,} {m} ...", flush=True)
                res[m] = run_method(data_path, m, out)
            truth = np.load(out / "exact.npz") if "exact" in res else None
            for m in methods:
                r = res[m]
                total = r["build_s"] + r["search_s"] + r["walk_s"]
                totals.setdefault(m, {})[n] = total
                got = np.load(out / f"{m}.npz")
                if truth is not None:
                    t_keys, g_keys = set(pair_keys(truth, n).tolist()), set(pair_keys(got, n).tolist())
                    recall = len(t_keys & g_keys) / max(len(t_keys), 1)
                    precision = len(t_keys & g_keys) / max(len(g_keys), 1)
                    agree = float((truth["keep"] == got["keep"]).mean())
                    speed = (res["exact"]["build_s"] + res["exact"]["search_s"] + res["exact"]["walk_s"]) / total
                    qual = f"{recall:.4f} | {precision:.4f} | {agree:.5f} | {speed:.1f}x"
                else:
                    qual = "n/a (no exact run) | n/a | n/a | n/a"
                recall_s, prec_s, agree_s, speed_s = qual.split(" | ")
                lines.append(f"| {n:,} | {m}{' (GPU)' if r['gpu'] else ''} | {r['build_s']:.1f} | {r['search_s']:.1f} | "
                             f"{r['walk_s']:.2f} | {total:.1f} | {speed_s} | {r['rss_peak_mb']:.0f} | "
                             f"{r['rss_peak_mb'] - r['rss_data_mb']:.0f} | {r['pairs']:,} | {recall_s} | {prec_s} | "
                             f"{agree_s} | {int(got['keep'].sum()):,} |")
            print(lines[-1], flush=True)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        lines += ["", f"Growth from {lo:,} to {hi:,} ({hi / lo:.0f}x the vectors):", "",
                  "| method | time at smallest s | time at largest s | time ratio | exponent (time ~ n^a) |", "|---|---|---|---|---|"]
        for m, t in totals.items():
            if lo in t and hi in t:
                ratio = t[hi] / t[lo]
                lines.append(f"| {m} | {t[lo]:.1f} | {t[hi]:.1f} | {ratio:.1f}x | {math.log(ratio) / math.log(hi / lo):.2f} |")
    text = "\n".join(lines) + "\n"
    write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
