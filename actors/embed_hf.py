"""`hf-vision` embedder: a transformers vision backbone (RAD-DINO, microsoft/rad-dino, in the
paper's setup) loaded with AutoModel + AutoImageProcessor from a local directory or hub id.
The embedding is the CLS token of the last hidden state, L2-normalised."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pydantic import BaseModel, ConfigDict, Field

from engine.core.errors import UserError
from engine.core.stage import Backend


def _looks_like_path(model: str) -> bool:
    # a hub id is "name" or "org/name"; anything else is meant as a directory
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).expanduser().exists()


def check_model_path(model: str | None) -> None:
    """The errors that need no model load: no model named, or a directory that is not there."""
    if not model:
        raise UserError("qc.embedder: backend 'hf-vision' needs `model` (a local directory or hub id, "
                        "e.g. microsoft/rad-dino)")
    if _looks_like_path(model) and not Path(model).expanduser().is_dir():
        raise UserError(f"qc.embedder: hf-vision model directory {model!r} not found")


class HFVisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | None = None  # None: cuda when available, else cpu
    dtype: str = "float32"
    batch_size: int = Field(32, ge=1)


class HFVisionEmbedder(Backend):
    name, section, Options = "hf-vision", "qc.embedder", HFVisionOptions
    reads, writes = ("image",), ("embedding", "embed_error")

    @classmethod
    def check(cls, section, cfg=None) -> None:
        cls.options_of(section.options)
        check_model_path(section.model)

    def __init__(self, model: str | None = None, options: dict | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        check_model_path(model)
        opts = self.options_of(options)
        self.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = opts.dtype
        self.batch_size = opts.batch_size
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModel.from_pretrained(model, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"qc.embedder: cannot load hf-vision model {model!r} (not a local model "
                            f"directory, and not in the hub cache while offline): {first}") from None
        self.model.to(self.device).eval()
        self.name = model
        self.dtype = dtype
        cfg = self.model.config
        self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "embed_dim", 0))

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        for start in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB")
                   for im in images[start:start + self.batch_size]]
            inputs = self.processor(images=pil, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
            with torch.inference_mode():
                hidden = self.model(pixel_values=pixel_values).last_hidden_state
            cls = torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1)
            out.append(cls.cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)
