"""A row's fate as a typed record: which stage decided, what kind of decision, and the row's detail.

Stages hand reasons down the pipeline as one line of text ("phantom: error: RuntimeError: x",
"reports: candidate 2: missing: effusion (ABNORMALITY)", "dedup: cosine 0.991 > 0.99 to r0-7"),
which is what staged parts and `rejected/`'s `reasons` column hold. This module is the one place
that writes and reads that form; `rejected/` also carries the parsed record as a `status` struct
column, so it can be queried by stage and kind with pandas without parsing text."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STATUS_STRUCT = pa.struct([("stage", pa.string()), ("kind", pa.string()), ("detail", pa.string())])
# decisions of the global QC step: the stage name is the kind
GLOBAL_STAGES = ("dedup", "privacy", "reference")


@dataclass(frozen=True)
class RowStatus:
    stage: str  # reports, images, embed, judge, reference, dedup, privacy, global qc
    kind: str  # missing, extra, error, skipped, lateral, dedup, ...
    detail: str = ""
    candidate: str = ""  # "candidate 2" for a report candidate's verdict

    def text(self) -> str:
        parts = [self.stage] + ([self.candidate] if self.candidate else [])
        parts += [] if self.kind == self.stage else [self.kind]
        return ": ".join(parts + ([" ".join(self.detail.split())[:300]] if self.detail else []))

    @property
    def error_type(self) -> str:
        return self.detail.split(":", 1)[0].strip() if self.kind == "error" else ""

    def key(self, with_stage: bool = True) -> str:
        """The counting key: 'images: error', 'reports: missing', 'dedup'; without the stage, the
        stage's own summary ('error: ValueError', 'skipped: empty impression', 'missing')."""
        if not with_stage:
            if self.kind == "error":
                return f"error: {self.error_type}"
            return f"{self.kind}: {self.detail}" if self.kind == "skipped" else self.kind
        return self.stage if self.kind == self.stage else f"{self.stage}: {self.kind}"[:80]

    def as_dict(self) -> dict:
        return {"stage": self.stage, "kind": self.kind, "detail": self.detail}

    @classmethod
    def parse(cls, text: str, aliases: dict[str, str] | None = None, default_stage: str = "") -> "RowStatus":
        """The record behind a reason line. `aliases` maps a backend name to its stage
        ({"phantom": "images"}); a line that starts at the candidate gets `default_stage`."""
        parts = [p.strip() for p in str(text).split(": ")]
        if parts[0].startswith("candidate ") and default_stage:
            parts.insert(0, default_stage)
        stage = (aliases or {}).get(parts[0], parts[0])
        rest = parts[1:]
        candidate = rest.pop(0) if rest and rest[0].startswith("candidate ") else ""
        if stage in GLOBAL_STAGES:
            return cls(stage, stage, ": ".join(rest), candidate)
        kind = rest[0] if rest else "rejected"
        return cls(stage, kind, ": ".join(rest[1:]), candidate)


def status_array(reasons: list[str], aliases: dict[str, str] | None = None) -> pa.Array:
    """The `status` column of rejected/: the parsed first reason of each row."""
    return pa.array([RowStatus.parse(r, aliases).as_dict() if r else None for r in reasons], STATUS_STRUCT)
