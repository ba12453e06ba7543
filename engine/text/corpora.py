"""Real report corpora: where entities and their frequencies come from.

- `iu-xray`: the IU X-ray (Open-i) reports torchxrayvision ships (NLMCXR_reports.tgz), with
  FINDINGS, IMPRESSION and the MeSH tags used to score extraction.
- `mimic-cxr`: a user's MIMIC-CXR `files/pNN/pNNNNNNNN/sNNNNNNNN.txt` tree.
- `csv` / `jsonl`: one report per row in a text column (sections parsed when headed).
"""
from __future__ import annotations

import csv
import json
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from engine.core.errors import UserError
from engine.text.sections import clean_text, split_sections


@dataclass
class Report:
    report_id: str
    findings: str = ""
    impression: str = ""
    mesh: list[str] = field(default_factory=list)  # IU X-ray only: MeSH major terms

    @property
    def text(self) -> str:
        """The part entities are extracted from: findings then impression."""
        return " ".join(part for part in (self.findings, self.impression) if part)

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


def iu_xray_archive() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")  # locate without importing torch
    if spec is None or spec.origin is None:
        raise UserError("torchxrayvision is not installed: it ships the IU X-ray reports (run `make setup`)")
    path = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise UserError(f"{path}: IU X-ray reports not found in the torchxrayvision package")
    return path


def _iu_text(node: Optional[ET.Element]) -> str:
    # Open-i masks identifiers as XXXX; drop them so they never become entity text.
    text = (node.text or "") if node is not None else ""
    return clean_text(text.replace("XXXX", " "))


def read_iu_xray(path: Optional[Path] = None) -> Iterator[Report]:
    path = Path(path) if path else iu_xray_archive()
    if not path.exists():
        raise UserError(f"{path}: IU X-ray archive not found")
    parsed = []
    with tarfile.open(path) as tar:  # one sequential pass: random access into a .tgz is slow
        for member in tar:
            if member.name.endswith(".xml"):
                parsed.append((member.name, ET.fromstring(tar.extractfile(member).read())))
    for name, root in sorted(parsed, key=lambda item: item[0]):
        sections = {n.get("Label", "").upper(): n for n in root.iter("AbstractText")}
        uid = root.find("uId")
        yield Report(
            report_id=uid.get("id") if uid is not None else Path(name).stem,
            findings=_iu_text(sections.get("FINDINGS")),
            impression=_iu_text(sections.get("IMPRESSION")),
            mesh=[m.text.strip() for m in root.iter("major") if m.text and m.text.strip()],
        )


def _from_free_text(report_id: str, text: str) -> Report:
    parts = split_sections(text)
    findings = parts.get("findings", "")
    impression = parts.get("impression", "")
    if not findings and not impression:  # no headings: the whole text is the report body
        findings = parts.get("preamble", "")
    return Report(report_id=report_id, findings=findings, impression=impression)


def read_mimic_cxr(root: Path) -> Iterator[Report]:
    if not root.is_dir():
        raise UserError(f"{root}: MIMIC-CXR directory not found (expected files/pNN/pNNNNNNNN/sNNNNNNNN.txt)")
    for path in sorted(root.rglob("s*.txt")):
        yield _from_free_text(path.stem, path.read_text(errors="replace"))


def read_table(path: Path, fmt: str, text_column: str, id_column: Optional[str]) -> Iterator[Report]:
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found")
    if fmt == "csv":
        with path.open(newline="", errors="replace") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                raise UserError(f"{path}: no column {text_column!r} (columns: {reader.fieldnames or []})")
            rows = list(enumerate(reader, start=2))  # line 1 is the header
    else:
        rows = []
        with path.open(errors="replace") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {line_no}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or text_column not in row:
                    raise UserError(f"{path}: line {line_no}: no field {text_column!r}")
                rows.append((line_no, row))
    for line_no, row in rows:
        rid = str(row[id_column]) if id_column and row.get(id_column) is not None else f"{path.stem}-{line_no}"
        yield _from_free_text(rid, str(row.get(text_column) or ""))


def load_corpus(cfg) -> list[Report]:
    """Read the corpus a CorpusConfig names; reports with neither findings nor impression are
    dropped. Raises UserError when nothing usable remains."""
    name = cfg.name
    if name == "iu-xray":
        reports = read_iu_xray(Path(cfg.path) if cfg.path else None)
    else:
        if not cfg.path:
            raise UserError(f"corpus {name!r} needs corpus.path")
        path = Path(cfg.path).expanduser()
        if name == "mimic-cxr":
            reports = read_mimic_cxr(path)
        else:
            reports = read_table(path, name, cfg.text_column, cfg.id_column)
    kept = []
    for report in reports:
        if not report.is_empty:
            kept.append(report)
            if cfg.limit and len(kept) >= cfg.limit:
                break
    if not kept:
        raise UserError(f"corpus {name!r}{' at ' + str(cfg.path) if cfg.path else ''} has no reports with text")
    return kept
