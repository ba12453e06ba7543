"""Image QC stages: embedders and judges by name, the stage classes that run them in Ray Data,
the reference-filter stage, the global near-duplicate/privacy step, and the QC bank on disk.

Stage classes follow the stage contract (model loaded once in __init__, batch of numpy columns
in, the batch plus new columns out). A row that cannot be decoded or embedded gets a non-empty
`embed_error` / `judge_error` instead of failing its batch; `*_verdict` turn a stage's output
into (ok, reasons) for engine/core/gate.py's Gated wrapper.

Bank layout (`syncxr qc-bank`): metadata.json (embedder, dim, count, items with their flags),
embeddings.npy (or embeddings.parquet with an `embedding` column), index.faiss (a cache:
rebuilt when absent or stale).
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engine.core.errors import ConfigError, UserError
from engine.qc.faiss_index import SearchIndex, build_index, choose_kind, load_index, save_index
from engine.images.pipeline import decode_png
from engine.qc.filters import near_duplicates, privacy_filter, reference_filter, unit_vectors
from engine.core.registry import Registry
from engine.core.gate import isolate_by_key
from engine.core.stage import object_column

EMBEDDERS = Registry("qc.embedder")
EMBEDDERS.register("pixels", "actors.embed_pixels:PixelEmbedder")
EMBEDDERS.register("hf-vision", "actors.embed_hf:HFVisionEmbedder")

JUDGES = Registry("qc.judge")
JUDGES.register("rules", "actors.judge_rules:RulesJudge")
JUDGES.register("mllm", "actors.judge_mllm:MLLMJudge")

BANK_FORMAT = "syncxr-qc-bank/1"


# ---------------------------------------------------------------- images

def decode_image(cell) -> np.ndarray:
    """An `image` cell ({bytes, path} struct, or raw bytes; PNG or JPEG) as 2-d uint8 grayscale."""
    data, path = cell, None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    if data is None or len(data) == 0:
        if not path:
            raise ValueError("image cell has neither bytes nor a path")
        data = Path(path).read_bytes()
    return decode_png(data)  # PIL reads any format it knows, not only PNG


def _decode_all(column) -> tuple[list, list[str]]:
    images, errors = [], []
    for cell in column:
        try:
            images.append(decode_image(cell))
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - an undecodable row is that row's error
            images.append(None)
            errors.append(f"image not decodable: {type(exc).__name__}: {str(exc)[:200]}")
    return images, errors


IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def list_image_files(src: Path) -> list[Path]:
    return sorted(p for p in Path(src).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _read_source_table(src: Path):
    """images.parquet -> arrow table (sample_id, image); errors name the file and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{src}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if "image" not in table.column_names:
        raise UserError(f"{src}: no `image` column (columns: {', '.join(table.column_names)})")
    image = table.column("image")
    if pa.types.is_binary(image.type) or pa.types.is_large_binary(image.type):
        image = pa.StructArray.from_arrays([image.combine_chunks(), pa.nulls(len(image), pa.string())],
                                           names=["bytes", "path"])
    elif not (pa.types.is_struct(image.type) and image.type.get_field_index("bytes") >= 0):
        raise UserError(f"{src}: column `image` must be binary or a struct with `bytes` (and `path`), "
                        f"got {image.type}")
    if "sample_id" in table.column_names:
        ids = [str(s) for s in table.column("sample_id").to_pylist()]
    else:
        ids = [f"row-{i:07d}" for i in range(table.num_rows)]
    return pa.table({"sample_id": pa.array(ids, pa.string()), "image": image})


def _check_source(src) -> Path:
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: image source not found (a directory of PNG/JPEG files or an images.parquet)")
    if src.is_dir():
        if not list_image_files(src):
            raise UserError(f"{src}: no PNG or JPEG files in this directory")
    elif src.suffix.lower() != ".parquet":
        raise UserError(f"{src}: expected a directory of PNG/JPEG files or a .parquet file with an `image` column")
    return src


def read_images_local(src) -> tuple[list[str], list[np.ndarray]]:
    """All images of a source, decoded in this process (small sets: privacy references, tests)."""
    src = _check_source(src)
    if src.is_dir():
        files = list_image_files(src)
        ids = [f.relative_to(src).as_posix() for f in files]
        cells = [{"bytes": f.read_bytes(), "path": str(f)} for f in files]
    else:
        table = _read_source_table(src)
        ids, cells = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
    images = []
    for sid, cell in zip(ids, cells):
        try:
            images.append(decode_image(cell))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{src}: image {sid!r} is not decodable ({type(exc).__name__}: {exc})") from None
    return ids, images


