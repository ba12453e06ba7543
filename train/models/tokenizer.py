"""Text tokenisation for the contrastive models: a WordPiece vocabulary trained on a corpus (the
CPU default "smallbert" has no pretrained vocabulary), loading any BERT-family tokenizer, and
batch encoding with a per-text truncation flag.

Only BERT-style WordPiece tokenizers are supported ([CLS] text [SEP], "##" continuations):
GLoRIA's word pooling relies on the "##" prefix to join sub-words into words.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from engine.core.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    lowercase: bool = True):
    """A BERT tokenizer (transformers, tokenizers-backed) whose WordPiece vocabulary is built from
    `texts`: the special tokens, every character seen (alone and as a "##" continuation, so no
    word is unknown), then the most frequent words (at least `min_frequency` times; ties by
    spelling) up to `vocab_size`. Built here rather than by the tokenizers trainer, which breaks
    ties between equally frequent merges in hash-map order: the same corpus gave another
    vocabulary from run to run, and so another model."""
    from collections import Counter

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise UserError("smallbert tokenizer: the text corpus is empty; give report texts or a tokenizer_dir")
    splitter = BertWordPieceTokenizer(lowercase=lowercase)._tokenizer  # BERT's normaliser and pre-tokeniser
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    pieces = [*chars, *("##" + c for c in chars)]
    taken = set(SPECIAL_TOKENS) | set(pieces)
    frequent = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if n >= min_frequency and w not in taken]
    words = sorted(frequent[:max(0, vocab_size - len(SPECIAL_TOKENS) - len(pieces))])
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *pieces, *words])}
    wp = BertWordPieceTokenizer(vocab=vocab, lowercase=lowercase)
    return BertTokenizerFast(tokenizer_object=wp._tokenizer, do_lower_case=lowercase,
                             unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(path_or_id: str):
    """AutoTokenizer from a directory or hub id; a one-line UserError when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path_or_id))
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad path
        kind = "directory" if Path(str(path_or_id)).exists() else "directory or hub id"
        raise UserError(f"tokenizer {kind} {path_or_id!r} cannot be loaded: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def continuation_mask(tokenizer) -> torch.Tensor:
    """BoolTensor[vocab]: True where the token continues the previous word ("##...")."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([isinstance(t, str) and t.startswith("##") for t in tokens], dtype=torch.bool)


def special_ids(tokenizer) -> list[int]:
    return sorted({int(i) for i in tokenizer.all_special_ids})


def encode(tokenizer, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Pad to the longest text; a text longer than `max_tokens` (special tokens included) keeps its
    first tokens and its closing [SEP], and is flagged in `truncated`."""
    if max_tokens < 2:
        raise UserError(f"text max_tokens must be at least 2, got {max_tokens}")
    texts = [t if isinstance(t, str) else "" for t in texts]
    # Encode untruncated once: the length tells us which texts were cut.
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    sep = tokenizer.sep_token_id
    truncated = [len(x) > max_tokens for x in ids]
    ids = [x[: max_tokens - 1] + [sep] if cut else x for x, cut in zip(ids, truncated)]
    length = max((len(x) for x in ids), default=1)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
    attention = torch.zeros((len(ids), length), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": attention,
            "truncated": torch.tensor(truncated, dtype=torch.bool)}
