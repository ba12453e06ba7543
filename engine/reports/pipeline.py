"""The report-writing stage: plan rows -> candidate reports (a backend chosen by name) -> report
QC (first accepted candidate wins) -> reports.parquet.

Backends add two list columns to each plan row, `candidates` (raw texts) and `truncated` (one flag
per candidate: generation hit its token limit), plus `gen_error` ("" when the row generated).
A backend class offers `check(rcfg)` (driver-side validation, before any worker starts) and
`attach(ds, rcfg, prompt)`; callable-class backends get both from CandidateStage."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.text.entities import ENTITY_TYPES, build_extractor
from engine.core.errors import ConfigError, UserError
from engine.reports.prompts import PromptTemplate, load_prompt
from engine.core.ray_session import init_ray
from engine.core.registry import Registry
from engine.reports.qc import choose_candidates
from engine.core.stage import Backend, entity_lists, map_stage, object_column
from engine.core.files import atomic_path
from engine.core.gate import isolate_by_key
from engine.core.status import RowStatus

REPORT_BACKENDS = Registry("reports")
REPORT_BACKENDS.register("template", "actors.report_template:TemplateReportWriter")
REPORT_BACKENDS.register("transformers", "actors.report_transformers:TransformersReportWriter")
REPORT_BACKENDS.register("vllm", "actors.report_vllm:VLLMReportWriter")
REPORT_BACKENDS.register("openai", "actors.report_openai:OpenAIReportWriter")
REPORT_BACKENDS.register("corpus", "actors.report_corpus:CorpusReportWriter")

PLAN_COLUMNS = ("sample_id", "entities", "seed")
GENERATION_COLUMNS = ("candidates", "truncated", "gen_error")  # added by a backend, used by QC
_ENTITY_STRUCT = pa.struct([("text", pa.string()), ("type", pa.string())])
REPORTS_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("entities", pa.list_(_ENTITY_STRUCT)),
    ("seed", pa.int64()),
    ("findings", pa.string()),
    ("impression", pa.string()),
    ("accepted", pa.bool_()),
    ("reasons", pa.list_(pa.string())),
    ("attempts", pa.int64()),
])


def entity_problem(entities: list[dict]) -> str:
    """Why a plan row cannot be written about ("" when it can)."""
    if not entities:
        return "empty entity list"
    for e in entities:
        if e["type"] not in ENTITY_TYPES:
            return f"unknown entity type {e['type']!r} ({e['text']!r})"
        if not e["text"].strip():
            return f"entity with empty text ({e['type']})"
    return ""


INPUT_PROBLEMS = ("empty entity list", "unknown entity type", "entity with empty text")


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub id ("org/name" or "name")."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def check_model_source(rcfg) -> str:
    """A model directory that does not exist fails here, on the driver, in one line."""
    if not rcfg.model:
        raise ConfigError(f"reports.model: the {rcfg.backend!r} backend needs a model (a local directory or a hub id)")
    path = Path(rcfg.model).expanduser()
    if looks_like_path(rcfg.model) and not path.is_dir():
        raise UserError(f"reports.model: model directory {rcfg.model} not found")
    return str(path) if path.is_dir() else rcfg.model


def short_error(exc: BaseException, limit: int = 300) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def prompt_to_kwargs(prompt: PromptTemplate) -> dict:
    """The prompt travels to workers as plain fields, not as a path that may not exist there."""
    return dict(version=prompt.version, system=prompt.system, user=prompt.user,
                entity_line=prompt.entity_line, type_labels=dict(prompt.type_labels), path=prompt.path)


class CandidateStage(Backend):
    """Base of the callable-class report backends (template, transformers).

    Subclasses implement `generate(rows) -> list[(texts, truncated_flags)]` over valid rows
    ({"entities", "seed", "sample_id"}). A batch-level failure is retried row by row, so one bad
    row becomes that row's `gen_error` and never fails the batch."""

    section = "reports"
    reads = PLAN_COLUMNS
    writes = GENERATION_COLUMNS
    num_candidates: int = 1

    @classmethod
    def constructor_kwargs(cls, rcfg, prompt: PromptTemplate) -> dict:
        return {"num_candidates": rcfg.num_candidates, "options": dict(rcfg.options)}

    @classmethod
    def attach(cls, ds, rcfg, prompt: PromptTemplate):
        return map_stage(ds, cls, rcfg.resources, cls.constructor_kwargs(rcfg, prompt))

    def generate(self, rows: list[dict]) -> list[tuple[list[str], list[bool]]]:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        ents = entity_lists(batch["entities"])
        n = len(ents)
        cands: list[list[str]] = [[] for _ in range(n)]
        cut: list[list[bool]] = [[] for _ in range(n)]
        errors = [entity_problem(e) for e in ents]
        rows = [{"entities": ents[i], "seed": int(batch["seed"][i]), "sample_id": str(batch["sample_id"][i])}
                for i in range(n)]
        todo = [i for i in range(n) if not errors[i]]
        start = time.perf_counter()
        results, failed = isolate_by_key(self.generate, {i: rows[i] for i in todo})
        for i, exc in failed.items():
            errors[i] = f"generation failed: {short_error(exc)}"
        for i, (texts, flags) in results.items():
            cands[i], cut[i] = [str(t) for t in texts], [bool(f) for f in flags]
        out = dict(batch)
        out["candidates"] = object_column(cands)
        out["truncated"] = object_column(cut)
        out["gen_error"] = np.array(errors, dtype=object)
        out["busy_write_reports"] = np.full(n, (time.perf_counter() - start) / max(n, 1))  # for the data card
        return out


