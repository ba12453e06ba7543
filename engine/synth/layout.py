"""The run directory of `syncxr synth`, in one place. Every path below is relative to DIR.

    run.json                     the marker: written by syncxr when it claims the directory; the run's
                                 identity (config digest, n, digests of the files it reads) and
                                 the plan's record: a rerun must match it
    (a non-empty directory without run.json is not a run directory: syncxr refuses to write there)
    entities.parquet, stats.json, rank_frequency.png   the corpus side (written with the plan)
    plan.parquet, plan_stats.json, plan_balance.png    the plan, computed once
    staging/round-RR/part-*.parquet   rows of round RR as workers finished them (atomic, idempotent)
    staging/round-RR/global_qc.parquet   the round's near-duplicate/privacy decisions
    staging/round-RR/.records/   one record (rows, bytes, sha256) per staged part, written with it
    staging/round-RR/DONE        the round is complete: lists its parts and global QC with records
    data/part-*.parquet          the published dataset (engine.dataset reads it)
    embeddings/part-*.parquet    sample_id + QC embedding, in data/'s order
    rejected/part-*.parquet      every attempt not kept, with reasons and a typed status
    manifest.json, DATACARD.md, plots/   what finalize writes last (manifest: records of every published
                                 file and a digest of the round seals it was built from)
    data.new/, embeddings.new/, rejected.new/   finalize builds here, then switches each over whole
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.parquet"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def round_dir(self, r: int) -> Path:
        return self.staging / f"round-{r:02d}"

    def rounds(self) -> list[Path]:
        return sorted(self.staging.glob("round-*"))

    @staticmethod
    def round_number(round_dir: Path) -> int:
        return int(round_dir.name.split("-")[1])

    @staticmethod
    def global_qc(round_dir: Path) -> Path:
        return round_dir / "global_qc.parquet"

    @staticmethod
    def done_marker(round_dir: Path) -> Path:
        return round_dir / "DONE"

    @staticmethod
    def part_prefix(r: int) -> str:
        return f"part-r{r:02d}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @staticmethod
    def building(directory: Path) -> Path:
        """Where finalize writes the next version of a published directory before the switch."""
        return directory.with_name(directory.name + ".new")

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def datacard(self) -> Path:
        return self.root / "DATACARD.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"
