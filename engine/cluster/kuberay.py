"""A KubeRay RayCluster manifest read as node types, so the same placement check covers it; and
its security rules (token auth, head service not exposed, images pinned by tag). Ray's launcher
schema does not apply to a manifest; the Kubernetes API server validates the CRD on apply."""
from __future__ import annotations

import json
from typing import Any

from engine.cluster.placement import NodeType
from engine.core.errors import ConfigError

HEAD = "head"


def is_raycluster(raw: dict) -> bool:
    return raw.get("kind") == "RayCluster"


def _quantity(value: Any) -> float:
    """A Kubernetes CPU/GPU quantity ("8", 8, "500m") as a number."""
    text = str(value).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _custom(params: dict, where: str) -> dict[str, float]:
    text = params.get("resources")
    if not text:
        return {}
    try:
        value = json.loads(text)
        if isinstance(value, str):  # KubeRay's quoting convention: '"{\"name\": 1}"'
            value = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}.rayStartParams.resources: not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.rayStartParams.resources: expected a JSON object, got {text!r}")
    return {str(k): float(v) for k, v in value.items()}


def _group_resources(group: dict, where: str) -> dict[str, float]:
    params = group.get("rayStartParams") or {}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        raise ConfigError(f"{where}.template.spec.containers: no container")
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpus = _quantity(params["num-cpus"]) if "num-cpus" in params else _quantity(limits.get("cpu", 0))
    gpus = _quantity(params["num-gpus"]) if "num-gpus" in params else _quantity(limits.get("nvidia.com/gpu", 0))
    out = {"CPU": cpus, **_custom(params, where)}
    if gpus:
        out["GPU"] = gpus
    return out


def raycluster_node_types(raw: dict, source: str) -> list[NodeType]:
    spec = raw.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("headGroupSpec"), dict):
        raise ConfigError(f"{source}: spec.headGroupSpec is required in a RayCluster")
    nodes = [NodeType(HEAD, _group_resources(spec["headGroupSpec"], f"{source}: spec.headGroupSpec"), 1, True)]
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        where = f"{source}: spec.workerGroupSpecs[{i}]"
        if "groupName" not in group:
            raise ConfigError(f"{where}.groupName is required")
        max_nodes = int(group.get("maxReplicas", group.get("replicas", 0)))
        nodes.append(NodeType(group["groupName"], _group_resources(group, where), max_nodes))
    return nodes


def raycluster_problems(raw: dict, source: str) -> list[str]:
    spec = raw.get("spec") or {}
    out = []
    auth = spec.get("authOptions")
    if not isinstance(auth, dict) or auth.get("mode", "token") != "token":
        out.append(f"{source}: spec.authOptions.mode is not 'token': the cluster would accept anyone who reaches it")
    service = (spec.get("headGroupSpec") or {}).get("serviceType", "ClusterIP")
    if service != "ClusterIP":
        out.append(f"{source}: spec.headGroupSpec.serviceType {service} exposes the dashboard outside the cluster "
                   "(use ClusterIP and `kubectl port-forward`)")
    groups = [("headGroupSpec", spec.get("headGroupSpec") or {})] + \
             [(f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs") or [])]
    for where, group in groups:
        for c in ((group.get("template") or {}).get("spec") or {}).get("containers") or []:
            image = str(c.get("image", ""))
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                out.append(f"{source}: spec.{where} image '{image}' has no version tag")
    return out
