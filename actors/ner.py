"""Entity extraction with a transformers token-classification model (RaTE-NER or any model with
BIO labels over RaTE's five types), loaded from a local directory or a hub id.

The model's labels come from `model.config.id2label` ("O", "B-ABNORMALITY", "I-NON-DISEASE",
...). Reports are split into sentences, sentences into words; each word takes the label of its
first sub-token; BIO decoding merges words into spans; span text is lowercased and stripped.
The decoding steps are plain functions (tested on hand-made label sequences and logits).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engine.text.entities import ENTITY_TYPES, dedupe
from engine.core.errors import ConfigError, UserError
from engine.text.lexicon_extractor import split_sentences, stage_call
from engine.text.sections import normalise_entity_text

_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


# --- pure decoding ------------------------------------------------------------------------------
def parse_labels(id2label: dict, source: str = "model") -> dict[int, tuple[str, Optional[str]]]:
    """id -> ("O", None) | ("B" | "I", entity type). Unknown labels are an error naming them."""
    if not id2label:
        raise UserError(f"{source}: config has no id2label; expected BIO labels over {', '.join(ENTITY_TYPES)}")
    out: dict[int, tuple[str, Optional[str]]] = {}
    for key, label in id2label.items():
        label = str(label).strip()
        if label.upper() == "O":
            out[int(key)] = ("O", None)
            continue
        prefix, sep, etype = label.partition("-")
        prefix = prefix.upper()
        if not sep or prefix not in ("B", "I") or etype.upper() not in ENTITY_TYPES:
            raise UserError(f"{source}: unknown label {label!r} in id2label; expected 'O' or B-/I- plus one of "
                            f"{', '.join(ENTITY_TYPES)}")
        out[int(key)] = (prefix, etype.upper())
    return out


def word_labels(logits: np.ndarray, word_ids: Sequence[Optional[int]], n_words: int,
                labels: dict[int, tuple[str, Optional[str]]]) -> list[tuple[str, Optional[str]]]:
    """One label per word from per-token logits: the argmax at the word's first sub-token.
    Words the tokenizer dropped (or cut) get "O"."""
    out: list[tuple[str, Optional[str]]] = [("O", None)] * n_words
    seen = set()
    best = np.asarray(logits).argmax(-1)
    for tok, w in enumerate(word_ids):
        if w is None or w in seen or w >= n_words:
            continue
        seen.add(w)
        out[w] = labels[int(best[tok])]
    return out


def decode_bio(tags: Sequence[tuple[str, Optional[str]]]) -> list[tuple[int, int, str]]:
    """Spans (start, end, type) over word positions. B starts a span; I continues a span of the
    same type and otherwise starts one (models often emit I without B); O ends it."""
    spans: list[tuple[int, int, str]] = []
    start, cur = None, None
    for i, (prefix, etype) in enumerate(tags):
        if prefix == "O":
            if cur is not None:
                spans.append((start, i, cur))
            start, cur = None, None
        elif prefix == "B" or etype != cur:
            if cur is not None:
                spans.append((start, i, cur))
            start, cur = i, etype
    if cur is not None:
        spans.append((start, len(tags), cur))
    return spans


def spans_to_entities(words: Sequence[str], spans: Sequence[tuple[int, int, str]]) -> list[dict]:
    out = []
    for start, end, etype in spans:
        text = normalise_entity_text(" ".join(words[start:end]))
        if text:
            out.append({"text": text, "type": etype})
    return out


def split_words(sentence: str) -> list[str]:
    return _WORD.findall(sentence)


def pack_windows(counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut a sentence into word ranges of at most `budget` sub-tokens each (counts: sub-tokens
    per word), so that nothing is lost to truncation. A single over-long word gets its own range."""
    out, start, used = [], 0, 0
    for i, c in enumerate(counts):
        if used and used + c > budget:
            out.append((start, i))
            start, used = i, 0
        used += c
    if start < len(counts):
        out.append((start, len(counts)))
    return out


