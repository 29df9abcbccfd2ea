"""Checks on raw samples before anything is written: every error names dataset, split and file."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from marseval.data.multiband import TIFF_SUFFIXES, read_tiff
from marseval.data.records import ImageRef, RawSample
from marseval.errors import DataError

BOX_TOLERANCE = 1e-3  # pixels: normalised YOLO coordinates round-trip with float error


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    bands: int
    mask_values: tuple[int, ...] = ()  # the class ids the sample's mask holds


def _decode(ref: ImageRef) -> np.ndarray:
    data = ref.read()
    if ref.suffix in TIFF_SUFFIXES:  # multi-band TIFFs (MMLS: 7 bands) are beyond PIL alone
        return read_tiff(data)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


def read_image(ref: ImageRef, dataset: str, split: str, origin: str = "") -> np.ndarray:
    """Decoded pixels, or a DataError naming the missing or corrupt file.

    Images from parquet cells have no file of their own: `origin` (file and row) names them.
    """
    where = _where(ref, origin)
    if ref.path is not None and not ref.path.is_file():
        raise DataError(dataset, "image file is missing", split=split, file=where)
    try:
        return _decode(ref)
    except Exception as exc:  # PIL and rasterio raise many types for a broken file
        raise DataError(dataset, f"corrupt or unreadable image ({exc})", split=split,
                        file=where) from None


def image_info(pixels: np.ndarray) -> ImageInfo:
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    return ImageInfo(width=pixels.shape[1], height=pixels.shape[0], bands=bands)


def check_sample(sample: RawSample, dataset: str, num_classes: int | None) -> ImageInfo:
    """Validate one sample; return its image size and bands."""
    split = sample.split
    info = image_info(read_image(sample.image, dataset, split, sample.origin))
    if sample.image_after is not None:
        after = image_info(read_image(sample.image_after, dataset, split, sample.origin))
        if (after.width, after.height) != (info.width, info.height):
            raise DataError(dataset, f"after image is {after.width}x{after.height}, before "
                            f"image {sample.image.name} is {info.width}x{info.height}",
                            split=split, file=_where(sample.image_after, sample.origin))
    if sample.label is not None:
        _check_class(sample.label, num_classes, dataset, split, sample)
    for label in sample.labels or []:
        _check_class(label, num_classes, dataset, split, sample)
    if sample.mask is not None:
        info = replace(info, mask_values=_check_mask(sample, info, num_classes, dataset))
    for box in sample.boxes or []:
        _check_box(box, info, num_classes, dataset, sample)
    return info


def _where(ref: ImageRef, origin: str = "") -> str:
    if ref.path is not None:
        return str(ref.path)
    return f"{origin} ({ref.name})" if origin else ref.name


def _check_class(label: int, num_classes: int | None, dataset: str, split: str,
                 sample: RawSample) -> None:
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise DataError(dataset, f"label {label} of {sample.image.name} is outside the class "
                        f"list (0..{(num_classes or 0) - 1})", split=split,
                        file=sample.origin or sample.image.name)


def _check_mask(sample: RawSample, info: ImageInfo, num_classes: int | None,
                dataset: str) -> tuple[int, ...]:
    """The class ids the mask holds, each checked against the dataset's class count."""
    split, ref = sample.split, sample.mask
    where = _where(ref, sample.origin)
    mask = read_image(ref, dataset, split, sample.origin)
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise DataError(dataset, "mask has differing colour channels; expected one class "
                            "index per pixel", split=split, file=where)
        mask = mask[..., 0]
    if mask.shape != (info.height, info.width):
        raise DataError(dataset, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{sample.image.name} is {info.width}x{info.height}", split=split,
                        file=where)
    values = mask_values(mask)
    if values is None:
        raise DataError(dataset, "mask holds negative or non-integer values; expected class "
                        "ids 0, 1, ...", split=split, file=where)
    if num_classes is not None and values and values[-1] >= num_classes:
        raise DataError(dataset, f"mask holds class {values[-1]}, but {dataset} has "
                        f"num_classes {num_classes} (ids 0..{num_classes - 1}; registry key "
                        "`num_classes` in marseval/registry/datasets.yaml)", split=split,
                        file=where)
    return values


def mask_values(mask: np.ndarray) -> tuple[int, ...] | None:
    """Sorted distinct class ids of a mask, or None if one is negative or not an integer."""
    if mask.dtype == np.uint8:
        return tuple(int(v) for v in np.flatnonzero(np.bincount(mask.ravel(), minlength=1)))
    values = np.unique(mask)
    if values.size and (values[0] < 0 or not np.array_equal(values, np.round(values))):
        return None
    return tuple(int(v) for v in values)


def mask_class_usage(infos: list[ImageInfo], num_classes: int) -> dict[str, list[int]]:
    """Class ids the masks hold across all splits, and the declared ids none of them holds."""
    seen = sorted({v for info in infos for v in info.mask_values})
    return {"mask_values": seen,
            "absent_mask_classes": sorted(set(range(num_classes)) - set(seen))}


def _check_box(box: list[float], info: ImageInfo, num_classes: int | None, dataset: str,
               sample: RawSample) -> None:
    x1, y1, x2, y2, cls = box
    inside = (-BOX_TOLERANCE <= x1 < x2 <= info.width + BOX_TOLERANCE
              and -BOX_TOLERANCE <= y1 < y2 <= info.height + BOX_TOLERANCE)
    if not inside:
        raise DataError(dataset, f"box {[round(v, 2) for v in box[:4]]} of "
                        f"{sample.image.name} lies outside its {info.width}x{info.height} "
                        "image or is empty", split=sample.split, file=sample.origin)
    _check_class(int(cls), num_classes, dataset, sample.split, sample)
