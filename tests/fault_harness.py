"""Fault injection for `syncxr synth` run directories: real processes, real kill -9, real damaged
files, a real read-only disk. Shared by tests/test_integrity.py (a fixed set) and
benchmarks/bench_faults.py (a random campaign).

After a fault the same command is run again and its outcome classified:
  identical   it finished with exactly the planned dataset, byte for byte the reference content
  clear stop  it stopped with exit code 2 and one `syncxr synth: error: ...` line, no traceback,
              and the dataset that was published before (if any) is still there, unchanged
  other       anything else (a traceback, a silent difference, a hang): must never happen
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from local_head import kill_all, processes_of

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# ---------------------------------------------------------------- running the command


@dataclass
class Result:
    rc: int
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "error:" in line or "Traceback" in line]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def syncxr(args: list[str], fault: str | None = None, kill_after_s: float | None = None, timeout_s: float = 600,
           wrap: list[str] | None = None) -> Result:
    """Run `python -m engine.cli ARGS` in its own session with a private Ray temp dir; optionally
    with a fault point armed (through faulty_cli), or killed with SIGKILL after kill_after_s. Whatever
    the driver leaves (Ray's processes) is killed afterwards, by its process group and temp dir."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="sxf-", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(ray_tmp), "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    entry = ["-m", "faulty_cli", fault] if fault else ["-m", "engine.cli"]
    cmd = (wrap or []) + [PYTHON, *entry, *args]
    err = tempfile.TemporaryFile()
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        try:
            rc = proc.wait(kill_after_s if kill_after_s is not None else timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            rc = proc.wait(30)
            if kill_after_s is None:
                rc = 124  # a hang
    finally:
        _kill_group(proc.pid)
        kill_all(processes_of([str(ray_tmp)]))  # Ray processes that left the process group
        shutil.rmtree(ray_tmp, ignore_errors=True)
    err.seek(0)
    return Result(rc, err.read().decode(errors="replace"), time.time() - started)


def synth_args(cfg: Path, n: int, out: Path) -> list[str]:
    return ["synth", "--config", str(cfg), "--n", str(n), "--out", str(out)]


def readonly_wrap(out: Path) -> list[str]:
    """Run the command in a private mount namespace where `out` is a bind mount of itself, so a
    fault point can remount it read-only (`remount_ro_fault`) for this process tree only."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind "{out}" "{out}" && exec "$0" "$@"']


def remount_ro_fault(point: str, out: Path, count: int = 1) -> str:
    return f"{point}@{count}:exec:mount -o remount,ro,bind {out} {out}"


def can_bind_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount --bind /tmp /tmp"],
                           capture_output=True)
    return probe.returncode == 0


# ---------------------------------------------------------------- what a run directory holds


def content_hash(out: Path) -> tuple[int, str] | None:
    """benchmarks/content_hash over OUT's dataset; None when there is none to read."""
    sys.path.insert(0, str(ROOT)) if str(ROOT) not in sys.path else None
    from benchmarks.content_hash import content_hash as digest

    try:
        return digest(str(out))
    except Exception:
        return None


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def manifest(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def classify(result: Result, out: Path, reference: tuple[int, str], before: tuple[int, str] | None = None) -> str:
    """identical / clear stop / other (see the module doc)."""
    if "Traceback" in result.stderr:
        return "other"
    if result.rc == 0:
        m = manifest(out)
        return "identical" if content_hash(out) == reference and m and m.get("complete") else "other"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    if result.rc == 2 and lines and lines[-1].startswith("syncxr synth: error: ") and len(result.error_lines) == 1:
        if before is not None and content_hash(out) != before:
            return "other"  # a published dataset was lost or changed by the refusal
        return "clear stop"
    return "other"


# ---------------------------------------------------------------- damage

KINDS = {
    "staged part": "staging/round-*/part-*.parquet",
    "part record": "staging/round-*/.records/*.json",
    "round seal": "staging/round-*/DONE",
    "global qc": "staging/round-*/global_qc.parquet",
    "plan": "plan.parquet",
    "entity table": "entities.parquet",
    "run marker": "run.json",
    "manifest": "manifest.json",
    "data part": "data/part-*.parquet",
    "embeddings part": "embeddings/part-*.parquet",
    "rejected part": "rejected/part-*.parquet",
    "data card": "DATACARD.md",
}
HOW = ("delete", "truncate", "flip")


def damage(out: Path, kind: str, how: str, rng: random.Random) -> Path | None:
    """Damage one file of `kind` in OUT: delete it, cut it to a random length, or flip one byte.
    -> the file, or None when the run has no such file."""
    files = sorted(Path(out).glob(KINDS[kind]))
    if not files:
        return None
    path = rng.choice(files)
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        size = path.stat().st_size
        os.truncate(path, rng.randrange(0, max(size, 1)))
    else:
        data = bytearray(path.read_bytes())
        if not data:
            path.unlink()
            return path
        i = rng.randrange(len(data))
        data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    return path
