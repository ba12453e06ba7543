"""train/transforms.py: decoding, preprocessing geometry, augmentation (no flip by default), and
the ConVIRT sentence view."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.core.errors import UserError
from train import transforms as T


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_8bit_16bit_rgb_and_path(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(T.load_image(_png(gray)), gray)

    # a 12-bit image stored in a 16-bit PNG is stretched from its own range, not divided by 65535
    deep = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)
    out = T.load_image(_png(deep))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 64], [128, 255]]

    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299 * 255 = 76
    assert T.load_image(_png(rgb)).tolist() == [[76, 76], [76, 76]]
    assert T.load_image(rgb).tolist() == [[76, 76], [76, 76]]

    path = tmp_path / "x.png"
    path.write_bytes(_png(gray))
    assert np.array_equal(T.load_image(str(path)), gray)
    assert np.array_equal(T.load_image(np.array([[0.0, 1.0]])), np.array([[0, 255]], dtype=np.uint8))


def test_load_image_garbage_is_user_error():
    with pytest.raises(UserError, match="cannot be decoded"):
        T.load_image(b"not an image")


def test_preprocess_shape_range_and_zero_padding():
    img = np.full((100, 200), 255, dtype=np.uint8)  # wide white image
    x = T.preprocess(img, image_size=56, resize_to=64)
    assert x.shape == (1, 56, 56) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # resized to 32x64, padded rows 0-15 and 48-63; the crop starts at row/col 4
    col = x[0, :, 28]
    assert np.all(col[:12] == -1.0) and np.all(col[12:44] == 1.0) and np.all(col[44:] == -1.0)
    assert np.all(x[0, 20, :] == 1.0)  # full width is image
    with pytest.raises(UserError):
        T.preprocess(img, image_size=80, resize_to=64)


def _half_bright(h=96, w=96):
    img = np.full((h, w), 20, dtype=np.uint8)
    img[:, : w // 2] = 200
    return img


def test_augment_keeps_left_left_by_default_and_flips_only_when_asked():
    img = _half_bright()
    rng = np.random.default_rng(0)
    for _ in range(30):
        out = T.augment(img, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert out[:, :48].mean() > out[:, 48:].mean()
    rng = np.random.default_rng(0)
    views = [T.augment(img, rng, {"hflip": True}) for _ in range(40)]
    flipped = sum(v[:, :48].mean() < v[:, 48:].mean() for v in views)
    assert 8 <= flipped <= 32  # p = 0.5 per view


def test_augment_is_random_but_seeded():
    img = _half_bright()
    a = T.augment(img, np.random.default_rng(1))
    b = T.augment(img, np.random.default_rng(1))
    c = T.augment(img, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(UserError, match="unknown key"):
        T.augment(img, np.random.default_rng(0), {"flip": True})


def test_split_sentences_and_random_sentence():
    report = "FINDINGS: Left pleural effusion measuring 2.5 cm. No pneumothorax!\nIMPRESSION: Effusion."
    sentences = T.split_sentences(report)
    assert sentences == ["Left pleural effusion measuring 2.5 cm.", "No pneumothorax!", "Effusion."]
    rng = np.random.default_rng(0)
    drawn = {T.random_sentence(report, rng) for _ in range(60)}
    assert drawn == set(sentences)
    assert T.random_sentence("", rng) == "" and T.random_sentence("   ", rng) == ""
    # indication and comparison do not describe the image
    assert T.split_sentences("INDICATION: Cough. Fever.\nFINDINGS: Mild cardiomegaly.\nCOMPARISON: None.") == [
        "Mild cardiomegaly."]
    assert T.split_sentences("No acute process. Heart normal.") == ["No acute process.", "Heart normal."]
