"""The Mars-Bench reference's training augmentations (`marsbench/utils/transforms.py`),
on [0, 1] float images, for each task."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # torchvision (with torch._dynamo) loads only in jobs that decode images
    from torchvision.transforms import v2


class RandomRot90(nn.Module):
    """Rotate by k x 90 degrees, k uniform in 0..3 (albumentations' RandomRotate90: k = 0 is
    one of the draws), every input of one call (an image and its mask) by the same k."""

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        from torchvision import tv_tensors

        k = int(torch.randint(0, 4, ()).item())
        # torch ops unwrap tv_tensors; wrap again so later v2 transforms still see a Mask
        outputs = tuple(
            tv_tensors.wrap(torch.rot90(x, k, dims=(-2, -1)), like=x)
            if isinstance(x, tv_tensors.TVTensor) else torch.rot90(x, k, dims=(-2, -1))
            for x in inputs)
        return outputs if len(outputs) > 1 else outputs[0]


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


def segmentation_augmentations() -> v2.Compose:
    """The reference's segmentation augmentations: flips and a 90-degree rotation (p 0.5 each),
    each applied to the image and its mask alike; no colour changes."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
        v2.RandomApply([RandomRot90()], p=0.5),
    ])


def detection_augmentations() -> v2.Compose:
    """The reference's detection augmentations: flips (p 0.5 each), boxes moving with the image."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)])
