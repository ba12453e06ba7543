"""GLoRIA (Huang et al. 2021): global contrast of pooled image and sentence features plus a local
contrast of words against attention-weighted image regions.

Image: local = 1x1 conv of the ResNet layer3 map (ViT: patch tokens), global = linear of pooled
layer4. Text: the last `last_n_layers` hidden layers summed, sub-words summed into words; the
sentence feature is the mean of the word features (the released code averages the aggregated
word axis; here padding and special tokens are left out of that mean). Text features pass
through a linear layer only when the text width differs from embed_dim (768 for BERT-base:
identity, as in GLoRIA)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models import losses
from train.models.base import ContrastiveModel
from train.models.word_pooling import pool_words


def _maybe_linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


class GloriaModel(ContrastiveModel):
    method = "gloria"
    NO_GRAD_KEYS = ("word_mask",)

    def __init__(self, name, config, text_corpus=None, tokenizer_dir=None, from_dir=None):
        super().__init__(name, config, text_corpus, tokenizer_dir, from_dir)
        d = self.embed_dim
        self.local_proj = nn.Conv2d(self.image_encoder.local_channels, d, kernel_size=1, bias=False)
        self.global_proj = nn.Linear(self.image_encoder.pooled_dim, d)
        self.word_proj = _maybe_linear(self.text_encoder.hidden_size, d)
        self.sentence_proj = _maybe_linear(self.text_encoder.hidden_size, d)

    def encode_image(self, images):
        feats = self.image_encoder(images)
        return {"image_global": self.global_proj(feats["pooled"]), "image_local": self.local_proj(feats["local"])}

    def encode_text(self, input_ids, attention_mask):
        n = int(self.config["text"]["last_n_layers"])
        hidden = torch.stack(self.text_encoder(input_ids, attention_mask)[-n:]).sum(0)   # [B, L, H]
        words, mask = pool_words(hidden, input_ids, attention_mask, self.text_encoder.is_continuation,
                                 self.text_encoder.special_ids)
        sentence = (words * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return {"text_global": self.sentence_proj(sentence), "words": self.word_proj(words), "word_mask": mask}

    def forward(self, images, input_ids, attention_mask):
        return {**self.encode_image(images), **self.encode_text(input_ids, attention_mask)}

    def _local_args(self) -> dict:
        cfg = self.config["loss"]
        return {"temp_attention": float(cfg["temp_attention"]), "temp_aggregation": float(cfg["temp_aggregation"]),
                "word_softmax": bool(cfg["attention_word_softmax"])}

    def compute_loss(self, features):
        cfg = self.config["loss"]
        return losses.gloria_loss(features["image_global"], features["text_global"], features["image_local"],
                                  features["words"], features["word_mask"], temp_logits=float(cfg["temp_logits"]),
                                  global_weight=float(cfg["global_weight"]), local_weight=float(cfg["local_weight"]),
                                  **self._local_args())

    def similarity(self, images, input_ids, attention_mask) -> torch.Tensor:
        """(global cosine + local word-region similarity Z) / 2, [B_img, B_txt]; Z is not bounded,
        eval normalises per class across images."""
        img = self.encode_image(images)
        txt = self.encode_text(input_ids, attention_mask)
        glob = F.normalize(img["image_global"], dim=-1) @ F.normalize(txt["text_global"], dim=-1).t()
        local = losses.local_similarity(txt["words"], txt["word_mask"], img["image_local"], **self._local_args())
        return (glob + local) / 2

    def similarity_maps(self, images, input_ids, attention_mask) -> torch.Tensor:
        """Word-to-region attention averaged over each text's words: [B_img, B_txt, h, w]."""
        img = self.encode_image(images)
        txt = self.encode_text(input_ids, attention_mask)
        _, maps = losses.local_similarity(txt["words"], txt["word_mask"], img["image_local"],
                                          return_attention=True, **self._local_args())
        b, _, h, w = img["image_local"].shape
        return torch.stack([m.mean(1) if m.shape[1] else m.new_zeros(b, h, w) for m in maps], dim=1)
