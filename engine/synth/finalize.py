"""Turn the staged rounds of a synth run into the finished dataset: data/ (kept samples, sorted by
sample_id, images that `datasets` decodes), rejected/ (every attempt not kept, with its reasons),
embeddings/, manifest.json and DATACARD.md with its plots.

It streams: one pass over the staged parts locates the kept rows and writes the rejected ones;
the data parts are then gathered a chunk of sample_ids at a time. Everything here is rebuilt from
staging, so a finalize that was interrupted is simply redone; a rerun of a finished run whose
published files and sealed rounds are all as its manifest records them rebuilds nothing
(`published_manifest`): others may be reading that dataset.

Nothing published is removed before its replacement is whole: data/, embeddings/ and rejected/
are written as data.new/ (...) and then switched over in one rename each (engine.core.files.
exchange_dirs), so at every instant the previous dataset or the new one is in place; the
manifest, written after the switch, records every published file (sha256; rows for data and
embeddings) and the seals of the rounds it was built from.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core.files import exchange_dirs, file_record, recover_dir, write_json, write_table
from engine.core.status import RowStatus, status_array
from engine.synth.layout import RunLayout
from engine.core.sink import with_hf_features
from engine.synth.round import BUSY_STAGES, STAGE_ORDER

ROWS_PER_PART = 1000
DATA_COLUMNS = ("sample_id", "entities", "seed", "attempt", "report_attempts", "findings", "impression", "image",
                "masks", "provenance", "judge_flags", "judge_scores", "reference_similarity", "reference_match",
                "embedding")
REJECTED_COLUMNS = ("sample_id", "entities", "seed", "attempt", "findings", "impression", "reasons", "provenance")
VERSIONED = ("syncxr", "ray", "torch", "transformers", "diffusers", "faiss-cpu", "faiss-gpu", "vllm", "pyarrow",
             "numpy", "datasets")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class _Scan:
    """What one pass over the staged parts learns."""

    def __init__(self):
        self.kept: dict[str, tuple[Path, int]] = {}
        self.tried = 0
        self.rejected_stage = Counter()
        self.rejected_kind = Counter()
        self.busy = defaultdict(float)
        self.busy_rows = Counter()
        self.kept_entities = Counter()
        self.rejected_rows = 0


def _global_qc(round_dir: Path) -> dict[str, tuple[bool, str]]:
    path = RunLayout.global_qc(round_dir)
    if not path.is_file():
        return {}
    t = pq.read_table(path)
    return {s: (k, r) for s, k, r in zip(*(t.column(c).to_pylist() for c in ("sample_id", "kept", "reason")))}


def _fresh(directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def scan_staging(staging: Path, out: Path, image_backend: str, rejected_dir: Path | None = None) -> _Scan:
    """Locate kept rows, write the rejected attempts part by part (into rejected_dir, default
    OUT/rejected), count reasons and busy time."""
    scan = _Scan()
    rejected_dir = _fresh(Path(rejected_dir) if rejected_dir is not None else RunLayout(out).rejected)
    for round_dir in sorted(staging.glob("round-*")):
        if not RunLayout.done_marker(round_dir).is_file():
            continue  # a round still open (a stopped run) is not part of the dataset yet
        decided = _global_qc(round_dir)
        for i, part in enumerate(sorted(round_dir.glob("part-*.parquet"))):
            names = pq.read_schema(part).names
            small = pq.read_table(part, columns=[c for c in ("sample_id", "ok", "reasons", "entities") if c in names]
                                  + [c for c in names if c.startswith("busy_")])
            ids = small.column("sample_id").to_pylist()
            ok = small.column("ok").to_pylist()
            reasons = small.column("reasons").to_pylist()
            for name in small.column_names:
                if name.startswith("busy_"):
                    col = np.asarray(small.column(name).to_numpy(zero_copy_only=False), float)
                    scan.busy[name[5:]] += float(col.sum())
                    scan.busy_rows[name[5:]] += int((col > 0).sum())
            rejected_rows, rejected_reasons = [], []
            for row, (sid, good, why) in enumerate(zip(ids, ok, reasons)):
                if sid in scan.kept:
                    continue  # a retried batch staged twice: the first copy counts
                scan.tried += 1
                why = list(why or [])
                if good:
                    kept, reason = decided.get(sid, (False, "global qc: undecided"))
                    if kept:
                        scan.kept[sid] = (part, row)
                        for e in small.column("entities")[row].as_py() or []:
                            scan.kept_entities[(e["text"], e["type"])] += 1
                        continue
                    why.append(reason)
                first = why[0] if why else "rejected"
                status = RowStatus.parse(first, {image_backend: "images"})
                scan.rejected_stage[status.stage] += 1
                scan.rejected_kind[status.key()] += 1
                rejected_rows.append(row)
                rejected_reasons.append(why)
            if rejected_rows:
                t = pq.read_table(part, columns=[c for c in REJECTED_COLUMNS if c in names]).take(rejected_rows)
                t = t.set_column(t.column_names.index("reasons"), "reasons",
                                 pa.array(rejected_reasons, pa.list_(pa.string())))
                t = t.append_column("status", status_array([r[0] if r else "rejected" for r in rejected_reasons],
                                                           {image_backend: "images"}))
                t = t.append_column("round", pa.array([RunLayout.round_number(round_dir)] * t.num_rows, pa.int32()))
                write_table(t, rejected_dir / f"part-{round_dir.name}-{i:05d}.parquet")
                scan.rejected_rows += t.num_rows
    return scan


def _as(col: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    return col if col.type == typ else pc.cast(col, typ)


def _nan_to_null(values: pa.Array) -> pa.Array:
    """NaN marks a score that was not computed (no reference bank): null says so in the output."""
    return pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)


def sample_table(rows: pa.Table, report_info: dict) -> pa.Table:
    """Staged rows -> the published sample schema (attempts, qc and provenance as structs)."""
    n = rows.num_rows
    attempts = pa.StructArray.from_arrays(
        [_as(rows.column("attempt"), pa.int32()).combine_chunks(),
         _as(rows.column("report_attempts"), pa.int32()).combine_chunks()],
        names=["round", "report_candidates"])
    qc = pa.StructArray.from_arrays(
        [_as(rows.column("judge_flags"), pa.list_(pa.string())).combine_chunks(),
         _as(rows.column("judge_scores"), pa.string()).combine_chunks(),
         _nan_to_null(_as(rows.column("reference_similarity"), pa.float32()).combine_chunks()),
         _as(rows.column("reference_match"), pa.string()).combine_chunks()],
        names=["judge_flags", "judge_scores", "reference_similarity", "reference_match"])
    image_prov = rows.column("provenance").combine_chunks()
    prov_fields = [image_prov.field(i) for i in range(image_prov.type.num_fields)]
    prov_names = [f.name for f in image_prov.type]
    for key, value in report_info.items():
        prov_fields.append(pa.array([value] * n, pa.string()))
        prov_names.append(key)
    provenance = pa.StructArray.from_arrays(prov_fields, names=prov_names)
    return pa.table({
        "sample_id": rows.column("sample_id"), "entities": rows.column("entities"),
        "findings": rows.column("findings"), "impression": rows.column("impression"),
        "image": rows.column("image"), "masks": rows.column("masks"), "seed": rows.column("seed"),
        "attempts": attempts, "qc": qc, "provenance": provenance,
    })


def write_data(scan: _Scan, data_dir: Path, emb_dir: Path, report_info: dict) -> tuple[list[str], dict]:
    """data/ and embeddings/ (into the given, fresh directories) in sample_id order, ROWS_PER_PART
    rows a part, reading each staged part about once (staged parts are roughly in plan order).
    -> (kept ids, {relative path: record})"""
    records = {}
    for d in (data_dir, emb_dir):
        _fresh(d)
    ordered = sorted(scan.kept)
    cache: dict[Path, pa.Table] = {}
    for j, start in enumerate(range(0, len(ordered), ROWS_PER_PART)):
        chunk = ordered[start:start + ROWS_PER_PART]
        by_file = defaultdict(list)
        for sid in chunk:
            path, row = scan.kept[sid]
            by_file[path].append(row)
        pieces = []
        for path, rows in by_file.items():
            if path not in cache:
                cache.clear()  # hold one staged part at a time
                names = pq.read_schema(path).names
                cache[path] = pq.read_table(path, columns=[c for c in DATA_COLUMNS if c in names])
            pieces.append(cache[path].take(rows))
        rows = pa.concat_tables(pieces, promote_options="permissive")
        rows = rows.take(pc.sort_indices(rows, [("sample_id", "ascending")]))
        name = f"part-{j:05d}.parquet"
        write_table(with_hf_features(sample_table(rows, report_info)), data_dir / name)
        emb = rows.select(["sample_id", "embedding"])
        write_table(emb.set_column(1, "embedding", _as(emb.column("embedding"), pa.list_(pa.float32()))),
                    emb_dir / name)
        for kind, d in (("data", data_dir), ("embeddings", emb_dir)):
            records[f"{kind}/{name}"] = file_record(d / name, rows.num_rows)
    return ordered, records


def funnel(planned: int, scan: _Scan) -> list[tuple[str, int]]:
    """Attempts surviving each stage, in pipeline order."""
    rows = [("attempts", scan.tried)]
    alive = scan.tried
    for stage in STAGE_ORDER:
        alive -= scan.rejected_stage.get(stage, 0)
        rows.append((f"after {stage}", alive))
    other = sum(v for k, v in scan.rejected_stage.items() if k not in STAGE_ORDER)
    if other:
        rows.append(("after other", alive - other))
    return rows


def throughput(scan: _Scan) -> dict:
    """Per stage: rows, busy seconds, rows per busy second (one actor's rate)."""
    out = {}
    for stage in BUSY_STAGES:
        busy, rows = scan.busy.get(stage, 0.0), scan.busy_rows.get(stage, 0)
        if rows:
            out[stage] = {"rows": rows, "busy_s": round(busy, 2), "rows_per_s": round(rows / busy, 1) if busy else None}
    return out


def recover_published(out: Path) -> None:
    """Before anything else reads OUT: finish or undo a switch a kill interrupted, drop half-built trees."""
    layout = RunLayout(out)
    for d in (layout.data, layout.embeddings, layout.rejected):
        recover_dir(d)
        if layout.building(d).exists():
            shutil.rmtree(layout.building(d))


def seals_digest(staging: Path) -> str:
    """sha256 over the DONE files of the sealed rounds: the staged input finalize builds from
    (each seal lists its parts' and global QC's records)."""
    h = hashlib.sha256()
    for round_dir in sorted(staging.glob("round-*")):
        done = RunLayout.done_marker(round_dir)
        if done.is_file():
            h.update(round_dir.name.encode() + b"\0" + done.read_bytes() + b"\n")
    return h.hexdigest()


def published_manifest(cfg, out: Path, staging: Path) -> dict | None:
    """The manifest of a finished run that finalize would only write again: made with these
    settings from exactly the rounds sealed now, every published file (and nothing else) as it
    records, the card there. None otherwise, and finalize rebuilds."""
    from engine.synth.integrity import matches

    layout = RunLayout(out)
    try:
        manifest = json.loads(layout.manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("config_digest") != cfg.digest() \
            or manifest.get("staging_seals") != seals_digest(staging):
        return None
    files = manifest.get("files") or {}
    published = {f"{d.name}/{p.name}" for d in (layout.data, layout.embeddings, layout.rejected)
                 for p in d.glob("*.parquet")}
    if published != set(files) or not layout.datacard.is_file():  # the card is written last
        return None
    return None if any(matches(out / name, record) for name, record in files.items()) else manifest


def finalize(cfg, out: Path, plan: pa.Table, staging: Path, rounds: list[dict], seconds: float) -> dict:
    from engine.synth.datacard import write_datacard
    from engine.synth.integrity import fault_point

    out = Path(out)
    layout = RunLayout(out)
    started = time.time()
    recover_published(out)
    scan = scan_staging(staging, out, cfg.images.backend, layout.building(layout.rejected))
    report_info = {"report_backend": cfg.reports.backend, "report_model": cfg.reports.model or "",
                   "report_prompt": cfg.reports.prompt}
    kept, records = write_data(scan, layout.building(layout.data), layout.building(layout.embeddings), report_info)
    fault_point("finalize-built")
    for d in (layout.data, layout.embeddings, layout.rejected):
        exchange_dirs(layout.building(d), d)
        fault_point("finalize-switched")
    for part in sorted(layout.rejected.glob("*.parquet")):  # recorded too: a rerun checks them before reusing
        records[f"{layout.rejected.name}/{part.name}"] = file_record(part)
    planned = plan.num_rows
    manifest = {
        "syncxr_format": "syncxr-dataset/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": len(kept) == planned,
        "planned": planned,
        "kept": len(kept),
        "missing": planned - len(kept),
        "config_digest": cfg.digest(),
        "config": cfg.model_dump(mode="json"),
        "rounds": rounds,
        "counts": {"attempts": scan.tried, "rejected_attempts": scan.rejected_rows,
                   "rejected_by_stage": dict(scan.rejected_stage.most_common()),
                   "rejected_by_reason": dict(scan.rejected_kind.most_common()),
                   "funnel": dict(funnel(planned, scan))},
        "stage_throughput": throughput(scan),
        "seconds": {"pipeline": round(seconds, 1), "finalize": round(time.time() - started, 1)},
        "versions": package_versions(),
        "outputs": {"data": "data/", "rejected": "rejected/", "embeddings": "embeddings/", "card": "DATACARD.md"},
        "files": records,
        "staging_seals": seals_digest(staging),
    }
    write_json(RunLayout(out).manifest, manifest)
    write_datacard(out, manifest, scan.kept_entities, plan)
    return manifest

