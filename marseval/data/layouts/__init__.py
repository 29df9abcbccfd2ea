"""Readers of the raw layouts a dataset can arrive in; each returns a `RawDataset`."""

from __future__ import annotations

from pathlib import Path

from marseval.data.records import RawDataset
from marseval.registry import DatasetSpec


def detect_layout(root: Path) -> str:
    """`huggingface` when the folder holds parquet shards, else `zenodo`."""
    return "huggingface" if any(root.rglob("*.parquet")) else "zenodo"


def read_raw(root: Path, spec: DatasetSpec, detection_format: str | None = None) -> RawDataset:
    """Read a raw dataset folder in whichever layout it is."""
    from marseval.data.layouts import huggingface, zenodo

    if detect_layout(root) == "huggingface":
        return huggingface.read(root, spec, detection_format=detection_format)
    return zenodo.read(root, spec, detection_format=detection_format)