# Engines that answer one prompt with one text (vLLM in ray.data.llm, OpenAI servers without
# `n`) get one row per candidate, then the candidates are grouped back by sample_id.

class DatasetReportWriter(Backend):
    """Base of the report backends that run as a processor over the whole dataset (ray.data.llm):
    one row per (plan row, candidate) in, regrouped into candidates out."""

    section, attach_mode = "reports", "dataset"
    reads = PLAN_COLUMNS
    writes = GENERATION_COLUMNS


def candidate_seed(seed: int, candidate: int) -> int:
    """A distinct, reproducible sampling seed per (plan row, candidate), within int32."""
    return (int(seed) * 1_000_003 + int(candidate)) % (2**31 - 1)


def _plain(value):
    """A numpy scalar/array from a Ray row as a JSON-able Python value."""
    return value.tolist() if hasattr(value, "tolist") else value


def explode_candidates(row: dict, num_candidates: int) -> list[dict]:
    """One plan row -> `num_candidates` rows with a `candidate` index and the row's `gen_error`.
    Columns beyond the plan's (e.g. a round's `attempt`) ride along as JSON in `carry`."""
    ents = entity_lists([row["entities"]])[0]
    problem = entity_problem(ents)
    carry = json.dumps({k: _plain(v) for k, v in row.items() if k not in PLAN_COLUMNS})
    return [{"sample_id": str(row["sample_id"]), "entities": ents, "seed": int(row["seed"]),
             "candidate": c, "gen_error": problem, "carry": carry} for c in range(num_candidates)]


LLM_ROW_KEYS = ("sample_id", "entities", "seed", "candidate", "text", "truncated", "gen_error", "carry")


def normalise_llm_row(row: dict) -> dict:
    """Every row after an LLM processor, success or failure, reduced to LLM_ROW_KEYS. Failed rows
    skip the user postprocess (ray.data.llm passes them through with `__inference_error__`)."""
    error = str(row.get("gen_error") or "")
    failure = str(row.get("__inference_error__") or "")
    if failure and not error:
        error = f"inference failed: {failure[:300]}"
    return {"sample_id": str(row["sample_id"]), "entities": entity_lists([row["entities"]])[0],
            "seed": int(row["seed"]), "candidate": int(row["candidate"]),
            "text": "" if error else str(row.get("text") or ""),
            "truncated": bool(row.get("truncated") or False), "gen_error": error,
            "carry": str(row.get("carry") or "{}")}


def regroup_candidates(group: dict) -> dict:
    """`map_groups` over one sample_id: its candidate rows -> one row with the candidates list in
    candidate order. Failed candidates are left out; all failed -> the first error."""
    order = np.argsort(np.asarray(group["candidate"]), kind="stable")
    texts, cut, errors = [], [], []
    for j in order:
        if group["gen_error"][j]:
            errors.append(str(group["gen_error"][j]))
        else:
            texts.append(str(group["text"][j]))
            cut.append(bool(group["truncated"][j]))
    first = int(order[0])
    out = {"sample_id": np.array([str(group["sample_id"][first])], dtype=object),
           "entities": object_column([entity_lists([group["entities"][first]])[0]]),
           "seed": np.array([int(group["seed"][first])], dtype=np.int64)}
    for key, value in json.loads(str(group["carry"][first])).items():
        out[key] = object_column([value]) if isinstance(value, (list, dict)) else np.array([value])
    out.update({"candidates": object_column([texts]), "truncated": object_column([cut]),
                "gen_error": np.array(["" if texts else (errors[0] if errors else "no candidates generated")],
                                      dtype=object)})
    return out


