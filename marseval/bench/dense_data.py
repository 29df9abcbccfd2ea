"""Segmentation and detection samples as tensors: image and mask, or image and boxes.

Images become 3-channel float tensors in [0, 1] resized to the model's square input size (see
`marseval.bench.data.read_image`). Masks are resized with nearest neighbour, boxes are scaled
by the same factors. Augmentation (flips and colour jitter) goes through torchvision's v2
transforms with `tv_tensors`, so a mask or a box moves with its image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from marseval.bench.data import read_image
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


def joint_augmentations() -> v2.Compose:
    """Flips (p 0.5 each) and colour jitter (p 0.3), applied to an image and its mask or boxes."""
    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)], p=0.3),
    ])


class _SquareImages(Dataset):
    """Rows of a standardized split as square images of side `input_size` in [0, 1]."""

    def __init__(self, dataset_dir: Path, frame: pd.DataFrame, input_size: int,
                 augment: bool = False) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.frame = frame.reset_index(drop=True)
        self.ids: list[str] = [str(i) for i in self.frame["sample_id"]]
        self.input_size = int(input_size)
        self.augment = joint_augmentations() if augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Tensor:
        image = read_image(self.dataset_dir / str(self.frame["image"].iloc[index]))
        size = [self.input_size, self.input_size]
        image = TF.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR,
                          antialias=True).clamp_(0.0, 1.0)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


class SegmentationDataset(_SquareImages):
    """(normalised image (3, S, S), mask (S, S) int64) pairs."""

    def __init__(self, dataset_dir: Path, frame: pd.DataFrame, input_size: int,
                 mean: Sequence[float], std: Sequence[float], augment: bool = False) -> None:
        super().__init__(dataset_dir, frame, input_size, augment)
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


class DetectionDataset(_SquareImages):
    """(image (3, S, S) in [0, 1], {"boxes": (M, 4) xyxy px, "labels": (M,)}) pairs.

    Detectors normalise inside, so images are not normalised here. `native_boxes` keeps the
    ground truth in the image's own pixels for scoring."""

    def native_boxes(self, index: int) -> dict[str, Tensor]:
        raw = self.frame["boxes"].iloc[index]
        boxes = np.array([list(b) for b in raw], dtype=np.float64).reshape(-1, 5)
        return {"boxes": torch.from_numpy(boxes[:, :4]).float(),
                "labels": torch.from_numpy(boxes[:, 4].astype(np.int64))}

    def scale(self, index: int) -> tuple[float, float]:
        """(x, y) factors from native pixels to the S x S input frame."""
        row = self.frame.iloc[index]
        return self.input_size / float(row["width"]), self.input_size / float(row["height"])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self.image(index)
        target = self.native_boxes(index)
        sx, sy = self.scale(index)
        boxes = target["boxes"] * torch.tensor([sx, sy, sx, sy])
        if self.augment is not None:
            canvas = (self.input_size, self.input_size)
            image, boxes = self.augment(
                tv_tensors.Image(image),
                tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas))
            image, boxes = image.as_subclass(Tensor).clamp(0.0, 1.0), boxes.as_subclass(Tensor)
        return image, {"boxes": boxes, "labels": target["labels"]}


def collate_detection(items: list[tuple[Tensor, dict[str, Tensor]]]
                      ) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Stack the equally sized images; keep one target dict per image."""
    return torch.stack([image for image, _ in items]), [target for _, target in items]


def has_boxes(frame: pd.DataFrame) -> pd.Series:
    return frame["boxes"].map(lambda boxes: len(boxes) > 0)


def drop_images_without_boxes(frame: pd.DataFrame) -> pd.DataFrame:
    kept = frame[has_boxes(frame)].reset_index(drop=True)
    if kept.empty:
        raise MarsevalError("no image of the split has a box left after dropping empty images")
    return kept

