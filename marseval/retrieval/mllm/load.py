"""Build an `mllm:<key>` embedder: its registry entry, its family's adapter, its weights."""

from __future__ import annotations

import importlib

import torch

from marseval.errors import MarsevalError
from marseval.retrieval.mllm.registry import ADAPTED, EmbedderSpec, get_embedder
from marseval.retrieval.models import gpu_weights_dtype


def weights_dtype(spec: EmbedderSpec, device: str) -> torch.dtype:
    """The reference's dtype on a GPU; float32 on the CPU, where half precision is slow."""
    return gpu_weights_dtype(spec.cuda_dtype, device)


def load_embedder(name: str, device: str, source: str | None = None,
                  revision: str | None = None):
    """The EmbeddingModel of `mllm:<key>`; `source` (a local folder) replaces the hub id,
    `revision` the registry's commit (a remote-code model's opted-in commit)."""
    spec = get_embedder(name)
    # the family is the adapter's module (marseval/retrieval/mllm/<family>.py, a `build`)
    if spec.family not in {family for family, _ in ADAPTED}:
        # the config check refuses these before any job
        raise MarsevalError(f"{name}: the {spec.family} family has no adapter yet")
    adapter = importlib.import_module(f"marseval.retrieval.mllm.{spec.family}")
    return adapter.build(name, spec, device, source or spec.hub, revision or spec.revision)
