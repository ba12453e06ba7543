"""RUN/metrics.jsonl, written on the driver's node: every record the workers pass to
`ray.train.report` reaches a Ray Train callback, which runs in the Train controller (Ray places it
on the driver's node), and rank 0's record is appended here. No worker writes into RUN, so a
cluster whose workers do not mount the driver's disk loses nothing.

A record names the worker group's placement group (PLACEMENT_GROUP_KEY) so that Tune can release
it when it stops a trial (workflows/tune.py); the key is dropped from the file."""
from __future__ import annotations

import json
from pathlib import Path

from ray.train.v2.api.callback import UserCallback

METRICS_FILE = "metrics.jsonl"
PLACEMENT_GROUP_KEY = "placement_group_id"


def public_record(record: dict) -> dict:
    """A reported record without the bookkeeping keys a reader of the run has no use for."""
    return {k: v for k, v in record.items() if k != PLACEMENT_GROUP_KEY}


class MetricsLog(UserCallback):
    """RUN/metrics.jsonl, as a Ray Train callback: built on the driver, where opening it for a
    resumed run drops the records past the restored step (from the attempt that was killed, so the
    file reads as one uninterrupted run); then, in the Train controller, it appends rank 0's record
    of every report."""

    def __init__(self, run_dir: str | Path, restored_step: int):
        self.path = Path(run_dir).resolve() / METRICS_FILE
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= restored_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(public_record(record)) + "\n")

    def after_report(self, run_context, metrics, checkpoint):
        if metrics:
            self.write(metrics[0])
