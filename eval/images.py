"""Reading benchmark images and putting images and masks in the model's frame.

Formats: 8-bit PNG/JPEG (CheXpert, ChestX-ray14), 16-bit PNG (PadChest), DICOM (RSNA, SIIM; read
with pydicom, MONOCHROME1 inverted). Everything becomes uint8 HxW.

The model's frame (GLoRIA's evaluation geometry): aspect-preserving resize of the longer side to
`resize_to`, zero padding to a square, centre crop to `image_size`. Masks go through the same
geometry (nearest neighbour) so a pixel of a similarity map and of its target line up.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.core.errors import UserError


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """A grayscale array of any depth to uint8 by its own min..max (16-bit PNG, DICOM)."""
    a = np.asarray(arr)
    if a.ndim == 3:  # RGB(A) saved X-rays: use the first channel (they are gray)
        a = a[..., 0]
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)


def read_dicom(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float64)
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1: high values are dark
    return to_uint8(arr)


def read_image(path: str | Path) -> np.ndarray:
    """uint8 HxW from PNG (8 or 16 bit), JPEG or DICOM; UserError naming the file otherwise."""
    from PIL import Image

    path = Path(path)
    try:
        if path.suffix.lower() in (".dcm", ".dicom"):
            return read_dicom(path)
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_uint8(np.asarray(im, dtype=np.int64 if im.mode == "I" else np.uint16))
            return to_uint8(np.asarray(im.convert("L")))
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, named
        raise UserError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def to_frame(arr: np.ndarray, image_size: int, resize_to: int | None = None, mask: bool = False) -> np.ndarray:
    """Resize (aspect kept) the longer side to resize_to, zero-pad to square, centre-crop to
    image_size. Images: bilinear, uint8 out; masks: nearest, bool out."""
    from PIL import Image

    resize_to = int(resize_to or image_size)
    a = np.asarray(arr)
    h, w = a.shape[:2]
    scale = resize_to / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    src = Image.fromarray(np.asarray(a, bool).astype(np.uint8) * 255 if mask else a.astype(np.uint8))
    resized = np.asarray(src.resize((nw, nh), Image.NEAREST if mask else Image.BILINEAR))
    square = np.zeros((resize_to, resize_to), dtype=resized.dtype)
    top, left = (resize_to - nh) // 2, (resize_to - nw) // 2
    square[top:top + nh, left:left + nw] = resized
    off = (resize_to - image_size) // 2
    out = square[off:off + image_size, off:off + image_size] if resize_to > image_size else square
    if resize_to < image_size:  # asked to crop larger than the resize: pad instead
        full = np.zeros((image_size, image_size), dtype=out.dtype)
        o = (image_size - resize_to) // 2
        full[o:o + resize_to, o:o + resize_to] = out
        out = full
    return out > 127 if mask else out


def normalise(frames: np.ndarray) -> np.ndarray:
    """uint8 [N,S,S] -> float32 [N,1,S,S], mean 0.5 std 0.5 (the models' input convention)."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    return ((x - 0.5) / 0.5)[:, None]
