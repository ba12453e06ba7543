"""Shared fixtures. One local Ray session per test run (Ray start-up is seconds here): tests that
need Ray take `ray_session`. It starts its own cluster, never attaching to one already running."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    # Ray workers inherit this: they can import test helper modules (tests/synth_fakes.py)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    temp_dir = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(temp_dir),
             log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_run(ray_session, tmp_path_factory):
    """A finished 24-sample synth run (local config, 128 px), made once per test session: the
    published dataset that the reader, training and evaluation tests open."""
    from engine.core.config import load_config
    from engine.synth.run import run_synth

    cfg = load_config(None, {"images": {"size": 128}, "engine": {"num_cpus": 2}})
    out = tmp_path_factory.mktemp("synth-run") / "run"
    manifest = run_synth(cfg, 24, out)
    assert manifest["complete"], manifest["counts"]
    return out
