"""The resource requests a run config makes, as one bundle per actor / worker / engine replica.

Three kinds of config are read: the engine config (`syncxr synth`), a training config
(`syncxr train`: a `scaling` section) and a sweep config (`syncxr tune`: `train_config` and/or
`train` plus the sweep's concurrency). Training configs are read from the raw YAML with the
training schema's defaults, so this package needs nothing from train/.

Custom resources that steer a stage to its node group are the stage's `resources.custom`
({name: amount}); where the installed engine schema does not have that field yet, it is taken
out before validation and still counted here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from engine.cluster.placement import Request
from engine.core.config import ScalingSection, beside, deep_merge, validate_model
from engine.core.errors import ConfigError
from engine.core.registry import Registry
from engine.core.yaml_file import read_yaml

WRITER_CPUS = 0.1  # engine.synth's part writer: one actor on the driver's node
ENGINE_SECTIONS = {"corpus", "extractor", "plan", "reports", "images", "qc", "engine"}
TUNE_KEYS = {"train_config", "train", "search", "asha", "max_concurrent_trials", "num_samples"}
TRAIN_KEYS = {"scaling", "model", "data", "validation", "optim", "checkpoint", "epochs", "log_every_steps"}
# (where in the engine config, stage name) of every stage with its own `resources`
STAGE_PATHS = (("reports", "reports"), ("images", "images"), ("qc.embedder", "qc.embedder"), ("qc.judge", "qc.judge"))
VLLM_BACKENDS = {("reports", "vllm"), ("qc.judge", "mllm")}  # ray.data.llm engines: tp*pp GPUs per replica


EXPERIMENT_KEYS = {"arms", "seeds", "synth_config", "real_like"}
# the function each command reads its config with (an import path: the engine names train's and
# workflows' readers without importing them), so check-cluster refuses what the command would
CONFIG_READERS = Registry("config kind")
CONFIG_READERS.register("train", "train.config:load_train_config")
CONFIG_READERS.register("tune", "workflows.tune:load_tune_config")
CONFIG_READERS.register("experiment", "workflows.experiment:load_experiment_config")


def config_kind(raw: dict) -> str:
    if EXPERIMENT_KEYS & set(raw):
        return "experiment"
    if TUNE_KEYS & set(raw):
        return "tune"
    if TRAIN_KEYS & set(raw):
        return "train"
    return "engine"


def _section(raw: dict, dotted: str) -> dict:
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def accelerator_key(accelerator_type: Optional[str]) -> dict[str, float]:
    # Ray turns accelerator_type="H100" into this tiny request of a resource GPU nodes carry
    return {f"accelerator_type:{accelerator_type}": 0.001} if accelerator_type else {}


def _custom_amounts(custom: Any, where: str) -> dict[str, float]:
    if custom in (None, {}):
        return {}
    if not isinstance(custom, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in custom.values()):
        raise ConfigError(f"{where}: expected a mapping of custom Ray resource names to amounts, got {custom!r}")
    return {str(k): float(v) for k, v in custom.items()}


def _parse_engine(raw: dict, source: str):
    """The engine config through its real schema; `custom` taken out first where the schema lacks it."""
    import copy

    from engine.core.config import StageResources, parse_config

    data = copy.deepcopy(raw)
    custom: dict[str, dict[str, float]] = {}
    for path, _ in STAGE_PATHS:
        res = _section(data, path).get("resources")
        if isinstance(res, dict) and "custom" in res:
            where = f"{source}: {path}.resources.custom"
            custom[path] = _custom_amounts(res["custom"], where)
            if "custom" not in StageResources.model_fields:
                del res["custom"]
    return parse_config(data, source=source), custom


def stage_bundle(res, custom: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": float(res.num_cpus), **custom}
    if res.num_gpus:
        bundle["GPU"] = float(res.num_gpus)
    bundle.update(accelerator_key(res.accelerator_type))
    return bundle


def vllm_gpus(options: dict) -> int:
    """GPUs of one engine replica: tensor_parallel_size x pipeline_parallel_size."""
    kwargs = dict(options.get("engine_kwargs") or {})
    tp = int(options.get("tensor_parallel_size", kwargs.get("tensor_parallel_size", 1)))
    pp = int(options.get("pipeline_parallel_size", kwargs.get("pipeline_parallel_size", 1)))
    return tp * pp


def vllm_bundle(res, options: dict, custom: dict[str, float]) -> dict[str, float]:
    """ray.data.llm packs a replica's workers as tp*pp bundles of {GPU: 1, CPU: 1} (plus the stage's
    custom resources); tensor parallelism only makes sense inside one node, so they must fit one."""
    n = vllm_gpus(options)
    return {"GPU": float(n), "CPU": float(n), **{k: v * n for k, v in custom.items()},
            **accelerator_key(res.accelerator_type)}


def engine_requests(raw: dict, source: str) -> list[Request]:
    cfg, custom = _parse_engine(raw, source)
    sections = {"reports": cfg.reports, "images": cfg.images, "qc.embedder": cfg.qc.embedder, "qc.judge": cfg.qc.judge}
    out = []
    for path, stage in STAGE_PATHS:
        sec = sections[path]
        res, cus = sec.resources, custom.get(path) or dict(getattr(sec.resources, "custom", None) or {})
        if (path, sec.backend) in VLLM_BACKENDS:
            n = vllm_gpus(sec.options)
            out.append(Request(stage, vllm_bundle(res, sec.options, cus), res.min_actors,
                               f"{path}.options tensor_parallel_size x pipeline_parallel_size = {n} GPUs per "
                               f"replica, {path}.resources"))
        elif path == "qc.judge":
            continue  # a per-batch judge runs inside the image-QC actor (qc.embedder's resources)
        else:
            out.append(Request(stage, stage_bundle(res, cus), res.min_actors, f"{path}.resources"))
        if path == "reports":  # the report QC gate: the writer's resources without its GPUs
            qc_bundle = {k: v for k, v in stage_bundle(res, cus).items()
                         if k != "GPU" and not k.startswith("accelerator_type:")}
            out.append(Request("report_qc", qc_bundle, res.min_actors, "reports.resources without GPUs"))
    return out


def driver_request(entrypoint_resources: dict[str, float], entrypoint_num_cpus: float, head: str) -> Request:
    """The job's driver and the part writer beside it. `ray job submit` runs the driver on the head
    unless entrypoint resources are given; the writer (an actor pinned to the driver's node) then
    needs a share of CPU there."""
    bundle = {"CPU": entrypoint_num_cpus + WRITER_CPUS, **entrypoint_resources}
    on_head = not entrypoint_resources and not entrypoint_num_cpus
    where = ("the driver's node: the head, since no --entrypoint-resources/--entrypoint-num-cpus are given; "
             "submit with them to put the driver on a CPU group"
             if on_head else "--entrypoint-resources/--entrypoint-num-cpus")
    return Request("driver + part writer", bundle, 1, where, node_types=(head,) if on_head else None)


def scaling_request(scaling: dict, stage: str, where: str, trials: int = 1) -> Request:
    """Ray Train workers from a `scaling` section, read by the schema `syncxr train` reads it with."""
    s = validate_model(scaling, ScalingSection, where)
    bundle = {**s.per_worker(), **accelerator_key(s.accelerator_type)}
    return Request(stage, bundle, s.num_workers * trials, where + (f" x {trials} concurrent trials" if trials > 1 else ""))


def tune_scaling(raw: dict, path: Path) -> dict:
    base: dict = {}
    if raw.get("train_config"):
        base = read_yaml(beside(path, raw["train_config"]), "training config", ConfigError) or {}
    return deep_merge(base, raw.get("train") or {}).get("scaling") or {}


def config_requests(path: str | Path, entrypoint_resources: dict[str, float] | None = None,
                    entrypoint_num_cpus: float = 0.0, head: str = "head") -> tuple[str, list[Request]]:
    """(kind, requests) of one config file."""
    from engine.core.config import find_config_file

    path = find_config_file(path)
    raw = read_yaml(path, "config", ConfigError) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    kind = config_kind(raw)
    loaded = CONFIG_READERS.get(kind)(path) if kind in CONFIG_READERS else None  # the command's own checks
    if kind == "engine":
        reqs = engine_requests(raw, str(path))
        reqs.append(driver_request(entrypoint_resources or {}, entrypoint_num_cpus, head))
    elif kind == "train":
        reqs = [scaling_request(raw.get("scaling") or {}, "train.scaling", f"{path}: scaling")]
    elif kind == "tune":
        trials = int(raw.get("max_concurrent_trials", 1))
        reqs = [scaling_request(tune_scaling(raw, path), "tune trial workers", f"{path}: train.scaling", trials)]
        if isinstance(raw.get("data"), dict):  # the sweep (or each trial) synthesises through the engine
            synth = find_config_file(beside(path, raw["data"].get("synth_config") or "local.yaml"))
            reqs = engine_requests(read_yaml(synth, "config", ConfigError) or {}, str(synth)) + reqs
            reqs.append(driver_request(entrypoint_resources or {}, entrypoint_num_cpus, head))
    else:  # an experiment: both datasets through the engine, then one training run at a time
        exp, _ = loaded
        synth = find_config_file(exp.synth_config)
        reqs = engine_requests(read_yaml(synth, "config", ConfigError) or {}, str(synth))
        reqs.append(driver_request(entrypoint_resources or {}, entrypoint_num_cpus, head))
        train_raw = deep_merge(read_yaml(exp.train_config, "training config", ConfigError) or {}, exp.train)
        reqs.append(scaling_request(train_raw.get("scaling") or {}, "experiment training",
                                    f"{exp.train_config}: scaling"))
    return kind, reqs
