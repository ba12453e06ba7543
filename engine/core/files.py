"""Writing files so that a reader (or a rerun after kill -9) sees the old file or the new one,
never half of one: write beside the target under a hidden temporary name, then rename.

A directory that holds a `.records/` folder keeps a record of every table written into it
(`.records/<name>.json`: rows, bytes, sha256 of the file as written), so a rerun can tell a file it
may reuse from one that was truncated, damaged or swapped; the owner of the directory opts in by
creating the folder (engine/synth/integrity.py). Directories are switched whole with
`exchange_dirs`: at every instant the old one or the new one is in place."""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

RECORDS = ".records"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.
    The pid in the name keeps two writers (a retried Ray task and its ghost) apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only disk: the original error is the one to report
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path, rows: int | None = None) -> dict:
    """What a reader checks before it trusts a file: its size, its sha256 and (tables) its rows."""
    path = Path(path)
    record = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if rows is not None:
        record["rows"] = int(rows)
    return record


def record_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / RECORDS / f"{path.name}.json"


def keeps_records(directory: str | Path) -> bool:
    return (Path(directory) / RECORDS).is_dir()


def write_record(path: str | Path, rows: int | None = None) -> dict:
    record = file_record(path, rows)
    with atomic_path(record_path(path)) as tmp:
        tmp.write_text(json.dumps(record))
    return record


def write_table(table, path: str | Path, record: bool | None = None) -> Path:
    """Write a Parquet file atomically; record it (rows, bytes, sha256) when asked or when its
    directory keeps records."""
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)  # a reader can tell a damaged page
    if record or (record is None and keeps_records(path.parent)):
        write_record(path, table.num_rows)
    return path


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str))


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=suffix)
    return Path(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange_dirs(new: str | Path, target: str | Path) -> None:
    """Put directory `new` in place of `target` and remove the old one. On Linux the two swap in
    one rename (readers see the old tree or the new one, never none); elsewhere `target` moves
    to `target.old` first, and `recover_dir` puts it back if a kill came in between."""
    new, target = Path(new), Path(target)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if not target.exists():
        os.replace(new, target)
        return
    if _renameat2_exchange(new, target):
        shutil.rmtree(new)  # now the old tree
        return
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


def recover_dir(target: str | Path) -> None:
    """Undo a switch that a kill interrupted between its two renames (see exchange_dirs)."""
    target = Path(target)
    old = target.with_name(target.name + ".old")
    if old.is_dir() and not target.exists():
        os.replace(old, target)
    elif old.exists():
        shutil.rmtree(old)
