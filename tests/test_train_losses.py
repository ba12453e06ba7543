"""train/models/losses.py against hand-computed values (numbers worked out in the test, not by the code)."""
from __future__ import annotations

import math

import pytest
import torch

from train.models import losses


def _log1p_exp(x: float) -> float:  # -log(softmax) of a two-way choice with margin -x
    return math.log(1.0 + math.exp(x))


def test_convirt_loss_hand_2x2():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    u = torch.tensor([[3.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # first text not unit length
    # cosines [[1, .6], [0, .8]]; / 0.5 -> logits [[2, 1.2], [0, 1.6]]
    l_i2t = (_log1p_exp(1.2 - 2.0) + _log1p_exp(0.0 - 1.6)) / 2
    l_t2i = (_log1p_exp(0.0 - 2.0) + _log1p_exp(1.2 - 1.6)) / 2
    loss, terms = losses.convirt_loss(v, u, temperature=0.5, lambda_i2t=0.75)
    logs = {k: float(t) for k, t in terms.items()}
    assert loss.item() == pytest.approx(0.75 * l_i2t + 0.25 * l_t2i, abs=1e-12)
    assert logs["loss_i2t"] == pytest.approx(l_i2t) and logs["loss_t2i"] == pytest.approx(l_t2i)
    # lambda weighs the image-to-text direction
    loss1, _ = losses.convirt_loss(v, u, temperature=0.5, lambda_i2t=1.0)
    assert loss1.item() == pytest.approx(l_i2t)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# one image with two regions v1=(1,0), v2=(0,1) (h=1, w=2); one text with words w1=(1,0), w2=(0,2)
REGIONS = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)  # [B=1, D=2, h=1, w=2]
WORDS = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)        # [T=1, K=2, D=2]
V = [(1.0, 0.0), (0.0, 1.0)]
W = [(1.0, 0.0), (0.0, 2.0)]


def _z_by_hand(attn_rows):
    cos = []
    for a, w in zip(attn_rows, W):
        c = (a[0] * V[0][0] + a[1] * V[1][0], a[0] * V[0][1] + a[1] * V[1][1])
        cos.append(_cos(c, w))
    return math.log(sum(math.exp(5.0 * x) for x in cos))


def test_local_similarity_paper_form_hand():
    # a_kj = softmax_j(4 * w_k . v_j): dot products [[1, 0], [0, 2]]
    attn = [_softmax([4.0 * 1, 4.0 * 0]), _softmax([4.0 * 0, 4.0 * 2])]
    z = losses.local_similarity(WORDS, torch.ones(1, 2, dtype=torch.bool), REGIONS, temp_attention=4.0,
                                temp_aggregation=5.0, word_softmax=False)
    assert z.shape == (1, 1)
    assert z.item() == pytest.approx(_z_by_hand(attn), abs=1e-10)


def test_local_similarity_released_form_hand():
    # first a softmax over the words per region, then 4 x that, softmax over regions per word
    r1 = _softmax([1.0, 0.0])  # region 1's scores for words 1, 2
    r2 = _softmax([0.0, 2.0])
    attn = [_softmax([4 * r1[0], 4 * r2[0]]), _softmax([4 * r1[1], 4 * r2[1]])]
    z, maps = losses.local_similarity(WORDS, torch.ones(1, 2, dtype=torch.bool), REGIONS, 4.0, 5.0,
                                      word_softmax=True, return_attention=True)
    assert z.item() == pytest.approx(_z_by_hand(attn), abs=1e-10)
    assert maps[0].shape == (1, 2, 1, 2)
    assert maps[0][0, 0, 0].tolist() == pytest.approx(attn[0])


def test_local_similarity_ignores_padding_and_scores_empty_text_zero():
    words = torch.zeros(3, 3, 2, dtype=torch.float64)
    words[0, :2] = WORDS[0]
    words[0, 2] = torch.tensor([5.0, -5.0])  # padding garbage beyond the mask
    words[1, :2] = WORDS[0]
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    z = losses.local_similarity(words, mask, REGIONS, 4.0, 5.0)
    alone = losses.local_similarity(WORDS, torch.ones(1, 2, dtype=torch.bool), REGIONS, 4.0, 5.0)
    assert z[0, 0].item() == pytest.approx(alone.item()) and z[0, 1].item() == pytest.approx(alone.item())
    assert z[0, 2].item() == 0.0


def test_gloria_loss_is_weighted_sum_of_both_directions():
    torch.manual_seed(0)
    b, d = 3, 4
    img_g, txt_g = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    local = torch.randn(b, d, 2, 2, dtype=torch.float64)
    words = torch.randn(b, 5, d, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    loss, terms = losses.gloria_loss(img_g, txt_g, local, words, mask, 4.0, 5.0, 10.0,
                                     global_weight=1.0, local_weight=0.5)
    logs = {k: float(t) for k, t in terms.items()}
    cos = torch.nn.functional.cosine_similarity(img_g[:, None], txt_g[None], dim=-1)
    g = 10.0 * cos
    g_i2t = sum(-torch.log_softmax(g[i], 0)[i] for i in range(b)) / b
    g_t2i = sum(-torch.log_softmax(g[:, j], 0)[j] for j in range(b)) / b
    assert logs["loss_global"] == pytest.approx((g_i2t + g_t2i).item(), abs=1e-10)
    assert loss.item() == pytest.approx(logs["loss_global"] + 0.5 * logs["loss_local"], abs=1e-10)
    z = losses.local_similarity(words, mask, local, 4.0, 5.0)
    l_i2t, l_t2i = losses.bidirectional_ce(10.0 * z)
    assert logs["loss_local"] == pytest.approx((l_i2t + l_t2i).item(), abs=1e-10)
