"""Image encoders: a ResNet trunk with torchvision's layout (random init or a local weights file) or any
transformers vision model (ViT, DINOv2 / RAD-DINO, ...) from a directory or hub id.

Each returns, for images [B, 1, H, W] normalised with mean .5 std .5:
  local  [B, C_local, h, w]  GLoRIA's region features (ResNet layer3; ViT patch tokens)
  map    [B, C, h', w']      the last feature map (ResNet layer4; ViT patch tokens)
  pooled [B, C]              the global feature (average-pooled layer4; ViT [CLS])
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.core.errors import ConfigError, UserError
from train.models.resnet import LAYOUTS, ResNetTrunk
from train.models.text_encoders import without_pooler

RESNETS = tuple(LAYOUTS)


class _ChannelAdapter(nn.Module):
    """Grey [B,1,H,W] at mean .5 std .5 -> the backbone's channels and, optionally, its own
    normalisation (e.g. ImageNet statistics for pretrained weights)."""

    def __init__(self, channels: int, mean, std):
        super().__init__()
        self.channels = channels
        self.renorm = mean is not None
        if self.renorm:
            if std is None or len(mean) != channels or len(std) != channels:
                raise ConfigError(f"image_encoder.input_mean/input_std need {channels} values each")
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.expand(-1, self.channels, -1, -1) if images.shape[1] == 1 else images
        if self.renorm:
            x = ((x * 0.5 + 0.5) - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x


class ResNetEncoder(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.backbone_name = spec["arch"]
        if spec["arch"] not in RESNETS:
            raise ConfigError(f"image_encoder.arch: {spec['arch']!r} is not one of {', '.join(RESNETS)}")
        self.adapter = _ChannelAdapter(3, spec.get("input_mean"), spec.get("input_std"))
        self.trunk = ResNetTrunk(spec["arch"])
        self.local_channels = _out_channels(self.trunk.layer3)
        self.map_channels = self.pooled_dim = _out_channels(self.trunk.layer4)

    def load_weights(self, path: str) -> None:
        """torchvision ResNet state dict (fc ignored) or one from `backbone_state_dict`."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"image_encoder.weights {path!r} cannot be read: {type(exc).__name__}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = self.trunk.load_state_dict(state, strict=False)
        except RuntimeError:  # right keys, wrong shapes
            missing, unexpected = ["(tensor shapes differ)"], []
        if missing or unexpected:
            raise UserError(f"image_encoder.weights {path!r} is not a {self.backbone_name} state dict "
                            f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected)")

    def forward(self, images):
        local, last = self.trunk(self.adapter(images))
        return {"local": local, "map": last, "pooled": last.mean(dim=(2, 3))}


def _out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


class HFVisionEncoder(nn.Module):
    """A transformers vision model with patch tokens: [CLS] is the global feature, the patch grid
    serves as both local features and last map (register tokens, if any, are skipped)."""

    backbone_name = None

    def __init__(self, spec: dict, from_dir: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        source = spec.get("path")
        if from_dir is None and not source:
            raise ConfigError("image_encoder.path: a transformers vision model needs a directory or hub id")
        try:
            # no pooler: unused parameters would break DDP's gradient reduction
            if from_dir is not None:
                self.model = without_pooler(AutoModel.from_config, AutoConfig.from_pretrained(from_dir))
            else:
                self.model = without_pooler(AutoModel.from_pretrained, source)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"image_encoder.path {source!r} cannot be loaded as a transformers vision model: "
                            f"{type(exc).__name__}") from None
        cfg = self.model.config
        self.patch_size = getattr(cfg, "patch_size", None)
        if self.patch_size is None:
            raise ConfigError(f"image_encoder.path {source!r}: {type(self.model).__name__} has no patch_size")
        self.adapter = _ChannelAdapter(getattr(cfg, "num_channels", 3), spec.get("input_mean"), spec.get("input_std"))
        self.local_channels = self.map_channels = self.pooled_dim = cfg.hidden_size

    def save_config(self, out_dir: Path) -> None:
        self.model.config.save_pretrained(out_dir)

    def forward(self, images):
        x = self.adapter(images)
        hidden = self.model(pixel_values=x).last_hidden_state          # [B, 1 (+regs) + N, C]
        gh, gw = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        patches = hidden[:, -gh * gw:].transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        return {"local": patches, "map": patches, "pooled": hidden[:, 0]}


def build_image_encoder(spec: dict, from_dir: str | None = None) -> nn.Module:
    kind = spec.get("type")
    if kind == "torchvision":
        enc = ResNetEncoder(spec)
        if spec.get("weights") and from_dir is None:
            enc.load_weights(spec["weights"])
        return enc
    if kind in ("hf", "transformers"):
        return HFVisionEncoder(spec, from_dir)
    raise ConfigError(f"image_encoder.type: {kind!r} is not 'torchvision' or 'hf'")
