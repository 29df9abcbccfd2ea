"""Detection samples as (image, boxes) tensor pairs; boxes are scaled with their image and move
with it under augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision import tv_tensors

from marseval.bench.augmentations import detection_augmentations
from marseval.bench.square_images import SquareImages
from marseval.errors import MarsevalError


class DetectionDataset(SquareImages):
    """(image (3, S, S), {"boxes": (M, 4) xyxy px, "labels": (M,)}) pairs.

    Images are in [0, 1] (detectors normalise inside) unless `mean_std` is given: then they are
    normalised with it after augmentation, as the reference's transforms do before its
    torchvision detectors (which normalise again). `native_boxes` keeps the ground truth in the
    image's own pixels for scoring."""

    augmentations = staticmethod(detection_augmentations)

    def __init__(self, dataset_dir: Path, frame: pd.DataFrame, input_size: int,
                 augment: bool = False,
                 mean_std: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__(dataset_dir, frame, input_size, augment)
        self.mean_std = None if mean_std is None else tuple(
            torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in mean_std)

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
        if self.mean_std is not None:
            mean, std = self.mean_std
            image = (image - mean) / std
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
