"""Near-duplicate removal at scale: cluster-then-compare (in-process and on Ray Data) against exact
flat search, on data shaped like learned image embeddings, 20k to 2M x 768.

Data: every vector in a narrow cone around one axis, with a decaying spectrum (variance ~ k^-1
over 767 directions, like a ViT's CLS features) and cluster structure: pairwise cosine ~0.72-0.86
(5th-95th percentile). 2% of the rows are planted duplicate groups of 2-5 (cosine 0.985-0.998 to
the group's first member, noise half along the data's own spectrum, half isotropic), 1% are
decoys at cosine 0.95-0.966 to a partner: just below the threshold 0.97, they must all survive.
Data is generated in 100k-row chunks into a memory-mapped .npy under /tmp (and parquet parts
for the Ray path), deleted at the end.

Methods, each in its own process so that peak RSS (ru_maxrss) is per method:
  exact        faiss flat threshold search of every vector (the reference; the product's path
               up to qc.index.exact_max)
  cluster      engine/qc/cluster_dedup.cluster_pairs in-process (the product's path above it)
  distributed  engine/qc/dedup_distributed.dedup_dataset over read_parquet on a two-node local
               Ray cluster (ray start --head + ray start --address on 127.0.0.1, 1 CPU each);
               peak RSS is the driver's
  cli          `syncxr dedup --method cluster` on the parquet parts, as a user runs it; peak
               RSS is the command's
  exact-sample (when exact is too slow) flat search of a deterministic sample of query rows
               against all rows: recall of the pairs that touch a sampled row
  ivf, hnsw    the older approximate-index search (qc.index.dedup_method: index), on request

    python -m benchmarks.bench_dedup                       # 20k and 200k: exact, cluster, distributed
    python -m benchmarks.bench_dedup --sizes 2000000 --methods cluster,exact-sample,distributed --append
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import write_results

RESULTS = Path(__file__).parent / "results" / "dedup.md"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from local_head import agent_port_args, free_ports, kill_all, processes_of  # noqa: E402
DIM = 768
THRESHOLD = 0.97
CHUNK = 100_000


# ---------------------------------------------------------------- data

def _spectral(rng, k: int, sig: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return (rng.standard_normal((k, len(sig))).astype(np.float32) * sig) @ basis


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


SHAPES = ("cone", "clustered", "powerlaw", "engine")
ENGINE_ENV = "BENCH_ENGINE_EMBEDDINGS"  # the engine shape's source: a `syncxr embed` Parquet file


def engine_embeddings(path: str) -> np.ndarray:
    """The image embeddings of a `syncxr embed` output, unit, zero-padded to DIM (cosines unchanged)."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["image_embedding"]).column("image_embedding").combine_chunks()
    e = col.flatten().to_numpy().astype(np.float32).reshape(len(col), -1)
    if e.shape[1] > DIM:
        raise SystemExit(f"{path}: embeddings of {e.shape[1]} dims; the benchmark holds at most {DIM}")
    return np.pad(_unit(e), ((0, 0), (0, DIM - e.shape[1])))


