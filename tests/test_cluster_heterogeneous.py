"""A heterogeneous cluster on loopback: two `ray start` nodes whose custom resources stand in for
cluster.yaml's node groups (cpu_group on the head, image_group on a worker). A small `syncxr synth`
against it must land each stage on its group; where each actor ran is read from Ray's own actor
records (the state API of the head), not from anything the engine reports about itself.

Both nodes are stopped by the PIDs they started (never `ray stop`: it kills every Ray here)."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from local_head import agent_port_args, free_ports, kill_all, processes_of

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HEAD_GROUP, WORKER_GROUP = "cpu_group", "image_group"
# stage class (as in Ray Data's actor names) -> the group it must run on
EXPECTED = {"TemplateReportWriter": HEAD_GROUP, "ReportGate": HEAD_GROUP,
            "ImageStage": WORKER_GROUP, "ImageQCStage": WORKER_GROUP}


def stage_resources_have_custom() -> bool:
    from engine.core.config import StageResources

    return "custom" in StageResources.model_fields


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not stage_resources_have_custom(),
                       reason="engine.core.config.StageResources has no `custom` field yet, so map_stage cannot "
                              "steer stages to node groups (see docs/cluster.md, 'For the engine')"),
]


def start(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]


@pytest.fixture
def two_node_cluster():
    head_tmp = tempfile.mkdtemp(prefix="sxc-h-", dir="/tmp")  # short: Ray's socket paths
    gcs, dash, client = free_ports(3)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           # the driver and every worker import this checkout's engine (and the tests' helpers)
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    marks = [head_tmp, f":{gcs}"]
    try:
        start([str(BIN / "ray"), "start", "--head", f"--port={gcs}", *common,
               f"--resources={json.dumps({HEAD_GROUP: 100})}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
               f"--temp-dir={head_tmp}", *agent_port_args()], env)
        start([str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", *common,
               f"--resources={json.dumps({WORKER_GROUP: 100})}", *agent_port_args()], env)
        yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", env
    finally:
        kill_all(processes_of(marks))
        shutil.rmtree(head_tmp, ignore_errors=True)


FINDINGS = ["Mild cardiomegaly.", "No pleural effusion.", "Small left pleural effusion.", "No pneumothorax.",
            "Right lower lobe opacity.", "Lungs are clear.", "Mild pulmonary edema.", "No focal consolidation.",
            "Atelectasis at the left lung base.", "The heart size is normal.",
            "Degenerative changes of the thoracic spine.", "Possible pneumonia in the right upper lobe."]


def small_corpus(path: Path) -> Path:
    """80 short reports: enough entities for a 16-sample plan, seconds faster than loading IU X-ray."""
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.sample(FINDINGS, 4))}) + "\n" for _ in range(80)))
    return path


def grouped_config(path: Path) -> Path:
    """configs/local.yaml with each stage steered to its group, written next to the test's output."""
    from engine.core.config import PACKAGED_CONFIGS

    cfg = yaml.safe_load((PACKAGED_CONFIGS / "local.yaml").read_text())
    cfg["corpus"] = {"name": "jsonl", "path": str(small_corpus(path.parent / "reports.jsonl"))}
    cfg["reports"]["prompt"] = str(PACKAGED_CONFIGS / cfg["reports"]["prompt"])  # the copy lives elsewhere
    cfg["reports"]["resources"] = {"num_cpus": 0.25, "batch_size": 8, "custom": {HEAD_GROUP: 1}}
    cfg["images"]["resources"] = {"num_cpus": 0.25, "batch_size": 8, "custom": {WORKER_GROUP: 1}}
    cfg["qc"]["embedder"]["resources"] = {"num_cpus": 0.25, "batch_size": 8, "custom": {WORKER_GROUP: 1}}
    cfg["engine"]["inline_max_rows"] = 0  # every round through Ray, so every stage has actors to look at
    path.write_text(yaml.safe_dump(cfg))
    return path


STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: n.resources_total for n in list_nodes(address=sys.argv[1], detail=True)}
actors = [{"class": a.class_name, "repr": a.repr_name or "", "name": a.name or "", "node": a.node_id,
           "state": a.state} for a in list_actors(address=sys.argv[1], detail=True, limit=10000)]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def ray_records(dashboard: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", STATE_QUERY, dashboard], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def stages_of(actor: dict) -> list[str]:
    """Ray Data names an actor-pool worker MapWorker(MapBatches(Cls)); fused: MapBatches(A)->MapBatches(B)."""
    text = " ".join((actor["repr"], actor["name"], actor["class"]))
    return [cls for cls in EXPECTED if f"MapBatches({cls})" in text]


def test_each_stage_lands_on_its_node_group(two_node_cluster, tmp_path):
    address, dashboard, env = two_node_cluster
    config = grouped_config(tmp_path / "grouped.yaml")
    out = tmp_path / "run"
    synth = subprocess.run([sys.executable, "-m", "engine.cli", "synth", "--config", str(config), "--n", "16",
                            "--out", str(out), "--address", address],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, (synth.stdout + synth.stderr)[-3000:]
    assert "16/16 samples" in synth.stdout
    records = ray_records(dashboard, env)
    group_nodes = {g: {nid for nid, res in records["nodes"].items() if res.get(g)} for g in (HEAD_GROUP, WORKER_GROUP)}
    assert all(len(ids) == 1 for ids in group_nodes.values()) and group_nodes[HEAD_GROUP] != group_nodes[WORKER_GROUP]
    seen: dict[str, set[str]] = {}
    for actor in records["actors"]:
        for stage in stages_of(actor):
            seen.setdefault(stage, set()).add(actor["node"])
    assert set(seen) == set(EXPECTED), f"stages with actors: {sorted(seen)}; actors: {records['actors']}"
    for stage, nodes in seen.items():
        assert nodes <= group_nodes[EXPECTED[stage]], f"{stage} ran on {nodes}, not on the {EXPECTED[stage]} node"
