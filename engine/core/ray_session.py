"""Connect to Ray: an existing cluster (--address, RAY_ADDRESS or engine.address) or an embedded
local one that never attaches to a cluster someone else started on this machine.

Quiet by default: a run prints our own progress lines, not Ray's INFO floods, its token-auth
notice, Ray Data's progress logging or the core worker's notes about actor arguments. `verbose`
(the commands' --verbose) brings all of them back."""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
import threading

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")


def cluster_address(engine_cfg, address: str | None = None) -> str | None:
    """The Ray cluster to join, or None for an embedded one."""
    return address or engine_cfg.address or os.environ.get("RAY_ADDRESS")


# "[2026-12-01 10:42:04,990 E 2219 2219] core_worker.cc:2465: ...": the C++ core worker writes
# these straight to file descriptor 2, past Python's logging
NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] ")


def filter_native_stderr() -> None:
    """Route this process's fd 2 through a thread that drops the core worker's log lines.
    Everything else (our progress lines, Python tracebacks) passes through unchanged."""
    if getattr(filter_native_stderr, "active", False):
        return
    filter_native_stderr.active = True
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(original, line + b"\n")
            if pending and not pending.startswith(b"["):  # a progress line ending in \r: show it now
                os.write(original, pending)
                pending = b""
        if pending and not NATIVE_LOG_LINE.match(pending):
            os.write(original, pending)

    thread = threading.Thread(target=pump, name="syncxr-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pump sees end-of-file once no process holds the pipe
        thread.join(timeout=2)

    atexit.register(restore)


def quiet_ray_logs() -> None:
    """Before ray.init: keep Ray's own logging to errors, in this process and the ones it starts."""
    filter_native_stderr()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_ray_data() -> None:
    """After ray.init: Ray Data's execution banner, progress logging and stats off."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def verbose_requested() -> bool:
    """--verbose on any subcommand (the CLI sets SYNCXR_VERBOSE) asks for Ray's own logs."""
    return os.environ.get("SYNCXR_VERBOSE", "") not in ("", "0")


def init_ray(engine_cfg, address: str | None = None, quiet: bool | None = None):
    import ray

    if ray.is_initialized():
        return ray
    quiet = not verbose_requested() if quiet is None else quiet
    if quiet:
        quiet_ray_logs()
    address = cluster_address(engine_cfg, address)
    level = logging.ERROR if quiet else logging.INFO
    if address:
        ray.init(address=address, log_to_driver=not quiet, logging_level=level)
    else:
        # A short private temp dir: Ray's socket paths must stay under ~100 characters.
        temp_dir = tempfile.mkdtemp(prefix="syncxr-ray-")
        ray.init(address="local", num_cpus=engine_cfg.num_cpus, include_dashboard=False,
                 _temp_dir=temp_dir, log_to_driver=not quiet, logging_level=level)
        atexit.register(_shutdown_and_clean, ray, temp_dir)
    if quiet:
        quiet_ray_data()
    return ray


def _shutdown_and_clean(ray, temp_dir: str) -> None:
    """The embedded Ray's session files (logs, sockets) go when the driver exits normally."""
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
