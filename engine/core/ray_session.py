"""Connect to Ray: an existing cluster (--address, RAY_ADDRESS or engine.address) or an embedded
local one that never attaches to a cluster someone else started on this machine."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def cluster_address(engine_cfg, address: str | None = None) -> str | None:
    """The Ray cluster to join, or None for an embedded one."""
    return address or engine_cfg.address or os.environ.get("RAY_ADDRESS")


def init_ray(engine_cfg, address: str | None = None, quiet: bool = True):
    import ray

    if ray.is_initialized():
        return ray
    address = cluster_address(engine_cfg, address)
    if address:
        ray.init(address=address, log_to_driver=not quiet)
    else:
        # A short private temp dir: Ray's socket paths must stay under ~100 characters.
        temp_dir = tempfile.mkdtemp(prefix="syncxr-ray-")
        ray.init(address="local", num_cpus=engine_cfg.num_cpus, include_dashboard=False,
                 _temp_dir=temp_dir, log_to_driver=not quiet, configure_logging=quiet)
        atexit.register(_shutdown_and_clean, ray, temp_dir)
    return ray


def _shutdown_and_clean(ray, temp_dir: str) -> None:
    """The embedded Ray's session files (logs, sockets) go when the driver exits normally."""
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
