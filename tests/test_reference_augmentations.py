"""Training augmentations against the reference's `marsbench/utils/transforms.py`, per task.

The eight symmetries of the square (identity, three rotations, four reflections) tell the
transforms apart: flips alone reach four of them, flips with a 90-degree rotation all eight.
"""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from marseval.bench.augmentations import (
    RandomRot90,
    detection_augmentations,
    paper_augmentations,
    segmentation_augmentations,
)

SIDE = 5
DRAWS = 400


def _dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [torch.flip(r, dims=(-1,)) for r in rotations]


def _which(image: torch.Tensor, original: torch.Tensor) -> int:
    """The index of `image` among the eight symmetries of `original` (-1: none of them)."""
    for index, candidate in enumerate(_dihedral(original)):
        if torch.equal(image, candidate):
            return index
    return -1


@pytest.fixture
def ramp() -> torch.Tensor:
    # distinct values everywhere, so every symmetry gives a different image
    return (torch.arange(SIDE * SIDE, dtype=torch.float32).view(1, SIDE, SIDE) / 100).expand(
        3, -1, -1).contiguous()


def test_segmentation_augmentations_flip_and_rotate_image_and_mask_alike(ramp) -> None:
    torch.manual_seed(0)
    mask = (ramp[0] * 100).long()
    augment = segmentation_augmentations()
    seen = set()
    for _ in range(DRAWS):
        image, moved = augment(tv_tensors.Image(ramp), tv_tensors.Mask(mask))
        assert isinstance(moved, tv_tensors.Mask)
        which = _which(image.as_subclass(torch.Tensor), ramp)
        assert which >= 0, "colours changed: the reference has no colour jitter for masks"
        # the mask went through the same symmetry as its image
        assert torch.equal(moved.as_subclass(torch.Tensor), _dihedral(mask)[which])
        seen.add(which)
    assert seen == set(range(8))  # flips + RandomRotate90 reach every symmetry


def test_detection_augmentations_are_flips_only(ramp) -> None:
    torch.manual_seed(0)
    boxes = tv_tensors.BoundingBoxes([[0.0, 0.0, 2.0, 1.0]], format="XYXY",
                                     canvas_size=(SIDE, SIDE))
    augment = detection_augmentations()
    seen = set()
    for _ in range(DRAWS):
        image, moved = augment(tv_tensors.Image(ramp), boxes)
        which = _which(image.as_subclass(torch.Tensor), ramp)
        seen.add(which)
        # hand-computed: the box [0, 0, 2, 1] after each of the four flips of a 5 px square
        expected = {0: [0, 0, 2, 1], 4: [3, 0, 5, 1], 6: [0, 4, 2, 5], 2: [3, 4, 5, 5]}[which]
        assert moved.as_subclass(torch.Tensor).tolist() == [[float(v) for v in expected]]
    # identity, horizontal flip, vertical flip, both (= rotation by 180): no 90-degree turns,
    # no colour change
    assert seen == {0, 2, 4, 6}


def test_classification_augmentations_have_the_reference_parameters(ramp) -> None:
    compose = paper_augmentations()
    hflip, vflip, rot, jitter, blur = compose.transforms
    assert (type(hflip), hflip.p, type(vflip), vflip.p) == (
        v2.RandomHorizontalFlip, 0.5, v2.RandomVerticalFlip, 0.5)
    assert rot.p == 0.5 and isinstance(rot.transforms[0], RandomRot90)
    assert jitter.p == 0.3
    colour = jitter.transforms[0]
    # ColorJitter(0.2, 0.2, 0.2, 0.1): factor ranges [0.8, 1.2] and hue [-0.1, 0.1]
    assert colour.brightness == pytest.approx((0.8, 1.2))
    assert colour.contrast == pytest.approx((0.8, 1.2))
    assert colour.saturation == pytest.approx((0.8, 1.2))
    assert colour.hue == pytest.approx((-0.1, 0.1))
    assert blur.p == 0.2
    # albumentations 1.x GaussianBlur(): kernel 3, 5 or 7, OpenCV's sigma for the kernel
    kernels = [(b.kernel_size, b.sigma) for b in blur.transforms[0].transforms]
    assert kernels == [((3, 3), pytest.approx([0.8, 0.8])), ((5, 5), pytest.approx([1.1, 1.1])),
                       ((7, 7), pytest.approx([1.4, 1.4]))]


def test_classification_augmentations_reach_every_symmetry(ramp) -> None:
    torch.manual_seed(0)
    augment = paper_augmentations()
    seen = {_which(augment(ramp), ramp) for _ in range(DRAWS)}
    assert set(range(8)) <= seen  # rotations as well as flips
    assert -1 in seen  # and colour jitter or blur changed some draws
