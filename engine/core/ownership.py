"""Who may write where: the one rule of every syncxr command that writes.

A command writes into a directory only when it is new or empty, or when the directory's marker
(run.json) says that this same command made it from the same inputs. A rerun with other inputs
is refused with one line naming the input that differs: it is never "resumed". A command that
writes a single file never replaces one of its own inputs, and replaces an existing file only
with --overwrite.

`syncxr synth` and `syncxr plan` keep their own, stricter identity (engine/synth/integrity.py:
the content of every file a run reads, checked part by part); both write the same marker
format, so each command recognises the other's directories.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from engine.core.errors import UserError
from engine.core.files import sha256_file, write_json

MARKER = "run.json"
MARKER_FORMAT = "syncxr-run/1"
# commands whose whole output is recomputed on each run, so --overwrite may replace it
REPLACEABLE = ("dedup", "eval")


def value_digest(value: Any) -> str:
    """sha256 of a JSON-able value (a config dump, a list of arguments), key order ignored."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def spec_path(spec: str | Path) -> Path:
    """The path an input names: `kind:PATH` (table:, mimic:, openi:) or a plain path."""
    kind, sep, rest = str(spec).partition(":")
    return Path(rest if sep and kind.isalpha() and len(kind) > 1 else str(spec)).expanduser()


def input_digest(spec: str | Path | None) -> str | None:
    """What stands for an input's content: a file's sha256; a syncxr dataset's manifest.json (it
    records every part); another directory, its resolved path; `kind:PATH` specs (table:, mimic:,
    openi:) by their path. None for an absent input."""
    if spec is None:
        return None
    path = spec_path(spec)
    if path.is_file():
        return sha256_file(path)
    if (path / "manifest.json").is_file():
        return sha256_file(path / "manifest.json")
    return f"path:{path.resolve()}"


def read_owner(out: Path) -> dict | None:
    """OUT's marker; None when OUT is absent or empty. A non-empty directory without a marker, or
    with one that is not syncxr's, is refused: it holds someone else's files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out names a file, not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    marker = out / MARKER
    if not marker.is_file():
        raise UserError(f"{out} is not empty and holds no syncxr output ({MARKER} is missing): syncxr writes "
                        "only into a new or empty directory or one it made itself; use another --out")
    try:
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{marker}: unreadable ({type(exc).__name__}): this directory's owner is unknown; "
                        "use another --out") from None
    if not isinstance(data, dict) or data.get("syncxr") != MARKER_FORMAT:
        raise UserError(f"{marker}: not a syncxr marker: use another --out")
    data.setdefault("kind", "synth")  # synth markers of before the kind field
    return data


def claim(out: str | Path, command: str, inputs: dict[str, Any], replace: bool = False) -> bool:
    """Take OUT for `syncxr COMMAND` made from `inputs` (name -> digest or value). Returns True when
    OUT already holds this same output (a rerun: resume or refresh), False when it is new. Raises
    a UserError naming what differs when OUT belongs to another command or other inputs, unless
    `replace` (--overwrite) lets this command take back a directory of its own."""
    if check_claim(out, command, inputs, replace):
        return True
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / MARKER, {"syncxr": MARKER_FORMAT, "kind": command, "inputs": inputs})
    return False


def check_claim(out: str | Path, command: str, inputs: dict[str, Any], replace: bool = False) -> bool:
    """What `claim` would decide, writing nothing: a bad --out is refused before any work."""
    out = Path(out)
    theirs = read_owner(out)
    if theirs is not None:
        kind = theirs.get("kind")
        if kind != command:
            raise UserError(f"{out} holds the output of `syncxr {kind}`, not of `syncxr {command}`: "
                            "use another --out")
        old = theirs.get("inputs") or {}
        differs = [name for name in sorted(set(old) | set(inputs)) if old.get(name) != inputs.get(name)]
        if not differs:
            return True
        only_marker = [p.name for p in out.iterdir()] == [MARKER]  # an attempt that failed before writing
        if not replace and not only_marker:
            name = differs[0]
            raise UserError(f"{out} holds a `syncxr {command}` output of other inputs ({name}: "
                            f"{_short(old.get(name))} then, {_short(inputs.get(name))} now): use another --out"
                            + (" or pass --overwrite" if command in REPLACEABLE else ""))
    return False


def update_marker(out: str | Path, **fields: Any) -> None:
    """Add what a finished command reports (a summary) to its marker; the ownership fields stay."""
    path = Path(out) / MARKER
    data = json.loads(path.read_text())
    data.update({k: v for k, v in fields.items() if k not in ("syncxr", "kind", "inputs")})
    write_json(path, data)


def check_file_out(out: str | Path, inputs: list[str | Path | None], overwrite: bool, flag: str = "--out") -> Path:
    """A single-file output: never one of the command's inputs (nor inside an input directory), never
    an existing file unless `overwrite`, never a directory. Its folder is created."""
    path = Path(str(out)).expanduser()
    if not str(out).strip():
        raise UserError(f"{flag} must name a file, got an empty string")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; name the file to write")
    for item in inputs:
        if item is None:
            continue
        text = str(item)
        candidate = spec_path(item)
        if path.resolve() == candidate.resolve():
            raise UserError(f"{flag} {path}: is an input of this command ({text}); write elsewhere")
        if candidate.is_dir() and path.resolve().is_relative_to(candidate.resolve()):
            raise UserError(f"{flag} {path}: is inside {text}, an input of this command; write elsewhere")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path}: already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _short(value: Any) -> str:
    if value is None:
        return "none"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text[:80]
