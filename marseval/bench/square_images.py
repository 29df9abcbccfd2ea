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


class SquareImages(Dataset):
    """Rows of a standardized split as square images of side `input_size` in [0, 1].

    Subclasses name their task's training augmentations (`augmentations`)."""

    augmentations: Callable[[], Callable] | None = None

    def __init__(self, dataset_dir: Path, frame: pd.DataFrame, input_size: int,
                 augment: bool = False) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.frame = frame.reset_index(drop=True)
        self.ids: list[str] = [str(i) for i in self.frame["sample_id"]]
        self.input_size = int(input_size)
        self.augment = type(self).augmentations() if augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Tensor:
        image = read_image(self.dataset_dir / str(self.frame["image"].iloc[index]))
        size = [self.input_size, self.input_size]
        image = TF.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR,
                          antialias=True).clamp_(0.0, 1.0)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image
