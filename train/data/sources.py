"""Where image/report pairs come from. Each adapter reads a small index on the driver (ids and
report text; images stay where they are) and turns a chosen subset of ids into a Ray Dataset of
rows in one schema, ROW_SCHEMA:

    sample_id, image_bytes (PNG/JPEG bytes or null), image_path (file or null), report, source

Adapters: the synthetic dataset a `syncxr synth` run published (engine.dataset), MIMIC-CXR-JPG,
Open-i / IU X-ray (a user's PNG folder matched to the reports torchxrayvision ships) and a generic
CSV/Parquet table. Decoding happens later, in Ray Data tasks (train/data/preprocess.py).
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from engine.core.errors import UserError
from engine.dataset import open_dataset, report_text
from engine.text.sections import clean_text, split_sections

ROW_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("image_bytes", pa.binary()), ("image_path", pa.string()),
    ("report", pa.string()), ("source", pa.string()),
])
FRONTAL_VIEWS = ("PA", "AP")


@dataclass
class Source:
    """One adapter's pairs: `ids` and `reports` in a stable order; `skipped` counts rows left out
    while indexing, by reason (no report text, lateral view, missing image file...)."""

    name: str
    ids: list[str]
    reports: list[str]
    image_paths: list[str] | None = None  # path adapters; None: images are in `parquet_files`
    parquet_files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def report_of(self) -> dict[str, str]:
        return dict(zip(self.ids, self.reports))

    def to_arrow(self, ids: list[str]) -> pa.Table:
        """ROW_SCHEMA rows for `ids` (a subset of self.ids), read in this process (no Ray)."""
        if self.image_paths is None:
            import pyarrow.parquet as pq
            wanted = set(ids)
            parts = [_synthetic_rows(pq.read_table(f, columns=SYNTHETIC_COLUMNS), wanted, self.name)
                     for f in self.parquet_files]
            return pa.concat_tables(parts) if parts else ROW_SCHEMA.empty_table()
        pos = {sid: i for i, sid in enumerate(self.ids)}
        rows = [pos[sid] for sid in ids]
        return pa.table({
            "sample_id": [self.ids[i] for i in rows],
            "image_bytes": pa.nulls(len(rows), pa.binary()),
            "image_path": [self.image_paths[i] for i in rows],
            "report": [self.reports[i] for i in rows],
            "source": [self.name] * len(rows),
        }, schema=ROW_SCHEMA)

    def to_ray(self, ids: list[str], block_rows: int = 256):
        """A Ray Dataset of ROW_SCHEMA rows for `ids`. Synthetic images are read from Parquet by
        Ray Data tasks; path adapters' index rows are cut into blocks of `block_rows` so several
        tasks decode in parallel."""
        import ray.data

        if self.image_paths is not None:
            table = self.to_arrow(ids)
            blocks = [table.slice(i, block_rows) for i in range(0, max(len(table), 1), block_rows)]
            return ray.data.from_arrow(blocks)
        ds = ray.data.read_parquet(self.parquet_files).select_columns(SYNTHETIC_COLUMNS)
        return ds.map_batches(_synthetic_rows, batch_format="pyarrow", fn_kwargs={"wanted": set(ids), "source": self.name})


SYNTHETIC_COLUMNS = ["sample_id", "findings", "impression", "image"]


def _synthetic_rows(batch: pa.Table, wanted: set, source: str) -> pa.Table:
    keep = [i for i, sid in enumerate(batch.column("sample_id").to_pylist()) if sid in wanted]
    batch = batch.take(pa.array(keep, pa.int64()))
    images = batch.column("image").combine_chunks()
    return pa.table({
        "sample_id": batch.column("sample_id"),
        "image_bytes": images.field("bytes"),
        "image_path": pa.nulls(len(batch), pa.string()),
        "report": [report_text(f, i) for f, i in zip(batch.column("findings").to_pylist(),
                                                     batch.column("impression").to_pylist())],
        "source": [source] * len(batch),
    }, schema=ROW_SCHEMA)


# --- synthetic -----------------------------------------------------------------------------

def synthetic_source(path: str | Path) -> Source:
    ds = open_dataset(path)  # DatasetError (one line) for another schema version or no data
    table = ds.to_arrow(["sample_id", "findings", "impression"])
    ids = table.column("sample_id").to_pylist()
    reports = [report_text(f, i) for f, i in zip(table.column("findings").to_pylist(),
                                                 table.column("impression").to_pylist())]
    return Source("synthetic", ids, reports, parquet_files=[str(f) for f in ds.files])


# --- generic table -------------------------------------------------------------------------

def table_source(path: str | Path, image_column: str = "image_path", text_column: str = "report",
                 id_column: str = "sample_id") -> Source:
    """A CSV or Parquet file with an image path column and a report column; paths relative to
    the table's folder. Ids from `id_column` when present, else `<stem>-<row>`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: table not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{path}: unreadable Parquet ({e})") from None
        columns = list(rows[0]) if rows else pq.read_schema(path).names
    else:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    for col in (image_column, text_column):
        if col not in columns:
            raise UserError(f"{path}: no column {col!r} (columns: {', '.join(columns)})")
    ids, reports, images, skipped = [], [], [], {}
    for n, row in enumerate(rows):
        text = clean_text(str(row.get(text_column) or ""))
        if not text:
            skipped["no_report"] = skipped.get("no_report", 0) + 1
            continue
        image = Path(str(row[image_column]))
        ids.append(str(row[id_column]) if row.get(id_column) not in (None, "") else f"{path.stem}-{n}")
        reports.append(text)
        images.append(str(image if image.is_absolute() else path.parent / image))
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: column {id_column!r} has duplicate ids")
    return Source("table", ids, reports, image_paths=images, skipped=skipped)


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="")


