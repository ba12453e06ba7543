"""Contrastive losses of ConVIRT and GLoRIA as pure functions of features (no model, no ranks).

Conventions: row i of the image batch pairs with row i of the text batch; logits[i, j] scores
image i against text j; cross-entropy targets are the diagonal.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bidirectional_ce(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image-to-text CE over rows, text-to-image CE over columns) of a [B, B] logit matrix."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.t(), target)


def convirt_loss(image_embed: torch.Tensor, text_embed: torch.Tensor, temperature: float,
                 lambda_i2t: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ConVIRT: lambda * l(v->u) + (1 - lambda) * l(u->v), InfoNCE on cosine / temperature.
    Inputs need not be normalised; they are L2-normalised here."""
    v = F.normalize(image_embed, dim=-1)
    u = F.normalize(text_embed, dim=-1)
    l_i2t, l_t2i = bidirectional_ce(v @ u.t() / temperature)
    loss = lambda_i2t * l_i2t + (1.0 - lambda_i2t) * l_t2i
    return loss, {"loss_i2t": l_i2t.detach(), "loss_t2i": l_t2i.detach()}


def word_region_attention(words: torch.Tensor, regions: torch.Tensor, temp_attention: float,
                          word_softmax: bool = True) -> torch.Tensor:
    """Attention of each word over the image regions.

    words [K, D] (one text's valid words), regions [B, D, M] -> attention [B, K, M], rows sum to 1.
    Paper: a_kj = softmax_j(temp_attention * w_k . v_j). With `word_softmax` the dot products are
    first softmaxed over the words of the text (the released GLoRIA code, inherited from AttnGAN's
    DAMSM); that bounds the scores in [0, 1] before the temperature and keeps the region softmax
    from saturating on unnormalised 768-d features. The temperatures were tuned with it.
    """
    scores = torch.einsum("kd,bdm->bkm", words, regions)
    if word_softmax:
        scores = scores.softmax(dim=1)
    return (temp_attention * scores).softmax(dim=2)


def local_similarity(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                     temp_attention: float, temp_aggregation: float, word_softmax: bool = True,
                     return_attention: bool = False):
    """GLoRIA word-region similarity Z(image, text) for every pair.

    words [T, K, D], word_mask [T, K] (words left-packed), regions [B, D, h, w]
    -> Z [B, T] with Z = log(sum_k exp(temp_aggregation * cos(c_k, w_k))), where c_k is the
    attention-weighted region context of word k. A text without words scores 0.
    With return_attention also a list (per text) of attention maps [B, K_t, h, w].
    """
    b, d, h, w = regions.shape
    flat = regions.reshape(b, d, h * w)
    columns, maps = [], []
    for t in range(words.shape[0]):
        k = int(word_mask[t].sum())
        if k == 0:
            columns.append(regions.new_zeros(b))
            maps.append(regions.new_zeros(b, 0, h, w))
            continue
        wt = words[t, :k]                                           # [K, D]
        attn = word_region_attention(wt, flat, temp_attention, word_softmax)  # [B, K, M]
        context = torch.einsum("bkm,bdm->bkd", attn, flat)          # [B, K, D]
        cos = F.cosine_similarity(context, wt.unsqueeze(0).expand_as(context), dim=-1)  # [B, K]
        columns.append(torch.logsumexp(temp_aggregation * cos, dim=1))
        maps.append(attn.reshape(b, k, h, w))
    z = torch.stack(columns, dim=1)
    return (z, maps) if return_attention else z


def gloria_loss(image_global: torch.Tensor, text_global: torch.Tensor, image_local: torch.Tensor,
                words: torch.Tensor, word_mask: torch.Tensor, temp_attention: float,
                temp_aggregation: float, temp_logits: float, global_weight: float = 1.0,
                local_weight: float = 1.0, word_softmax: bool = True
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GLoRIA: global_weight * (g_i2t + g_t2i) + local_weight * (l_i2t + l_t2i); both directions are
    summed as in the released code. Global logits: temp_logits * cosine; local logits:
    temp_logits * Z from `local_similarity`."""
    g = temp_logits * F.normalize(image_global, dim=-1) @ F.normalize(text_global, dim=-1).t()
    g_i2t, g_t2i = bidirectional_ce(g)
    z = local_similarity(words, word_mask, image_local, temp_attention, temp_aggregation, word_softmax)
    l_i2t, l_t2i = bidirectional_ce(temp_logits * z)
    loss_global = g_i2t + g_t2i
    loss_local = l_i2t + l_t2i
    loss = global_weight * loss_global + local_weight * loss_local
    terms = {"loss_global": loss_global, "loss_local": loss_local, "loss_global_i2t": g_i2t,
             "loss_global_t2i": g_t2i, "loss_local_i2t": l_i2t, "loss_local_t2i": l_t2i}
    return loss, {k: v.detach() for k, v in terms.items()}
