"""`syncxr check-cluster`: a cluster YAML and run configs in, a placement table and the problems out."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.cluster.kuberay import HEAD, is_raycluster, raycluster_node_types, raycluster_problems
from engine.cluster.launcher_config import load_cluster_yaml, node_types, validate_with_ray
from engine.cluster.placement import NodeType, Request, check_requests, fmt
from engine.cluster.requests import config_requests
from engine.cluster.security import security_problems


@dataclass
class ClusterCheck:
    cluster: str
    nodes: list[NodeType]
    schema: str  # what validated the cluster file
    requests: dict[str, list[Request]] = field(default_factory=dict)  # config path -> its requests
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{self.cluster}: {self.schema}: ok; node types: "
                 + ", ".join(f"{n.name} (x{n.max_nodes})" for n in self.nodes)]
        for path, reqs in self.requests.items():
            lines.append(f"{path}:")
            for r in reqs:
                bundle = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(r.bundle.items()))
                where = ", ".join(r.fits_on) if r.fits_on else "NOWHERE"
                lines.append(f"  {r.stage:<22} {r.count} x {{{bundle}}} -> {where}")
        return "\n".join(lines)


def check_cluster(cluster_path: str | Path, config_paths: list[str | Path] = (),
                  entrypoint_resources: dict[str, float] | None = None, entrypoint_num_cpus: float = 0.0,
                  security: bool = True) -> ClusterCheck:
    """`cluster_path`: a cluster-launcher YAML or a KubeRay RayCluster manifest. Schema errors raise
    ConfigError at once (nothing else can be trusted then); placement and security problems are
    collected, one line each."""
    source = str(cluster_path)
    raw = load_cluster_yaml(cluster_path)
    if is_raycluster(raw):
        result, head = ClusterCheck(source, raycluster_node_types(raw, source), "RayCluster groups"), HEAD
        if security:
            result.problems += raycluster_problems(raw, source)
    else:
        prepared = validate_with_ray(raw, source)
        result, head = ClusterCheck(source, node_types(prepared), "Ray's cluster schema"), prepared["head_node_type"]
        if security:
            result.problems += security_problems(raw, source)
    for path in config_paths:
        _, reqs = config_requests(path, entrypoint_resources, entrypoint_num_cpus, head)
        result.requests[str(path)] = reqs
        result.problems += [f"{path}: {p}" for p in check_requests(reqs, result.nodes)]
    return result
