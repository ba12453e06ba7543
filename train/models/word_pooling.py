"""GLoRIA's word features: sub-word tokens ("##...") are summed into the word they continue;
special tokens and padding are dropped. Vectorised; words come out left-packed per text."""
from __future__ import annotations

import torch


def pool_words(token_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               is_continuation: torch.Tensor, special_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """token_features [B, L, D] -> (words [B, W, D], word_mask [B, W] bool), W = most words in
    the batch (at least 1). A continuation token with no word before it starts a word."""
    keep = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    cont = is_continuation.to(input_ids.device)[input_ids] & keep
    prev_keep = torch.zeros_like(keep)
    prev_keep[:, 1:] = keep[:, :-1]
    start = keep & (~cont | ~prev_keep)
    word_index = torch.cumsum(start.long(), dim=1) - 1            # word of each token
    n_words = start.sum(dim=1)
    width = max(int(n_words.max()) if n_words.numel() else 0, 1)
    b, _, d = token_features.shape
    index = torch.where(keep, word_index, torch.full_like(word_index, width))  # dropped -> spare slot
    words = token_features.new_zeros(b, width + 1, d)
    words.scatter_add_(1, index.unsqueeze(-1).expand(-1, -1, d), token_features)
    mask = torch.arange(width, device=input_ids.device).unsqueeze(0) < n_words.unsqueeze(1)
    return words[:, :width], mask
