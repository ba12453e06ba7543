"""Images in from files: a folder of PNG/JPEG files or a table of paths/bytes, for the QC bank and
the privacy reference (small sets decoded in this process, large ones as a Ray dataset)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np

from engine.core.errors import UserError
from engine.core.stage import object_column
from engine.images.pipeline import decode_png


def decode_image(cell) -> np.ndarray:
    """An `image` cell ({bytes, path} struct, or raw bytes; PNG or JPEG) as 2-d uint8 grayscale."""
    data, path = cell, None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    if data is None or len(data) == 0:
        if not path:
            raise ValueError("image cell has neither bytes nor a path")
        data = Path(path).read_bytes()
    return decode_png(data)  # PIL reads any format it knows, not only PNG


def decode_all(column) -> tuple[list, list[str]]:
    images, errors = [], []
    for cell in column:
        try:
            images.append(decode_image(cell))
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - an undecodable row is that row's error
            images.append(None)
            errors.append(f"image not decodable: {type(exc).__name__}: {str(exc)[:200]}")
    return images, errors


IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def list_image_files(src: Path) -> list[Path]:
    return sorted(p for p in Path(src).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _read_source_table(src: Path):
    """images.parquet -> arrow table (sample_id, image); errors name the file and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{src}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if "image" not in table.column_names:
        raise UserError(f"{src}: no `image` column (columns: {', '.join(table.column_names)})")
    image = table.column("image")
    if pa.types.is_binary(image.type) or pa.types.is_large_binary(image.type):
        image = pa.StructArray.from_arrays([image.combine_chunks(), pa.nulls(len(image), pa.string())],
                                           names=["bytes", "path"])
    elif not (pa.types.is_struct(image.type) and image.type.get_field_index("bytes") >= 0):
        raise UserError(f"{src}: column `image` must be binary or a struct with `bytes` (and `path`), "
                        f"got {image.type}")
    if "sample_id" in table.column_names:
        ids = [str(s) for s in table.column("sample_id").to_pylist()]
    else:
        ids = [f"row-{i:07d}" for i in range(table.num_rows)]
    return pa.table({"sample_id": pa.array(ids, pa.string()), "image": image})


def _check_source(src) -> Path:
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: image source not found (a directory of PNG/JPEG files or an images.parquet)")
    if src.is_dir():
        if not list_image_files(src):
            raise UserError(f"{src}: no PNG or JPEG files in this directory")
    elif src.suffix.lower() != ".parquet":
        raise UserError(f"{src}: expected a directory of PNG/JPEG files or a .parquet file with an `image` column")
    return src


def read_images_local(src) -> tuple[list[str], list[np.ndarray]]:
    """All images of a source, decoded in this process (small sets: privacy references, tests)."""
    src = _check_source(src)
    if src.is_dir():
        files = list_image_files(src)
        ids = [f.relative_to(src).as_posix() for f in files]
        cells = [{"bytes": f.read_bytes(), "path": str(f)} for f in files]
    else:
        table = _read_source_table(src)
        ids, cells = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
    images = []
    for sid, cell in zip(ids, cells):
        try:
            images.append(decode_image(cell))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{src}: image {sid!r} is not decodable ({type(exc).__name__}: {exc})") from None
    return ids, images


def _files_to_rows(batch: dict, root: str) -> dict:
    """read_binary_files rows (bytes, path) -> (sample_id = path relative to the source, image)."""
    paths = [Path("/" + str(p).lstrip("/")) for p in batch["path"]]
    cells = [{"bytes": bytes(b), "path": str(p)} for b, p in zip(batch["bytes"], paths)]
    ids = [p.relative_to(root).as_posix() for p in paths]
    return {"sample_id": np.array(ids, dtype=object), "image": object_column(cells)}


def image_source_dataset(src, limit: Optional[int] = None):
    """A Ray dataset (sample_id, image {bytes, path}) over a directory of images or a parquet."""
    import ray.data

    src = _check_source(src)
    if src.is_dir():
        files = list_image_files(src)[:limit]
        ds = ray.data.read_binary_files([str(f.resolve()) for f in files], include_paths=True)
        return ds.map_batches(functools.partial(_files_to_rows, root=str(src.resolve())), batch_format="numpy")
    table = _read_source_table(src)
    if limit:
        table = table.slice(0, limit)
    return ray.data.from_arrow(table)
