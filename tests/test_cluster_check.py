"""The offline cluster check: Ray's own schema on cluster.yaml, the security rules, and whether
every stage's request fits a node type (pure placement rules, configs, and the CLI's refusals)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.cluster.check import check_cluster
from engine.cluster.launcher_config import load_cluster_yaml, node_types, validate_with_ray
from engine.cluster.placement import NodeType, Request, check_requests, copies_per_node, shortfall
from engine.cluster.requests import config_requests
from engine.cluster.security import security_problems
from engine.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster.yaml"
CONFIGS = ROOT / "engine" / "configs"
DRIVER = {"entrypoint_resources": {"cpu_group": 1.0}, "entrypoint_num_cpus": 4.0}  # as docs/cluster.md submits


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cluster_raw() -> dict:
    return load_cluster_yaml(CLUSTER)


# ------------------------------------------------------------------ Ray's schema and security


def test_cluster_yaml_passes_rays_own_validation_offline():
    prepared = validate_with_ray(cluster_raw(), "cluster.yaml")
    assert "boto3" not in sys.modules and "botocore" not in sys.modules  # no cloud SDK, no call
    nodes = {n.name: n for n in node_types(prepared)}
    assert nodes["head"].is_head and nodes["head"].resources == {"CPU": 0}
    groups = {g: [n for n in nodes.values() if g in n.resources]
              for g in ("llm_group", "diffusion_group", "train_group", "cpu_group")}
    assert all(groups.values()), groups
    assert nodes["llm_8x"].resources["GPU"] == 8 and nodes["train_8x"].resources["GPU"] == 8
    assert {n.resources["GPU"] for n in groups["diffusion_group"]} == {1, 4}
    assert all(nodes[n.name].max_nodes >= 1 for g in groups.values() for n in g)


def test_cluster_yaml_has_no_security_problem():
    assert security_problems(cluster_raw(), "cluster.yaml") == []


def test_node_type_without_resources_is_refused_naming_it(tmp_path):
    raw = cluster_raw()
    del raw["available_node_types"]["cpu"]["resources"]  # the original cluster.yaml's mistake
    with pytest.raises(ConfigError, match=r"available_node_types\.cpu.*'resources' is a required property"):
        validate_with_ray(raw, "broken.yaml")


def test_fractional_node_resource_is_refused_by_rays_schema():
    raw = cluster_raw()
    raw["available_node_types"]["diff_1x"]["resources"]["GPU"] = 0.5
    with pytest.raises(ConfigError, match=r"available_node_types\.diff_1x\.resources\.GPU"):
        validate_with_ray(raw, "broken.yaml")


def test_head_type_must_exist():
    raw = cluster_raw()
    raw["head_node_type"] = "nope"
    with pytest.raises(ConfigError, match="head_node_type"):
        validate_with_ray(raw, "broken.yaml")


def test_open_dashboard_missing_token_and_unpinned_setup_are_named():
    raw = cluster_raw()
    raw["head_start_ray_commands"] = ["ray stop", "ray start --head --port=6379 --dashboard-host=0.0.0.0"]
    raw["setup_commands"] = ["pip install -U pip", "pip install 'ray[default]' torch==2.4.0 vllm"]
    raw["docker"]["image"] = "rayproject/ray:latest"
    problems = security_problems(raw, "c.yaml")
    text = "\n".join(problems)
    assert "--dashboard-host=0.0.0.0" in text
    assert "head_start_ray_commands" in text and "token" in text
    assert "worker_start_ray_commands" not in text  # the workers still start with the token
    assert "ray[default], vllm" in text and "torch" not in text.split("unpinned", 1)[1].split("(")[0]
    assert "docker.image 'rayproject/ray:latest'" in text
    assert len(problems) == 4


def test_pinned_or_constrained_installs_pass():
    raw = cluster_raw()
    raw["setup_commands"] = ["pip install -U pip", "pip install -c ~/syncxr/deploy/constraints.txt '~/syncxr[gpu]'",
                             "pip install vllm==0.33.0 && pip install ./wheel.whl",
                             "pip install 'syncxr[gpu] @ git+https://example.org/syncxr@v0.1.0'"]
    assert security_problems(raw, "c.yaml") == []


# ------------------------------------------------------------------ the placement rules


NODES = [NodeType("head", {"CPU": 0}, 1, True),
         NodeType("gpu4", {"CPU": 48, "GPU": 4, "accelerator_type:A10G": 1, "diffusion_group": 1000}, 3),
         NodeType("cpu", {"CPU": 32, "cpu_group": 1000}, 2)]


def test_shortfall_and_copies_per_node():
    bundle = {"CPU": 1, "GPU": 1, "diffusion_group": 1}
    assert shortfall(bundle, NODES[1].resources) == []
    assert shortfall(bundle, NODES[2].resources) == [("GPU", 1, 0.0), ("diffusion_group", 1, 0.0)]
    assert copies_per_node(bundle, NODES[1].resources) == 4
    assert copies_per_node({"CPU": 0.25, "GPU": 0.25}, NODES[1].resources) == 16


def test_request_for_a_resource_no_node_has_names_stage_and_resource():
    reqs = [Request("images", {"CPU": 1, "GPU": 1, "accelerator_type:H100": 0.001}, 1, "images.resources")]
    [problem] = check_requests(reqs, NODES)
    assert "stage 'images'" in problem and "'accelerator_type:H100'" in problem and "images.resources" in problem


def test_too_many_gpus_on_one_node_is_named():
    [problem] = check_requests([Request("reports", {"CPU": 8, "GPU": 8}, 1, "tp")], NODES)
    assert "stage 'reports' needs 8 'GPU' on one node" in problem and "offers is 4" in problem


def test_resources_on_different_nodes_do_not_add_up():
    [problem] = check_requests([Request("x", {"GPU": 1, "cpu_group": 1}, 1, "w")], NODES)
    assert "no node type has all of it" in problem and "stage 'x'" in problem


def test_minimum_pool_larger_than_the_group_is_refused():
    ok = Request("images", {"CPU": 1, "GPU": 1}, 12, "images.resources")
    too_many = Request("images", {"CPU": 1, "GPU": 1}, 13, "images.resources")
    assert check_requests([ok], NODES) == [] and ok.fits_on == ["gpu4"]
    [problem] = check_requests([too_many], NODES)
    assert "needs 13 x" in problem and "at most 12" in problem


def test_node_types_restrict_where_a_request_may_go():
    on_head = Request("driver + part writer", {"CPU": 0.1}, 1, "head", node_types=("head",))
    [problem] = check_requests([on_head], NODES)
    assert "'driver + part writer'" in problem and "'CPU'" in problem


# ------------------------------------------------------------------ configs against cluster.yaml


def test_paper_config_stages_land_on_their_groups():
    result = check_cluster(CLUSTER, [CONFIGS / "syncxr-200k.yaml"], **DRIVER)
    assert result.problems == []
    fits = {r.stage: set(r.fits_on) for r in result.requests[str(CONFIGS / "syncxr-200k.yaml")]}
    assert fits["reports"] == fits["report_qc"] == {"llm_8x"}
    assert fits["images"] == fits["qc.embedder"] == fits["qc.judge"] == {"diff_1x", "diff_4x"}
    assert fits["driver + part writer"] == {"cpu"}


def test_paper_config_reports_need_the_tensor_parallel_gpus_on_one_node():
    [reports] = [r for r in config_requests(CONFIGS / "syncxr-200k.yaml")[1] if r.stage == "reports"]
    assert reports.bundle["GPU"] == 4 and reports.bundle["accelerator_type:H100"] > 0 and "llm_group" in reports.bundle


def test_smoke_config_fits_the_same_groups():
    result = check_cluster(CLUSTER, [CONFIGS / "syncxr-smoke.yaml"], **DRIVER)
    assert result.problems == []
    fits = {r.stage: set(r.fits_on) for r in result.requests[str(CONFIGS / "syncxr-smoke.yaml")]}
    assert fits["reports"] == {"llm_8x"} and fits["images"] == {"diff_1x", "diff_4x"}


def test_driver_on_a_cpu_less_head_is_refused():
    result = check_cluster(CLUSTER, [CONFIGS / "syncxr-200k.yaml"])
    [problem] = result.problems
    assert "'driver + part writer'" in problem and "'CPU'" in problem and "--entrypoint-resources" in problem


def paper_config(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((CONFIGS / "syncxr-200k.yaml").read_text())
    edit(data)
    data["reports"]["prompt"] = str(CONFIGS / data["reports"]["prompt"])
    return write(tmp_path / "edited.yaml", data)


def test_stage_asking_for_an_unknown_group_is_refused_by_the_cli(tmp_path, capsys):
    config = paper_config(tmp_path, lambda d: d["images"]["resources"].update(custom={"tpu_group": 1}))
    code = main(["check-cluster", "--cluster", str(CLUSTER), "--config", str(config),
                 "--entrypoint-resources", '{"cpu_group": 1}', "--entrypoint-num-cpus", "4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "syncxr check-cluster: error:" in err and "stage 'images'" in err and "'tpu_group'" in err


def test_tensor_parallel_beyond_a_node_is_refused(tmp_path):
    config = paper_config(tmp_path, lambda d: d["reports"]["options"].update(tensor_parallel_size=16))
    [problem] = check_cluster(CLUSTER, [config], **DRIVER).problems
    assert "stage 'reports' needs 16 'GPU' on one node" in problem and "tensor_parallel_size" in problem


def test_broken_cluster_yaml_is_refused_by_the_cli(tmp_path, capsys):
    raw = cluster_raw()
    del raw["available_node_types"]["llm_8x"]["resources"]
    code = main(["check-cluster", "--cluster", str(write(tmp_path / "c.yaml", raw))])
    err = capsys.readouterr().err
    assert code == 2 and "available_node_types.llm_8x" in err and "'resources' is a required property" in err


def test_good_cluster_and_config_pass_the_cli(capsys):
    code = main(["check-cluster", "--cluster", str(CLUSTER), "--config", str(CONFIGS / "syncxr-200k.yaml"),
                 "--entrypoint-resources", '{"cpu_group": 1}', "--entrypoint-num-cpus", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "ok: every stage fits" in out and "reports" in out and "-> llm_8x" in out


# ------------------------------------------------------------------ training and sweep configs


SCALING = {"num_workers": 16, "use_gpu": True, "cpus_per_worker": 8, "gpus_per_worker": 1,
           "accelerator_type": "A100", "resources": {"train_group": 1}}


def test_training_workers_fit_the_training_group(tmp_path):
    config = write(tmp_path / "train.yaml", {"epochs": 1, "scaling": SCALING})
    result = check_cluster(CLUSTER, [config])
    assert result.problems == [] and result.requests[str(config)][0].fits_on == ["train_8x"]


def test_training_workers_beyond_the_group_or_on_the_wrong_accelerator_are_refused(tmp_path):
    too_many = write(tmp_path / "a.yaml", {"scaling": {**SCALING, "num_workers": 17}})
    wrong = write(tmp_path / "b.yaml", {"scaling": {**SCALING, "accelerator_type": "H100"}})
    [p1] = check_cluster(CLUSTER, [too_many]).problems
    [p2] = check_cluster(CLUSTER, [wrong]).problems
    assert "stage 'train.scaling' needs 17 x" in p1 and "at most 16" in p1
    assert "stage 'train.scaling'" in p2 and "no node type has all of it" in p2


def test_sweep_counts_concurrent_trials_and_reads_the_train_file(tmp_path):
    write(tmp_path / "train.yaml", {"scaling": {**SCALING, "num_workers": 8}})
    ok = write(tmp_path / "tune-ok.yaml", {"train_config": "train.yaml", "max_concurrent_trials": 2})
    over = write(tmp_path / "tune-over.yaml", {"train_config": "train.yaml", "max_concurrent_trials": 3,
                                                "train": {"scaling": {"num_workers": 8}}})
    assert check_cluster(CLUSTER, [ok]).problems == []
    [problem] = check_cluster(CLUSTER, [over]).problems
    assert "'tune trial workers' needs 24 x" in problem and "3 concurrent trials" in problem


SHIPPED = sorted([*(ROOT / "train" / "configs").glob("t*-*.yaml"), *(ROOT / "workflows" / "configs").glob("tune-*.yaml")])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_training_and_sweep_configs_fit(path):
    # a sweep that synthesises runs the engine's stages and a driver: on a CPU node, as submitted
    assert check_cluster(CLUSTER, [path], {"cpu_group": 1}, 4).problems == []


def test_a_sweep_over_synthesis_asks_for_the_engine_groups_and_the_train_group():
    from engine.cluster.requests import config_requests

    kind, reqs = config_requests(ROOT / "workflows" / "configs" / "tune-synth-paper.yaml", {"cpu_group": 1}, 4)
    stages = {r.stage: r.bundle for r in reqs}
    assert kind == "tune" and stages["reports"].get("llm_group") == 4 and stages["images"].get("diffusion_group") == 1
    assert stages["tune trial workers"]["GPU"] == 1


def test_the_paper_scale_experiment_fits_with_its_driver_on_a_cpu_node():
    config = ROOT / "workflows" / "configs" / "experiment-paper.yaml"
    assert check_cluster(CLUSTER, [config], {"cpu_group": 1}, 4).problems == []
    [problem] = check_cluster(CLUSTER, [config]).problems  # the driver would land on the head
    assert "driver" in problem


def test_check_cluster_is_a_listed_command(capsys):
    assert main(["--help"]) == 0
    assert "check-cluster" in capsys.readouterr().out


def _has_custom_field() -> bool:
    from engine.core.config import StageResources

    return "custom" in StageResources.model_fields


@pytest.mark.skipif(not _has_custom_field(), reason="engine.core.config.StageResources has no `custom` field yet")
@pytest.mark.parametrize("name", ["syncxr-200k.yaml", "syncxr-smoke.yaml"])
def test_cluster_configs_load_with_the_engine_schema(name):
    from engine.core.config import load_config

    cfg = load_config(CONFIGS / name)
    assert cfg.reports.resources.custom == {"llm_group": 1} and cfg.images.resources.custom == {"diffusion_group": 1}
