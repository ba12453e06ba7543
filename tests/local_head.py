"""Helpers for tests that start their own `ray start` nodes on loopback: ports that cannot collide, and
the processes to kill afterwards (never `ray stop`: it kills every Ray on the machine)."""
from __future__ import annotations

import socket

AGENT_PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                    "runtime-env-agent-port")


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen, or the OS may hand one out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def agent_port_args() -> list[str]:
    """Every node its own agent ports: the test session's Ray already holds the default ones."""
    return [f"--{name}={port}" for name, port in zip(AGENT_PORT_FLAGS, free_ports(len(AGENT_PORT_FLAGS)))]


def processes_of(marks: list[str]) -> list:
    """Every process whose command line names one of our temp dirs or ports, with its children."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(m in line for m in marks):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def kill_all(procs: list) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
