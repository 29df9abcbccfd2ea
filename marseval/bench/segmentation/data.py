"""Segmentation samples as (normalised image, mask) tensor pairs; masks are resized with
nearest neighbour and move with their image under augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from marseval.bench.augmentations import segmentation_augmentations
from marseval.bench.square_images import SquareImages
from marseval.errors import MarsevalError


def read_mask(path: Path) -> Tensor:
    """A (H, W) int64 tensor of class ids from a single-channel (or grey RGB) mask file."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
    except OSError as exc:
        raise MarsevalError(f"cannot read mask {path}: {exc}") from exc
    if pixels.ndim == 3:
        pixels = pixels[..., 0]  # standardize checked that the channels agree
    return torch.from_numpy(pixels.astype(np.int64))


class SegmentationDataset(SquareImages):
    """(normalised image (3, S, S), mask (S, S) int64) pairs."""

    augmentations = staticmethod(segmentation_augmentations)

    def __init__(self, dataset_dir: Path, frame: pd.DataFrame, input_size: int,
                 mean: Sequence[float], std: Sequence[float], augment: bool = False,
                 antialias: bool = True) -> None:
        super().__init__(dataset_dir, frame, input_size, augment, antialias)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def native_mask(self, index: int) -> Tensor:
        return read_mask(self.dataset_dir / str(self.frame["mask"].iloc[index]))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.image(index)
        mask = self.native_mask(index)
        mask = TF.resize(mask[None], [self.input_size] * 2,
                         interpolation=v2.InterpolationMode.NEAREST)[0]
        if self.augment is not None:
            image, mask = self.augment(tv_tensors.Image(image), tv_tensors.Mask(mask))
            image, mask = image.as_subclass(Tensor).clamp(0.0, 1.0), mask.as_subclass(Tensor)
        return (image - self.mean) / self.std, mask
