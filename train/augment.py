"""ConVIRT's image augmentations on tensors, for a whole batch at once and seeded.

Input: the uint8 frames training keeps (train/models/frame.py `resized`, [B, R, R]); output: float32
[B, 1, S, S] in the model's normalisation, the random counterpart of `center_crop` + `to_input`.
The random resized crop, the affine (rotation, translation, scale) and the optional flip are one
sampling grid per image (one `grid_sample`), then brightness and contrast, then a Gaussian blur of
per-image sigma. Every draw comes from the `torch.Generator` given, so a seed fixes the views.

Horizontal flip is OFF unless settings say {"hflip": True}: a flipped chest X-ray swaps left and
right, so the image would contradict its report ("left pleural effusion").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.core.errors import ConfigError

# ConVIRT's augmentations (Zhang et al. 2020) except the flip; also in the model configs' "augment".
DEFAULT_AUGMENT = {
    "crop_scale": [0.6, 1.0],        # random resized crop: area fraction
    "crop_ratio": [0.75, 1.3333],    # and aspect ratio
    "rotation_deg": 20.0,            # affine: rotation in [-20, 20]
    "translate": 0.1,                # fraction of the side, each axis
    "scale": [0.95, 1.05],
    "brightness": [0.6, 1.4],        # multiplicative factors
    "contrast": [0.6, 1.4],
    "blur_sigma": [0.1, 3.0],        # Gaussian blur sigma, in pixels at blur_reference_size
    "blur_reference_size": 224,
    "hflip": False,
}


def check_settings(settings: dict | None, where: str = "augment settings") -> dict:
    """Settings over the defaults; an unknown key (a typo) is refused, naming it."""
    unknown = sorted(set(settings or {}) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_AUGMENT)})")
    return {**DEFAULT_AUGMENT, **(settings or {})}


def _uniform(n: int, bounds, gen: torch.Generator) -> torch.Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def view_grids(n: int, size: int, settings: dict, gen: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] affine matrices (normalised coordinates, output -> input) of n random views."""
    s = settings
    area = _uniform(n, s["crop_scale"], gen)
    log_ratio = _uniform(n, [math.log(s["crop_ratio"][0]), math.log(s["crop_ratio"][1])], gen)
    ratio = log_ratio.exp()
    half_w = (area * ratio).sqrt().clamp(max=1.0)     # crop half-sizes in normalised units
    half_h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * (1 - half_w)
    cy = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * (1 - half_h)
    angle = _uniform(n, [-s["rotation_deg"], s["rotation_deg"]], gen) * math.pi / 180
    tx = _uniform(n, [-s["translate"], s["translate"]], gen) * 2
    ty = _uniform(n, [-s["translate"], s["translate"]], gen) * 2
    scale = _uniform(n, s["scale"], gen)
    flip = torch.ones(n, dtype=torch.float64)
    if s["hflip"]:
        flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    # output o -> crop coordinate q = Rot(-angle) (o - t) / scale -> input p = c + diag(half) q
    cos, sin = angle.cos() / scale, angle.sin() / scale
    a11, a12 = cos * half_w * flip, sin * half_w
    a21, a22 = -sin * half_h * flip, cos * half_h
    b1 = cx - (a11 * tx + a12 * ty)
    b2 = cy - (a21 * tx + a22 * ty)
    return torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1).float()


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image sigma, separable, reflect padding; x [B, 1, S, S]."""
    b, _, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, (min(h, w) - 1) // 2) or 1
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None].float().clamp(min=1e-3)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.device)       # [B, K]
    y = x.reshape(1, b, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b)
    return y.reshape(b, 1, h, w)


def augment_batch(frames: torch.Tensor, image_size: int, settings: dict | None,
                  gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, R, R] frames -> float32 [B, 1, S, S], one random view each, normalised. The
    draws come from `gen` (a CPU generator); the pixels stay on the frames' device."""
    s = check_settings(settings)
    b, dev = frames.shape[0], frames.device
    x = frames.float().unsqueeze(1)                                  # 0..255
    theta = view_grids(b, image_size, s, gen).to(dev)
    grid = F.affine_grid(theta, [b, 1, image_size, image_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * _uniform(b, s["brightness"], gen).float().view(b, 1, 1, 1).to(dev)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * _uniform(b, s["contrast"], gen).float().view(b, 1, 1, 1).to(dev) + mean).clamp(0, 255)
    sigma = _uniform(b, s["blur_sigma"], gen) * image_size / float(s["blur_reference_size"])
    x = _gaussian_blur(x, sigma)
    return (x / 255.0 - 0.5) / 0.5
