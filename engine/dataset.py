"""The published dataset: the versioned schema of a finished `syncxr synth` run and its reader.

A run directory holds `manifest.json` (whose `syncxr_format` names the schema version) and
`data/part-*.parquet`. This module is the only part of the engine that train/ and eval/ import:
they open a run with `open_dataset(path)` and read it as Arrow, pandas, Ray Data or a Hugging Face
dataset. Changing a field below means a new FORMAT version.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.core.errors import UserError

FORMAT = "syncxr-dataset/1"

ENTITY = pa.struct([("text", pa.string()), ("type", pa.string())])
MASK = pa.struct([("finding", pa.string()), ("entity", pa.string()), ("side", pa.string()),
                  ("zone", pa.string()), ("png", pa.binary()), ("bbox", pa.list_(pa.int64()))])

# name -> (arrow type id check, meaning). Structs are checked for their documented sub-fields.
FIELDS: dict[str, tuple[str, str]] = {
    "sample_id": ("string", "stable id, derived from the run seed and the plan index; rows sorted by it"),
    "entities": ("list<struct<text, type>>", "the sampled entities; type is one of the five RaTE types"),
    "findings": ("string", "FINDINGS section of the generated report"),
    "impression": ("string", "IMPRESSION section (the image prompt)"),
    "image": ("struct<bytes, path>", "the image as 8-bit grayscale PNG bytes; `datasets` decodes it"),
    "masks": ("list<struct<finding, entity, side, zone, png, bbox>>",
              "per drawn finding: PNG mask and bbox [x0, y0, x1, y1] (phantom backend; empty otherwise)"),
    "seed": ("int", "the seed of the accepted attempt"),
    "attempts": ("struct<round, report_candidates>", "round that produced the row, report candidates tried"),
    "qc": ("struct<judge_flags, judge_scores, reference_similarity, reference_match>",
           "image-QC decisions and scores"),
    "provenance": ("struct", "backends, model ids and seeds that made the row"),
}
REQUIRED_SUBFIELDS = {
    "image": ("bytes", "path"),
    "attempts": ("round", "report_candidates"),
    "qc": ("judge_flags", "judge_scores", "reference_similarity", "reference_match"),
}


class DatasetError(UserError):
    """A directory that is not a finished dataset of the supported format."""


def _kind_ok(name: str, typ: pa.DataType) -> bool:
    kind = FIELDS[name][0]
    if kind == "string":
        return pa.types.is_string(typ) or pa.types.is_large_string(typ)
    if kind == "int":
        return pa.types.is_integer(typ)
    if kind.startswith("list"):
        return pa.types.is_list(typ) or pa.types.is_large_list(typ)
    if kind.startswith("struct"):
        if not pa.types.is_struct(typ):
            return False
        names = {typ.field(i).name for i in range(typ.num_fields)}
        return all(sub in names for sub in REQUIRED_SUBFIELDS.get(name, ()))
    return True


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise DatasetError naming the file and the first missing or mistyped column."""
    for name in FIELDS:
        if name not in schema.names:
            raise DatasetError(f"{where}: column {name!r} missing (format {FORMAT} needs {', '.join(FIELDS)})")
        if not _kind_ok(name, schema.field(name).type):
            raise DatasetError(f"{where}: column {name!r} is {schema.field(name).type}, expected {FIELDS[name][0]}")


@dataclass
class SynthDataset:
    """A finished run directory, checked against FORMAT."""

    root: Path
    manifest: dict
    files: list[Path] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def __len__(self) -> int:
        return self.num_rows

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        tables = [pq.read_table(f, columns=columns) for f in self.files]
        return pa.concat_tables(tables, promote_options="permissive")

    def to_pandas(self, columns: list[str] | None = None):
        return self.to_arrow(columns).to_pandas()

    def to_ray(self, columns: list[str] | None = None, **read_args):
        """A Ray Dataset over data/ (Ray must be initialised by the caller, or it starts locally)."""
        import ray.data

        ds = ray.data.read_parquet([str(f) for f in self.files], **read_args)
        return ds.select_columns(columns) if columns else ds

    def to_hf(self):
        """A Hugging Face `datasets.Dataset`; the image column decodes to PIL images."""
        from datasets import load_dataset

        return load_dataset("parquet", data_files=[str(f) for f in self.files], split="train")

    def embeddings(self) -> pa.Table | None:
        """The QC embeddings (sample_id, embedding) written beside the data, if any."""
        files = sorted((self.root / "embeddings").glob("part-*.parquet"))
        if not files:
            return None
        return pa.concat_tables([pq.read_table(f) for f in files])


def open_dataset(path: str | Path, require_complete: bool = False) -> SynthDataset:
    """Open a finished run directory (or its data/ folder). One-line DatasetError on anything else."""
    root = Path(path)
    if root.name == "data" and not (root / "manifest.json").is_file():
        root = root.parent
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    if not manifest_path.is_file():
        raise DatasetError(f"{root}: not a syncxr dataset (no manifest.json; is the run finished?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{manifest_path}: unreadable manifest ({e})") from None
    fmt = manifest.get("syncxr_format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise DatasetError(f"{root}: dataset format {fmt!r}, this reader supports {FORMAT!r}")
    if require_complete and not manifest.get("complete"):
        raise DatasetError(f"{root}: run incomplete ({manifest.get('kept')}/{manifest.get('planned')} samples)")
    files = sorted((root / "data").glob("part-*.parquet"))
    if not files:
        raise DatasetError(f"{root}: no data/part-*.parquet files")
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"{f}: unreadable Parquet ({e})") from None
        check_schema(schema, str(f))
    return SynthDataset(root=root, manifest=manifest, files=files)


def report_text(findings: str | None, impression: str | None) -> str:
    """The report as one text: FINDINGS then IMPRESSION, the way the training text view reads it."""
    parts = [p.strip() for p in (findings, impression) if p and p.strip()]
    return " ".join(parts)