def attach_per_candidate(ds, processor, num_candidates: int):
    """explode -> processor -> normalise -> group back by sample_id (sorted, so plan order)."""
    from functools import partial

    ds = ds.flat_map(partial(explode_candidates, num_candidates=num_candidates))
    ds = processor(ds).map(normalise_llm_row)
    return ds.groupby("sample_id").map_groups(regroup_candidates, batch_format="numpy")


class ReportQC:
    """Ray stage: re-extract entities from each candidate with the plan's extractor; the first
    candidate that matches the sampled entities wins."""

    def __init__(self, extractor: dict, tolerance: int = 0):
        from engine.core.config import ExtractorConfig

        self.extractor = build_extractor(ExtractorConfig(**extractor))
        self.tolerance = tolerance

    def __call__(self, batch: dict) -> dict:
        ents = entity_lists(batch["entities"])
        n = len(ents)
        cands = [list(c) if c is not None else [] for c in batch["candidates"]]
        cut = [list(c) if c is not None else [] for c in batch.get("truncated", [None] * n)]
        gen_err = [str(e or "") for e in batch.get("gen_error", [""] * n)]
        todo = [i for i in range(n) if not gen_err[i]]
        def decide(index: list[int]) -> list:
            return choose_candidates([ents[i] for i in index], [cands[i] for i in index],
                                     self.extractor.extract, self.tolerance, [cut[i] for i in index])

        decisions, failed = isolate_by_key(decide, {i: i for i in todo})
        for i, exc in failed.items():
            gen_err[i] = f"qc failed: {short_error(exc)}"
        findings, impression, accepted, reasons, attempts = [], [], [], [], []
        for i in range(n):
            d = decisions.get(i)
            findings.append(d.findings if d else "")
            impression.append(d.impression if d else "")
            accepted.append(bool(d.accepted) if d else False)
            reasons.append(d.reasons if d else [gen_err[i]])
            attempts.append(d.attempts if d else 0)
        out = {k: v for k, v in batch.items() if k not in GENERATION_COLUMNS}
        return {
            **out,
            "findings": np.array(findings, dtype=object),
            "impression": np.array(impression, dtype=object),
            "accepted": np.array(accepted, dtype=bool),
            "reasons": object_column(reasons),
            "attempts": np.array(attempts, dtype=np.int64),
            # A failure (generation or QC could not run) as opposed to a QC rejection; "" if none.
            "report_error": np.array([e if i not in decisions else "" for i, e in enumerate(gen_err)], dtype=object),
        }


def report_verdict(out: dict) -> tuple[np.ndarray, list[Optional[str]]]:
    """ReportQC output -> (ok, one reason per row) in the pipeline's "<stage>: ..." form, with
    failures marked "reports: error: ..." so they count against engine.max_error_fraction.
    Input problems (an empty entity list) are the plan's fault, not the engine's."""
    ok = np.asarray(out["accepted"], dtype=bool)
    reasons: list[Optional[str]] = []
    for good, err, why in zip(ok, out["report_error"], out["reasons"]):
        if good:
            reasons.append(None)
        elif err and not str(err).startswith(INPUT_PROBLEMS):
            reasons.append(f"reports: error: {err}")
        else:
            listed = [str(r) for r in why] if why is not None else []
            reasons.append("reports: " + ("; ".join(listed[:3]) + (" ..." if len(listed) > 3 else "") or "rejected"))
    return ok, reasons


# ---------------------------------------------------------------------------------------------
# The pipeline


def read_plan_schema(plan_path: Path) -> pa.Schema:
    plan_path = Path(plan_path)
    if not plan_path.exists():
        raise UserError(f"{plan_path}: plan not found (write one with `syncxr plan`)")
    try:
        schema = pq.read_schema(plan_path) if plan_path.is_file() else pq.ParquetDataset(plan_path).schema
    except Exception as exc:
        raise UserError(f"{plan_path}: not a readable Parquet plan: {short_error(exc)}") from None
    missing = [c for c in PLAN_COLUMNS if c not in schema.names]
    if missing:
        raise UserError(f"{plan_path}: missing column(s) {', '.join(missing)}; a plan has {', '.join(PLAN_COLUMNS)}")
    return schema