def make_data(n: int, out: np.ndarray, seed: int = 0, shape: str = "cone"):
    """Fill out (n, DIM) chunk by chunk; returns (group id per row or -1, decoy partner or -1).
    cone: the narrow cone above. clustered: 50 centres around a common direction (cosine ~0.7
    between them), each row its centre plus isotropic noise (cosine ~0.85 inside a centre).
    powerlaw: no axis, no centres, variance ~ k^-1 over all 768 directions. engine: the image
    embeddings of engine images by a trained model (`syncxr embed`, file in $BENCH_ENGINE_EMBEDDINGS),
    tiled: each row one of them moved to cosine 0.90-0.95 from it, isotropically inside the
    embeddings' own dimensions (two tiles of one image sit at ~0.81-0.90)."""
    rng = np.random.default_rng(seed)
    engine = engine_embeddings(os.environ[ENGINE_ENV]) if shape == "engine" else None
    inside = DIM if engine is None else int(np.flatnonzero(np.abs(engine).sum(axis=0) > 0).max()) + 1
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].T.astype(np.float32)
    axis, basis = basis[0], basis[1:]
    sig = (np.arange(1, DIM) ** -0.5).astype(np.float32)
    sig /= np.sqrt((sig ** 2).sum())
    n_centres = 50 if shape == "clustered" else max(10, n // 200)
    centres = _spectral(rng, n_centres, sig, basis)
    if shape == "clustered":
        centres = _unit(axis + 0.47 * _unit(rng.standard_normal((n_centres, DIM)).astype(np.float32)))
    group = np.full(n, -1, np.int64)
    decoy = np.full(n, -1, np.int64)
    gid = 0
    for c0 in range(0, n, CHUNK):
        r = np.random.default_rng([seed, c0])
        k = min(CHUNK, n - c0)
        if shape == "clustered":
            v = _unit(centres[r.integers(0, n_centres, k)]
                      + 0.42 * r.standard_normal((k, DIM)).astype(np.float32) / math.sqrt(DIM))
        elif shape == "engine":
            v = np.stack([_tilt(r, engine[i], r.uniform(0.90, 0.95), inside) for i in (c0 + np.arange(k)) % len(engine)])
        elif shape == "powerlaw":
            full_sig = (np.arange(1, DIM + 1) ** -0.5).astype(np.float32)
            v = _unit(_spectral(r, k, full_sig / np.sqrt((full_sig ** 2).sum()), np.vstack([axis, basis])))
        else:
            v = _unit(axis + math.sqrt(0.13) * centres[r.integers(0, n_centres, k)]
                      + math.sqrt(0.12) * _spectral(r, k, sig, basis))

        def near(base, cos):
            if engine is not None:
                return _tilt(r, base, cos, inside)
            u = _unit(0.7 * _unit(_spectral(r, 1, sig, basis)[0]) + 0.7 * _unit(r.standard_normal(DIM).astype(np.float32)))
            u = _unit(u - (u @ base) * base)
            return _unit(base + math.sqrt(1 / cos ** 2 - 1) * u)

        perm = r.permutation(k)  # group members scattered over the sample_id order
        pos = 0
        while pos < int(0.02 * k):
            size = int(r.integers(2, 6))
            members = perm[pos:pos + size]
            pos += size
            for m in members[1:]:
                v[m] = near(v[members[0]], r.uniform(0.985, 0.998))
            group[c0 + members] = gid
            gid += 1
        end = pos + 2 * int(0.005 * k)
        while pos < end:
            b, d = perm[pos], perm[pos + 1]
            pos += 2
            v[d] = near(v[b], r.uniform(0.95, 0.966))
            decoy[c0 + d] = c0 + b
        out[c0:c0 + k] = v
    return group, decoy


def _tilt(r, base: np.ndarray, cos: float, inside: int) -> np.ndarray:
    """base moved to cosine `cos` along a random direction of its first `inside` dimensions."""
    u = np.zeros(DIM, np.float32)
    u[:inside] = r.standard_normal(inside)
    u = _unit(u - (u @ base) * base)
    return _unit(base + math.sqrt(1 / cos ** 2 - 1) * u)


def sample_ids(n: int) -> list[str]:
    return [f"{i:08d}" for i in range(n)]  # row order is sample_id order


def write_parquet_parts(x: np.ndarray, directory: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for c0 in range(0, len(x), CHUNK):
        part = np.ascontiguousarray(x[c0:c0 + CHUNK])
        col = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), DIM)
        pq.write_table(pa.table({"sample_id": sample_ids(len(x))[c0:c0 + CHUNK], "embedding": col}),
                       directory / f"part-{c0 // CHUNK:05d}.parquet")


def data_main(n: int, path: str, parquet: str, shape: str) -> None:
    from engine.qc.filters import unit_vectors

    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    group, decoy = make_data(n, x, shape=shape)
    np.savez(path + ".labels.npz", group=group, decoy=decoy)
    if parquet:
        write_parquet_parts(x, Path(parquet))
    # the in-process methods get the vectors as the product normalises them (the distributed path
    # normalises the parquet rows itself): one last-bit difference changes the k-means cells
    for c0 in range(0, n, CHUNK):
        x[c0:c0 + CHUNK] = unit_vectors(x[c0:c0 + CHUNK], "benchmark data")
    x.flush()


# ---------------------------------------------------------------- methods (child processes)

