"""`syncxr check-cluster`: refuse a cluster YAML or a run config before anything is launched."""
from __future__ import annotations

import json
import sys

from engine.core.arg_types import nonneg_float
from engine.core.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "check-cluster", help="check a Ray cluster YAML and run configs offline, before `ray up`",
        description="Checks, without contacting any cloud: (1) the cluster YAML passes Ray's own cluster-config "
                    "schema (as `ray up` validates it); (2) its start commands keep the dashboard on localhost, "
                    "run Ray with token authentication and install pinned versions; (3) every stage of each "
                    "--config (synth, train or tune) asks for resources some node type has: GPUs, accelerator "
                    "type, custom resources, tensor-parallel GPUs on one node, enough nodes for the minimum "
                    "pools. Output: a table of where each stage can run.")
    p.exit_codes = {0: "every stage fits", 2: "a problem (one line each, naming the file, the stage and the resource)"}
    p.add_argument("--cluster", default="cluster.yaml", help="Ray cluster-launcher YAML (default: cluster.yaml)")
    p.add_argument("--config", action="append", default=[],
                   help="run config to place (repeatable): configs/syncxr-200k.yaml, a train-*.yaml, a tune-*.yaml")
    p.add_argument("--entrypoint-resources", default=None,
                   help="JSON, as given to `ray job submit`: the node type holding these runs the synth driver "
                        "(default: the head)")
    p.add_argument("--entrypoint-num-cpus", type=nonneg_float, default=0.0, help="as given to `ray job submit`")
    p.add_argument("--no-security", action="store_true", help="skip the dashboard/token/pinning checks")
    p.set_defaults(func=run)


def parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--entrypoint-resources: not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise UserError(f"--entrypoint-resources: expected a JSON object of resource amounts, got {text!r}")
    return {str(k): float(v) for k, v in value.items()}


def run(args) -> int:
    from engine.cluster.check import check_cluster

    result = check_cluster(args.cluster, args.config, parse_resources(args.entrypoint_resources),
                           args.entrypoint_num_cpus, security=not args.no_security)
    print(result.table())
    for problem in result.problems:
        print(f"syncxr check-cluster: error: {problem}", file=sys.stderr)
    if result.problems:
        return 2
    print("ok: every stage fits a node type")
    return 0
