"""train/augment.py: batch augmentation on tensors, seeded; no flip unless asked; a typo in the
settings is refused when the training config is read."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.errors import ConfigError
from train.augment import DEFAULT_AUGMENT, augment_batch, check_settings


def _half_bright(n=8, r=72):
    frames = np.full((n, r, r), 20, dtype=np.uint8)
    frames[:, :, : r // 2] = 200
    return torch.from_numpy(frames)


def test_views_are_normalised_random_and_seeded():
    frames = _half_bright()
    a = augment_batch(frames, 64, None, torch.Generator().manual_seed(1))
    b = augment_batch(frames, 64, None, torch.Generator().manual_seed(1))
    c = augment_batch(frames, 64, None, torch.Generator().manual_seed(2))
    assert a.shape == (8, 1, 64, 64) and a.dtype == torch.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each image its own view


def test_left_stays_left_by_default_and_flips_only_when_asked():
    frames = _half_bright(40)
    views = augment_batch(frames, 64, None, torch.Generator().manual_seed(0))
    assert bool((views[:, :, :, :32].mean((1, 2, 3)) > views[:, :, :, 32:].mean((1, 2, 3))).all())
    flipped = augment_batch(frames, 64, {"hflip": True}, torch.Generator().manual_seed(0))
    n = int((flipped[:, :, :, :32].mean((1, 2, 3)) < flipped[:, :, :, 32:].mean((1, 2, 3))).sum())
    assert 8 <= n <= 32  # p = 0.5 per view


def test_identity_settings_give_the_centre_crop():
    from train.models.frame import center_crop, to_input

    still = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "rotation_deg": 0.0, "translate": 0.0,
             "scale": [1.0, 1.0], "brightness": [1.0, 1.0], "contrast": [1.0, 1.0], "blur_sigma": [1e-4, 1e-4]}
    frames = torch.from_numpy((np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8))
    out = augment_batch(frames, 64, still, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(out.numpy(), to_input(center_crop(frames.numpy(), 64)), atol=1e-4)


def test_unknown_settings_are_refused_naming_the_key(tmp_path):
    assert check_settings({"hflip": True})["hflip"] is True and set(check_settings(None)) == set(DEFAULT_AUGMENT)
    with pytest.raises(ConfigError, match="unknown key.*rotaton_deg"):
        check_settings({"rotaton_deg": 5})
    from train.config import load_train_config

    cfg = tmp_path / "t.yaml"
    cfg.write_text("data: {augment: true, augment_settings: {rotaton_deg: 5}}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: field 'data.augment_settings'.*rotaton_deg"):
        load_train_config(cfg)
