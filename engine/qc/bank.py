"""The QC bank on disk (`syncxr qc-bank`): metadata.json (embedder, dim, count, items with their
flags), embeddings.npy (or embeddings.parquet with an `embedding` column), index.faiss (a cache:
rebuilt when absent or stale). Errors name the file and what is wrong with it."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.core.errors import ConfigError, UserError
from engine.qc.faiss_index import SearchIndex, build_index, choose_kind, load_index, save_index
from engine.qc.filters import unit_vectors

BANK_FORMAT = "syncxr-qc-bank/1"


@dataclass
class Bank:
    path: Path
    embeddings: np.ndarray  # (n, dim) unit float32
    meta: dict
    index: SearchIndex

    @property
    def items(self) -> list[dict]:
        return self.meta.get("items", [])

    def item_id(self, row: int) -> str:
        items = self.items
        return str(items[row].get("id", row)) if 0 <= row < len(items) else str(row)


_RUNTIME_OPTIONS = {"device", "batch_size"}  # change how, not what, an embedder computes


def embedder_signature(desc) -> dict:
    """What makes two embedding spaces comparable: backend, model, and the options that change
    the vectors. Accepts a qc.embedder section or a dict (bank metadata)."""
    if not isinstance(desc, dict):
        desc = {"backend": desc.backend, "model": desc.model, "options": dict(desc.options)}
    options = {k: v for k, v in sorted((desc.get("options") or {}).items()) if k not in _RUNTIME_OPTIONS}
    return {"backend": desc.get("backend"), "model": desc.get("model"), "options": options}


def save_bank(out: Path, embeddings: np.ndarray, items: list[dict], embedder_desc: dict, index_cfg,
              extra: Optional[dict] = None) -> dict:
    out = Path(out)
    unit = unit_vectors(embeddings, f"{out}: bank embeddings", ids=[it.get("id") for it in items])
    if len(unit) == 0:
        raise UserError(f"{out}: refusing to write an empty QC bank")
    if len(items) != len(unit):
        raise UserError(f"{out}: {len(unit)} embeddings but {len(items)} items")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", unit)
    index = build_index(unit, index_cfg)
    save_index(index, out / "index.faiss")
    meta = {"format": BANK_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "embedder": embedder_signature(embedder_desc), "dim": int(unit.shape[1]), "count": int(len(unit)),
            "index_kind": index.kind, "items": items, **(extra or {})}
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    return meta


def _read_embeddings(path: Path) -> np.ndarray:
    if (path / "embeddings.npy").is_file():
        try:
            return np.load(path / "embeddings.npy", allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{path / 'embeddings.npy'}: unreadable ({exc})") from None
    if (path / "embeddings.parquet").is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(path / "embeddings.parquet")
        if "embedding" not in table.column_names:
            raise UserError(f"{path / 'embeddings.parquet'}: no `embedding` column")
        rows = table.column("embedding").to_pylist()
        if any(r is None for r in rows) or len({len(r) for r in rows}) > 1:
            raise UserError(f"{path / 'embeddings.parquet'}: null or ragged embedding rows")
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    raise UserError(f"{path}: QC bank has no embeddings.npy or embeddings.parquet")


def load_bank(path, index_cfg, expect_embedder: Optional[dict] = None) -> Bank:
    """Read a bank directory; errors name the file and what is wrong with it."""
    if path is None:
        raise ConfigError("qc.bank is not set: build one with `syncxr qc-bank` and point qc.bank at it")
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: QC bank not found (build it with `syncxr qc-bank --out {path}`)")
    if not path.is_dir():
        raise UserError(f"{path}: a QC bank is a directory (metadata.json, embeddings.npy, index.faiss)")
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise UserError(f"{meta_file}: missing; {path} is not a QC bank")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_file}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    emb = _read_embeddings(path)
    if emb.ndim != 2 or len(emb) == 0:
        raise UserError(f"{path}: the QC bank is empty (no embeddings); a reference filter needs at least one")
    dim = meta.get("dim")
    if dim is not None and emb.shape[1] != dim:
        raise UserError(f"{path}: embeddings have dimension {emb.shape[1]} but metadata.json says {dim}")
    if meta.get("count") is not None and len(emb) != meta["count"]:
        raise UserError(f"{path}: {len(emb)} embeddings but metadata.json says count {meta['count']}")
    if expect_embedder is not None and meta.get("embedder"):
        want, have = embedder_signature(expect_embedder), embedder_signature(meta["embedder"])
        if want != have:
            raise UserError(f"{path}: bank was embedded with {have} but qc.embedder is {want}; "
                            "embeddings from different models are not comparable (rebuild the bank)")
    unit = unit_vectors(emb, f"{path}: bank embeddings")
    kind = choose_kind(len(unit), index_cfg)
    index = None
    if (path / "index.faiss").is_file() and meta.get("index_kind") == kind:
        index = load_index(path / "index.faiss", index_cfg, kind)
        if index.ntotal != len(unit) or index.dim != unit.shape[1]:
            index = None  # stale cache
    if index is None:
        index = build_index(unit, index_cfg)
    return Bank(path=path, embeddings=unit, meta=meta, index=index)
