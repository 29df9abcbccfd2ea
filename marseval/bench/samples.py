"""Standardized dataset folders: their sample tables, splits and images as tensors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor

from marseval.errors import MarsevalError

SPLITS = ("train", "val", "test")
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # Pillow opens 16-bit PNGs as I;16 or I


def load_samples(dataset_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, dict[str, list[str]]]:
    """(meta, samples frame, subsets) of a standardized dataset folder."""
    dataset_dir = Path(dataset_dir)
    paths = {name: dataset_dir / name for name in ("meta.json", "samples.parquet", "subsets.json")}
    for path in paths.values():
        if not path.is_file():
            raise MarsevalError(f"{path} is missing: is {dataset_dir} a standardized dataset?")
    meta = json.loads(paths["meta.json"].read_text())
    frame = pd.read_parquet(paths["samples.parquet"])
    subsets = json.loads(paths["subsets.json"].read_text())
    return meta, frame, subsets


def split_frame(
    frame: pd.DataFrame, split: str, subset_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """The rows of `split` (in file order), restricted to `subset_ids` when given."""
    if split not in SPLITS:
        raise MarsevalError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rows = frame[frame["split"] == split]
    if subset_ids is not None:
        wanted = set(subset_ids)
        missing = wanted.difference(rows["sample_id"])
        if missing:
            raise MarsevalError(
                f"{len(missing)} subset sample(s) are not in split {split}, "
                f"e.g. {sorted(missing)[0]}"
            )
        rows = rows[rows["sample_id"].isin(wanted)]
    return rows.reset_index(drop=True)


def read_image(path: Path, gray: bool = False) -> Tensor:
    """A float (C, H, W) tensor in [0, 1]: C = 1 (grayscale) or 3 (colour; alpha dropped).

    `gray=True` turns colour images to one luminance channel (the halves of a change pair).
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in _SIXTEEN_BIT:
                pixels = np.asarray(image, dtype=np.float32) / 65535.0
            elif mode == "F":
                pixels = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
            else:
                if mode not in ("L", "RGB"):
                    # palette, alpha, 1-bit, CMYK...: to the nearest plain mode
                    image = image.convert("L" if mode in ("1", "LA", "La") else "RGB")
                if gray and image.mode != "L":
                    image = image.convert("L")
                pixels = np.asarray(image, dtype=np.float32) / 255.0
    except OSError as exc:
        raise MarsevalError(f"cannot read image {path}: {exc}") from exc
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
