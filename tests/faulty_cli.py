"""`python -m faulty_cli <point>[@<k>]:kill|exec:<cmd> <syncxr args...>`: the syncxr CLI with a fault
armed. The k-th pass (default 1) through the named fault point kills this process with SIGKILL, or
runs a shell command there (the harness remounts the output disk read-only mid-run). Test-only:
production code has the fault points, never the faults."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter


def fault_handler(spec: str):
    where, _, action = spec.partition(":")
    point, _, count = where.partition("@")
    hits: Counter = Counter()

    def handle(name: str) -> None:
        if name != point:
            return
        hits[name] += 1
        if hits[name] != int(count or 1):
            return
        if action.startswith("exec:"):
            subprocess.run(action[len("exec:"):], shell=True, check=False)
            return
        os.kill(os.getpid(), signal.SIGKILL)

    return handle


def main(argv: list[str]) -> int:
    from engine.cli import main as syncxr_main
    from engine.synth.integrity import set_fault_handler

    set_fault_handler(fault_handler(argv[0]))
    return syncxr_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
