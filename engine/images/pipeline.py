"""The image drawing stage: backend registry, the output columns, PNG helpers, and
`run_images` (reports.parquet -> Ray Data -> DIR/images.parquet).

Backends are stage classes (actors/): `phantom` (CPU, no weights) and `diffusers` (RoentGen or
any StableDiffusionPipeline). Both take one `config` dict (stage_settings) and map a batch with
sample_id, seed and entities (phantom) or impression (diffusers) to:
  image       {bytes: PNG, path: "<sample_id>.png"} (None when the row failed)
  masks       list of {finding, entity, side, zone, png, bbox [x0, y0, x1, y1]}
  provenance  {backend, model, seed, size, ...} (PROVENANCE_KEYS, same keys for every backend)
  ok, reasons the pipeline's row status (engine.core.gate): a failed row is a rejected row
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.core.errors import UserError
from engine.core.registry import Registry
from engine.core.files import atomic_path
from engine.core.stage import Backend
from engine.core.status import RowStatus

IMAGE_BACKENDS = Registry("image")
IMAGE_BACKENDS.register("phantom", "actors.phantom:PhantomStage")
IMAGE_BACKENDS.register("diffusers", "actors.diffusers_sd:DiffusersStage")

# Columns each backend reads from its input rows.

MASK_STRUCT = pa.struct([("finding", pa.string()), ("entity", pa.string()), ("side", pa.string()),
                         ("zone", pa.string()), ("png", pa.binary()), ("bbox", pa.list_(pa.int32()))])
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PROVENANCE_STRUCT = pa.struct([
    ("backend", pa.string()), ("model", pa.string()), ("seed", pa.int64()), ("size", pa.int32()),
    ("template", pa.string()), ("ctr", pa.float32()),
    ("drawn", pa.list_(pa.string())), ("undrawable", pa.list_(pa.string())),
    ("negated", pa.list_(pa.string())), ("anatomy", pa.list_(pa.string())),
    ("prompt", pa.string()), ("prompt_tokens", pa.int32()), ("prompt_truncated", pa.bool_()),
    ("steps", pa.int32()), ("guidance", pa.float32()), ("device", pa.string()), ("dtype", pa.string()),
])
PROVENANCE_KEYS = tuple(PROVENANCE_STRUCT.names)
IMAGE_SCHEMA = pa.schema([("sample_id", pa.string()), ("image", IMAGE_STRUCT),
                          ("masks", pa.list_(MASK_STRUCT)), ("provenance", PROVENANCE_STRUCT)])
REJECTED_SCHEMA = pa.schema([("sample_id", pa.string()), ("reasons", pa.list_(pa.string())),
                             ("provenance", PROVENANCE_STRUCT)])


# ---------------------------------------------------------------- PNG

def encode_png(image: np.ndarray, compress_level: int = 3) -> bytes:
    """8-bit grayscale PNG bytes (bool masks become 0/255)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"expected a 2-d uint8 or bool image, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as im:
        return np.asarray(im.convert("L"))


# ---------------------------------------------------------------- stage output helpers

def stage_settings(config: Optional[dict]) -> dict:
    """ImagesConfig as a plain dict (what the stage classes receive), with defaults filled in."""
    from engine.core.config import ImagesConfig

    return ImagesConfig.model_validate(config or {}).model_dump()


def empty_output() -> dict:
    return {"sample_id": [], "image": [], "masks": [], "provenance": [], "ok": [], "reasons": []}


def provenance_record(values: dict) -> dict:
    """Same keys for every backend (missing -> None), so parts concatenate into one struct."""
    rec = {k: values.get(k) for k in PROVENANCE_KEYS}
    for key in ("drawn", "undrawable", "negated", "anatomy"):
        rec[key] = [str(v) for v in (rec[key] or [])]
    return rec


def encode_result(out: dict, sample_id: str, image: np.ndarray, masks: list[dict], provenance: dict) -> None:
    out["sample_id"].append(sample_id)
    out["image"].append({"bytes": encode_png(image), "path": f"{sample_id}.png"})
    out["masks"].append([{"finding": m["finding"], "entity": m.get("entity", ""), "side": m.get("side", ""),
                          "zone": m.get("zone", ""), "png": encode_png(m["mask"]),
                          "bbox": [int(v) for v in m["bbox"]]} for m in masks])
    out["provenance"].append(provenance_record(provenance))
    out["ok"].append(True)
    out["reasons"].append([])


def reject_row(out: dict, sample_id: str, reason: str, provenance: dict) -> None:
    out["sample_id"].append(sample_id)
    out["image"].append(None)
    out["masks"].append([])
    out["provenance"].append(provenance_record(provenance))
    out["ok"].append(False)
    out["reasons"].append([reason])


def finish_output(out: dict) -> dict:
    """Lists -> numpy columns (object columns where the values are not scalars)."""
    from engine.core.stage import object_column

    return {"sample_id": np.array(out["sample_id"], dtype=object),
            "image": object_column(out["image"]), "masks": object_column(out["masks"]),
            "provenance": object_column(out["provenance"]), "ok": np.array(out["ok"], dtype=bool),
            "reasons": object_column(out["reasons"])}


def row_reason(backend: str, kind: str, detail: str) -> str:
    """'<backend>: <kind>: <detail>'; kind 'error' counts against engine.max_error_fraction,
    'skipped' is an expected refusal (e.g. an empty impression)."""
    return RowStatus(backend, kind, str(detail)).text()


