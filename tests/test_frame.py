"""train/models/frame.py: one model-input frame. Decoding of every format, the geometry, and the parity
test: the same images through training, validation, `syncxr embed` and evaluation give the same
tensor, bit for bit."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.core.errors import UserError
from test_eval_datasets import write_dicom
from train.models import frame as F


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_decode_8bit_16bit_rgb_palette_path_and_arrays(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(F.decode(_png(gray)), gray)
    # a 12-bit image stored in a 16-bit PNG is stretched from its own range, not divided by 65535
    deep = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)
    assert F.decode(_png(deep)).tolist() == [[0, 64], [128, 255]]
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299 * 255 = 76, from bytes and from an array alike
    assert F.decode(_png(rgb)).tolist() == F.decode(rgb).tolist() == [[76, 76], [76, 76]]
    assert F.decode(_png(np.dstack([gray, np.full_like(gray, 255)]), "LA")).tolist() == gray.tolist()
    palette = Image.fromarray(gray).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert F.decode(buf.getvalue()).tolist() == gray.tolist()
    (tmp_path / "x.png").write_bytes(_png(gray))
    assert np.array_equal(F.decode(str(tmp_path / "x.png")), gray)
    assert np.array_equal(F.decode(np.array([[0.0, 1.0]])), np.array([[0, 255]], dtype=np.uint8))


def test_dicom_from_a_path_and_from_bytes(tmp_path):
    arr = np.linspace(1000, 4000, 16 * 8).reshape(8, 16).astype(np.uint16)
    write_dicom(tmp_path / "a.dcm", arr)
    from_path = F.decode(tmp_path / "a.dcm")
    assert from_path.min() == 0 and from_path.max() == 255
    np.testing.assert_array_equal(F.decode((tmp_path / "a.dcm").read_bytes()), from_path)


def test_undecodable_input_names_the_file():
    with pytest.raises(UserError, match="image bytes cannot be decoded"):
        F.decode(b"not an image")
    with pytest.raises(UserError, match="nope.png: not found"):
        F.decode("/tmp/nope.png")


def test_geometry_shape_range_padding_and_refusal():
    img = np.full((100, 200), 255, dtype=np.uint8)  # wide white image
    x = F.model_input(img, image_size=56, resize_to=64)
    assert x.shape == (1, 56, 56) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # resized to 32x64, padded rows 0-15 and 48-63; the crop starts at row/col 4
    col = x[0, :, 28]
    assert np.all(col[:12] == -1.0) and np.all(col[12:44] == 1.0) and np.all(col[44:] == -1.0)
    with pytest.raises(UserError, match="at most resize_to"):
        F.frame(img, image_size=80, resize_to=64)


def _parity_images(tmp_path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of one image in each format a user may bring."""
    rng = np.random.default_rng(0)
    base = (rng.random((90, 70)) * 255).astype(np.uint8)
    rgb = np.dstack([base, np.roll(base, 3, axis=1), 255 - base])
    deep = (base.astype(np.uint16) * 16 + 5)
    write_dicom(tmp_path / "d.dcm", deep)
    return [("gray.png", _png(base)), ("rgb.png", _png(rgb)), ("deep.png", _png(deep)),
            ("photo.jpg", _jpeg(base)), ("d.dcm", (tmp_path / "d.dcm").read_bytes())]


def test_training_validation_embed_and_eval_feed_the_model_the_same_tensor(tmp_path):
    from eval.datasets.base import EvalSet
    from eval.loading import load_rows
    from train.commands.embed import embed_source
    from train.data.cache import collect
    from train.data.preprocess import decode_batch
    from train.models.frame import to_input

    S, R = 48, 54
    files = _parity_images(tmp_path)
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    expected = np.stack([F.model_input(tmp_path / name, S, R) for name, _ in files])  # [N, 1, S, S]

    # training and validation: decoded once by the Ray Data step, cropped from the worker's cache
    ids = [f"s{i}" for i in range(len(files))]
    for images in ([d for _, d in files], [None] * len(files)):  # as bytes in the dataset, and as paths
        batch = decode_batch({"sample_id": ids, "image_bytes": images,
                              "image_path": [str(tmp_path / n) for n, _ in files], "report": ["r"] * len(files)}, R)
        cache = collect([batch], R)
        x, _ = cache.batch(np.arange(len(files)), S)
        np.testing.assert_array_equal(x.numpy(), expected)

    # evaluation (every task and the zero-shot validation hook read through load_rows)
    table = pd.DataFrame({"path": [n for n, _ in files], "split": "test", "X": 1})
    ds = EvalSet("toy", ["X"], "multilabel", table, layout="flat")
    frames, _, _ = load_rows(ds, table, tmp_path, S, R)
    np.testing.assert_array_equal(to_input(frames), expected)

    # syncxr embed: what reaches the model's image tower
    class Source:
        def __init__(self):
            self.ids = ids

        def to_arrow(self, wanted):
            import pyarrow as pa

            return pa.table({"sample_id": ids, "image_bytes": [d for _, d in files], "image_path": [None] * len(ids),
                             "report": ["a report"] * len(ids)})

    seen = []

    class Probe:  # the model's interface as embed_source uses it; records the image tensors
        image_size, resize_to = S, R

        def eval(self):
            return self

        def tokenize(self, texts):
            import torch

            return {"input_ids": torch.zeros(len(texts), 2, dtype=torch.long),
                    "attention_mask": torch.ones(len(texts), 2, dtype=torch.long)}

        def embed_image(self, images):
            seen.append(images.numpy().copy())
            return images.flatten(1)[:, :4]

        def embed_text(self, ids_, mask):
            return ids_.float()

    got_ids, _, _, skipped = embed_source(Probe(), Source(), batch_size=2)
    assert got_ids == ids and skipped == 0
    np.testing.assert_array_equal(np.concatenate(seen), expected)
