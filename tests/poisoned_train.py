"""`python -m poisoned_train <step> <syncxr args...>`: the syncxr CLI on a local Ray whose training
workers make the loss of training step <step> NaN. Test-only: the worker setup hook patches the
model in each Ray worker, so production code carries no switch for it."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

STEP_VAR = "POISONED_TRAIN_STEP"  # read by this test module only, in the workers


def install() -> None:
    """Ray's worker_process_setup_hook: runs once in every worker before it takes work."""
    import torch

    from train.models.base import ContrastiveModel

    poisoned, original, calls = int(os.environ[STEP_VAR]), ContrastiveModel.loss, [0]

    def loss(self, features, gather=True):
        value = original(self, features, gather)
        if self.training and torch.is_grad_enabled():  # optimizer steps, not validation
            calls[0] += 1
            if calls[0] == poisoned:
                value = value * float("nan")
        return value

    ContrastiveModel.loss = loss


def main(argv: list[str]) -> int:
    import logging

    import ray

    from engine.cli import main as syncxr_main
    from engine.core.ray_session import quiet_ray_data, quiet_ray_logs

    temp_dir = tempfile.mkdtemp(prefix="sxp-", dir="/tmp")  # short: Ray's socket paths
    try:
        quiet_ray_logs()  # as the CLI's own Ray start does
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
                 logging_level=logging.ERROR,
                 runtime_env={"worker_process_setup_hook": "poisoned_train.install",
                              "env_vars": {STEP_VAR: argv[0]}})
        quiet_ray_data()
        return syncxr_main(argv[1:])
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
