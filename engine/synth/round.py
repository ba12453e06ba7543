"""The stages of one synth round as one Ray Data pipeline, and the global QC step between rounds.

    pending plan rows -> report writer -> report QC gate -> image drawer -> image QC
    (embed, judge, reference filter) -> [dataset-level judge] -> part writer

Every row carries `ok` and `reasons` from the report QC gate on; later stages run only on the rows
still alive (engine.core.gate.Gated), so one bad row is one rejected row, never a failed batch. The
image QC steps share one actor: on a 2-CPU machine every extra actor pool is a CPU share taken
from the others. Rows leave the pipeline with a fixed set of columns (WORK_COLUMNS), so staged
parts of every round concatenate and a dataset-level judge knows what to carry.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from engine.core.errors import UserError
from engine.core.files import write_table
from engine.synth.layout import RunLayout
from engine.core.gate import Gated
from engine.core.sink import PartWriter, read_parts
from engine.core.stage import map_stage, object_column

WORK_COLUMNS = (
    "sample_id", "entities", "seed", "plan_seed", "attempt",
    "findings", "impression", "report_attempts", "report_notes",
    "image", "masks", "provenance",
    "embedding", "judge_flags", "judge_scores", "reference_similarity", "reference_match",
    "ok", "reasons",
)
# busy_<stage>: seconds of stage work per row (summed: the stage's busy time)
BUSY_STAGES = ("write_reports", "report_qc", "images", "embed", "judge", "reference")
ALL_COLUMNS = WORK_COLUMNS + tuple(f"busy_{s}" for s in BUSY_STAGES)
STAGE_ORDER = ("reports", "images", "embed", "judge", "reference", "dedup", "privacy")


@dataclass
class PreparedStages:
    """Everything checked and resolved on the driver before any actor starts."""

    report_cls: Any
    rcfg: Any
    prompt: Any
    image_cls: Any
    image_kwargs: dict
    judge_dataset_level: bool
    bank: Optional[str]


def prepare_stages(cfg) -> PreparedStages:
    from engine.images.pipeline import build_image_stage
    from engine.qc.bank import embedder_signature, load_bank
    from engine.qc.stages import JUDGES, check_backends
    from engine.reports.pipeline import prepare

    report_cls, rcfg, prompt = prepare(cfg)
    image_cls, image_kwargs = build_image_stage(cfg)
    check_backends(cfg.qc)
    bank = None
    if cfg.qc.bank:
        path = cfg.resolve(cfg.qc.bank)
        load_bank(path, cfg.qc.index, expect_embedder=embedder_signature(cfg.qc.embedder))  # fail early, clearly
        bank = str(Path(path).resolve())
    privacy = cfg.resolve(cfg.qc.privacy_images)
    if privacy is not None and not Path(privacy).exists():
        raise UserError(f"qc.privacy_images: {privacy} not found")
    judge_dataset_level = JUDGES.get(cfg.qc.judge.backend).attach_mode == "dataset"
    return PreparedStages(report_cls, rcfg, prompt, image_cls, image_kwargs, judge_dataset_level, bank)


def stage_resources(cfg) -> dict:
    """Actor pools of a round: name -> StageResources (the report writer's pool when it is a
    callable-class backend; ray.data.llm backends size their own)."""
    from engine.reports.pipeline import report_qc_resources

    pools = {"reports": cfg.reports.resources, "report_qc": report_qc_resources(cfg.reports.resources),
             "images": cfg.images.resources, "image_qc": cfg.qc.embedder.resources}
    return pools


WRITER_CPUS = 0.1


def check_stage_resources(ray, cfg, strict: bool = True) -> None:
    """Refuse a configuration whose smallest actor pools already fill the cluster: Ray Data
    would wait forever for CPUs the read and write tasks need. On a cluster that may still scale
    up (strict=False) it is a warning."""
    try:
        _check_pools(ray, cfg)
    except UserError as exc:
        if strict:
            raise
        print(f"warning: {exc} (going on: the cluster may scale up)", file=sys.stderr, flush=True)


def _check_pools(ray, cfg) -> None:
    total = ray.cluster_resources()
    cpus = float(total.get("CPU", 0))
    gpus = float(total.get("GPU", 0))
    pools = stage_resources(cfg)
    need_cpu = sum(r.num_cpus * r.min_actors for r in pools.values()) + WRITER_CPUS
    need_gpu = sum(r.num_gpus * r.min_actors for r in pools.values())
    if need_cpu >= cpus:
        detail = ", ".join(f"{k} {r.min_actors}x{r.num_cpus:g}" for k, r in pools.items())
        raise UserError(f"the stages' minimum actor pools need {need_cpu:g} CPUs ({detail}, writer {WRITER_CPUS}) "
                        f"but the cluster has {cpus:g}: lower resources.num_cpus or min_actors so that some CPU "
                        "stays free for reading and writing")
    if need_gpu > gpus:
        raise UserError(f"the stages ask for {need_gpu:g} GPUs but the cluster has {gpus:g} "
                        "(set resources.num_gpus: 0 for a CPU run, or start Ray on GPU nodes)")


# ---------------------------------------------------------------- stage classes


class ReportGate:
    """Report QC as the pipeline's first gate: accepted rows go on, the others leave with their
    reason ("reports: missing: ...", or "reports: error: ..." for a failure)."""

    def __init__(self, extractor: dict, tolerance: int = 0):
        from engine.reports.pipeline import ReportQC

        self.qc = ReportQC(extractor, tolerance)

    def __call__(self, batch: dict) -> dict:
        from engine.reports.pipeline import GENERATION_COLUMNS, report_verdict

        start = time.perf_counter()
        out = self.qc(batch)
        ok, reasons = report_verdict(out)
        result = {k: v for k, v in out.items()
                  if k not in ("accepted", "reasons", "report_error", "attempts") + GENERATION_COLUMNS}
        result["report_attempts"] = out["attempts"]
        result["report_notes"] = out["reasons"]  # what QC saw in the candidates (tolerated differences too)
        result["ok"] = ok
        result["reasons"] = object_column([[r] if r else [] for r in reasons])
        result["busy_report_qc"] = np.full(len(ok), (time.perf_counter() - start) / max(len(ok), 1))
        return result


class ImageStage(Gated):
    """The configured image backend, gated: only rows whose report passed are drawn."""

    def __init__(self, image_cls, image_kwargs: dict):
        from engine.images.pipeline import verdict

        super().__init__("images", image_cls, image_kwargs, verdict)


# typed values for steps that did not run, so an all-missing column keeps its type through Ray
COLUMN_DEFAULTS = {"findings": "", "impression": "", "report_attempts": 0, "judge_flags": [], "judge_scores": "",
                   "reference_match": ""}


def fixed_columns(batch: dict, dim: Optional[int] = None) -> dict:
    """The batch restricted to ALL_COLUMNS, absent ones filled (None, or 0 busy seconds), and the
    embedding as one float32 vector per row. A row that was never embedded (rejected earlier) gets
    zeros when the embedder's `dim` is known, else None. Zeros keep the column one tensor type in
    every batch: Ray Data stores a column of equal-shaped vectors as a tensor column and one with a
    None as Python objects, and refuses to join the two in one block (seen on real-like data, whose
    report gate rejects rows). Rows without an embedding are not `ok`, so no QC step reads them."""
    n = len(batch["sample_id"])
    out = {}
    for name in ALL_COLUMNS:
        if name in batch:
            out[name] = batch[name]
        elif name.startswith("busy_"):
            out[name] = np.zeros(n)
        elif name in COLUMN_DEFAULTS:
            out[name] = object_column([COLUMN_DEFAULTS[name]] * n)
        else:
            out[name] = object_column([None] * n)
    out["reference_similarity"] = np.array(
        [np.nan if v is None else float(v) for v in out["reference_similarity"]], np.float32)
    emb = out["embedding"]
    if isinstance(emb, np.ndarray) and emb.dtype != object:
        emb = list(emb)
    missing = None if dim is None else np.zeros(dim, np.float32)
    out["embedding"] = object_column([missing if v is None else np.asarray(v, np.float32) for v in emb])
    return out


class ImageQCStage:
    """Embed, judge (when it is a per-batch judge) and the reference filter, in one actor."""

    def __init__(self, embedder: dict, judge: Optional[dict], reference: Optional[dict]):
        from engine.qc.stages import (EmbedStage, JudgeStage, ReferenceFilterStage, embed_verdict, judge_verdict,
                                      reference_verdict)

        self.steps = [Gated("embed", EmbedStage, embedder, embed_verdict)]
        if judge is not None:
            self.steps.append(Gated("judge", JudgeStage, judge, judge_verdict))
        if reference is not None:
            verdict = reference_verdict(reference["threshold"])
            self.steps.append(Gated("reference", ReferenceFilterStage, reference, verdict))
        self.dim = int(self.steps[0].inner.embedder.dim)

    def __call__(self, batch: dict) -> dict:
        for step in self.steps:
            batch = step(batch)
        return fixed_columns(batch, self.dim)


def gate_dataset_judge(batch: dict) -> dict:
    """After a dataset-level judge (MLLM through ray.data.llm): its verdict counts only for the
    rows that were still alive; rows rejected earlier went through it only to stay in the stream."""
    from engine.qc.stages import judge_verdict

    ok = np.asarray(batch["ok"], dtype=bool).copy()
    reasons = [list(r) if r is not None else [] for r in batch["reasons"]]
    v_ok, v_reasons = judge_verdict(batch)
    for i in np.flatnonzero(ok & ~v_ok):
        ok[i] = False
        reasons[i].append(v_reasons[i])
    out = {k: batch[k] for k in ALL_COLUMNS if k in batch}
    out["ok"] = ok
    out["reasons"] = object_column(reasons)
    return out


def _backend_kwargs(section) -> dict:
    return dict(backend=section.backend, model=section.model, options=dict(section.options))


def _reference_kwargs(cfg, stages: PreparedStages) -> Optional[dict]:
    from engine.qc.bank import embedder_signature

    if not stages.bank:
        return None
    return {"bank": stages.bank, "threshold": cfg.qc.reference_threshold,
            "index": cfg.qc.index.model_dump(), "embedder": embedder_signature(cfg.qc.embedder)}


def stage_chain(cfg, stages: PreparedStages) -> list:
    """The round's stages as plain objects, called one after the other in this process."""
    from engine.reports.pipeline import CandidateStage

    if not issubclass(stages.report_cls, CandidateStage) or stages.judge_dataset_level:
        raise ValueError("a ray.data.llm backend cannot run outside Ray Data")
    writer = stages.report_cls(**stages.report_cls.constructor_kwargs(stages.rcfg, stages.prompt))
    return [writer, ReportGate(cfg.extractor.model_dump(), stages.rcfg.tolerance),
            ImageStage(stages.image_cls, stages.image_kwargs),
            ImageQCStage(_backend_kwargs(cfg.qc.embedder), _backend_kwargs(cfg.qc.judge), _reference_kwargs(cfg, stages))]


