"""`syncxr train` on a two-node loopback cluster whose worker node does not see the driver's RUN:
the worker node runs in its own mount namespace, with an empty tmpfs over the folder that holds
RUN and another working directory. The training worker can only be placed there (it asks for
two CPUs; the head has one), so everything that reaches RUN (metrics, final model) must come
through Ray: the reports, the object store and the checkpoint storage (a folder both see, as a
mounted disk or object storage would be). What the worker node sees of RUN is read afterwards
through /proc/PID/root of one of its processes.

Both nodes are stopped by the PIDs they started (never `ray stop`: it kills every Ray here)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from local_head import agent_port_args, free_ports, kill_all, processes_of

from test_train_data import TINY_BOW, make_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare --mount` (root or CAP_SYS_ADMIN)")]


def other_namespace_pids(marks: list[str]) -> list[int]:
    mine = os.readlink("/proc/self/ns/mnt")
    pids = []
    for proc in processes_of(marks):
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/mnt") != mine:
                pids.append(proc.pid)
        except OSError:
            continue
    return pids


def test_a_run_whose_worker_has_not_the_drivers_disk_lands_whole_on_the_driver(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn", 40)
    runs, shared, elsewhere = tmp_path / "runs", tmp_path / "shared", tmp_path / "elsewhere"
    for d in (runs, shared, elsewhere):
        d.mkdir()
    run = runs / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": TINY_BOW[0], "overrides": TINY_BOW[1]},
        "data": {"batch_size": 30, "num_cpus": 0.5}, "validation": {"size": 10, "batch_size": 10},
        "epochs": 2, "batch_size": 6, "checkpoint": {"storage_path": str(shared)},
        "scaling": {"num_workers": 1, "cpus_per_worker": 2}}))

    head_tmp = tempfile.mkdtemp(prefix="sxn-", dir="/tmp")  # short: Ray's socket paths
    gcs, dash, client = free_ports(3)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    marks = [head_tmp, f":{gcs}"]
    try:
        head = subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=1", *common,
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
             f"--temp-dir={head_tmp}", *agent_port_args()], env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        start_worker = (f"mount -t tmpfs none {runs} && exec {BIN / 'ray'} start --address=127.0.0.1:{gcs} "
                        f"--num-cpus=2 {' '.join(common + agent_port_args())}")
        worker = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", start_worker],
                                cwd=elsewhere, env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        done = subprocess.run([sys.executable, "-m", "engine.cli", "train", "--config", str(cfg), "--out", str(run),
                               "--synthetic", str(data), "--address", f"127.0.0.1:{gcs}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # the training worker was on the masked node, and wrote nothing into its view of RUN
        masked = other_namespace_pids(marks)
        assert masked, "no process of the cluster runs in the worker node's mount namespace"
        assert list(Path(f"/proc/{masked[0]}/root{runs}").iterdir()) == []
    finally:
        kill_all(processes_of(marks))
        shutil.rmtree(head_tmp, ignore_errors=True)

    from train.models import load_model
    from train.progress import read_records

    # 30 training pairs / batch 6 = 5 steps per epoch
    assert [(r["kind"], r["step"]) for r in read_records(run / "metrics.jsonl")] == [("epoch", 5), ("epoch", 10)]
    assert load_model(run / "model").name == TINY_BOW[0]
    summary = json.loads((run / "run.json").read_text())
    assert summary["final"]["step"] == 10 and "placement_group_id" not in summary["final"]
    assert summary["checkpoints"].startswith(str(shared)) and not (run / "ray").exists()
    assert sorted(p.name for p in Path(summary["checkpoints"]).glob("checkpoint_*"))  # where the run said
