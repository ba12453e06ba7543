"""`syncxr synth`: plan -> reports -> report QC -> images -> image QC -> staged parts, in rounds,
then the global near-duplicate and privacy step, then the finished dataset.

Resume is built on two facts: every staged part is whole (atomic write, content-named) and every
row is a pure function of (plan row, attempt, config). So a rerun reads what is staged, skips
it, and recomputes only the rest; a round is closed by a marker file once its global QC is
decided, and the final dataset is always rebuilt from the staged parts.

A rerun trusts nothing it has not checked (engine/synth/integrity.py): the directory must be
syncxr's and this run's (run.json: config digest, n, digests of the files it reads), the plan must
match its record, and each round's staged parts and global QC their records; a part that is
missing or damaged is deleted and its rows recomputed, a damaged global QC decided again. The
directory is claimed only after the pre-flight checks (stages, cluster, plan settings) pass.

Layout of DIR: engine/synth/layout.py.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core.errors import UserError
from engine.plan.sampler import PLAN_SCHEMA
from engine.core.files import RECORDS, file_record
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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the plan and the directory's claim

PLAN_FILES = ("entities.parquet", "stats.json", "rank_frequency.png", "plan.parquet", "plan_stats.json",
              "plan_balance.png")


def compute_plan_files(cfg, n: int, where: Path, entities: pa.Table | None = None) -> tuple[pa.Table, dict]:
    """Extract the corpus (unless an entity table is given), check the plan settings and write
    the plan's files into `where` (a private temporary directory). -> (plan, plan stats)"""
    from engine.plan.checks import check_plan_memory
    from engine.plan.write import write_plan
    from engine.text.vocabulary import write_entities

    check_plan_memory(cfg, n)  # before the corpus is read; write_plan checks the rest
    if entities is None:
        entities, _ = write_entities(cfg, where)  # the corpus side of the data card's balance plot
    return write_plan(cfg, n, where, entities)


def _move_into(src_dir: Path, out: Path) -> dict:
    """Move the files of src_dir into out, each atomically; -> {name: record}."""
    from engine.core.files import atomic_path, file_record

    records = {}
    for f in sorted(src_dir.iterdir()):
        if not f.is_file():
            continue
        with atomic_path(out / f.name) as tmp:
            shutil.copyfile(f, tmp)
        records[f.name] = file_record(out / f.name)
    return records


def plan_files_ok(out: Path, marker: dict) -> str:
    """'' when the plan files recorded in run.json are all there and intact, else why not."""
    from engine.synth.integrity import check_unrecorded_table, matches

    recorded = marker.get("files")
    if recorded is None:  # an older run: the plan only, read whole
        why, _ = check_unrecorded_table(RunLayout(out).plan)
        return f"plan.parquet: {why}" if why else ""
    for name, record in recorded.items():
        why = matches(out / name, record)
        if why:
            return f"{name}: {why}"
    return ""


def settle_plan(cfg, n: int, out: Path, mine: dict, theirs: dict | None, entities: pa.Table | None = None,
                rewrite: bool = False) -> tuple[pa.Table, dict | None]:
    """The run's plan, checked against its record, and the directory claimed for `mine`.

    A plan that is there and intact is reused. Otherwise (a new directory, a damaged or deleted
    plan file, or `rewrite`) it is computed in a temporary directory first: only a plan whose
    settings pass claims the directory, and a recomputed plan must be the one recorded.
    -> (plan, stats when computed)"""
    from engine.synth.integrity import claim, plan_digest

    out = Path(out)
    layout = RunLayout(out)
    if theirs is not None and not rewrite:
        why = plan_files_ok(out, theirs)
        if not why:
            plan = _read_plan(layout.plan, n)
            claim(out, mine, theirs, plan_digest=theirs.get("plan_digest") or plan_digest(plan),
                  files=theirs.get("files") or {"plan.parquet": file_record(layout.plan, plan.num_rows)})
            return plan, None
        log(f"{out}: {why}; recomputing the plan")
    with tempfile.TemporaryDirectory(prefix="syncxr-plan-") as tmp:
        plan, stats = compute_plan_files(cfg, n, Path(tmp), entities)
        digest = plan_digest(plan)
        if theirs is not None and theirs.get("plan_digest") not in (None, digest):
            raise UserError(f"{layout.plan}: the recorded plan cannot be rebuilt (the corpus or entity table "
                            f"now gives another plan): this run cannot resume; use another --out")
        staged = {name: file_record(Path(tmp) / name) for name in PLAN_FILES if (Path(tmp) / name).is_file()}
        claim(out, mine, theirs, plan_digest=digest, files=staged)  # the claim, then the files it names
        _move_into(Path(tmp), out)
    return plan, stats