def verdict(out: dict) -> tuple[np.ndarray, list[Optional[str]]]:
    """For engine.core.gate.Gated: the stage's own ok/reasons columns."""
    ok = np.asarray(out["ok"], dtype=bool)
    return ok, [None if good or not len(r) else str(r[0]) for good, r in zip(ok, out["reasons"])]


# ---------------------------------------------------------------- the stage on its own

class ImageBackend(Backend):
    """Base of the image backends: a per-batch callable class; rows in, image columns out."""

    section = "images"
    writes = ("sample_id", "image", "masks", "provenance", "ok", "reasons")

    @classmethod
    def can_draw(cls, entity_text: str) -> bool:
        """Whether this backend shows a present finding of this name (`plan.drawable_only`): a
        text-to-image model draws from any text."""
        return True

    @classmethod
    def settings(cls, section, cfg) -> dict:
        """The constructor's `config` dict, checked on the driver (model paths resolved)."""
        cls.check(section, cfg)
        return section.model_dump()


def check_input(backend_cls: type[ImageBackend], path: Path) -> pa.Schema:
    """The input file's schema; a clear error if it is missing, unreadable or lacks a column."""
    if not path.exists():
        raise UserError(f"{path}: input not found (a reports.parquet from `syncxr reports` or a plan.parquet)")
    try:
        import pyarrow.dataset as pads

        schema = pads.dataset(str(path), format="parquet").schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    missing = [c for c in backend_cls.reads if c not in schema.names]
    if missing:
        raise UserError(f"{path}: the {backend_cls.name} image backend needs column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(schema.names)})")
    return schema


def build_image_stage(cfg) -> tuple[type, dict]:
    """(stage class, constructor kwargs) for cfg.images; checks a model path on the driver, so a
    bad directory is one clear error instead of a dead actor."""
    cls = IMAGE_BACKENDS.get(cfg.images.backend)
    return cls, {"config": cls.settings(cfg.images, cfg)}


def hf_schema() -> pa.Schema:
    """IMAGE_SCHEMA plus the metadata that makes `datasets` decode `image` as an Image."""
    from engine.core.sink import with_hf_features

    return with_hf_features(IMAGE_SCHEMA.empty_table()).schema


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def run_images(cfg, reports_path: str | Path, out_dir: str | Path, limit: Optional[int] = None,
               verbose: bool = False) -> dict:
    """Draw an image for every (accepted) input row; write out_dir/images.parquet and
    out_dir/images_rejected.parquet. Returns a summary."""
    import ray.data
    from ray.data.expressions import col

    from engine.core.ray_session import init_ray
    from engine.core.stage import map_stage

    reports_path, out_dir = Path(reports_path), Path(out_dir)
    schema = check_input(IMAGE_BACKENDS.get(cfg.images.backend), reports_path)
    stage_cls, kwargs = build_image_stage(cfg)
    init_ray(cfg.engine, verbose=verbose)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"images": out_dir / "images.parquet", "rejected": out_dir / "images_rejected.parquet"}

    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # input order in, input order out
    columns = [c for c in ("sample_id", "entities", "seed", "impression", "accepted") if c in schema.names]
    start, counts, skipped_reasons, truncated = time.time(), {"images": 0, "rejected": 0}, {}, 0
    try:
        ds = ray.data.read_parquet(str(reports_path)).select_columns(columns)
        if "accepted" in schema.names:  # only reports that passed report QC get an image
            ds = ds.filter(expr=col("accepted") == True)  # noqa: E712 - an expression, not a test
        if limit:
            ds = ds.limit(limit)
        ds = map_stage(ds, stage_cls, cfg.images.resources, kwargs)
        with atomic_path(paths["images"]) as good_tmp, atomic_path(paths["rejected"]) as bad_tmp, \
                pq.ParquetWriter(good_tmp, hf_schema()) as good, pq.ParquetWriter(bad_tmp, REJECTED_SCHEMA) as bad:
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                rows = _rows(table)
                ok = [r for r in rows if r["ok"]]
                no = [r for r in rows if not r["ok"]]
                if ok:
                    good.write_table(pa.Table.from_pylist(ok, schema=good.schema))
                if no:
                    bad.write_table(pa.Table.from_pylist(no, schema=REJECTED_SCHEMA))
                    for r in no:
                        key = RowStatus.parse((r["reasons"] or ["?"])[0]).key(with_stage=False)
                        skipped_reasons[key] = skipped_reasons.get(key, 0) + 1
                truncated += sum(bool(r["provenance"]["prompt_truncated"]) for r in ok)
                counts["images"] += len(ok)
                counts["rejected"] += len(no)
    finally:
        ctx.execution_options.preserve_order = keep_order
    seconds = time.time() - start
    total = counts["images"] + counts["rejected"]
    return {"backend": cfg.images.backend, "model": cfg.images.model, "size": cfg.images.size, "rows": total,
            "images": counts["images"], "rejected": counts["rejected"],
            "rejected_by": dict(sorted(skipped_reasons.items(), key=lambda kv: -kv[1])),
            "prompts_truncated": truncated,
            "seconds": round(seconds, 2), "images_per_s": round(total / seconds, 2) if seconds else None,
            "path": str(paths["images"]), "rejected_path": str(paths["rejected"])}