def _files_to_rows(batch: dict, root: str) -> dict:
    """read_binary_files rows (bytes, path) -> (sample_id = path relative to the source, image)."""
    paths = [Path("/" + str(p).lstrip("/")) for p in batch["path"]]
    cells = [{"bytes": bytes(b), "path": str(p)} for b, p in zip(batch["bytes"], paths)]
    ids = [p.relative_to(root).as_posix() for p in paths]
    return {"sample_id": np.array(ids, dtype=object), "image": object_column(cells)}


def image_source_dataset(src, limit: Optional[int] = None):
    """A Ray dataset (sample_id, image {bytes, path}) over a directory of images or a parquet."""
    import ray.data

    src = _check_source(src)
    if src.is_dir():
        files = list_image_files(src)[:limit]
        ds = ray.data.read_binary_files([str(f.resolve()) for f in files], include_paths=True)
        return ds.map_batches(functools.partial(_files_to_rows, root=str(src.resolve())), batch_format="numpy")
    table = _read_source_table(src)
    if limit:
        table = table.slice(0, limit)
    return ray.data.from_arrow(table)


# ---------------------------------------------------------------- embedding

def build_embedder(backend_cfg):
    """The embedder named by a qc.embedder section (loaded in the calling process)."""
    return EMBEDDERS.get(backend_cfg.backend)(backend_cfg.model, dict(backend_cfg.options))


class EmbedStage:
    """Adds `embedding` (n, dim float32; zeros on failed rows) and `embed_error` ("" when fine)."""

    def __init__(self, backend: str, model: Optional[str] = None, options: Optional[dict] = None):
        self.embedder = EMBEDDERS.get(backend)(model, dict(options or {}))

    def __call__(self, batch: dict) -> dict:
        images, errors = _decode_all(batch["image"])
        n = len(images)
        vecs = np.zeros((n, self.embedder.dim), np.float32)
        good = [i for i in range(n) if not errors[i]]
        found, failed = isolate_by_key(self.embedder.embed, {i: images[i] for i in good})
        for i, vec in found.items():
            vecs[i] = vec
        for i, exc in failed.items():
            errors[i] = f"embedding failed: {type(exc).__name__}: {str(exc)[:200]}"
        for i in good:
            if not errors[i] and (not np.isfinite(vecs[i]).all() or not np.any(vecs[i])):
                errors[i] = "embedding failed: zero or non-finite vector"
                vecs[i] = 0
        return {**batch, "embedding": vecs, "embed_error": object_column(errors)}


def embed_verdict(out: dict) -> tuple[np.ndarray, list]:
    errs = [str(e or "") for e in out["embed_error"]]
    return np.array([not e for e in errs]), [f"embed: {e}" if e else None for e in errs]


# ---------------------------------------------------------------- judging

class JudgeStage:
    """A per-batch judge (rules). Adds judge_flags (list of str), judge_problematic (bool),
    judge_scores (JSON text) and judge_error ("" when fine)."""

    def __init__(self, backend: str = "rules", model: Optional[str] = None, options: Optional[dict] = None):
        cls = JUDGES.get(backend)
        if cls.attach_mode == "dataset":
            raise ConfigError(f"qc.judge backend {backend!r} runs on a whole dataset; use judge_dataset()")
        self.judge = cls(model, dict(options or {}))

    def __call__(self, batch: dict) -> dict:
        images, errors = _decode_all(batch["image"])
        flags, problematic, scores = [], [], []
        for img, err in zip(images, errors):
            if err:
                flags.append([]), problematic.append(False), scores.append("{}")
                continue
            try:
                verdict = self.judge.judge(img)
            except Exception as exc:  # noqa: BLE001 - one image the judge cannot read is that row's error
                errors[len(flags)] = f"judge failed: {type(exc).__name__}: {str(exc)[:200]}"
                flags.append([]), problematic.append(False), scores.append("{}")
                continue
            flags.append(list(verdict["flags"]))
            problematic.append(bool(verdict["flags"]))
            scores.append(json.dumps(verdict["scores"], sort_keys=True))
        return {**batch, "judge_flags": object_column(flags), "judge_problematic": np.array(problematic, bool),
                "judge_scores": object_column(scores), "judge_error": object_column(errors)}


def judge_verdict(out: dict) -> tuple[np.ndarray, list]:
    ok, reasons = [], []
    for flags, bad, err in zip(out["judge_flags"], out["judge_problematic"], out["judge_error"]):
        if err:
            ok.append(False), reasons.append(f"judge: error: {err}")
        elif bad:
            names = ", ".join(str(f) for f in flags) or "problematic"
            ok.append(False), reasons.append(f"judge: {names}")
        else:
            ok.append(True), reasons.append(None)
    return np.array(ok, bool), reasons


def check_backends(qc_cfg) -> None:
    """Fail on the driver, with the config field named, before any actor starts: unknown backend
    names, bad options, a missing model directory, vllm absent for the mllm judge."""
    JUDGES.get(qc_cfg.judge.backend).check(qc_cfg.judge)
    EMBEDDERS.get(qc_cfg.embedder.backend).check(qc_cfg.embedder)


