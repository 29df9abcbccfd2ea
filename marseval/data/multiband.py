"""Multi-band TIFFs: decode them whole, keep the bands that make the RGB image.

MMLS (Zenodo layout) stores each image as float32 (128, 128, 7) in [0, 1], written by tifffile
as 128 pages of 128x7 with the shape in the ImageDescription; a GDAL-style TIFF with 7
samples per pixel is read too. The reference keeps bands [2, 1, 0]
(Mars-Bench marsbench/data/segmentation/MMLS.py: `tifffile.imread(path)[:, :, [2, 1, 0]]`).

Scaling to 8 bits: uint8 bands are kept as they are; float bands must lie in [0, 1] and become
round(x * 255) (exact for MMLS, whose colour bands are k / 255). Later stages read the PNG back
as x / 255, the values the file holds. (The reference hands the float values to albumentations
`Normalize(max_pixel_value=255)`, which divides by 255 once more.)
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageSequence, TiffImagePlugin, UnidentifiedImageError

TIFF_SUFFIXES = (".tif", ".tiff")
DESCRIPTION = 270  # TIFF ImageDescription tag


def _shaped_series(image: Image.Image) -> tuple[int, ...] | None:
    """The array shape tifffile recorded for a multi-page series, if it did."""
    text = image.tag_v2.get(DESCRIPTION) if hasattr(image, "tag_v2") else None
    try:
        shape = json.loads(text)["shape"] if text else None
    except (ValueError, KeyError, TypeError):
        return None
    return tuple(int(n) for n in shape) if isinstance(shape, list) else None


def read_tiff(data: bytes) -> np.ndarray:
    """(H, W) or (H, W, C) pixels of a TIFF: single page, tifffile series, or multi-sample."""
    try:
        # Pillow's TIFF reader itself, not Image.open: ultralytics replaces Image.open in any
        # process that imported it with one that tries to install an HEIF plugin on failure
        with TiffImagePlugin.TiffImageFile(io.BytesIO(data)) as image:
            shape = _shaped_series(image)
            if shape is None or getattr(image, "n_frames", 1) == 1:
                image.load()
                return np.asarray(image)
            pages = np.stack([np.asarray(page) for page in ImageSequence.Iterator(image)])
    except (UnidentifiedImageError, OSError, SyntaxError):
        pages, shape = None, None  # more samples per pixel than Pillow decodes
    if pages is not None:
        if pages.size != int(np.prod(shape)):
            raise ValueError(f"pages hold {pages.shape}, the description says {list(shape)}")
        return pages.reshape(shape)
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():  # image patches carry no map coordinates
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as mem, mem.open() as src:
            return np.moveaxis(src.read(), 0, -1)


def keep_bands(pixels: np.ndarray, bands: Sequence[int]) -> np.ndarray:
    """The chosen bands, in order, as uint8 (see the module note on scaling)."""
    have = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.ndim != 3 or max(bands) >= have:
        raise ValueError(f"image has {have} band(s); bands {list(bands)} are to be kept")
    picked = pixels[..., list(bands)]
    if picked.dtype == np.uint8:
        return np.ascontiguousarray(picked)
    if np.issubdtype(picked.dtype, np.floating):
        low, high = float(np.min(picked)), float(np.max(picked))
        if low >= 0.0 and high <= 1.0:  # False for NaN too
            return np.round(picked * 255.0).astype(np.uint8)
        raise ValueError(f"float bands span [{low:g}, {high:g}]; expected [0, 1]")
    raise ValueError(f"sample type {picked.dtype} is not uint8 or float in [0, 1]")


def rgb_png(data: bytes, bands: Sequence[int]) -> bytes:
    """A multi-band TIFF's chosen bands as an 8-bit PNG."""
    buffer = io.BytesIO()
    Image.fromarray(keep_bands(read_tiff(data), bands)).save(buffer, format="PNG")
    return buffer.getvalue()


def embed_bands(rgb: np.ndarray, bands: Sequence[int], total: int) -> np.ndarray:
    """The inverse of `keep_bands`: float32 (H, W, total) in [0, 1] with `rgb` at `bands`;
    the other bands hold the grey level."""
    scaled = rgb.astype(np.float32) / 255.0
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], len(bands), axis=2)
    out = np.repeat(scaled.mean(axis=2, keepdims=True), total, axis=2)
    out[..., list(bands)] = scaled
    return out


def write_series_tiff(pixels: np.ndarray) -> bytes:
    """(H, W, C) float32 as tifffile writes it: H pages of W x C, the shape in the description."""
    pages = [Image.fromarray(np.ascontiguousarray(row, dtype=np.float32)) for row in pixels]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:],
                  tiffinfo={DESCRIPTION: json.dumps({"shape": list(pixels.shape)})})
    return buffer.getvalue()
