"""Embedders: the `pixels` descriptor and `hf-vision` with a tiny random Dinov2 saved to disk."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from actors.degrade import clean_phantoms, degrade, toy_frontal
from actors.embed_pixels import PixelEmbedder, pixel_descriptor
from engine.core.errors import UserError, ConfigError


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_pixel_descriptor_is_unit_norm_and_deterministic():
    img = toy_frontal(1)
    a, b = pixel_descriptor(img), pixel_descriptor(img.copy())
    assert a.shape == (16 * 16 + 32 * 32,) and a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(a, b)


def test_pixel_descriptor_keeps_copies_together_and_distinct_phantoms_apart():
    phantoms = clean_phantoms(12, seed=41)
    img = phantoms[0]
    brighter = np.clip(img.astype(np.float32) * 0.8 + 30, 0, 255).astype(np.uint8)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(img).save(jpeg, format="JPEG", quality=60)
    d = pixel_descriptor(img)
    for copy in (brighter, noisy, np.asarray(Image.open(jpeg))):
        assert cos(d, pixel_descriptor(copy)) > 0.99
    descs = np.stack([pixel_descriptor(p) for p in phantoms])
    sims = descs @ descs.T
    assert sims[np.triu_indices(len(phantoms), 1)].max() < 0.97  # the default dedup threshold
    assert cos(d, pixel_descriptor(degrade(img, "rotated", 0))) < 0.9


def test_blank_images_map_to_the_constant_direction():
    dark, light = np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8)
    faint = np.clip(light + np.random.default_rng(1).normal(0, 1.5, light.shape), 0, 255).astype(np.uint8)
    a, b = pixel_descriptor(dark, 8), pixel_descriptor(light, 8)
    np.testing.assert_allclose(a, np.full(80, 1 / np.sqrt(80)), atol=1e-6)  # 4x4 layout + 8x8 detail
    assert cos(a, pixel_descriptor(faint, 8)) == pytest.approx(1.0)
    assert cos(a, b) == pytest.approx(1.0)
    assert abs(cos(a, pixel_descriptor(toy_frontal(1), 8))) < 1e-5  # orthogonal to any centred one


def test_pixel_embedder_options_and_batch():
    emb = PixelEmbedder(options={"size": 16})
    out = emb.embed([toy_frontal(1), toy_frontal(2)])
    assert out.shape == (2, 8 * 8 + 16 * 16) and emb.dim == 320
    assert emb.embed([]).shape == (0, 320)
    with pytest.raises(ConfigError, match="qc.embedder.options.sise: Extra inputs"):
        PixelEmbedder(options={"sise": 16})
    with pytest.raises(ConfigError, match="qc.embedder.options.size"):
        PixelEmbedder(options={"size": 2})


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("tiny-dinov2")
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=56, patch_size=14)
    Dinov2Model(cfg).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                      do_convert_rgb=True).save_pretrained(path)
    return str(path)


def test_hf_vision_embeds_cls_token_l2_normalised(tiny_dinov2):
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from actors.embed_hf import HFVisionEmbedder

    emb = HFVisionEmbedder(tiny_dinov2, {"device": "cpu", "batch_size": 2})
    images = [toy_frontal(s, 96) for s in range(3)]
    out = emb.embed(images)
    assert out.shape == (3, 32) and emb.dim == 32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.embed(images), out, atol=1e-6)  # deterministic, batch-size independent
    # the same as reading the model by hand: CLS token of the last hidden state
    model, proc = AutoModel.from_pretrained(tiny_dinov2).eval(), AutoImageProcessor.from_pretrained(tiny_dinov2)
    with torch.inference_mode():
        pv = proc(images=[Image.fromarray(images[0]).convert("RGB")], return_tensors="pt")["pixel_values"]
        cls = model(pixel_values=pv).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(out[0], cls / np.linalg.norm(cls), atol=1e-5)


def test_hf_vision_missing_model_is_a_user_error(tmp_path):
    from actors.embed_hf import HFVisionEmbedder

    with pytest.raises(UserError, match="model directory .* not found"):
        HFVisionEmbedder(str(tmp_path / "no-such-model"))
    with pytest.raises(UserError, match="needs `model`"):
        HFVisionEmbedder(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load hf-vision model"):
        HFVisionEmbedder(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="qc.embedder.options.devcie: Extra inputs"):
        HFVisionEmbedder(str(tmp_path / "empty"), {"devcie": "cpu"})
