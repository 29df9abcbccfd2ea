"""The square images segmentation and detection samples start from.

Images become 3-channel float tensors in [0, 1] resized to the model's square input size (see
`marseval.bench.samples.read_image`). Masks are resized with nearest neighbour, boxes are scaled
by the same factors. Augmentation (the reference's, per task: `marseval.bench.augmentations`)
goes through torchvision's v2 transforms with `tv_tensors`, so a mask or a box moves with its
image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from marseval.bench.samples import read_image


def resize_square(image: Tensor, size: int, antialias: bool) -> Tensor:
    """A (C, H, W) image in [0, 1] resized bilinearly (half-pixel centres) to (C, size, size).

    antialias=False is the Mars-Bench reference's resize (albumentations A.Resize: OpenCV
    INTER_LINEAR, no low-pass filter when shrinking, so each output pixel mixes the 2 x 2 source
    pixels around its centre). The reference resizes uint8 images and normalises afterwards;
    against cv2.resize of the uint8 image this stays within 0.81/255 per pixel (mean 0.27/255,
    OpenCV's fixed-point weights and uint8 rounding) from 100-1200 px to 224 and 299.
    antialias=True (the "weights" inputs) filters first, as PIL and the weights' transforms do;
    on noise shrunk 500 -> 224 it departs from OpenCV by up to 142/255.
    """
    return TF.resize(image, [size, size], interpolation=v2.InterpolationMode.BILINEAR,
                     antialias=antialias).clamp_(0.0, 1.0)


class SquareImages(Dataset):
    """Rows of a standardized split as square images of side `input_size` in [0, 1].

    Subclasses name their task's training augmentations (`augmentations`)."""

    augmentations: Callable[[], Callable] | None = None

    def __init__(self, dataset_dir: Path, frame: pd.DataFrame, input_size: int,
                 augment: bool = False, antialias: bool = True) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.frame = frame.reset_index(drop=True)
        self.ids: list[str] = [str(i) for i in self.frame["sample_id"]]
        self.input_size = int(input_size)
        self.antialias = antialias  # False: the reference's resize (`resize_square`)
        self.augment = type(self).augmentations() if augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Tensor:
        image = read_image(self.dataset_dir / str(self.frame["image"].iloc[index]))
        image = resize_square(image, self.input_size, self.antialias)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image
