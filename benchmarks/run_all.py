"""`make bench`: every benchmark in turn (each writes its table to benchmarks/results/).
`--quick` passes --quick to each (minutes, nothing written where the benchmark skips writing)."""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

BENCHMARKS = ("bench_plan", "bench_extraction", "bench_reports", "bench_images", "bench_judge", "bench_dedup",
              "bench_synth", "bench_train", "bench_recipe", "bench_faults")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else BENCHMARKS
    failed = []
    for name in names:
        print(f"\n===== {name}", flush=True)
        start = time.time()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            quick = args.quick and "--quick" in inspect.getsource(module)  # not every benchmark has a quick form
            code = module.main(["--quick"] if quick else [])
        except Exception as exc:  # noqa: BLE001 - report and go on to the next benchmark
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        if code:
            failed.append(name)
        print(f"===== {name}: {time.time() - start:.0f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
