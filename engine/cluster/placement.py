"""Does a resource request fit a node type? Pure functions over plain dicts, so the rules are
tested without Ray or a cluster.

A request is a *bundle*: the resources one actor, worker or engine replica needs on ONE node
(a tensor-parallel vLLM replica is one bundle of tp*pp GPUs: its workers are packed on one node).
A node type offers its declared `resources` (CPU, GPU, `accelerator_type:X`, custom ones).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

EPS = 1e-9


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_nodes: int  # the head counts as 1; a worker group as its max_workers
    is_head: bool = False


@dataclass
class Request:
    """`count` bundles must be placeable at once (an actor pool's minimum, a trainer's workers)."""

    stage: str  # as the user knows it: "reports", "images", "qc.embedder", "train.scaling", ...
    bundle: dict[str, float]
    count: int = 1
    where: str = ""  # the config field(s) the bundle comes from, for messages
    node_types: tuple[str, ...] | None = None  # only these may hold it (the driver's node); None: any
    fits_on: list[str] = field(default_factory=list)  # filled by check_requests


def shortfall(bundle: dict[str, float], offered: dict[str, float]) -> list[tuple[str, float, float]]:
    """(resource, needed, offered) for every resource the node lacks or has too little of."""
    return [(name, need, float(offered.get(name, 0))) for name, need in sorted(bundle.items())
            if need > 0 and float(offered.get(name, 0)) + EPS < need]


def copies_per_node(bundle: dict[str, float], offered: dict[str, float]) -> int:
    """How many such bundles one node of this type holds at once."""
    limits = [math.floor(float(offered.get(name, 0)) / need + EPS) for name, need in bundle.items() if need > 0]
    return min(limits) if limits else 10 ** 9


def fmt(value: float) -> str:
    return f"{value:g}"


def _explain_misfit(req: Request, candidates: list[NodeType]) -> str:
    """Name the resource: one no candidate offers at all, else the one the closest node type lacks."""
    names = ", ".join(n.name for n in candidates)
    for name, need in sorted(req.bundle.items()):
        most = max(float(n.resources.get(name, 0)) for n in candidates)
        if need > 0 and most <= 0:
            return (f"stage '{req.stage}' asks for {fmt(need)} '{name}' (from {req.where}) but no node type "
                    f"it may use offers '{name}' ({names})")
    closest = min(candidates, key=lambda n: (len(shortfall(req.bundle, n.resources)), n.name))
    name, need, have = shortfall(req.bundle, closest.resources)[0]
    most = max(float(n.resources.get(name, 0)) for n in candidates)
    if most + EPS < need:
        return (f"stage '{req.stage}' needs {fmt(need)} '{name}' on one node (from {req.where}) but the most any "
                f"node type offers is {fmt(most)}")
    return (f"stage '{req.stage}' needs {_fmt_bundle(req.bundle)} on one node (from {req.where}) but no node type "
            f"has all of it: the closest, '{closest.name}', offers {fmt(have)} '{name}'")


def _fmt_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in sorted(bundle.items())) + "}"


def check_requests(requests: list[Request], nodes: list[NodeType]) -> list[str]:
    """Problems (one line each, naming the stage and the resource); fills each request's fits_on."""
    problems = []
    for req in requests:
        candidates = [n for n in nodes if req.node_types is None or n.name in req.node_types]
        if not candidates:
            problems.append(f"stage '{req.stage}': none of the node types {list(req.node_types or ())} exists")
            continue
        fitting = [n for n in candidates if not shortfall(req.bundle, n.resources)]
        req.fits_on = [n.name for n in fitting]
        if not fitting:
            problems.append(_explain_misfit(req, candidates))
            continue
        capacity = sum(copies_per_node(req.bundle, n.resources) * n.max_nodes for n in fitting)
        if capacity < req.count:
            problems.append(f"stage '{req.stage}' needs {req.count} x {_fmt_bundle(req.bundle)} at once "
                            f"(from {req.where}) but the node types that fit ({', '.join(req.fits_on)}) hold at "
                            f"most {capacity} at their max_workers")
    return problems
