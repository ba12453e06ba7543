"""Image QC stages: embedders and judges by name, the stage classes that run them in Ray Data,
the reference-filter stage and the global near-duplicate/privacy tables (the QC bank on disk is
engine/qc/bank.py; image files in, engine/qc/image_files.py).

Stage classes follow the stage contract (model loaded once in __init__, batch of numpy columns
in, the batch plus new columns out). A row that cannot be decoded or embedded gets a non-empty
`embed_error` / `judge_error` instead of failing its batch; `*_verdict` turn a stage's output
into (ok, reasons) for engine/core/gate.py's Gated wrapper.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engine.core.errors import ConfigError
from engine.core.gate import isolate_by_key
from engine.core.registry import Registry
from engine.core.stage import object_column
from engine.qc.bank import load_bank
from engine.qc.faiss_index import build_index
from engine.qc.filters import near_duplicates, privacy_filter, reference_filter, unit_vectors
from engine.qc.image_files import decode_all, read_images_local

EMBEDDERS = Registry("qc.embedder")
EMBEDDERS.register("pixels", "actors.embed_pixels:PixelEmbedder")
EMBEDDERS.register("hf-vision", "actors.embed_hf:HFVisionEmbedder")

JUDGES = Registry("qc.judge")
JUDGES.register("rules", "actors.judge_rules:RulesJudge")
JUDGES.register("mllm", "actors.judge_mllm:MLLMJudge")

# ---------------------------------------------------------------- embedding

def build_embedder(backend_cfg):
    """The embedder named by a qc.embedder section (loaded in the calling process)."""
    return EMBEDDERS.get(backend_cfg.backend)(backend_cfg.model, dict(backend_cfg.options))


class EmbedStage:
    """Adds `embedding` (n, dim float32; zeros on failed rows) and `embed_error` ("" when fine)."""

    def __init__(self, backend: str, model: Optional[str] = None, options: Optional[dict] = None):
        self.embedder = EMBEDDERS.get(backend)(model, dict(options or {}))

    def __call__(self, batch: dict) -> dict:
        images, errors = decode_all(batch["image"])
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
        images, errors = decode_all(batch["image"])
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