def _read_plan(path: Path, n: int) -> pa.Table:
    plan = pq.read_table(path)
    missing = [f.name for f in PLAN_SCHEMA if f.name not in plan.column_names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if plan.num_rows != n:
        raise UserError(f"{path} holds {plan.num_rows} samples but --n is {n}: use another --out, or --n {plan.num_rows}")
    return plan.select([f.name for f in PLAN_SCHEMA])


def owned_run(out: Path, mine: dict, command: str = "synth") -> dict | None:
    """The marker of OUT if `mine` may write there (None: a new or empty directory), else a UserError."""
    from engine.synth.integrity import identity_conflict, read_marker

    theirs = read_marker(out)
    if theirs is None:
        return None
    if mine["kind"] == "plan" and theirs["kind"] != "plan":
        raise UserError(f"{out} is a synth run directory: its plan belongs to that run and is not rewritten; "
                        "use another --out")
    conflict = identity_conflict(theirs, mine)
    if conflict:
        raise UserError(f"{out} {conflict}: use a new --out")
    return theirs


def read_or_write_plan(cfg, n: int, out: Path, entities: pa.Table | None = None, extra_inputs=None) -> pa.Table:
    """Reuse OUT's plan (it must be intact and have n rows) or write it, claiming OUT for a plan
    that `syncxr synth` with the same settings adopts."""
    from engine.synth.integrity import check_out_arg, identity

    out = check_out_arg(out)
    mine = identity(cfg, n, "plan", extra_inputs)
    theirs = owned_run(out, mine)
    if theirs is not None and theirs["kind"] == "synth":
        mine = {**mine, "kind": "synth"}
    return settle_plan(cfg, n, out, mine, theirs, entities)[0]


# ---------------------------------------------------------------- the run


class _Cluster:
    """Ray and the privacy index, started when first needed (a finished run, or one whose open
    rounds are small, reruns without it)."""

    def __init__(self, cfg, address, stages, verbose: bool = False):
        self.cfg, self.address, self.stages, self.verbose = cfg, address, stages, verbose
        self.ray = None
        self._privacy = False

    def start(self):
        from engine.core.ray_session import cluster_address, init_ray
        from engine.synth.round import check_stage_resources

        if self.ray is None:
            self.ray = init_ray(self.cfg.engine, self.address, verbose=self.verbose)
            check_stage_resources(self.ray, self.cfg, strict=cluster_address(self.cfg.engine, self.address) is None)
        return self.ray

    def privacy(self):
        from engine.qc.bank import embedder_signature
        from engine.qc.stages import privacy_reference

        if self._privacy is False:
            self._privacy = privacy_reference(self.cfg, embedder_signature(self.cfg.qc.embedder))
        return self._privacy


def run_synth(cfg, n: int, out: Path, address: str | None = None, verbose: bool = False) -> dict:
    from engine.core.ray_session import cluster_address, probe_address
    from engine.synth.finalize import recover_published
    from engine.synth.integrity import check_out_arg, fault_point, identity
    from engine.synth.round import prepare_stages

    out = check_out_arg(out)
    stages = prepare_stages(cfg)  # driver-side checks (backends, prompt, bank) before any work
    mine = identity(cfg, n, "synth")
    theirs = owned_run(out, mine)
    cluster = _Cluster(cfg, address, stages, verbose)
    target = cluster_address(cfg.engine, address)
    if target:
        probe_address(target)  # fails fast, before anything is written
    if theirs is None or theirs["kind"] != "synth":
        cluster.start()  # the pre-flight checks that need the cluster pass before the claim
        cluster.privacy()
    plan, _ = settle_plan(cfg, n, out, mine, theirs)
    fault_point("plan-written")
    recover_published(out)
    layout = RunLayout(out)
    staging = layout.staging
    kept: set[str] = set()
    rounds = []
    started = time.time()
    for r in range(cfg.engine.max_rounds):
        if len(kept) >= plan.num_rows:
            break
        t0 = time.time()
        for _ in range(3):
            summary, resumed = _round(cfg, stages, cluster, plan, kept, layout, r)
            lost = summary.pop("lost")
            if not lost:
                break
            # global QC names rows that are not staged: their part is gone; recompute them
            log(f"round {r}: {len(lost)} decided row(s) are not staged any more; reopening the round")
            layout.done_marker(layout.round_dir(r)).unlink(missing_ok=True)
        else:
            raise UserError(f"{layout.round_dir(r)}: rows keep disappearing from the staged parts; check the disk")
        kept |= summary.pop("kept_ids")
        summary["seconds"] = round(time.time() - t0, 1)
        rounds.append(summary)
        log(f"round {r}: {summary['tried']} tried, {summary['passed_stages']} passed the stages, "
            f"{summary['kept']} kept after global QC; total {len(kept)}/{plan.num_rows}"
            f"{' (already done)' if resumed else ''} [{summary['seconds']}s]; rejected by: {summary['rejected_by'] or '-'}")
    from engine.synth.finalize import finalize, published_manifest

    published = published_manifest(cfg, out, staging)
    if published is not None:
        log(f"{out}: finished before from these sealed rounds, every published file as recorded; nothing rewritten")
        return published
    return finalize(cfg, out, plan, staging, rounds, seconds=time.time() - started)


def _round(cfg, stages, cluster, plan, kept: set, layout: RunLayout, r: int) -> tuple[dict, bool]:
    """Check, run (what is pending), decide and seal round r. -> (summary, already done)"""
    from engine.synth.integrity import check_round, fault_point, seal_round
    from engine.synth.round import build_round_dataset, can_run_inline, decide_global_qc, run_round_inline

    round_dir = layout.round_dir(r)
    check = check_round(round_dir)
    if check.damaged:
        log(f"round {r}: {len(check.damaged)} staged part(s) missing or damaged, recomputing their rows: "
            f"{check.describe()}")
    if not check.sealed and not check.damaged and not check.qc_ok and round_dir.is_dir() \
            and RunLayout.global_qc(round_dir).exists():
        log(f"round {r}: its global QC table is damaged; deciding it again")
    if not check.sealed:
        reopened = round_dir.is_dir()  # a round started before: what is left is usually small
        round_dir.mkdir(parents=True, exist_ok=True)
        (round_dir / RECORDS).mkdir(exist_ok=True)  # every part gets a record as it is written
        pending = pending_rows(plan, kept | staged_ids(round_dir), r)
        if pending.num_rows:
            tally = RoundTally()
            prefix = layout.part_prefix(r)
            if ((r > 0 or reopened) and pending.num_rows <= cfg.engine.inline_max_rows
                    and can_run_inline(cfg, stages)):
                batches = run_round_inline(cfg, stages, pending, round_dir, prefix)
            else:
                ds = build_round_dataset(cluster.start(), cfg, stages, pending, round_dir, prefix)
                batches = ds.iter_batches(batch_size=None, batch_format="numpy")
            for batch in batches:
                tally.add(batch)
                fault_point("round-batch")
                check_error_budget(tally, cfg.engine.max_error_fraction, layout.staging)
        fault_point("global-qc")
        decide_global_qc(cfg, layout.staging, r, cluster.privacy())
        fault_point("global-qc-written")
        seal_round(round_dir)
    summary = round_summary(round_dir, r)
    if summary["unjudged"]:
        # staged rows that passed the stages have no global-QC decision: decide again
        decide_global_qc(cfg, layout.staging, r, cluster.privacy())
        seal_round(round_dir)
        summary = round_summary(round_dir, r)
    summary.pop("unjudged")
    return summary, check.sealed


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
    passed_ids = set()
    if rows is not None:
        for sid, ok, reasons in zip(*(rows.column(c).to_pylist() for c in ("sample_id", "ok", "reasons"))):
            passed += bool(ok)
            if ok:
                passed_ids.add(sid)
            if not ok and reasons:
                key = RowStatus.parse(reasons[0]).stage
                rejected_by[key] = rejected_by.get(key, 0) + 1
    decided = set(qc.column("sample_id").to_pylist()) if qc is not None else set()
    return {"round": r, "tried": rows.num_rows if rows is not None else 0, "passed_stages": passed,
            "kept": len(kept_ids & passed_ids), "kept_ids": kept_ids & passed_ids, "rejected_by": rejected_by,
            "lost": decided - passed_ids, "unjudged": passed_ids - decided}
