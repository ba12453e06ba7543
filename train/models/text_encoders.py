"""Text encoders: any transformers BERT-family model with its tokenizer (Bio_ClinicalBERT,
CXR-BERT, from a directory or hub id); "smallbert", a small random-init BertModel; or "bow", a
token-embedding table (the CPU default: a bag of words once the method pools it). The two
from-scratch kinds train a WordPiece vocabulary on the given corpus, so no weights are needed.

`forward` returns every layer's hidden states [B, L, H] (for "bow" one layer: the token
embeddings); the methods pool them their own way, so GLoRIA still gets per-word features."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from engine.core.errors import ConfigError, UserError
from train.models import tokenizer as tok


def _corpus_tokenizer(spec: dict, text_corpus: Iterable[str] | None, tokenizer_dir: str | None):
    """An existing tokenizer in tokenizer_dir wins; else one is trained on text_corpus (and
    saved to tokenizer_dir when given)."""
    if tokenizer_dir and (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        return tok.load_tokenizer(tokenizer_dir)
    if text_corpus is None:
        raise UserError("a from-scratch text encoder needs a text corpus to train its vocabulary or a tokenizer_dir "
                        "holding one (neither given)")
    tokenizer = tok.train_wordpiece(text_corpus, vocab_size=int(spec["vocab_size"]),
                                    min_frequency=int(spec["min_frequency"]))
    if tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)
    return tokenizer


def without_pooler(make, source):
    """Build without the pooler (BERT's dense + tanh for next-sentence prediction, ViT's): it is
    unused here, and unused parameters break DDP. Classes without the option are built as they are."""
    try:
        return make(source, add_pooling_layer=False)
    except TypeError:
        return make(source)


# Negation for a tower that cannot read word order: a token between a cue and the end of its
# clause is looked up in a second table, so "no effusion" and "effusion" stop sharing one vector.
# Cues and clause ends in the manner of NegEx, kept to the words that open or close a clause.
NEGATION_CUES = ("no", "not", "without", "negative", "none", "absent")
SCOPE_ENDS = (".", ";", ":", "but", "however", "although", "except")


def negation_scope(input_ids: torch.Tensor, cue_ids: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """BoolTensor like input_ids: True for a token after a negation cue and before the next scope
    end of its row (the cue and the end themselves stay False)."""
    cue, end = torch.isin(input_ids, cue_ids), torch.isin(input_ids, end_ids)
    cues_so_far = torch.cumsum(cue.long(), dim=1)
    # the cue count at the last scope end so far (counts only grow, so a running max finds it)
    at_last_end = torch.cummax(torch.where(end, cues_so_far, torch.zeros_like(cues_so_far)), dim=1).values
    return (cues_so_far > at_last_end) & ~cue & ~end


class TokenEmbeddings(nn.Module):
    """The "bow" tower: one embedding per token, no mixing between tokens. Measured on two CPU
    cores it learns faster per second than a random-init transformer (benchmarks/results/recipe.md).
    With `negation`, a token inside a negation's scope has an embedding of its own."""

    def __init__(self, vocab_size: int, hidden_size: int, pad_token_id: int, dropout: float = 0.0,
                 negation_ids: tuple[list[int], list[int]] | None = None, token_weights: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        rows = vocab_size * (2 if negation_ids else 1)
        self.embeddings = nn.Embedding(rows, hidden_size, padding_idx=pad_token_id)
        nn.init.normal_(self.embeddings.weight, std=hidden_size ** -0.5)
        with torch.no_grad():
            self.embeddings.weight[pad_token_id].zero_()
        self.dropout = nn.Dropout(dropout)
        self.hidden_size = hidden_size
        self.negation = negation_ids is not None
        cues, ends = negation_ids or ([], [])
        self.register_buffer("cue_ids", torch.tensor(cues, dtype=torch.long), persistent=False)
        self.register_buffer("end_ids", torch.tensor(ends, dtype=torch.long), persistent=False)
        # a learned logit per token (0 at the start: plain mean pooling), for "weighted" pooling
        self.weights = nn.Embedding(rows, 1, _weight=torch.zeros(rows, 1)) if token_weights else None

    def lookup_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.negation:
            return input_ids + self.vocab_size * negation_scope(input_ids, self.cue_ids, self.end_ids).long()
        return input_ids

    def forward(self, input_ids, attention_mask) -> tuple[torch.Tensor]:
        return (self.dropout(self.embeddings(self.lookup_ids(input_ids))),)

    def token_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L]: each token's learned pooling logit."""
        return self.weights(self.lookup_ids(input_ids))[..., 0]


