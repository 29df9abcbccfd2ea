"""Checks on raw samples before anything is written: every error names dataset, split and file."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from marseval.data.records import ImageRef, RawSample
from marseval.errors import DataError

BOX_TOLERANCE = 1e-3  # pixels: normalised YOLO coordinates round-trip with float error


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    bands: int


def _decode(ref: ImageRef) -> np.ndarray:
    data = ref.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError):
        if ref.suffix not in (".tif", ".tiff"):
            raise
    # multi-band GeoTIFFs (MMLS has 7 bands) are beyond PIL
    from rasterio.io import MemoryFile

    with MemoryFile(data) as mem, mem.open() as src:
        return np.moveaxis(src.read(), 0, -1)


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
        _check_mask(sample, info, num_classes, dataset)
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
                dataset: str) -> None:
    split, ref = sample.split, sample.mask
    mask = read_image(ref, dataset, split, sample.origin)
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise DataError(dataset, "mask has differing colour channels; expected one class "
                            "index per pixel", split=split, file=_where(ref, sample.origin))
        mask = mask[..., 0]
    if mask.shape != (info.height, info.width):
        raise DataError(dataset, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{sample.image.name} is {info.width}x{info.height}", split=split,
                        file=_where(ref, sample.origin))
    top = int(mask.max()) if mask.size else 0
    if num_classes is not None and top >= num_classes:
        raise DataError(dataset, f"mask holds class {top}, outside the class list "
                        f"(0..{num_classes - 1})", split=split, file=_where(ref, sample.origin))


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
