"""`syncxr synth`: plan -> reports -> report QC -> images -> image QC -> staged parts, in rounds,
then the global near-duplicate and privacy step, then the finished dataset.

Resume is built on two facts: every staged part is whole (atomic write, content-named) and every
row is a pure function of (plan row, attempt, config). So a rerun reads what is staged, skips
it, and recomputes only the rest; a round is closed by a marker file once its global QC is
decided, and the final dataset is always rebuilt from the staged parts.

Layout of DIR: plan.parquet, staging/round-R/{part-*.parquet, global_qc.parquet, DONE},
data/part-*.parquet, rejected/part-*.parquet, embeddings/part-*.parquet, manifest.json,
DATACARD.md (+ plots).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core.errors import UserError
from engine.plan.sampler import PLAN_SCHEMA
from engine.core.files import write_json
from engine.core.status import RowStatus
from engine.synth.layout import RunLayout
from engine.core.sink import read_parts



class RunStopped(UserError):
    """The run stopped itself (too many row errors); what was written stays and a rerun resumes."""


def fold_seed(seed: int, attempt: int) -> int:
    """Attempt 0 keeps the plan seed (a standalone stage run reproduces round 0); later attempts
    get a fresh, deterministic seed."""
    if attempt == 0:
        return int(seed)
    z = (int(seed) ^ (attempt * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


@dataclass
class RoundTally:
    processed: int = 0
    passed: int = 0
    errors: int = 0
    first_error: str = ""
    rejected_by: dict = field(default_factory=dict)
    busy: dict = field(default_factory=dict)

    def add(self, batch: dict) -> None:
        ok = np.asarray(batch["ok"], dtype=bool)
        self.processed += ok.size
        self.passed += int(ok.sum())
        for good, reasons in zip(ok, batch["reasons"]):
            if good or reasons is None or len(reasons) == 0:
                continue
            first = str(reasons[0])
            status = RowStatus.parse(first)
            self.rejected_by[status.stage] = self.rejected_by.get(status.stage, 0) + 1
            if status.kind == "error":
                self.errors += 1
                self.first_error = self.first_error or first
        for key, col in batch.items():
            if key.startswith("busy_"):
                self.busy[key[5:]] = self.busy.get(key[5:], 0.0) + float(np.sum(col))


def check_error_budget(tally: RoundTally, max_fraction: float, staging: Path, min_rows: int = 20) -> None:
    if tally.processed >= min_rows and tally.errors > max_fraction * tally.processed:
        raise RunStopped(
            f"stopped: {tally.errors} of {tally.processed} rows failed with errors "
            f"({tally.errors / tally.processed:.1%} > engine.max_error_fraction={max_fraction:.1%}); "
            f"first: {tally.first_error}. Rows already written are kept in {staging}; fix the cause "
            f"and rerun the same command to resume")


def pending_rows(plan: pa.Table, done_ids: set[str], attempt: int) -> pa.Table:
    """Plan rows not yet decided, with the attempt folded into the seed."""
    if done_ids:
        mask = pc.invert(pc.is_in(plan.column("sample_id"), value_set=pa.array(sorted(done_ids), pa.string())))
        plan = plan.filter(mask)
    seeds = [fold_seed(s, attempt) for s in plan.column("seed").to_pylist()]
    return pa.table({
        "sample_id": plan.column("sample_id"),
        "entities": plan.column("entities"),
        "seed": pa.array(seeds, pa.int64()),
        "plan_seed": plan.column("seed"),
        "attempt": pa.array([attempt] * plan.num_rows, pa.int64()),
    })


def staged_ids(round_dir: Path) -> set[str]:
    t = read_parts(round_dir, ["sample_id"])
    return set(t.column("sample_id").to_pylist()) if t is not None else set()


def read_or_write_plan(cfg, n: int, out: Path) -> pa.Table:
    """Reuse DIR/plan.parquet (it must have n rows) or write it from the corpus."""
    path = RunLayout(out).plan
    if path.is_file():
        plan = pq.read_table(path)
        missing = [f.name for f in PLAN_SCHEMA if f.name not in plan.column_names]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
        if plan.num_rows != n:
            raise UserError(f"{path} holds {plan.num_rows} samples but --n is {n}: use another --out, or --n {plan.num_rows}")
        return plan.select([f.name for f in PLAN_SCHEMA])
    from engine.text.vocabulary import write_entities
    from engine.plan.write import write_plan

    table, _ = write_entities(cfg, out)  # the corpus side of the data card's balance plot
    plan, _ = write_plan(cfg, n, out, table)
    return plan


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_run_config(cfg, out: Path, n: int) -> None:
    """A directory belongs to one (config, n): resuming with other settings would mix datasets."""
    path = RunLayout(out).run_json
    mine = {"config_digest": cfg.digest(), "n": n}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if {k: theirs.get(k) for k in mine} != mine:
            raise UserError(
                f"{out} holds a run with other settings (config digest {theirs.get('config_digest')}, "
                f"n={theirs.get('n')}; now {mine['config_digest']}, n={n}): use a new --out")


def record_run_config(cfg, out: Path, n: int) -> None:
    """Claim the directory, once the plan is there (a run that failed before has not claimed it)."""
    if not RunLayout(out).run_json.is_file():
        write_json(RunLayout(out).run_json, {"config_digest": cfg.digest(), "n": n, "config": cfg.model_dump(mode="json")})


def run_synth(cfg, n: int, out: Path, address: str | None = None) -> dict:
    from engine.qc.stages import embedder_signature, privacy_reference
    from engine.core.ray_session import cluster_address, init_ray
    from engine.synth.round import (build_round_dataset, can_run_inline, check_stage_resources, decide_global_qc,
                                     prepare_stages, run_round_inline)

    out = Path(out)
    stages = prepare_stages(cfg)  # driver-side checks (backends, prompt, bank) before any work
    check_run_config(cfg, out, n)
    plan = read_or_write_plan(cfg, n, out)
    record_run_config(cfg, out, n)
    ray = init_ray(cfg.engine, address)
    check_stage_resources(ray, cfg, strict=cluster_address(cfg.engine, address) is None)
    privacy_index = privacy_reference(cfg, embedder_signature(cfg.qc.embedder))
    layout = RunLayout(out)
    staging = layout.staging
    kept: set[str] = set()
    rounds = []
    started = time.time()
    for r in range(cfg.engine.max_rounds):
        if len(kept) >= plan.num_rows:
            break
        round_dir = layout.round_dir(r)
        t0 = time.time()
        resumed = layout.done_marker(round_dir).is_file()
        if not resumed:
            pending = pending_rows(plan, kept | staged_ids(round_dir), r)
            if pending.num_rows:
                tally = RoundTally()
                prefix = layout.part_prefix(r)
                if r > 0 and pending.num_rows <= cfg.engine.inline_max_rows and can_run_inline(cfg, stages):
                    batches = run_round_inline(cfg, stages, pending, round_dir, prefix)
                else:
                    ds = build_round_dataset(ray, cfg, stages, pending, round_dir, prefix)
                    batches = ds.iter_batches(batch_size=None, batch_format="numpy")
                for batch in batches:
                    tally.add(batch)
                    check_error_budget(tally, cfg.engine.max_error_fraction, staging)
            decide_global_qc(cfg, staging, r, privacy_index)
            layout.done_marker(round_dir).touch()
        summary = round_summary(round_dir, r)
        kept |= summary.pop("kept_ids")
        summary["seconds"] = round(time.time() - t0, 1)
        rounds.append(summary)
        log(f"round {r}: {summary['tried']} tried, {summary['passed_stages']} passed the stages, "
            f"{summary['kept']} kept after global QC; total {len(kept)}/{plan.num_rows}"
            f"{' (already done)' if resumed else ''} [{summary['seconds']}s]; rejected by: {summary['rejected_by'] or '-'}")
    from engine.synth.finalize import finalize

    return finalize(cfg, out, plan, staging, rounds, seconds=time.time() - started)


def round_summary(round_dir: Path, r: int) -> dict:
    rows = read_parts(round_dir, ["sample_id", "ok", "reasons"])
    qc_path = RunLayout.global_qc(round_dir)
    qc = pq.read_table(qc_path) if qc_path.is_file() else None
    kept_ids = set()
    rejected_by: dict[str, int] = {}
    if qc is not None:
        for sid, k, reason in zip(*(qc.column(c).to_pylist() for c in ("sample_id", "kept", "reason"))):
            if k:
                kept_ids.add(sid)
            else:
                key = RowStatus.parse(reason).stage
                rejected_by[key] = rejected_by.get(key, 0) + 1
    passed = 0
    if rows is not None:
        for ok, reasons in zip(rows.column("ok").to_pylist(), rows.column("reasons").to_pylist()):
            passed += bool(ok)
            if not ok and reasons:
                key = RowStatus.parse(reasons[0]).stage
                rejected_by[key] = rejected_by.get(key, 0) + 1
    return {"round": r, "tried": rows.num_rows if rows is not None else 0, "passed_stages": passed,
            "kept": len(kept_ids), "kept_ids": kept_ids, "rejected_by": rejected_by}
