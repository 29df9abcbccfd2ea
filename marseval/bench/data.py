"""Standardized classification datasets as tensors: loading, targets, preprocessing.

Images become 3-channel float tensors in [0, 1] (grayscale repeated, alpha dropped; change
pairs stacked as [zeros, after, before] like the Mars-Bench reference code), resized to the
backbone's input size and normalised with its mean and std. With `augment=True` the paper's
augmentations run between resizing and normalising (the reference order).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from marseval.errors import MarsevalError

if TYPE_CHECKING:  # torchvision (with torch._dynamo) loads only in jobs that decode images
    from torchvision.transforms import v2

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


class RandomRot90(nn.Module):
    """Rotate by k x 90 degrees, k uniform in 0..3 (albumentations' RandomRotate90)."""

    def forward(self, image: Tensor) -> Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(image, k, dims=(-2, -1))


def paper_augmentations() -> v2.Compose:
    """The Mars-Bench reference's classification augmentations, on [0, 1] float images.

    Flips (p 0.5 each), a 90-degree rotation (p 0.5), colour jitter 0.2/0.2/0.2/0.1 (p 0.3)
    and a 3, 5 or 7 px gaussian blur with OpenCV's sigma for that kernel (p 0.2).
    """
    from torchvision.transforms import v2

    blurs = [v2.GaussianBlur(k, sigma=0.3 * ((k - 1) * 0.5 - 1) + 0.8) for k in (3, 5, 7)]
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomApply([RandomRot90()], p=0.5),
            v2.RandomApply(
                [v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)], p=0.3
            ),
            v2.RandomApply([v2.RandomChoice(blurs)], p=0.2),
        ]
    )


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
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = paper_augmentations() if augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def _resize(self, image: Tensor) -> Tensor:
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as TF

        size = [self.input_size, self.input_size]
        return TF.resize(
            image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True
        ).clamp_(0.0, 1.0)

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