# --- the backend --------------------------------------------------------------------------------
def _resolve_model(model: Optional[str]) -> str:
    if not model:
        raise ConfigError("extractor.model: the transformers backend needs a local model directory or hub id")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: extractor.model must be a model directory, not a file")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a transformers model directory (no config.json)")
        return str(path)
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_local:
        raise UserError(f"{model}: model directory not found")
    return model  # a hub id


class TransformersNER:
    """`extract(texts)` -> one list of {"text", "type"} per text, like the lexicon extractor.
    Also a Ray Data stage (`__call__(batch)` adds `entities` to a batch with `text`)."""

    def __init__(self, cfg=None):
        from engine.core.config import ExtractorConfig

        if isinstance(cfg, dict):
            cfg = ExtractorConfig(**cfg)
        self.cfg = cfg or ExtractorConfig(backend="transformers")
        source = _resolve_model(self.cfg.model)  # before the heavy imports: bad paths fail fast

        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        device = self.cfg.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"extractor.device {device!r}: CUDA is not available on this machine")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForTokenClassification.from_pretrained(source)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source}: could not load a token-classification model ({first})") from None
        if not getattr(self.tokenizer, "is_fast", False):
            raise UserError(f"{source}: needs a fast (tokenizers) tokenizer to align words and sub-tokens")
        self.labels = parse_labels(self.model.config.id2label, source)
        self.model.to(device).eval()
        self.device = device
        self.batch_size = self.cfg.batch_size
        limit = getattr(self.tokenizer, "model_max_length", 512) or 512
        self.max_length = int(min(limit, 512, getattr(self.model.config, "max_position_embeddings", 512) or 512))
        try:
            specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        except Exception:  # tokenizers without the helper: [CLS] ... [SEP]
            specials = 2
        self.budget = max(1, self.max_length - specials)

    @classmethod
    def from_config(cls, cfg) -> "TransformersNER":
        return cls(cfg)

    def _predict(self, pieces: list[list[str]]) -> list[list[tuple[str, Optional[str]]]]:
        import torch

        out: list = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))  # less padding per batch
        for b in range(0, len(order), self.batch_size):
            idx = [i for i in order[b:b + self.batch_size]]
            todo = [i for i in idx if pieces[i]]
            for i in idx:
                if not pieces[i]:
                    out[i] = []
            if not todo:
                continue
            enc = self.tokenizer([pieces[i] for i in todo], is_split_into_words=True, truncation=True,
                                 max_length=self.max_length, padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            logits = logits.float().cpu().numpy()
            for row, i in enumerate(todo):
                out[i] = word_labels(logits[row], enc.word_ids(row), len(pieces[i]), self.labels)
        return out

    def _windows(self, sentences: list[list[str]]) -> list[list[tuple[int, int]]]:
        if not sentences:
            return []
        enc = self.tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
        out = []
        for k, words in enumerate(sentences):
            counts = [0] * len(words)
            for w in enc.word_ids(k):
                if w is not None:
                    counts[w] += 1
            out.append(pack_windows(counts, self.budget))
        return out

    def extract(self, texts: list[str]) -> list[list[dict]]:
        sentences, sent_owner = [], []
        for t, text in enumerate(texts):
            for sentence in split_sentences(text or ""):
                words = split_words(sentence)
                if words:
                    sentences.append(words)
                    sent_owner.append(t)
        pieces, owner = [], []
        for words, ranges, t in zip(sentences, self._windows(sentences), sent_owner):
            for a, b in ranges:
                pieces.append(words[a:b])
                owner.append(t)
        tags = self._predict(pieces)
        found: list[list[dict]] = [[] for _ in texts]
        for words, word_tags, t in zip(pieces, tags, owner):
            found[t].extend(spans_to_entities(words, decode_bio(word_tags)))
        return [dedupe(ents) for ents in found]

    def __call__(self, batch: dict) -> dict:
        return stage_call(self.extract, batch)
