"""eval metrics, run-length decoding, box rasterising, prompts and geometry against hand values."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from eval import metrics
from eval.datasets.base import shipped_file
from train.models.frame import frame
from eval.loading import boxes_to_mask
from eval.prompts import class_prompts, pos_neg_prompts
from eval.rle import decode_relative_rle, encode_relative_rle


def test_auc_hand_value_and_undefined():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 3 of 4
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]) is None


def test_best_f1_hand_value():
    # thresholds 0.9/0.8/0.7/0.3/0.2 give F1 0.5/0.4/0.667/0.571/0.75: best at 0.2 (everything positive)
    r = metrics.best_f1([1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.3, 0.2])
    assert r["f1"] == pytest.approx(0.75)
    assert r["threshold"] == pytest.approx(0.2)
    assert r["accuracy"] == pytest.approx(0.6)
    r = metrics.best_f1([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2])  # best at 0.7: tp 2, fp 1
    assert (r["f1"], r["threshold"], r["accuracy"]) == (pytest.approx(0.8), pytest.approx(0.7), pytest.approx(0.8))


def test_dice_iou_hand_values_and_empty():
    pred, gt = np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)
    assert metrics.dice(pred, gt) == pytest.approx(0.5)
    assert metrics.iou(pred, gt) == pytest.approx(1 / 3)
    empty = np.zeros(4, bool)
    assert metrics.dice(empty, empty) == 1.0 and metrics.iou(empty, empty) == 1.0
    assert metrics.dice(empty, gt) == 0.0 and metrics.iou(pred, empty) == 0.0


def test_pointing_game_and_precision_recall():
    gt = np.zeros((3, 4), bool)
    gt[1, 2:] = True
    heat = np.zeros((3, 4))
    heat[1, 2] = 5.0
    assert metrics.pointing_hit(heat, gt) is True
    heat[0, 0] = 9.0
    assert metrics.pointing_hit(heat, gt) is False
    assert metrics.pointing_hit(heat, np.zeros((3, 4), bool)) is None
    p, r = metrics.precision_recall(np.array([1, 1, 1, 0], bool), np.array([1, 0, 0, 1], bool))
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(0.5))


def test_rle_decode_hand_example():
    # 4 rows x 3 columns, column-major: starts are offsets from the previous run's end
    mask, clipped = decode_relative_rle("1 2 3 1", height=4, width=3)
    expected = np.zeros((4, 3), bool)
    expected[1, 0] = expected[2, 0] = True  # pixels 1, 2 (first column)
    expected[2, 1] = True  # pixel 2 + 1 + 3 = 6 -> column 1, row 2
    assert clipped == 0
    np.testing.assert_array_equal(mask, expected)
    assert encode_relative_rle(expected) == "1 2 3 1"
    assert not decode_relative_rle("-1", 4, 3)[0].any()


def test_rle_clips_outside_and_rejects_bad_codes():
    mask, clipped = decode_relative_rle("10 5", height=4, width=3)  # pixels 10..14 of 12
    assert clipped == 3 and mask.sum() == 2 and mask[2, 2] and mask[3, 2]
    with pytest.raises(ValueError):
        decode_relative_rle("1 2 3", 4, 3)


def test_rle_on_a_real_siim_row():
    with gzip.open(shipped_file("siim-pneumothorax-train-rle.csv.gz"), "rt") as fh:
        next(fh)
        code = next(line.split(",", 1)[1].strip() for line in fh if not line.rstrip().endswith("-1"))
    mask, clipped = decode_relative_rle(code, 1024, 1024)
    lengths = [int(v) for v in code.split()[1::2]]
    assert clipped == 0 and mask.sum() == sum(lengths)
    assert encode_relative_rle(mask) == code
    ys, xs = np.nonzero(mask)  # a pneumothorax is one compact region, not stripes across the image
    assert xs.max() - xs.min() < 600 and ys.max() - ys.min() < 900


def test_boxes_to_mask_clips_and_counts():
    mask, clipped = boxes_to_mask([[1, 1, 2, 2], [8, 8, 5, 5]], height=10, width=10)
    assert clipped == 1
    assert mask[1:3, 1:3].all() and mask.sum() == 4 + 4  # second box keeps rows/cols 8..9
    assert boxes_to_mask([[20, 20, 3, 3]], 10, 10) == (pytest.approx(np.zeros((10, 10), bool)), 1)


def test_prompts_sampled_with_fixed_seed():
    a = class_prompts(["Atelectasis", "Edema", "unknown finding"], n=5, seed=0)
    assert a == class_prompts(["Atelectasis", "Edema", "unknown finding"], n=5, seed=0)
    assert a != class_prompts(["Atelectasis", "Edema", "unknown finding"], n=5, seed=1)
    assert all(len(v) == 5 and len(set(v)) == 5 for v in a.values())
    assert all("atelectasis" in p for p in a["Atelectasis"])
    assert pos_neg_prompts(["Effusion"])["Effusion"] == ("findings consistent with pleural effusion", "no pleural effusion")


def test_frame_geometry_keeps_image_and_mask_aligned():
    img = np.zeros((40, 80), np.uint8)  # wide: resized to 20 x 40, padded to 40 x 40, cropped to 32
    img[10:20, 40:60] = 255
    mask = img > 0
    f, m = frame(img, 32, 40), frame(mask, 32, 40, mask=True)
    assert f.shape == m.shape == (32, 32) and m.dtype == bool
    assert m.sum() == 50  # 10 x 20 box halved: 5 x 10
    assert (f[m] > 150).all() and (f[~m] < 100).all()  # bilinear edges blur, never cross
    np.testing.assert_array_equal(np.argwhere(m).min(0), [11, 16])  # pad 10 rows, crop 4
