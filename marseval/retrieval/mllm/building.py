"""Building blocks every embedder adapter shares: complete weights, registry-sized batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from marseval.errors import MarsevalError


def load_complete(model_class, name: str, source: str, revision: str | None,
                  dtype: torch.dtype):
    """`model_class.from_pretrained(source)`, refusing a checkpoint that leaves any weight
    unloaded or misshapen (those weights would stay random and the embeddings be noise)."""
    model, info = model_class.from_pretrained(source, revision=revision, dtype=dtype,
                                              output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing or info.get("mismatched_keys"):
        raise MarsevalError(f"{name}: the checkpoint at {source} leaves weights of "
                            f"transformers' {model_class.__name__} unloaded "
                            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                            f"{'; shape mismatches' if info.get('mismatched_keys') else ''})")
    return model


def in_batches(items: Sequence, size: int, encode: Callable[[list], Tensor]) -> Tensor:
    """`encode` over consecutive batches of `size` (the registry's), concatenated."""
    return torch.cat([encode(list(items[i:i + size])) for i in range(0, len(items), size)])
