"""Image and text views for contrastive training (numpy + PIL; no torch, no Ray).

    img = load_image(png_bytes)                    # uint8 HxW
    img = augment(img, rng, model.config["augment"])   # training only
    x = preprocess(img, model.image_size, model.resize_to)  # float32 [1, S, S], mean .5 std .5

Horizontal flip is OFF unless settings say {"hflip": True}: a flipped chest X-ray swaps left and
right, so the image would contradict its report ("left pleural effusion"); ConVIRT's recipe had it
on, we do not follow that.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from engine.core.errors import UserError
from engine.text.sections import split_sections
from engine.text.sections import split_sentences as _sentences

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


def load_image(source) -> np.ndarray:
    """PNG/JPEG bytes, a path or an array -> uint8 HxW grey. 16-bit images are stretched from their
    own min..max to 0..255 (12-bit data stored in 16-bit PNGs, as PadChest's, would look black if
    divided by 65535); colour is converted to grey."""
    if isinstance(source, np.ndarray):
        arr = source
    else:
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                im = Image.open(io.BytesIO(bytes(source)))
            else:
                im = Image.open(Path(source))
            im.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises several kinds
            what = "image bytes" if isinstance(source, (bytes, bytearray, memoryview)) else f"image {source}"
            raise UserError(f"{what} cannot be decoded: {type(exc).__name__}") from None
        if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
            im = im.convert("L")
        arr = np.asarray(im)
    return to_uint8_gray(arr)


def to_uint8_gray(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):  # ITU-R 601 luma, as PIL's "L"
            arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        else:
            raise UserError(f"image array of shape {arr.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if arr.ndim != 2:
        raise UserError(f"image array of shape {arr.shape} is not 2-D")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1.0:
        return np.round(arr * 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return np.round(arr).astype(np.uint8)
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving resize so the longer side is `size`, zero-padded (centred) to size x size."""
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top: top + nh, left: left + nw] = resized
    return out


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return img[top: top + size, left: left + size]


def preprocess(img: np.ndarray, image_size: int, resize_to: int) -> np.ndarray:
    """uint8 HxW -> float32 [1, image_size, image_size] in [-1, 1] (mean .5, std .5): resize and
    zero-pad to resize_to, centre crop image_size."""
    if not 0 < image_size <= resize_to:
        raise UserError(f"image_size {image_size} must be positive and at most resize_to {resize_to}")
    img = center_crop(resize_pad(to_uint8_gray(img), resize_to), image_size)
    x = img.astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5)[None]


def _random_resized_crop(im: Image.Image, rng: np.random.Generator, scale, ratio) -> Image.Image:
    w, h = im.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return im.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    return im  # no crop fits: keep the whole image


def _affine(im: Image.Image, rng: np.random.Generator, degrees: float, translate: float, scale) -> Image.Image:
    w, h = im.size
    angle = rng.uniform(-degrees, degrees)
    tx, ty = rng.uniform(-translate, translate) * w, rng.uniform(-translate, translate) * h
    s = rng.uniform(*scale)
    # PIL's affine maps output to input coordinates: invert rotate-scale about the centre + shift
    a = math.radians(angle)
    cos, sin = math.cos(a) / s, math.sin(a) / s
    cx, cy = w / 2, h / 2
    coeffs = (cos, sin, cx - cos * (cx + tx) - sin * (cy + ty),
              -sin, cos, cy + sin * (cx + tx) - cos * (cy + ty))
    return im.transform((w, h), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0)


def augment(img: np.ndarray, rng: np.random.Generator, settings: dict | None = None) -> np.ndarray:
    """One random training view of a uint8 HxW image, same size out (see DEFAULT_AUGMENT)."""
    unknown = set(settings or {}) - set(DEFAULT_AUGMENT)
    if unknown:
        raise UserError(f"augment settings: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(DEFAULT_AUGMENT)})")
    s = {**DEFAULT_AUGMENT, **(settings or {})}
    im = Image.fromarray(to_uint8_gray(img))
    im = _random_resized_crop(im, rng, s["crop_scale"], s["crop_ratio"])
    if s["hflip"] and rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = _affine(im, rng, float(s["rotation_deg"]), float(s["translate"]), s["scale"])
    x = np.asarray(im).astype(np.float32)
    x = x * rng.uniform(*s["brightness"])
    mean = x.mean()
    x = (x - mean) * rng.uniform(*s["contrast"]) + mean
    im = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8))
    sigma = rng.uniform(*s["blur_sigma"]) * min(im.size) / float(s["blur_reference_size"])
    im = im.filter(ImageFilter.GaussianBlur(radius=sigma))
    return np.asarray(im)


# Sections whose sentences describe the image (indication, comparison, technique do not).
IMAGE_SECTIONS = ("preamble", "findings", "impression")


def split_sentences(text: str) -> list[str]:
    """Sentences of the report's findings and impression (text before any heading counts too),
    with the engine's section and sentence splitters: headings dropped, "2.5 cm" kept whole."""
    sections = split_sections(text or "")
    return [s for name, body in sections.items() if name in IMAGE_SECTIONS for s in _sentences(body)]


def random_sentence(report_text: str, rng: np.random.Generator) -> str:
    """ConVIRT's text view: one sentence of the report drawn uniformly; "" for an empty report."""
    sentences = split_sentences(report_text)
    return sentences[int(rng.integers(len(sentences)))] if sentences else ""
