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
import signal
import sys
import tempfile
import threading

from engine.core.errors import UserError

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
CONNECT_TIMEOUT_S = 10.0


class ClusterUnreachable(UserError):
    """No Ray cluster answers at the address given: one line naming it, before anything is written."""


def cluster_address(engine_cfg, address: str | None = None) -> str | None:
    """The Ray cluster to join, or None for an embedded one."""
    return address or engine_cfg.address or os.environ.get("RAY_ADDRESS")


# "[2026-12-01 10:42:04,990 E 2219 2219] core_worker.cc:2465: ...": the C++ core worker writes
# these straight to file descriptor 2, past Python's logging
# "(raylet) WARNING: 8 PYTHON worker processes have been started ...": the raylet's notes,
# forwarded to the driver even when worker logs are not
NATIVE_LOG_LINE = re.compile(rb"^(\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] |(\x1b\[\d+m)?\((raylet|gcs_server)\))")


def filter_native_stderr() -> None:
    """Route this process's stdout and stderr through threads that drop Ray's native log lines.
    Everything else (our progress lines, Python tracebacks) passes through unchanged."""
    if getattr(filter_native_stderr, "active", False):
        return
    filter_native_stderr.active = True
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        _filter_fd(fd, stream)


def _filter_fd(fd: int, stream) -> None:
    stream.flush()
    original = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
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
            if pending and not pending.startswith((b"[", b"\x1b", b"(")):  # a progress line ending in \r
                os.write(original, pending)
                pending = b""
        if pending and not NATIVE_LOG_LINE.match(pending):
            os.write(original, pending)

    thread = threading.Thread(target=pump, name=f"syncxr-fd{fd}-filter", daemon=True)
    thread.start()

    def restore() -> None:
        stream.flush()
        os.dup2(original, fd)  # the pump sees end-of-file once no process holds the pipe
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


def _address_in_use_file() -> str | None:
    try:
        with open(os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")) as f:
            return f.read().strip() or None
    except OSError:
        try:
            with open("/tmp/ray/ray_current_cluster") as f:
                return f.read().strip() or None
        except OSError:
            return None


def probe_address(address: str, timeout_s: float | None = None) -> None:
    """Check that something accepts connections at a Ray address within a bounded time, so a
    wrong --address is one line at once instead of minutes of retries (ray.init's own loop)."""
    import socket

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    shown = address
    if address == "local":
        return
    if address == "auto":
        found = _address_in_use_file()
        if found is None:
            raise ClusterUnreachable("--address auto: no Ray cluster is running on this machine "
                                     "(no /tmp/ray/ray_current_cluster); start one with `ray start --head`")
        address = found
    hostport = address
    for scheme in ("ray://", "http://", "https://"):
        if hostport.startswith(scheme):
            hostport = hostport[len(scheme):]
            break
    else:
        if "://" in hostport:
            raise ClusterUnreachable(f"--address {shown}: unknown scheme (use host:port or ray://host:port)")
    hostport = hostport.split("/", 1)[0]
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not host:
        raise ClusterUnreachable(f"--address {shown}: expected host:port (e.g. 10.0.0.1:6379 or ray://head:10001)")
    host = host.strip("[]")
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ClusterUnreachable(f"--address {shown}: port {port_text!r} is not a number from 1 to 65535") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ClusterUnreachable(f"--address {shown}: cannot resolve host {host!r} ({exc})") from None
    last = None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout_s)
                sock.connect(sockaddr)
            break
        except socket.timeout:
            last = f"no answer within {timeout_s:g} s"
        except OSError as exc:
            last = exc.strerror or str(exc)
    else:
        raise ClusterUnreachable(f"--address {shown}: no Ray cluster reachable at {host}:{port} ({last})")
    # a socket that accepts is not yet a Ray server (a proxy or firewall may accept anything):
    # both the GCS and the Ray Client server speak gRPC, so wait (bounded) for a gRPC channel
    try:
        import grpc
    except ImportError:
        return
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
    try:
        call(b"", timeout=timeout_s)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        not_grpc = details.startswith("Received http2 header with status")  # an HTTP server, not gRPC
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE) or not_grpc:
            what = "no answer" if code == grpc.StatusCode.DEADLINE_EXCEEDED else (details.splitlines() or [code.name])[0]
            raise ClusterUnreachable(f"--address {shown}: {host}:{port} accepts connections but is not a Ray "
                                     f"server ({what}, within {timeout_s:g} s)") from None
    finally:
        channel.close()


def init_ray(engine_cfg, address: str | None = None, verbose: bool = False):
    import ray

    if ray.is_initialized():
        return ray
    quiet = not verbose
    # Train V2 is Ray 2.60's default; said where Ray starts, for clusters running older defaults
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if quiet:
        quiet_ray_logs()
    address = cluster_address(engine_cfg, address)
    level = logging.ERROR if quiet else logging.INFO
    # Ray's core installs a native SIGTERM handler in the driver that dumps a stack and aborts
    # (exit 134); the command's own handler (engine/cli: a clean stop, exit 143) is put back after
    sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        probe_address(address)
        try:
            ray.init(address=address, log_to_driver=not quiet, logging_level=level)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClusterUnreachable(f"--address {address}: cannot connect to Ray ({first})") from None
    else:
        # A short private temp dir: Ray's socket paths must stay under ~100 characters.
        temp_dir = tempfile.mkdtemp(prefix="syncxr-ray-")
        ray.init(address="local", num_cpus=engine_cfg.num_cpus, include_dashboard=False,
                 _temp_dir=temp_dir, log_to_driver=not quiet, logging_level=level)
        atexit.register(_shutdown_and_clean, ray, temp_dir)
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    if quiet:
        quiet_ray_data()
    return ray


def _shutdown_and_clean(ray, temp_dir: str) -> None:
    """The embedded Ray's session files (logs, sockets) go when the driver exits normally."""
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
