"""Pooling of decoder embedders: the last real (non-pad) token, or the mean under a mask."""

from __future__ import annotations

import torch
from torch import Tensor


def last_token(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(batch, dim) hidden states of each sequence's last non-pad token.

    Works for left padding (the last position is real for every row) and right padding (the
    row's length minus one); a row without any real token is an error, not a pad vector.
    """
    mask = attention_mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("a sequence of the batch has no token to pool (all padding)")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """(batch, dim) mean of each sequence's hidden states where `mask` (batch, length) is 1."""
    return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
