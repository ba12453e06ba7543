"""Benchmarks: each module measures against a baseline in the same run and writes a table to
benchmarks/results/."""
from __future__ import annotations

from pathlib import Path


def write_results(path: Path, text: str) -> None:
    """Print the table and keep it under benchmarks/results/."""
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