def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(data_path: str, method: str, out_dir: str, extra: str) -> None:
    from engine.core.config import IndexConfig
    from engine.qc.filters import greedy_keep

    x = np.load(data_path, mmap_mode="r")
    n = len(x)
    cfg = IndexConfig(exact_max=1, use_gpu="auto", dedup_method="index" if method in ("ivf", "hnsw") else "cluster",
                      kind="hnsw" if method == "hnsw" else "ivf")
    info: dict = {}
    t0 = time.perf_counter()
    if method == "cluster":
        from engine.qc.cluster_dedup import cluster_pairs

        i, j, s = cluster_pairs(x, sample_ids(n), THRESHOLD, cfg, stats=info)
    elif method == "distributed":
        i, j, s = distributed_pairs(extra, cfg, info)
    elif method == "cli":
        i, j, s = cli_pairs(extra, info)
    elif method == "exact-sample":
        i, j, s = sampled_exact(x, int(extra), info)
    else:
        from engine.qc.faiss_index import build_index
        from engine.qc.filters import candidate_pairs

        arr = np.ascontiguousarray(x)
        index = build_index(arr, cfg, kind="flat" if method == "exact" else method)
        i, j, s = candidate_pairs(arr, THRESHOLD, cfg, index=index)
    t1 = time.perf_counter()
    keep = greedy_keep(n, i, j, s)[0] if method != "exact-sample" else np.ones(n, bool)
    ru = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: fairer than wall on a shared machine
    info.update(total_s=time.perf_counter() - t0, search_s=t1 - t0, rss_peak_mb=info.get("cli_rss_peak_mb", rss_mb()),
                cpu_s=ru.ru_utime + ru.ru_stime)
    info.setdefault("pairs", int(len(i)))
    np.savez(Path(out_dir) / f"{method}.npz", i=i, j=j, keep=keep)
    (Path(out_dir) / f"{method}.json").write_text(json.dumps(info))