def can_run_inline(cfg, stages: PreparedStages) -> bool:
    """Every stage is a CPU callable class (no GPU, no ray.data.llm engine)."""
    from engine.reports.pipeline import CandidateStage

    pools = stage_resources(cfg).values()
    return (issubclass(stages.report_cls, CandidateStage) and not stages.judge_dataset_level
            and all(r.num_gpus == 0 and not r.accelerator_type and not r.custom for r in pools))


def run_round_inline(cfg, stages: PreparedStages, pending: pa.Table, round_dir: Path, prefix: str):
    """A small retry round in the driver: the same stage classes on the same rows give the same
    rows as the Ray pipeline, without seconds of actor start-up for a handful of rows."""
    chain = stage_chain(cfg, stages)
    writer = PartWriter(str(round_dir), prefix)
    size = cfg.images.resources.batch_size
    for start in range(0, pending.num_rows, size):
        part = pending.slice(start, size)
        batch = {name: part.column(name).to_numpy() for name in part.column_names}  # as Ray hands it over
        for stage in chain:
            batch = stage(batch)
        yield writer(fixed_columns(batch))


def build_round_dataset(ray, cfg, stages: PreparedStages, pending: pa.Table, round_dir: Path, prefix: str):
    """The lazy pipeline of one round over `pending` (nothing runs until it is iterated)."""
    from engine.qc.stages import JUDGES
    from engine.reports.pipeline import report_qc_resources

    # blocks of about one image batch, so every actor pool gets work from the start
    rows_per_block = max(cfg.images.resources.batch_size, 1)
    ds = ray.data.from_arrow([pending.slice(i, rows_per_block) for i in range(0, pending.num_rows, rows_per_block)]
                             or [pending])
    ds = stages.report_cls.attach(ds, stages.rcfg, stages.prompt)
    ds = map_stage(ds, ReportGate, report_qc_resources(stages.rcfg.resources),
                   {"extractor": cfg.extractor.model_dump(), "tolerance": stages.rcfg.tolerance})
    ds = map_stage(ds, ImageStage, cfg.images.resources,
                   {"image_cls": stages.image_cls, "image_kwargs": stages.image_kwargs})
    judge = None if stages.judge_dataset_level else _backend_kwargs(cfg.qc.judge)
    ds = map_stage(ds, ImageQCStage, cfg.qc.embedder.resources,
                   {"embedder": _backend_kwargs(cfg.qc.embedder), "judge": judge,
                    "reference": _reference_kwargs(cfg, stages)})
    if stages.judge_dataset_level:
        ds = JUDGES.get(cfg.qc.judge.backend).apply(ds, cfg.qc.judge, keep_columns=list(ALL_COLUMNS))
        ds = ds.map_batches(gate_dataset_judge, batch_format="numpy", num_cpus=WRITER_CPUS)
    # The writer lives on the driver's node: the run directory need not be shared storage.
    on_driver_node = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    return ds.map_batches(PartWriter, fn_constructor_kwargs={"directory": str(round_dir), "prefix": prefix},
                          batch_size=None, batch_format="numpy", num_cpus=WRITER_CPUS,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
                          label_selector=on_driver_node)


