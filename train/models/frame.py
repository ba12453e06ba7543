"""The model-input frame: the one way from an image to the tensor a model reads. Training,
validation, `syncxr embed` and every evaluation task go through these functions, so a model sees
the same pixels wherever its input comes from.

    img = decode(source)                        # PNG/JPEG bytes, a path (PNG, JPEG, DICOM), an array
    frames = frame(img, image_size, resize_to)  # uint8 [S, S]: aspect-kept resize, zero pad, centre crop
    x = to_input(frames)                        # float32 [N, 1, S, S], mean .5 std .5
    x = model_input(source, image_size, resize_to)   # the three above, one image: [1, S, S]

Training keeps `resized(img, resize_to)` (uint8 [R, R], decoded once per run) and takes the
centre crop (or a random view, train/augment.py) of it each epoch: `center_crop` then `to_input`
give exactly `model_input`.

Grey levels: colour is ITU-R 601 luma (PIL's "L"); 16-bit and other deep images are stretched
from their own min..max (12-bit data in 16-bit PNGs, as PadChest's, would look black divided by
65535); DICOM applies the rescale slope/intercept and inverts MONOCHROME1.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from engine.core.errors import UserError

DICOM_SUFFIXES = (".dcm", ".dicom")
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_uint8_gray(arr) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> uint8 HxW."""
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
    return stretch(arr)


def stretch(arr) -> np.ndarray:
    """Deep grey levels to uint8 by the image's own min..max (a flat image becomes black)."""
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def _dicom_pixels(source) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview))
                         else str(source))
    arr = ds.pixel_array.astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # multi-frame: the first frame
        arr = arr[0]
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1: high values are dark
    return stretch(arr) if arr.ndim == 2 else to_uint8_gray(arr)


def _is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _pil_pixels(im) -> np.ndarray:
    if im.mode in _DEEP_MODES:
        return stretch(np.asarray(im))
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im)


def decode(source) -> np.ndarray:
    """An image as uint8 HxW grey: PNG/JPEG (any PIL mode, 8 or 16 bit) or DICOM, as bytes or a
    path; or an array. A file or bytes that do not decode raise one UserError naming them."""
    if isinstance(source, np.ndarray):
        return to_uint8_gray(source)
    from PIL import Image

    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    what = "image bytes" if is_bytes else f"image {source}"
    try:
        if is_bytes:
            data = bytes(source)
            if _is_dicom_bytes(data):
                return _dicom_pixels(data)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return _pil_pixels(im)
        path = Path(source)
        if path.suffix.lower() in DICOM_SUFFIXES:
            return _dicom_pixels(path)
        with Image.open(path) as im:
            im.load()
            return _pil_pixels(im)
    except FileNotFoundError:
        raise UserError(f"{what}: not found") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL and pydicom raise many kinds
        raise UserError(f"{what} cannot be decoded: {type(exc).__name__}: {exc}") from None


def check_geometry(image_size: int, resize_to: int) -> None:
    if not 0 < int(image_size) <= int(resize_to):
        raise UserError(f"image_size {image_size} must be positive and at most resize_to {resize_to}")


def resized(img: np.ndarray, resize_to: int, mask: bool = False) -> np.ndarray:
    """Aspect-preserving resize of the longer side to `resize_to`, zero-padded (centred) to a
    square. Images bilinear, uint8 out; masks nearest, bool out."""
    from PIL import Image

    a = np.asarray(img)
    if mask:
        a = np.asarray(a, bool).astype(np.uint8) * 255
    else:
        a = to_uint8_gray(a)
    h, w = a.shape
    scale = resize_to / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.asarray(Image.fromarray(a).resize((nw, nh), Image.NEAREST if mask else Image.BILINEAR))
    square = np.zeros((resize_to, resize_to), dtype=np.uint8)
    top, left = (resize_to - nh) // 2, (resize_to - nw) // 2
    square[top:top + nh, left:left + nw] = out
    return square > 127 if mask else square


def center_crop(frames: np.ndarray, image_size: int) -> np.ndarray:
    """The centred image_size x image_size window of [..., R, R] frames."""
    r = frames.shape[-1]
    off = (r - image_size) // 2
    return frames[..., off:off + image_size, off:off + image_size]


def frame(img: np.ndarray, image_size: int, resize_to: int, mask: bool = False) -> np.ndarray:
    """[S, S] in the model's geometry: `resized` to resize_to, then the centre crop. Masks (bool)
    go through the same geometry with nearest neighbour, so their pixels line up with the image."""
    check_geometry(image_size, resize_to)
    return center_crop(resized(img, int(resize_to), mask=mask), int(image_size))


def to_input(frames: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S] (or one [S, S]) -> float32 [N, 1, S, S] in [-1, 1] (mean .5, std .5)."""
    x = np.asarray(frames)
    single = x.ndim == 2
    x = x.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return x[None] if single else x[:, None]


def model_input(source, image_size: int, resize_to: int) -> np.ndarray:
    """One image (anything `decode` takes) -> float32 [1, S, S], the tensor a model reads."""
    return to_input(frame(decode(source), image_size, resize_to))