def backend_class(rcfg):
    try:
        return REPORT_BACKENDS.get(rcfg.backend)
    except ConfigError as exc:
        raise ConfigError(f"reports.backend: {exc}") from None


def prompt_path(cfg) -> Path:
    """The prompt file: relative to the config file, else one shipped in configs/ (so a config
    kept elsewhere can still name prompts/report_v1.yaml)."""
    from engine.core.config import DEFAULT_CONFIG

    path = cfg.resolve(cfg.reports.prompt)
    shipped = DEFAULT_CONFIG.parent / cfg.reports.prompt
    if not path.is_file() and not Path(cfg.reports.prompt).is_absolute() and shipped.is_file():
        return shipped
    return path


def prepare(cfg) -> tuple[Any, Any, PromptTemplate]:
    """Everything checked before Ray starts: backend name, prompt file, model source, options.
    Returns (backend class, reports config with the model path resolved, prompt)."""
    cls = backend_class(cfg.reports)
    prompt = load_prompt(prompt_path(cfg))
    rcfg = cfg.reports
    if rcfg.model and not Path(rcfg.model).expanduser().is_absolute() and cfg.resolve(rcfg.model).is_dir():
        # A relative model directory is relative to the config file, like every other path.
        rcfg = rcfg.model_copy(update={"model": str(cfg.resolve(rcfg.model).resolve())})
    cls.check(rcfg)
    return cls, rcfg, prompt


def report_qc_resources(resources):
    """QC is CPU work whatever the generator needs."""
    return resources.model_copy(update={"num_gpus": 0.0, "accelerator_type": None})


def build_report_dataset(cfg, plan_path: str | Path, prepared=None):
    """The lazy Ray Dataset read_parquet -> generate -> QC (nothing runs yet)."""
    import ray.data

    cls, rcfg, prompt = prepared or prepare(cfg)
    ds = ray.data.read_parquet(str(plan_path)).select_columns(list(PLAN_COLUMNS))
    ds = cls.attach(ds, rcfg, prompt)
    return map_stage(ds, ReportQC, report_qc_resources(rcfg.resources),
                     {"extractor": cfg.extractor.model_dump(), "tolerance": rcfg.tolerance})


def _to_table(batch: dict) -> pa.Table:
    cols = {}
    for name in REPORTS_SCHEMA.names:
        col = batch[name]
        if name == "entities":
            col = entity_lists(col)
        elif name == "reasons":
            col = [[str(r) for r in row] for row in col]
        else:
            col = col.tolist() if hasattr(col, "tolist") else list(col)
        cols[name] = col
    return pa.table(cols, schema=REPORTS_SCHEMA)


def run_reports(cfg, plan_path: str | Path, out_dir: str | Path, verbose: bool = False) -> dict:
    """Write out_dir/reports.parquet (rows in plan order) and return a summary."""
    import ray.data

    plan_path, out_dir = Path(plan_path), Path(out_dir)
    read_plan_schema(plan_path)
    prepared = prepare(cfg)
    init_ray(cfg.engine, verbose=verbose)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "reports.parquet"
    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # plan order in, plan order out
    start, rows, accepted = time.time(), 0, 0
    reasons: dict[str, int] = {}
    try:
        ds = build_report_dataset(cfg, plan_path, prepared)
        with atomic_path(out_path) as tmp_path, pq.ParquetWriter(tmp_path, REPORTS_SCHEMA) as writer:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                table = _to_table(batch)
                writer.write_table(table)
                rows += table.num_rows
                acc = table.column("accepted").to_pylist()
                accepted += sum(acc)
                for ok, rs in zip(acc, table.column("reasons").to_pylist()):
                    if not ok:
                        for r in rs:
                            key = RowStatus.parse(r, default_stage="reports").key(with_stage=False)
                            reasons[key] = reasons.get(key, 0) + 1
    finally:
        ctx.execution_options.preserve_order = keep_order
    seconds = time.time() - start
    return {"path": str(out_path), "rows": rows, "accepted": accepted, "rejected": rows - accepted,
            "pass_rate": accepted / rows if rows else 0.0, "seconds": round(seconds, 2),
            "backend": cfg.reports.backend, "prompt_version": prepared[2].version,
            "rejection_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}

