"""Content hash of a finished dataset: sample_id, findings, impression and image bytes, in sample_id
order. Two runs with the same config and seed must print the same hash (the behaviour check for
refactors)."""
from __future__ import annotations

import argparse
import hashlib

from engine.dataset import open_dataset


def content_hash(path: str) -> tuple[int, str]:
    table = open_dataset(path).to_arrow(["sample_id", "findings", "impression", "image"]).to_pylist()
    h = hashlib.sha256()
    for row in sorted(table, key=lambda r: r["sample_id"]):
        for part in (row["sample_id"], row["findings"], row["impression"]):
            h.update((part or "").encode() + b"\0")
        h.update(row["image"]["bytes"] or b"")
    return len(table), h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dataset")
    n, digest = content_hash(ap.parse_args().dataset)
    print(f"{n} rows  sha256 {digest}")


if __name__ == "__main__":
    main()
