"""ConVIRT (Zhang et al. 2020): global image and text embeddings through non-linear projection
heads (one hidden ReLU layer), bidirectional InfoNCE weighted by lambda."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.errors import ConfigError
from train.models import losses
from train.models.base import ContrastiveModel

POOLINGS = ("cls", "mean", "max", "weighted")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str,
                logits: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L, H] -> [B, H]: the [CLS] position, or the mean / max over real tokens, or their
    softmax-weighted sum by per-token logits [B, L] ("weighted")."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.bool().unsqueeze(-1)
    if how == "weighted":
        w = torch.softmax(logits.masked_fill(~mask[..., 0], torch.finfo(logits.dtype).min), dim=1)
        return (hidden * w.unsqueeze(-1)).sum(1)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).max(dim=1).values


class ConvirtModel(ContrastiveModel):
    method = "convirt"

    def __init__(self, name, config, text_corpus=None, tokenizer_dir=None, from_dir=None):
        super().__init__(name, config, text_corpus, tokenizer_dir, from_dir)
        head = config["head"]
        if config["text"]["pooling"] not in POOLINGS:
            raise ConfigError(f"text.pooling: {config['text']['pooling']!r} is not one of {', '.join(POOLINGS)}")
        if config["text"]["pooling"] == "weighted" and not config["text_encoder"].get("token_weights"):
            raise ConfigError("text.pooling 'weighted' needs the bow text tower with text_encoder.token_weights: true")
        self.image_proj = projection_head(self.image_encoder.pooled_dim, int(head["hidden_dim"]), self.embed_dim)
        self.text_proj = projection_head(self.text_encoder.hidden_size, int(head["hidden_dim"]), self.embed_dim)

    def encode_image(self, images):
        feats = self.image_encoder(images)
        return {"image_global": self.image_proj(feats["pooled"]), "map": feats["map"]}

    def encode_text(self, input_ids, attention_mask):
        hidden = self.text_encoder(input_ids, attention_mask)[-1]
        how = self.config["text"]["pooling"]
        logits = self.text_encoder.token_logits(input_ids) if how == "weighted" else None
        pooled = pool_tokens(hidden, attention_mask, how, logits)
        return {"text_global": self.text_proj(pooled)}

    def forward(self, images, input_ids, attention_mask):
        return {"image_embed": self.encode_image(images)["image_global"],
                "text_embed": self.encode_text(input_ids, attention_mask)["text_global"]}

    def compute_loss(self, features):
        cfg = self.config["loss"]
        return losses.convirt_loss(features["image_embed"], features["text_embed"],
                                   float(cfg["temperature"]), float(cfg["lambda_i2t"]))

    def similarity(self, images, input_ids, attention_mask) -> torch.Tensor:
        return self.embed_image(images) @ self.embed_text(input_ids, attention_mask).t()

    def similarity_maps(self, images, input_ids, attention_mask) -> torch.Tensor:
        """Cosine of every position of the last feature map, through the image head, with each
        text embedding: [B_img, B_txt, h, w]."""
        fmap = self.encode_image(images)["map"]                      # [B, C, h, w]
        positions = F.normalize(self.image_proj(fmap.permute(0, 2, 3, 1)), dim=-1)  # [B, h, w, D]
        text = self.embed_text(input_ids, attention_mask)            # [T, D]
        return torch.einsum("bhwd,td->bthw", positions, text)
