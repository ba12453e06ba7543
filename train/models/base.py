"""ContrastiveModel: what ConVIRT and GLoRIA share - the two encoders, tokenisation, the
embedding/similarity API used by eval/, cross-rank gathering for the loss, and saving."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.models import gather as distributed
from train.models.image_encoders import build_image_encoder
from train.models.text_encoders import TextEncoder

FORMAT = "syncxr-model/1"
MODEL_FILE = "syncxr_model.json"
WEIGHTS_FILE = "weights.pt"


class ContrastiveModel(nn.Module):
    method: str = ""
    # feature keys gathered without gradient (masks); all other tensors are gathered with it
    NO_GRAD_KEYS: tuple[str, ...] = ()

    def __init__(self, name: str, config: dict, text_corpus=None, tokenizer_dir=None,
                 from_dir: str | None = None):
        super().__init__()
        self.name = name
        self.config = config
        self.image_encoder = build_image_encoder(
            config["image_encoder"], None if from_dir is None else str(Path(from_dir) / "image_encoder"))
        self.text_encoder = TextEncoder(config["text_encoder"], config["text"]["max_tokens"],
                                        text_corpus, tokenizer_dir, from_dir)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.config["image"]["image_size"])

    @property
    def resize_to(self) -> int:
        return int(self.config["image"]["resize_to"])

    @property
    def embed_dim(self) -> int:
        return int(self.config["head"]["embed_dim"])

    @property
    def backbone_name(self) -> str | None:
        return self.image_encoder.backbone_name

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """torchvision-ResNet keys (conv1, bn1, layer1..4; no fc)."""
        if self.backbone_name is None:
            raise TypeError(f"model {self.name}: the image encoder is not a torchvision ResNet")
        return {k: v.detach().clone() for k, v in self.image_encoder.trunk.state_dict().items()}

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_encoder.tokenize(texts)

    # ---- to implement per method ----------------------------------------------------------------
    def forward(self, images, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compute_loss(self, features: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def encode_image(self, images) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode_text(self, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- shared API ----------------------------------------------------------------------------
    def loss(self, features: dict, gather: bool = True) -> torch.Tensor:
        """The method's loss over the global batch: with gather and world_size > 1, features of
        every rank are concatenated (gradients flow back to each rank's slice)."""
        if gather and distributed.world_size() > 1:
            features = {k: (distributed.all_gather_padded(v) if k in self.NO_GRAD_KEYS
                            else distributed.all_gather_with_grad(v)) for k, v in features.items()}
        return self.compute_loss(features)[0]

    def loss_terms(self, features: dict) -> dict[str, float]:
        """The loss and its parts (directions, global/local) as numbers, this rank only: for
        diagnostics; the training step uses `loss` and never waits on these."""
        loss, terms = self.compute_loss(features)
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def embed_image(self, images) -> torch.Tensor:
        return F.normalize(self.encode_image(images)["image_global"], dim=-1)

    def embed_text(self, input_ids, attention_mask) -> torch.Tensor:
        return F.normalize(self.encode_text(input_ids, attention_mask)["text_global"], dim=-1)

    def save_pretrained(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.text_encoder.save(out)
        if hasattr(self.image_encoder, "save_config"):
            self.image_encoder.save_config(out / "image_encoder")
        meta = {"format": FORMAT, "name": self.name, "method": self.method, "config": self.config}
        (out / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        torch.save(state, out / WEIGHTS_FILE)
        return out
