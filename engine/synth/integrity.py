"""What a run directory can trust, checked before it is reused.

Every staged part is recorded when written (`.records/<part>.json` beside it: rows, bytes, sha256;
engine/core/files.py writes it for a directory that keeps records), a round is sealed by a DONE
file that lists each of its parts and its global-QC table with their records, the plan's record
lives in run.json and the finished files' in manifest.json. A rerun checks what it reuses: a part
that is missing or damaged is deleted and recomputed (its rows are pure functions of plan row,
attempt and config), a damaged global-QC table is decided again, never trusted and never
silently dropped.

The run's identity (run.json) is the config digest, n and the content of every file the run
reads (prompt, lexicon, QC bank, privacy images): a directory belongs to one identity.

Fault points: the run calls `fault_point(name)` where a crash would be hardest to recover from
(plan written, mid-round, global QC, finalize). In production nothing listens; the tests' fault
launcher installs a handler (`set_fault_handler`) that kills the process there or remounts its disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import RECORDS, file_record, record_path, sha256_file, write_json, write_record
from engine.core.ownership import MARKER_FORMAT
from engine.synth.layout import RunLayout


# ---------------------------------------------------------------- fault points

_fault_handler: Callable[[str], None] | None = None


def set_fault_handler(handler: Callable[[str], None] | None) -> None:
    global _fault_handler
    _fault_handler = handler


def fault_point(name: str) -> None:
    if _fault_handler is not None:
        _fault_handler(name)


# ---------------------------------------------------------------- checking one file


def read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(record_path(path).read_text())
        return rec if isinstance(rec, dict) and "sha256" in rec else None
    except (OSError, ValueError):
        return None


def matches(path: Path, record: dict | None) -> str:
    """'' when the file is the one recorded, else why not."""
    if not path.is_file():
        return "missing"
    if record is None:
        return "not recorded"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{size} bytes, recorded {record.get('bytes')}"
    if sha256_file(path) != record.get("sha256"):
        return "content differs from its record (sha256)"
    return ""


def part_name_facts(path: Path) -> tuple[int, int] | None:
    """(rows, crc32 of the ids) that a staged part's name promises (engine.core.sink.write_part)."""
    try:
        count, digest = path.stem.rsplit("-", 2)[1:]
        return int(count), int(digest, 16)
    except ValueError:
        return None


def check_unrecorded_table(path: Path) -> tuple[str, int]:
    """Read a table without a record whole; ('', rows) when it is readable and agrees with its name."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path, page_checksum_verification=True)
    except Exception as exc:  # ArrowInvalid, OSError: a truncated or foreign file
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", 0
    facts = part_name_facts(path) if path.name.startswith("part-") else None
    if facts is not None and "sample_id" in t.column_names:
        ids = t.column("sample_id").to_pylist()
        crc = zlib.crc32("\n".join(ids).encode()) & 0xFFFFFFFF
        if (len(ids), crc) != facts:
            return f"holds {len(ids)} rows that its name does not promise", 0
    return "", t.num_rows


def check_part(path: Path) -> str:
    """'' when a staged part can be reused (its record matches, or it has none and reads whole:
    then it is recorded now), else why not."""
    record = read_record(path)
    if record is not None:
        return matches(path, record)
    why, rows = check_unrecorded_table(path)
    if not why:
        try:
            write_record(path, rows)
        except OSError:
            pass  # a read-only directory can still be read
    return why


def remove_part(path: Path) -> None:
    path.unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------- rounds


@dataclass
class RoundCheck:
    sealed: bool = False  # DONE is there and lists what it sealed
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (part name, why) removed
    qc_ok: bool = False  # global_qc.parquet is the one sealed (or readable, unsealed)

    @property
    def reopen(self) -> bool:
        return bool(self.damaged)

    def describe(self) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self.damaged)


def read_seal(round_dir: Path) -> dict | None:
    """The DONE file's content; {} for an empty DONE of an older run; None when absent/unreadable."""
    done = RunLayout.done_marker(round_dir)
    if not done.is_file():
        return None
    try:
        text = done.read_text()
        data = json.loads(text) if text.strip() else {}
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def check_round(round_dir: Path) -> RoundCheck:
    """Check a round's staged files; damaged parts are deleted (their rows get recomputed), a
    round whose seal lists a part that is gone is reopened (DONE removed)."""
    check = RoundCheck()
    if not round_dir.is_dir():
        return check
    (round_dir / RECORDS).mkdir(exist_ok=True)
    seal = read_seal(round_dir)
    sealed_parts = (seal or {}).get("parts") or {}
    present = {p.name: p for p in round_dir.glob("part-*.parquet")}
    for name, path in sorted(present.items()):
        why = matches(path, sealed_parts[name]) if name in sealed_parts else check_part(path)
        if why:
            check.damaged.append((name, why))
            remove_part(path)
    for name in sorted(set(sealed_parts) - set(present)):
        check.damaged.append((name, "missing"))
    qc = RunLayout.global_qc(round_dir)
    if seal is not None and seal.get("global_qc"):
        check.qc_ok = not matches(qc, seal["global_qc"])
    elif qc.is_file():
        check.qc_ok = not check_unrecorded_table(qc)[0]
    check.sealed = seal is not None and not check.damaged and check.qc_ok
    if RunLayout.done_marker(round_dir).exists() and not check.sealed:
        RunLayout.done_marker(round_dir).unlink()
    elif check.sealed and "parts" not in seal:
        seal_round(round_dir)  # an older run's empty DONE: list what it sealed from now on
    return check