def sampled_exact(x: np.ndarray, queries: int, info: dict, budget_s: float = 180.0):
    """Exact pairs (q, j) above the threshold for every step-th row q, against all rows. Query
    rows go in blocks of 250 in row order until `budget_s` (BENCH_SAMPLE_SECONDS) is spent, so a
    loaded machine measures fewer rows, never different ones; the rows done are saved."""
    budget_s = float(os.environ.get("BENCH_SAMPLE_SECONDS", budget_s))
    step = max(1, len(x) // queries)
    planned = np.arange(0, len(x), step)[:queries]
    found_q, found_j, found_s = [], [], []
    start = time.perf_counter()
    done = 0
    for b0 in range(0, len(planned), 250):
        rows = planned[b0:b0 + 250]
        q = np.ascontiguousarray(x[rows])
        for c0 in range(0, len(x), 50_000):
            g = q @ np.ascontiguousarray(x[c0:c0 + 50_000]).T
            a, b = np.nonzero(g > THRESHOLD)
            found_q.append(rows[a]), found_j.append(b + c0), found_s.append(g[a, b])
        done = b0 + len(rows)
        if time.perf_counter() - start > budget_s:
            break
    qq, jj, ss = np.concatenate(found_q), np.concatenate(found_j), np.concatenate(found_s)
    mask = qq != jj
    info.update(queries=int(done), step=int(step))
    np.save(Path(os.environ["BENCH_OUT"]) / "sample_rows.npy", planned[:done])
    return np.minimum(qq, jj)[mask], np.maximum(qq, jj)[mask], ss[mask]


def distributed_pairs(spec: str, cfg, info: dict):
    """Run dedup_dataset against the cluster at spec = 'ADDRESS|PARQUET_DIR'; pairs as positions."""
    import ray

    from engine.core.ray_session import quiet_ray_data, quiet_ray_logs
    from engine.qc.dedup_distributed import dedup_dataset

    address, parquet = spec.split("|")
    quiet_ray_logs()
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    quiet_ray_data()
    ds = ray.data.read_parquet(parquet)
    t0 = time.perf_counter()
    res = dedup_dataset(ds, THRESHOLD, cfg)
    out = Path(os.environ["BENCH_OUT"]) / "distributed_table"
    res.table.write_parquet(str(out))  # the workers write the table; the driver holds the pairs only
    info.update(res.stats, cells=res.cells, pairs=res.pairs, nodes=len([nd for nd in ray.nodes() if nd["Alive"]]),
                dedup_s=time.perf_counter() - t0)
    ray.shutdown()
    # the kept set the workers wrote, back as positions for the comparison (ids are row numbers)
    dups = res.duplicates
    j = np.array([int(k) for k in dups], np.int64)
    i = np.array([int(v[0]) for v in dups.values()], np.int64)
    s = np.array([v[1] for v in dups.values()], np.float32)
    return i, j, s  # (kept match, duplicate): greedy_keep over these reproduces the walk's result


def cli_pairs(parquet: str, info: dict):
    """`syncxr dedup` on the parquet parts, as a user runs it (in-process path, --method cluster);
    its peak RSS is the child's. Pairs as (kept match, duplicate) positions, as distributed_pairs."""
    import pyarrow.parquet as pq

    out = Path(os.environ["BENCH_OUT"]) / "cli"
    subprocess.run([sys.executable, "-m", "engine.cli", "dedup", "--embeddings", parquet, "--threshold", str(THRESHOLD),
                    "--method", "cluster", "--out", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    info["cli_rss_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    t = pq.read_table(out / "dedup", columns=["sample_id", "kept", "duplicate_of", "similarity"]).to_pydict()
    dup = [k for k, kept in enumerate(t["kept"]) if not kept]
    i = np.array([int(t["duplicate_of"][k]) for k in dup], np.int64)
    j = np.array([int(t["sample_id"][k]) for k in dup], np.int64)
    s = np.array([t["similarity"][k] for k in dup], np.float32)
    info["pairs"] = json.loads((out / "summary.json").read_text()).get("pairs", len(dup))
    return i, j, s


def run_method(data_path: Path, method: str, out_dir: Path, extra: str = "") -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_dedup", "--worker", str(data_path), method, str(out_dir), extra]
    env = {**os.environ, "BENCH_OUT": str(out_dir)}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return json.loads((out_dir / f"{method}.json").read_text())


# ---------------------------------------------------------------- a two-node local Ray cluster

class LocalCluster:
    """ray start --head + ray start --address on loopback, own ports and temp dir, 1 CPU each;
    stopped by the PIDs of the processes that name our temp dir or port (never `ray stop`)."""

    def __init__(self, object_store_mb: int = 3000):
        self.temp = tempfile.mkdtemp(prefix="sxd-", dir="/tmp")
        self.port, self.client_port = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.store = object_store_mb * 2 ** 20
        bindir = Path(sys.executable).parent
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("RAY_ADDRESS", None)
        self.ray = str(bindir / "ray")

    def __enter__(self):
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", f"--object-store-memory={self.store}",
                  "--disable-usage-stats"]
        head = [self.ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false",
                f"--ray-client-server-port={self.client_port}", f"--temp-dir={self.temp}", *common, *agent_port_args()]
        node = [self.ray, "start", f"--address={self.address}", *common, *agent_port_args()]
        for cmd in (head, node):
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=240)
            if done.returncode != 0:
                self.__exit__()
                raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr[-1500:]}")
        os.environ["RAY_AUTH_MODE"] = "token"
        return self

    def __exit__(self, *exc):
        kill_all(processes_of([self.temp, f":{self.port}"]))
        shutil.rmtree(self.temp, ignore_errors=True)


# ---------------------------------------------------------------- comparison and report

def pair_set(npz, n: int) -> set:
    return set((npz["i"].astype(np.int64) * n + npz["j"].astype(np.int64)).tolist())


def compare(n: int, out: Path, methods: list[str], labels, res: dict, shape: str) -> list[str]:
    group, decoy = labels["group"], labels["decoy"]
    planted = group >= 0
    decoys = decoy >= 0
    rows = []
    truth = np.load(out / "exact.npz") if "exact" in res else None
    t_pairs = pair_set(truth, n) if truth is not None else None
    if "exact-sample" in res:
        sample = np.load(out / "exact-sample.npz")
        sample_rows = np.load(out / "sample_rows.npy")
    for m in methods:
        if m == "exact-sample":
            continue
        r = res[m]
        got = np.load(out / f"{m}.npz")
        keep = got["keep"]
        recall = precision = agree = same_planted = speed = "n/a"
        if truth is not None and m not in ("distributed", "cli"):
            g_pairs = pair_set(got, n)
            recall = f"{len(t_pairs & g_pairs) / max(len(t_pairs), 1):.5f}"
            precision = f"{len(t_pairs & g_pairs) / max(len(g_pairs), 1):.5f}"
        elif "exact-sample" in res and m not in ("distributed", "cli"):
            # pairs touching a sampled row: those exact finds vs those this method found
            is_q = np.zeros(n, bool)
            is_q[sample_rows] = True
            t_s = pair_set(sample, n)
            g = got
            touch = is_q[g["i"]] | is_q[g["j"]]
            g_s = set((g["i"][touch].astype(np.int64) * n + g["j"][touch]).tolist())
            recall = f"{len(t_s & g_s) / max(len(t_s), 1):.5f} ({len(t_s):,} pairs of {len(sample_rows):,} sampled rows)"
            precision = f"{len(t_s & g_s) / max(len(g_s), 1):.5f}"
        if truth is not None:
            agree = f"{(truth['keep'] == keep).mean():.6f}"
            same_planted = "yes" if (truth["keep"][planted] == keep[planted]).all() else \
                f"no ({int((truth['keep'][planted] != keep[planted]).sum())} rows differ)"
            speed = f"{res['exact']['total_s'] / r['total_s']:.1f}x"
        elif "cluster" in res and m == "distributed":
            agree = f"{(np.load(out / 'cluster.npz')['keep'] == keep).mean():.6f} (vs cluster)"
        decoys_removed = int((~keep[decoys]).sum())
        extra = ""
        if m in ("cluster", "distributed"):
            extra = f"cells {r.get('cells')}"
            if m == "cluster":
                extra += (f", fit {r['fit_s']:.1f} s, assign {r['assign_s']:.1f} s, pairs {r['pairs_s']:.1f} s, "
                          f"{r['spilled_per_vector']:.2f} spilled cells per vector, "
                          f"largest cell {r['largest_cell']:,} ({r['largest_home']:,} at home), "
                          f"{r['compared'] / 1e6:.0f}M pairs compared, {r.get('full_space_cells', 0):,} cells "
                          f"marked for the full space, {r.get('full_space_blocks', 0):,} of "
                          f"{r.get('blocks', 0):,} other blocks found unselective, projection "
                          + ("stored in float16" if r.get("projection_stored", True) else "computed per cell")
                          + (", exact fallback" if r.get("exact_fallback") else ""))
            else:
                extra += (f", {r.get('nodes')} nodes, {r.get('full_space_cells', 0):,} cells in the full space "
                          f"({r.get('direct_pairs', 0):,} pairs found there; {r.get('full_space_buckets', 0)} shuffle "
                          f"groups, {r.get('full_space_copies', 0):.2f} rows shipped per row), "
                          f"{r.get('candidates', 0):,} candidate pairs, fit "
                          f"{r.get('fit_s', 0):.1f} s, candidates {r.get('candidates_s', 0):.1f} s, "
                          f"verify {r.get('verify_s', 0):.1f} s")
        rows.append(f"| {shape} | {n:,} | {m} | {r['total_s']:.1f} | {speed} | {r['rss_peak_mb']:.0f} | {r['pairs']:,} | {recall} | "
                    f"{precision} | {agree} | {same_planted} | {decoys_removed} / {int(decoys.sum()):,} | "
                    f"{int(keep.sum()):,} | {extra} |")
    if "exact-sample" in res:
        r = res["exact-sample"]
        rows.append(f"| {shape} | {n:,} | exact-sample | {r['total_s']:.1f} | (flat search of {r['queries']:,} rows, every "
                    f"{r['step']}th, against all {n:,}; all {n:,} rows would take ~{r['total_s'] * n / r['queries'] / 60:.0f} min) "
                    f"| {r['rss_peak_mb']:.0f} | {r['pairs']:,} | | | | | | | |")
    return rows


HEADER = ["| shape | n | method | total s | speed-up vs exact | peak RSS MB | pairs | pair recall vs exact | pair precision | "
          "kept-set agreement | planted groups kept as exact | decoys removed | kept | notes |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000", help="comma-separated sizes")
    ap.add_argument("--methods", default="exact,cluster,distributed",
                    help="comma-separated: exact, cluster, distributed, exact-sample, ivf, hnsw")
    ap.add_argument("--sample-queries", type=int, default=10_000, help="query rows of exact-sample")
    ap.add_argument("--shapes", default="cone", help=f"comma-separated data shapes: {', '.join(SHAPES)}")
    ap.add_argument("--append", action="store_true", help="add the rows to the existing results file")
    ap.add_argument("--engine-embeddings", help="the engine shape's source: a `syncxr embed` Parquet file")
    ap.add_argument("--worker", nargs=4, metavar=("DATA", "METHOD", "OUT", "EXTRA"), help=argparse.SUPPRESS)
    ap.add_argument("--make-data", nargs=4, metavar=("N", "PATH", "PARQUET", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_data:
        data_main(int(args.make_data[0]), args.make_data[1], args.make_data[2], args.make_data[3])
        return 0
    if args.worker:
        worker(*args.worker)
        return 0
    import faiss

    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    shapes = args.shapes.split(",")
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        ap.error(f"--shapes: unknown {', '.join(unknown)} (choose from {', '.join(SHAPES)})")
    if "engine" in shapes:
        if not args.engine_embeddings:
            ap.error("--shapes engine needs --engine-embeddings FILE (a `syncxr embed` output)")
        os.environ[ENGINE_ENV] = str(Path(args.engine_embeddings).resolve())  # the data child reads it
    lines = []
    for shape, n in ((shape, n) for shape in shapes for n in sizes):
        with tempfile.TemporaryDirectory(prefix="bench-dedup-", dir="/tmp") as tmp:
            data_path = Path(tmp) / f"x{n}.npy"
            parquet = Path(tmp) / "parquet" if {"distributed", "cli"} & set(methods) else ""
            t0 = time.perf_counter()
            # generated in a child: ru_maxrss survives fork/exec, so a parent that once held the
            # data would leak its peak into every method's figure
            subprocess.run([sys.executable, "-m", "benchmarks.bench_dedup", "--make-data", str(n), str(data_path),
                            str(parquet), shape], check=True, cwd=ROOT)
            print(f"{shape} n={n:,}: data in {time.perf_counter() - t0:.0f} s", flush=True)
            labels = np.load(str(data_path) + ".labels.npz")
            out = Path(tmp) / "out"
            out.mkdir()
            res = {}
            for m in methods:
                print(f"n={n:,} {m} ...", flush=True)
                if m == "distributed":
                    with LocalCluster() as cluster:
                        res[m] = run_method(data_path, m, out, f"{cluster.address}|{parquet}")
                elif m == "cli":
                    res[m] = run_method(data_path, m, out, str(parquet))
                else:
                    res[m] = run_method(data_path, m, out, str(args.sample_queries))
                print(f"  {res[m]['total_s']:.1f} s, peak RSS {res[m]['rss_peak_mb']:.0f} MB", flush=True)
            lines += compare(n, out, methods, labels, res, shape)
            print("\n".join(lines[-len(methods):]), flush=True)
    from engine.core.config import IndexConfig

    d = IndexConfig()
    head = ["# near-duplicate removal: cluster-then-compare vs exact", "",
            f"dim {DIM}, threshold {THRESHOLD}. Shapes: cone, a narrow cone (pairwise cosine ~0.72-0.86); "
            "clustered, 50 centres (cosine ~0.7 between rows of two centres) with isotropic noise (~0.85 inside "
            "one); powerlaw, variance ~ k^-1 over all directions, no axis; engine, the image embeddings of "
            "engine images by a model trained with `syncxr train` (`syncxr embed`; 512-d, zero-padded), each row "
            "one of them moved to cosine 0.90-0.95 from it. Each: 2% of rows in "
            "planted groups of 2-5 (cosine 0.985-0.998 to the group's first row), 1% decoys at 0.95-0.966 to a "
            f"partner. faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPUs seen: "
            f"{getattr(faiss, 'get_num_gpus', lambda: 0)()}; a 2-core machine shared with other jobs (load "
            f"average {os.getloadavg()[0]:.1f} at the end of this run): times are noisy, ratios within one run are what counts. "
            f"cluster: qc.index defaults (cells {d.dedup_cells_per_sqrt}*sqrt(n), k-means on {d.dedup_train_per_cell} "
            f"rows per cell, {d.dedup_kmeans_iters} iterations, "
            f"{'the full space' if not d.dedup_project_dim else f'in a {d.dedup_project_dim}-d principal projection'}; "
            f"a home cell per vector plus the cells whose bisector with it is within {d.dedup_spill_radius} x the "
            f"threshold's chord distance, at most {d.dedup_cells_per_vector} in all; homes compared with homes and "
            "spilled rows, candidates filtered in the projection and re-scored in the full space; cells whose "
            "training-sample pairs pass that filter more than 2% of the time compared in the full space). "
            "cli: `syncxr dedup --method cluster` on the same rows as parquet, its own peak RSS. distributed: "
            "the same steps on Ray Data, two local nodes "
            "of 1 CPU each; its peak RSS is the driver's. Exact at 2M would take hours: recall there is "
            "measured on the pairs touching a deterministic sample of rows (exact-sample).", ""]
    if args.append and RESULTS.exists():
        text = RESULTS.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    else:
        text = "\n".join(head + HEADER + lines) + "\n"
    write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
