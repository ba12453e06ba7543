"""Image backends for the synth tests: the real phantom, made to fail on chosen rows. Ray
workers import this module by name (the driver's sys.path travels with the job)."""
from __future__ import annotations

import time

import numpy as np

from engine.core.stage import Backend

from actors.phantom import PhantomStage


class FlakyPhantom(PhantomStage):
    """Raises (failing the whole batch) when it holds a row whose plan index is a multiple of
    `options.fail_every` (0: never) and whose attempt is below `options.fail_attempts`; sleeps
    `options.sleep_s` per batch, to keep a run going long enough to interfere with it."""

    def __init__(self, config=None):
        super().__init__(config)
        opts = dict((config or {}).get("options") or {})
        self.every = int(opts.get("fail_every", 5))
        self.attempts = int(opts.get("fail_attempts", 1))
        self.sleep_s = float(opts.get("sleep_s", 0))

    def __call__(self, batch: dict) -> dict:
        time.sleep(self.sleep_s)
        for sid, attempt in zip(batch["sample_id"], batch.get("attempt", np.zeros(len(batch["sample_id"])))):
            if self.every and int(str(sid).rsplit("-", 1)[1]) % self.every == 0 and int(attempt) < self.attempts:
                raise RuntimeError(f"cannot draw {sid}")
        return super().__call__(batch)


class FakeDatasetJudge(Backend):
    """A dataset-level judge shaped like the MLLM one (ray.data.llm): it sees every row, keeps only
    `keep_columns` plus its own, and flags every row whose plan index is a multiple of 4 as lateral."""

    name, section, attach_mode = "fake-dataset-judge", "qc.judge", "dataset"

    @staticmethod
    def apply(ds, judge_cfg, keep_columns=None):
        keep = list(keep_columns)

        def judge(batch: dict) -> dict:
            flagged = [int(str(s).rsplit("-", 1)[1]) % 4 == 0 for s in batch["sample_id"]]
            out = {k: batch[k] for k in keep}
            flags = np.empty(len(flagged), dtype=object)
            flags[:] = [["lateral"] if f else [] for f in flagged]
            out.update(judge_flags=flags, judge_problematic=np.array(flagged),
                       judge_scores=np.array(["{}"] * len(flagged), dtype=object),
                       judge_error=np.array([""] * len(flagged), dtype=object))
            return out

        return ds.map_batches(judge, batch_format="numpy", num_cpus=0.1)