def seal_round(round_dir: Path) -> dict:
    """Write DONE: every part of the round and its global-QC table, with their records."""
    parts = {}
    for path in sorted(round_dir.glob("part-*.parquet")):
        parts[path.name] = read_record(path) or write_record(path, check_unrecorded_table(path)[1])
    seal = {"parts": parts, "global_qc": file_record(RunLayout.global_qc(round_dir))}
    write_json(RunLayout.done_marker(round_dir), seal)
    return seal


# ---------------------------------------------------------------- the run's identity


def digest_path(path: Path) -> str:
    """sha256 over a file's content, or over a directory's files (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def input_files(cfg, synth: bool = True) -> dict[str, Path]:
    """The files a run reads besides its config, by role."""
    from engine.text.lexicon import PACKAGED_LEXICON

    files = {"lexicon": cfg.resolve(cfg.extractor.lexicon) or PACKAGED_LEXICON}
    if cfg.corpus.path:
        files["corpus"] = cfg.resolve(cfg.corpus.path)
    if synth:
        from engine.reports.pipeline import prompt_path

        files["prompt"] = prompt_path(cfg)
        if cfg.qc.bank:
            files["qc bank"] = cfg.resolve(cfg.qc.bank)
        if cfg.qc.privacy_images:
            files["privacy images"] = cfg.resolve(cfg.qc.privacy_images)
    return files


def identity(cfg, n: int, kind: str, extra: dict[str, Path] | None = None) -> dict:
    inputs = {}
    for role, path in {**input_files(cfg, synth=kind == "synth"), **(extra or {})}.items():
        if path is None or not Path(path).exists():
            continue
        if role == "corpus" and Path(path).is_dir():
            continue  # a report tree is read once, for the plan; the plan's digest stands for it
        inputs[role] = {"path": str(Path(path).resolve()), "sha256": digest_path(path)}
    return {"syncxr": MARKER_FORMAT, "kind": kind, "config_digest": cfg.digest(), "n": n, "inputs": inputs}


def check_out_arg(out) -> Path:
    text = str(out) if out is not None else ""
    if not text.strip():
        raise UserError("--out must name a directory, got an empty string")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: --out names a file, not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):  # also EROFS: a read-only mount, found before any work
        import errno

        ro = os.statvfs(existing).f_flag & os.ST_RDONLY
        raise OSError(errno.EROFS if ro else errno.EACCES,
                      "Read-only file system" if ro else "Permission denied", str(path))
    return path


def read_marker(out: Path) -> dict | None:
    """The run.json of a run directory; None for a directory that is absent or empty. A
    non-empty directory without a marker, or with one that is not syncxr's, is refused."""
    out = Path(out)
    if not out.exists():
        return None
    marker = RunLayout(out).run_json
    if not marker.exists():
        if any(out.iterdir()):
            raise UserError(f"{out} is not empty and holds no syncxr run ({marker.name} is missing): "
                            "syncxr writes only into a new or empty directory or its own run; use another --out")
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{marker}: unreadable run marker ({type(exc).__name__}): this directory's "
                        "identity is lost; use another --out") from None
    if isinstance(data, dict) and data.get("kind") not in (None, "synth", "plan"):
        raise UserError(f"{out} holds the output of `syncxr {data['kind']}`, not a synth run: use another --out")
    if not isinstance(data, dict) or "config_digest" not in data or "n" not in data:
        raise UserError(f"{marker}: not a syncxr run marker (no config_digest/n): use another --out")
    data.setdefault("kind", "synth")
    data.setdefault("inputs", None)  # older markers did not record their input files
    return data


def identity_conflict(theirs: dict, mine: dict) -> str:
    """'' when `mine` may write into the directory `theirs` describes, else why not."""
    if theirs["config_digest"] != mine["config_digest"] or theirs["n"] != mine["n"]:
        return (f"holds a run with other settings (config digest {theirs['config_digest']}, n={theirs['n']}; "
                f"now {mine['config_digest']}, n={mine['n']})")
    if theirs.get("inputs") is not None:
        for role, rec in mine["inputs"].items():
            old = theirs["inputs"].get(role)
            if old is not None and old.get("sha256") != rec["sha256"]:
                return f"was made with another {role} file ({rec['path']} changed since)"
    return ""


def claim(out: Path, mine: dict, theirs: dict | None, **more) -> dict:
    """Write run.json (the directory's owner and identity), merged with what it held."""
    data = dict(theirs or {})
    inputs = {**(data.get("inputs") or {}), **mine["inputs"]}
    data.update(mine)
    data["inputs"] = inputs
    data.update(more)
    if data == theirs:
        return data  # a rerun of the same run: its marker stays as written
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(RunLayout(out).run_json, data)
    return data


def plan_digest(plan) -> str:
    """Content digest of a plan table (ids, entities, seeds), independent of the Parquet bytes."""
    h = hashlib.sha256()
    for name in ("sample_id", "entities", "seed"):
        h.update(json.dumps(plan.column(name).to_pylist(), sort_keys=True).encode())
    return h.hexdigest()
