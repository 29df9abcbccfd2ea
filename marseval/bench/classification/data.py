"""Standardized classification datasets as tensors: loading, targets, preprocessing.

Images become 3-channel float tensors in [0, 1] (grayscale repeated, alpha dropped; change
pairs stacked as [zeros, after, before] like the Mars-Bench reference code), resized to the
backbone's input size (`marseval.bench.square_images.resize_square`: with or without antialias)
and normalised with its mean and std. With `augment=True` the paper's augmentations run
between resizing and normalising (the reference order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from marseval.bench.augmentations import paper_augmentations
from marseval.bench.samples import read_image
from marseval.errors import MarsevalError

if TYPE_CHECKING:  # torchvision (with torch._dynamo) loads only in jobs that decode images
    pass



def targets(frame: pd.DataFrame, meta: dict[str, Any]) -> Tensor:
    """int64 class indices (binary, multiclass) or a float multi-hot (N, C) (multilabel)."""
    num_classes = int(meta["num_classes"])
    if meta["subtask"] == "multilabel":
        hot = torch.zeros(len(frame), num_classes, dtype=torch.float32)
        for row, labels in enumerate(frame["labels"]):
            index = torch.from_numpy(np.array(labels, dtype=np.int64))
            if index.numel() and (index.min() < 0 or index.max() >= num_classes):
                raise MarsevalError(
                    f"sample {frame['sample_id'].iloc[row]}: labels "
                    f"{index.tolist()} outside 0..{num_classes - 1}"
                )
            hot[row, index] = 1.0
        return hot
    labels = torch.from_numpy(np.array(frame["label"], dtype=np.int64))
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise MarsevalError(f"labels outside 0..{num_classes - 1} in {meta.get('name')}")
    return labels


class ImageDataset(Dataset):
    """(image, target) pairs of the rows of `frame`, ready for a backbone.

    `frame` is already filtered to one split or subset (see `split_frame`); items come in its
    row order, and `ids` lists their sample ids. Without augmentation an item is a pure
    function of the files; with it, the randomness comes from torch's global RNG (per
    DataLoader worker), so a seeded run is reproducible.
    """

    def __init__(
        self,
        dataset_dir: Path,
        frame: pd.DataFrame,
        meta: dict[str, Any],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        antialias: bool = True,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        frame = frame.reset_index(drop=True)
        self.ids: list[str] = [str(i) for i in frame["sample_id"]]
        self.images: list[str] = [str(p) for p in frame["image"]]
        self.after: list[str] | None = (
            [str(p) for p in frame["image_after"]] if "image_after" in frame.columns else None
        )
        self.targets = targets(frame, meta)
        self.input_size = int(input_size)
        self.antialias = antialias  # False: the Mars-Bench reference's resize (Backbone.antialias)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = paper_augmentations() if augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def _resize(self, image: Tensor) -> Tensor:
        from marseval.bench.square_images import resize_square  # loads torchvision

        return resize_square(image, self.input_size, self.antialias)

    def pixels(self, index: int) -> Tensor:
        """The (3, S, S) image in [0, 1] before augmentation and normalisation."""
        before = read_image(self.dataset_dir / self.images[index], gray=self.after is not None)
        if self.after is not None:
            after = read_image(self.dataset_dir / self.after[index], gray=True)
            # the reference code's channel order: zeros, after, before
            before, after = self._resize(before), self._resize(after)
            return torch.cat([torch.zeros_like(before), after, before])
        image = self._resize(before)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.pixels(index)
        if self.augment is not None:
            image = self.augment(image).clamp_(0.0, 1.0)
        return (image - self.mean) / self.std, self.targets[index]
