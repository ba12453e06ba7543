"""A Ray cluster-launcher YAML, read and validated the way `ray up` does before it calls the
cloud: Ray's own `prepare_config` (merge the provider's defaults) and `validate_config` (the
JSON schema `ray/autoscaler/ray-schema.json` plus Ray's cross-field rules). Both are offline:
no cloud SDK (boto3) is imported and nothing is contacted."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from engine.cluster.placement import NodeType
from engine.core.errors import ConfigError
from engine.core.yaml_file import read_yaml


def load_cluster_yaml(path: str | Path) -> dict:
    raw = read_yaml(Path(path), "cluster", ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a cluster YAML is a mapping (cluster_name, provider, available_node_types, ...)")
    return raw


def _schema_location(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_with_ray(raw: dict, source: str) -> dict:
    """The prepared config (defaults filled) if Ray accepts it, else ConfigError naming the field."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    provider = raw.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        raise ConfigError(f"{source}: field 'provider.type' is required (aws, gcp, azure, ...)")
    if provider["type"] in ("kuberay", "local"):
        raise ConfigError(f"{source}: provider.type '{provider['type']}' is not a cluster-launcher YAML this check "
                          "reads (KubeRay manifests live in deploy/kuberay/)")
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise ConfigError(f"{source}: Ray cluster schema: at '{_schema_location(exc)}': {exc.message}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"{source}: Ray cluster config: {exc}") from None
    return prepared


def node_types(prepared: dict) -> list[NodeType]:
    """Node types with the resources they declare; the head may host one node, a worker group max_workers."""
    head = prepared["head_node_type"]
    out = []
    for name, spec in prepared["available_node_types"].items():
        resources: dict[str, Any] = dict(spec.get("resources") or {})
        max_nodes = 1 if name == head else int(spec.get("max_workers", 0))
        out.append(NodeType(name=name, resources={k: float(v) for k, v in resources.items()},
                            max_nodes=max_nodes, is_head=name == head))
    return out