def negation_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The ids of the cue and scope-end words that the vocabulary holds as whole tokens."""
    vocab = tokenizer.get_vocab()
    ends = [vocab[w] for w in SCOPE_ENDS if w in vocab] + [tokenizer.sep_token_id]
    return [vocab[w] for w in NEGATION_CUES if w in vocab], ends


def model_from_config(config):
    """A transformers model of this architecture, without weights. BERT is built by its own
    class: AutoModel's class lookup imports the whole model registry, ~6 s of every load here (each
    training worker loads the starting model)."""
    if config.model_type == "bert":
        from transformers import BertModel

        return without_pooler(BertModel, config)
    from transformers import AutoModel

    return without_pooler(AutoModel.from_config, config)


FROM_SCRATCH = ("smallbert", "bow")
KINDS = (*FROM_SCRATCH, "hf", "transformers")


class TextEncoder(nn.Module):
    def __init__(self, spec: dict, max_tokens: int, text_corpus=None, tokenizer_dir=None,
                 from_dir: str | None = None):
        super().__init__()
        kind = spec.get("type")
        if kind not in KINDS:
            raise ConfigError(f"text_encoder.type: {kind!r} is not one of 'smallbert', 'bow', 'hf'")
        self.kind = kind
        if kind == "bow":  # architecture from the spec alone; load_model brings the weights
            self.tokenizer = (tok.load_tokenizer(str(Path(from_dir) / "tokenizer")) if from_dir is not None
                              else _corpus_tokenizer(spec, text_corpus, tokenizer_dir))
            self.model = TokenEmbeddings(len(self.tokenizer), int(spec["hidden_size"]), self.tokenizer.pad_token_id,
                                         float(spec.get("dropout") or 0.0),
                                         negation_ids(self.tokenizer) if spec.get("negation") else None,
                                         bool(spec.get("token_weights")))
        elif from_dir is not None:  # load_model: architecture from the saved config, weights later
            from transformers import AutoConfig

            self.tokenizer = tok.load_tokenizer(str(Path(from_dir) / "tokenizer"))
            config = AutoConfig.from_pretrained(str(Path(from_dir) / "text_encoder"))
            self.model = model_from_config(config)
        elif kind == "smallbert":
            from transformers import BertConfig, BertModel  # the modelling import alone costs seconds: only here

            self.tokenizer = _corpus_tokenizer(spec, text_corpus, tokenizer_dir)
            config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=int(spec["hidden_size"]),
                                num_hidden_layers=int(spec["num_hidden_layers"]),
                                num_attention_heads=int(spec["num_attention_heads"]),
                                intermediate_size=int(spec["intermediate_size"]),
                                max_position_embeddings=max(int(max_tokens), 32),
                                hidden_dropout_prob=float(spec["dropout"]),
                                attention_probs_dropout_prob=float(spec["dropout"]),
                                pad_token_id=self.tokenizer.pad_token_id)
            self.model = BertModel(config, add_pooling_layer=False)
        else:
            from transformers import AutoModel

            source = spec.get("path")
            if not source:
                raise ConfigError("text_encoder.path: a transformers text model needs a directory or hub id")
            self.tokenizer = tok.load_tokenizer(tokenizer_dir or source)
            try:
                self.model = without_pooler(AutoModel.from_pretrained, source)
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"text_encoder.path {source!r} cannot be loaded as a transformers model: "
                                f"{type(exc).__name__}") from None
        self.hidden_size = self.model.hidden_size if kind == "bow" else self.model.config.hidden_size
        self.max_tokens = int(max_tokens)
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if limit is not None and self.max_tokens > limit:
            raise ConfigError(f"text.max_tokens {self.max_tokens} exceeds the text model's "
                              f"max_position_embeddings {limit}")
        self.register_buffer("is_continuation", tok.continuation_mask(self.tokenizer), persistent=False)
        self.register_buffer("special_ids", torch.tensor(tok.special_ids(self.tokenizer)), persistent=False)
        self.freeze_layers(int(spec.get("freeze_layers") or 0))

    def freeze_layers(self, n: int) -> None:
        """Freeze the embeddings and the first n transformer layers (ConVIRT freezes 6)."""
        if n <= 0:
            return
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if layers is None or not hasattr(self.model, "embeddings"):
            raise ConfigError(f"text_encoder.freeze_layers: {type(self.model).__name__} has no BERT layers")
        for module in [self.model.embeddings, *list(layers)[:n]]:
            for p in module.parameters():
                p.requires_grad_(False)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tok.encode(self.tokenizer, list(texts), self.max_tokens)

    def token_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.kind != "bow" or self.model.weights is None:
            raise ConfigError("text.pooling 'weighted' needs the bow text tower with text_encoder.token_weights: true")
        return self.model.token_logits(input_ids)

    def forward(self, input_ids, attention_mask) -> tuple[torch.Tensor, ...]:
        if self.kind == "bow":
            return self.model(input_ids, attention_mask)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states

    def save(self, out_dir: Path) -> None:
        self.tokenizer.save_pretrained(str(out_dir / "tokenizer"))
        if self.kind != "bow":  # bow is rebuilt from the model config
            self.model.config.save_pretrained(str(out_dir / "text_encoder"))