def _first_existing(root: Path, names: list[str]) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise UserError(f"{root}: none of {', '.join(names)} found")


# --- MIMIC-CXR-JPG -------------------------------------------------------------------------

def _sections_text(text: str) -> str:
    parts = split_sections(text)
    return " ".join(p for p in (parts.get("findings", ""), parts.get("impression", "")) if p)


def mimic_source(root: str | Path, split: str = "train") -> Source:
    """MIMIC-CXR-JPG: frontal (PA/AP) images of `split` with their study's FINDINGS+IMPRESSION.
    Layout: ROOT/files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg, the report beside the study folder
    (sNNNNNNNN.txt), and ROOT/mimic-cxr-2.0.0-{split,metadata}.csv(.gz)."""
    root = Path(root).expanduser()
    if not (root / "files").is_dir():
        raise UserError(f"{root}: not a MIMIC-CXR-JPG root (no files/ folder)")
    split_csv = _first_existing(root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"])
    meta_csv = _first_existing(root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"])
    with _open_text(meta_csv) as fh:
        reader = csv.DictReader(fh)
        if "dicom_id" not in (reader.fieldnames or []) or "ViewPosition" not in reader.fieldnames:
            raise UserError(f"{meta_csv}: needs columns dicom_id and ViewPosition")
        views = {row["dicom_id"]: row["ViewPosition"] for row in reader}
    with _open_text(split_csv) as fh:
        reader = csv.DictReader(fh)
        need = {"dicom_id", "study_id", "subject_id", "split"}
        if not need <= set(reader.fieldnames or []):
            raise UserError(f"{split_csv}: needs columns {', '.join(sorted(need))}")
        rows = [r for r in reader if r["split"] == split]
    ids, reports, images, skipped, texts = [], [], [], {}, {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    for row in sorted(rows, key=lambda r: r["dicom_id"]):
        if views.get(row["dicom_id"]) not in FRONTAL_VIEWS:
            skip("not_frontal")
            continue
        subject, study = row["subject_id"], row["study_id"]
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        if study not in texts:
            report_file = folder / f"s{study}.txt"
            texts[study] = _sections_text(report_file.read_text(errors="replace")) if report_file.is_file() else None
        if texts[study] is None:
            skip("no_report_file")
            continue
        if not texts[study]:
            skip("no_findings_or_impression")
            continue
        image = folder / f"s{study}" / f"{row['dicom_id']}.jpg"
        if not image.is_file():
            skip("missing_image")
            continue
        ids.append(row["dicom_id"])
        reports.append(texts[study])
        images.append(str(image))
    return Source("mimic", ids, reports, image_paths=images, skipped=skipped)


# --- Open-i / IU X-ray ---------------------------------------------------------------------

def _xrv_data_file(name: str) -> Path:
    spec = importlib.util.find_spec("torchxrayvision")  # locate without importing torch
    if spec is None or spec.origin is None:
        raise UserError("torchxrayvision is not installed: it ships the IU X-ray reports")
    return Path(spec.origin).parent / "data" / name


def _iu_text(node) -> str:
    text = (node.text or "") if node is not None else ""
    return clean_text(text.replace("XXXX", " "))  # Open-i masks identifiers as XXXX


def iu_reports_by_image(archive: Path | None = None) -> dict[str, str]:
    """image id (the XML's parentImage id) -> FINDINGS + IMPRESSION of its report."""
    archive = archive or _xrv_data_file("NLMCXR_reports.tgz")
    out = {}
    with tarfile.open(archive) as tar:  # one sequential pass: random access into a .tgz is slow
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {n.get("Label", "").upper(): n for n in root.iter("AbstractText")}
            text = " ".join(t for t in (_iu_text(sections.get("FINDINGS")), _iu_text(sections.get("IMPRESSION"))) if t)
            for image in root.iter("parentImage"):
                if image.get("id"):
                    out[image.get("id")] = text
    return out


def iu_views() -> dict[str, str]:
    """image id -> DICOM View Position, from the metadata torchxrayvision ships."""
    path = _xrv_data_file("nlmcxr_dicom_metadata.csv.gz")
    if not path.is_file():
        return {}
    with gzip.open(path, "rt", newline="") as fh:
        return {row["imageid"]: row.get("View Position", "") for row in csv.DictReader(fh)}


def openi_source(png_dir: str | Path, frontal_only: bool = True) -> Source:
    """A user's Open-i PNG folder (<image id>.png) matched to the shipped IU X-ray reports."""
    png_dir = Path(png_dir).expanduser()
    if not png_dir.is_dir():
        raise UserError(f"{png_dir}: Open-i PNG folder not found")
    reports = iu_reports_by_image()
    views = iu_views() if frontal_only else {}
    ids, texts, images, skipped = [], [], [], {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    for png in sorted(png_dir.glob("*.png")):
        text = reports.get(png.stem)
        if text is None:
            skip("no_matching_report")
        elif not text:
            skip("no_findings_or_impression")
        elif frontal_only and views.get(png.stem) not in FRONTAL_VIEWS:
            skip("not_frontal")
        else:
            ids.append(png.stem)
            texts.append(text)
            images.append(str(png))
    if not ids:
        raise UserError(f"{png_dir}: no PNG matched an IU X-ray report ({skipped or 'no *.png files'})")
    return Source("openi", ids, texts, image_paths=images, skipped=skipped)


# --- --real SPEC ---------------------------------------------------------------------------

REAL_KINDS = ("table", "mimic", "openi")
# what `--real` accepts, for every command that takes it
REAL_HELP = ("real pairs: table:PATH (CSV or Parquet with columns image_path and report, optional sample_id; "
             "image paths relative to the table; data.real_image_column / data.real_text_column name other "
             "columns), mimic:ROOT (MIMIC-CXR-JPG) or openi:PNGDIR")


def real_source(spec: str, image_column: str = "image_path", text_column: str = "report") -> Source:
    """`table:PATH`, `mimic:ROOT` or `openi:PNGDIR`."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in REAL_KINDS or not path:
        raise UserError(f"--real {spec!r}: expected one of {', '.join(k + ':PATH' for k in REAL_KINDS)}")
    if kind == "table":
        return table_source(path, image_column=image_column, text_column=text_column)
    if kind == "mimic":
        return mimic_source(path)
    return openi_source(path)
