"""The KubeRay manifests are the launcher's cluster in another form: same groups, same image,
token auth, and the configs' stages fit them as they fit cluster.yaml."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from engine.cluster.check import check_cluster
from engine.cluster.kuberay import raycluster_node_types, raycluster_problems
from engine.cluster.launcher_config import load_cluster_yaml, node_types, validate_with_ray
from engine.core.config import find_config_file

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "deploy" / "kuberay"
CONFIGS = ROOT / "engine" / "configs"


def manifest(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / name).read_text()))


def raycluster() -> dict:
    [doc] = manifest("raycluster.yaml")
    return doc


def rayjob() -> dict:
    [doc] = manifest("rayjob-synth.yaml")
    return doc


def group_shapes(nodes) -> set:
    """(custom group, GPUs, accelerator) of every node type: what a stage can ask for."""
    out = set()
    for n in nodes:
        groups = [k for k in n.resources if k.endswith("_group")]
        accel = [k for k in n.resources if k.startswith("accelerator_type:")]
        out.add((tuple(groups), n.resources.get("GPU", 0), tuple(accel), n.is_head))
    return out


def test_raycluster_has_the_launcher_groups():
    launcher = node_types(validate_with_ray(load_cluster_yaml(ROOT / "cluster.yaml"), "cluster.yaml"))
    kube = raycluster_node_types(raycluster(), "raycluster.yaml")
    assert group_shapes(kube) == group_shapes(launcher)
    head = [n for n in kube if n.is_head][0]
    assert head.resources["CPU"] == 0
    assert {n.max_nodes for n in kube if not n.is_head} == {n.max_nodes for n in launcher if not n.is_head}


def test_raycluster_is_token_authenticated_internal_and_pinned():
    assert raycluster_problems(raycluster(), "rc.yaml") == []
    open_one = copy.deepcopy(raycluster())
    del open_one["spec"]["authOptions"]
    open_one["spec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    open_one["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray"
    problems = raycluster_problems(open_one, "rc.yaml")
    assert len(problems) == 3
    assert "authOptions" in problems[0] and "LoadBalancer" in problems[1] and "workerGroupSpecs[0]" in problems[2]


def test_one_image_everywhere_and_it_is_the_launchers():
    images = {c["image"] for g in [raycluster()["spec"]["headGroupSpec"], *raycluster()["spec"]["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert images == {load_cluster_yaml(ROOT / "cluster.yaml")["docker"]["image"]}


def test_rayjob_runs_synth_on_the_raycluster_with_its_driver_on_the_cpu_group():
    job, cluster = rayjob(), raycluster()
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["syncxr", "synth"]
    config = words[words.index("--config") + 1]
    assert find_config_file(config).is_file()  # a packaged config: the image has it without a working dir
    resources = json.loads(job["spec"]["entrypointResources"])
    result = check_cluster(KUBERAY / "raycluster.yaml", [config], resources, float(job["spec"]["entrypointNumCpus"]))
    assert result.problems == []
    fits = {r.stage: r.fits_on for r in result.requests[config]}
    assert fits["driver + part writer"] == ["cpu"] and fits["reports"] == ["llm-8x"]


def test_volumes_name_the_claims_of_storage_yaml():
    claims = {d["metadata"]["name"] for d in manifest("storage.yaml") if d["kind"] == "PersistentVolumeClaim"}
    spec = raycluster()["spec"]
    used = {v["persistentVolumeClaim"]["claimName"]
            for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    assert used == claims == {"syncxr-models", "syncxr-data"}


def test_network_policy_selects_this_clusters_pods():
    [policy] = manifest("networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": raycluster()["metadata"]["name"]}
    assert policy["metadata"]["namespace"] == raycluster()["metadata"]["namespace"]