# ---------------------------------------------------------------- global QC between rounds


def passed_rows(staging: Path, upto_round: int) -> tuple[list[str], list[str], np.ndarray]:
    """(round-qualified keys, sample_ids, embeddings) of every staged row that passed the stages
    in rounds 0..upto_round. Keys "RR/sample_id" order earlier rounds first."""
    keys, ids, vecs = [], [], []
    for r in range(upto_round + 1):
        t = read_parts(RunLayout(staging.parent).round_dir(r), ["sample_id", "ok", "embedding"])
        if t is None:
            continue
        t = t.filter(t.column("ok"))
        if t.num_rows == 0:
            continue
        sids = t.column("sample_id").to_pylist()
        keys += [f"{r:02d}/{sid}" for sid in sids]
        ids += sids
        # straight to numpy: a Python float per element would cost ~30 bytes each
        emb = t.column("embedding").combine_chunks()
        vecs.append(emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(t.num_rows, -1))
    return keys, ids, (np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32))


def global_decisions(cfg, keys: list[str], embeddings: np.ndarray, privacy_index=None) -> dict[str, tuple[bool, str]]:
    """key -> (kept, reason). Dedup runs over all rounds so far in key order, so a row kept in an
    earlier round stays kept; privacy is per row."""
    from engine.qc.stages import dedup_table, privacy_table

    if not keys:
        return {}
    out = {k: (True, "") for k in keys}
    dd = dedup_table(keys, embeddings, cfg.qc)
    for key, kept, dup, sim in zip(keys, dd.column("kept").to_pylist(), dd.column("duplicate_of").to_pylist(),
                                   dd.column("similarity").to_pylist()):
        if not kept:
            out[key] = (False, f"dedup: cosine {sim:.3f} > {cfg.qc.dedup_threshold} to {dup.split('/', 1)[1]}")
    if privacy_index is not None:
        pt = privacy_table(keys, embeddings, privacy_index, cfg.qc)
        for key, rej, sim in zip(keys, pt.column("privacy_reject").to_pylist(),
                                 pt.column("privacy_similarity").to_pylist()):
            if rej and out[key][0]:
                out[key] = (False, f"privacy: cosine {sim:.3f} > {cfg.qc.privacy_threshold} to a real training image")
    return out


def decide_global_qc(cfg, staging: Path, r: int, privacy_index=None) -> pa.Table:
    """Write staging/round-RR/global_qc.parquet: the rows of round r that passed the stages, with
    kept and the reason when not (near-duplicate of an earlier row, too close to a real image)."""
    keys, ids, emb = passed_rows(staging, r)
    decisions = global_decisions(cfg, keys, emb, privacy_index)
    mine = [(sid, *decisions[k]) for k, sid in zip(keys, ids) if k.startswith(f"{r:02d}/")]
    table = pa.table({"sample_id": pa.array([m[0] for m in mine], pa.string()),
                      "kept": pa.array([m[1] for m in mine], pa.bool_()),
                      "reason": pa.array([m[2] for m in mine], pa.string())})
    write_table(table, RunLayout.global_qc(RunLayout(staging.parent).round_dir(r)))
    return table

