"""Where rows land. Workers write each finished batch as one Parquet part, atomically (temp file
then rename) and under a name fixed by its content, so a retried task overwrites rather than
duplicates, and a killed run leaves only whole parts. Staged parts are read back (schemas
unified: a batch with no accepted image has a null image column) to resume and to finalise."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.core.files import write_table

SUMMARY_COLUMNS = ("sample_id", "ok", "reasons")


def _to_arrow(values) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim > 1:  # fixed-size vectors (embeddings) -> list<float>
            return pa.array(list(values))
        return pa.array(values)
    return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values])


def batch_to_table(batch: dict) -> pa.Table:
    return pa.table({k: _to_arrow(v) for k, v in batch.items()})


def write_part(table: pa.Table, directory: Path, prefix: str) -> Path:
    """Write atomically; the name depends on the rows it holds, so rewriting is idempotent."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = table.column("sample_id").to_pylist()
    digest = zlib.crc32("\n".join(ids).encode()) & 0xFFFFFFFF
    path = directory / f"{prefix}-{ids[0]}-{len(ids):05d}-{digest:08x}.parquet"
    return write_table(table, path)


class PartWriter:
    """Ray Data stage: write the batch, pass on only the small summary the driver tracks."""

    def __init__(self, directory: str, prefix: str):
        self.directory = Path(directory)
        self.prefix = prefix

    def __call__(self, batch: dict) -> dict:
        if len(batch["sample_id"]):
            write_part(batch_to_table(batch), self.directory, self.prefix)
        keep = [k for k in batch if k in SUMMARY_COLUMNS or k.startswith("busy_")]
        return {k: batch[k] for k in keep}


def read_parts(directory: Path, columns: list[str] | None = None, pattern: str = "part-*.parquet") -> pa.Table | None:
    """All parts of a directory as one table (None when there are none)."""
    files = sorted(Path(directory).glob(pattern)) if Path(directory).is_dir() else []
    tables = []
    for f in files:
        t = pq.read_table(f)
        if columns is not None:
            t = t.select([c for c in columns if c in t.column_names])
        tables.append(t)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def with_hf_features(table: pa.Table) -> pa.Table:
    """Attach the schema metadata that tells `datasets` the image column is an Image feature, so
    `load_dataset("parquet", data_dir=...)` decodes PIL images."""
    from datasets import Features, Image

    features = Features.from_arrow_schema(table.schema)
    if "image" in features:
        features["image"] = Image()
    meta = dict(table.schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": features.to_dict()}}).encode()
    return table.replace_schema_metadata(meta)
