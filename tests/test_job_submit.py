"""`ray job submit` of a small synth job to a real `ray start --head` on loopback with token auth.
The head is stopped by the PIDs it started (never `ray stop`: that kills every Ray on the machine)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from local_head import agent_port_args, free_ports, kill_all, processes_of

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="sxh-", dir="/tmp")  # short: Ray's socket paths
    gcs, dash, client = free_ports(3)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)  # the job must find the project through its working dir alone
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *agent_port_args()]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        kill_all(processes_of([temp_dir, f":{gcs}"]))
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_synth_through_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "job-run"
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
              sys.executable, "-m", "engine.cli", "synth", "--n", "24", "--out", str(out)]
    deadline = time.time() + 120
    while True:  # the head's job agent comes up some seconds after `ray start` returns
        job = subprocess.run(submit, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if job.returncode == 0 or "No available agent" not in job.stdout + job.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "succeeded" in job.stdout + job.stderr
    assert "round 0:" in job.stdout and "24/24 samples" in job.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["kept"] == 24
    ids = pq.read_table(out / "data", columns=["sample_id"]).column("sample_id").to_pylist()
    assert sorted(ids) == ids and len(set(ids)) == 24
