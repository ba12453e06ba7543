"""`syncxr extract`: entities of one report (--text) or of a corpus file (--file), as JSON.

--text prints one JSON list of {"text", "type"}; --file (plain text: one report per line, or
JSONL with a "text" field) prints one JSON list per input line, in input order. The backend is
the config's extractor (default configs/local.yaml: the lexicon), overridable on the line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator, Optional

from engine.core.errors import UserError

CHUNK = 512  # reports per extractor call when streaming a file


def register(sub) -> None:
    p = sub.add_parser("extract", help="extract RaTE-type entities from report text",
                       description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="one report")
    src.add_argument("--file", help="reports: one per line, or JSONL with a 'text' field ('-' reads stdin)")
    p.add_argument("--config", help="config YAML (default: configs/local.yaml)")
    p.add_argument("--backend", help="override extractor.backend (lexicon, transformers)")
    p.add_argument("--model", help="override extractor.model (local directory or hub id)")
    p.add_argument("--lexicon", help="override extractor.lexicon (a lexicon YAML)")
    p.add_argument("--device", help="override extractor.device (cpu, cuda, ...)")
    p.add_argument("--types", help="comma-separated entity types to keep (default: all five)")
    p.set_defaults(func=run)


def parse_types(value: Optional[str]) -> Optional[set[str]]:
    from engine.text.entities import check_type

    if value is None:
        return None
    types = {t.strip().upper() for t in value.split(",") if t.strip()}
    if not types:
        raise UserError("--types: give at least one entity type")
    for t in sorted(types):
        check_type(t, "--types")
    return types


def iter_reports(path: str) -> Iterator[str]:
    """Report texts of a file, one per line (a blank line is an empty report, so output lines
    stay aligned with input lines). JSONL, detected from the first non-blank line starting
    with '{', must carry a string 'text' on every non-blank line."""
    fh = sys.stdin if path == "-" else None
    if fh is None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: file not found")
        fh = p.open(encoding="utf-8", errors="replace")
    jsonl = None
    try:
        for line_no, line in enumerate(fh, start=1):
            stripped = line.strip()
            if not stripped:
                yield ""
                continue
            if jsonl is None:
                jsonl = stripped.startswith("{")
            if not jsonl:
                yield stripped
                continue
            try:
                row = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "text" not in row:
                raise UserError(f"{path}: line {line_no}: no 'text' field")
            if not isinstance(row["text"], str):
                raise UserError(f"{path}: line {line_no}: 'text' must be a string, got {type(row['text']).__name__}")
            yield row["text"]
    finally:
        if fh is not sys.stdin:
            fh.close()


def build(args):
    from engine.core.config import load_config
    from engine.text.entities import build_extractor

    overrides = {k: getattr(args, k) for k in ("backend", "model", "lexicon", "device") if getattr(args, k)}
    cfg = load_config(args.config, overrides={"extractor": overrides} if overrides else None)
    ext = cfg.extractor
    # Paths written in a config file are relative to that file; paths on the command line to the cwd.
    updates = {}
    for key in ("model", "lexicon"):
        value = getattr(ext, key)
        if value and not overrides.get(key):
            resolved = cfg.resolve(value)
            if resolved is not None and resolved.exists():
                updates[key] = str(resolved)
    if updates:
        ext = ext.model_copy(update=updates)
    return build_extractor(ext)


def _keep(entities: list[dict], types: Optional[set[str]]) -> list[dict]:
    return entities if types is None else [e for e in entities if e["type"] in types]


def run(args) -> int:
    types = parse_types(args.types)
    extractor = build(args)
    out = sys.stdout
    if args.text is not None:
        out.write(json.dumps(_keep(extractor.extract([args.text])[0], types)) + "\n")
        return 0
    texts = list(iter_reports(args.file))  # validate every line before printing anything
    for i in range(0, len(texts), CHUNK):
        for ents in extractor.extract(texts[i:i + CHUNK]):
            out.write(json.dumps(_keep(ents, types)) + "\n")
        out.flush()
    return 0