def judge_dataset(ds, judge_cfg):
    """Apply the configured judge to a Ray dataset with an `image` column."""
    from engine.core.stage import map_stage

    cls = JUDGES.get(judge_cfg.backend)
    if cls.attach_mode == "dataset":
        return cls.apply(ds, judge_cfg)
    return map_stage(ds, JudgeStage, judge_cfg.resources,
                     dict(backend=judge_cfg.backend, model=judge_cfg.model, options=dict(judge_cfg.options)))


def embed_dataset(ds, embedder_cfg):
    from engine.core.stage import map_stage

    return map_stage(ds, EmbedStage, embedder_cfg.resources,
                     dict(backend=embedder_cfg.backend, model=embedder_cfg.model, options=dict(embedder_cfg.options)))


# ---------------------------------------------------------------- the bank

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


# ---------------------------------------------------------------- filters as stages

class ReferenceFilterStage:
    """Best cosine of each embedded row to a bank (the problematic images). Adds
    <prefix>_similarity, <prefix>_match (bank item id) and <prefix>_reject (cosine > threshold).
    Rows with an embed_error are skipped (similarity 0, not rejected here)."""

    prefix = "reference"

    def __init__(self, bank: str, threshold: float, index: dict, embedder: Optional[dict] = None):
        from engine.core.config import IndexConfig

        self.threshold = float(threshold)
        self.bank = load_bank(bank, IndexConfig(**index), expect_embedder=embedder)

    def _filter(self, emb, ids):
        return reference_filter(emb, self.bank.index, self.threshold, None, ids=ids)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["embedding"])
        errors = [str(e or "") for e in batch.get("embed_error", [""] * n)]
        live = [i for i in range(n) if not errors[i]]
        sims = np.zeros(n, np.float32)
        match = [""] * n
        reject = np.zeros(n, bool)
        if live:
            emb = np.stack([np.asarray(batch["embedding"][i], np.float32) for i in live])
            res = self._filter(emb, [batch["sample_id"][i] for i in live] if "sample_id" in batch else None)
            sims[live] = res.similarity
            reject[live] = res.reject
            for j, i in enumerate(live):
                match[i] = self.bank.item_id(int(res.nearest[j]))
        p = self.prefix
        return {**batch, f"{p}_similarity": sims, f"{p}_match": object_column(match), f"{p}_reject": reject}


def reference_verdict(threshold: float, prefix: str = "reference"):
    what = "problematic image" if prefix == "reference" else "real training image"

    def verdict(out: dict) -> tuple[np.ndarray, list]:
        ok, reasons = [], []
        for sim, match, rej in zip(out[f"{prefix}_similarity"], out[f"{prefix}_match"], out[f"{prefix}_reject"]):
            ok.append(not rej)
            reasons.append(f"{prefix}: cosine {float(sim):.3f} > {threshold} to {what} {match}" if rej else None)
        return np.array(ok, bool), reasons
    return verdict


def dedup_table(sample_ids: Sequence[str], embeddings: np.ndarray, qc_cfg):
    """Global near-duplicate removal as a table: sample_id, kept, duplicate_of, similarity."""
    import pyarrow as pa

    res = near_duplicates(embeddings, list(sample_ids), qc_cfg.dedup_threshold, qc_cfg.index)
    return pa.table({"sample_id": pa.array([str(s) for s in sample_ids], pa.string()),
                     "kept": pa.array(res.keep), "duplicate_of": pa.array(res.duplicate_of, pa.string()),
                     "similarity": pa.array(res.similarity, pa.float32())})


def privacy_reference(cfg, embedder_desc: Optional[dict] = None):
    """The real training set's embeddings for the privacy filter, from qc.privacy_images: a bank
    directory (from `syncxr qc-bank --keep all`) or images to embed here with qc.embedder."""
    path = cfg.resolve(cfg.qc.privacy_images)
    if path is None:
        return None
    if (Path(path) / "metadata.json").is_file():
        return load_bank(path, cfg.qc.index, expect_embedder=embedder_desc).index
    ids, images = read_images_local(path)
    embedder = build_embedder(cfg.qc.embedder)
    return build_index(unit_vectors(embedder.embed(images), f"{path}: privacy images", ids=ids), cfg.qc.index)


def privacy_table(sample_ids: Sequence[str], embeddings: np.ndarray, reference, qc_cfg):
    import pyarrow as pa

    res = privacy_filter(embeddings, reference, qc_cfg.privacy_threshold, qc_cfg.index, ids=list(sample_ids))
    return pa.table({"sample_id": pa.array([str(s) for s in sample_ids], pa.string()),
                     "privacy_reject": pa.array(res.reject), "privacy_similarity": pa.array(res.similarity, pa.float32()),
                     "privacy_match": pa.array(res.nearest, pa.int64())})
