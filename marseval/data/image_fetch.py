"""Fetch the images of an image-text dataset whose rows only name them by URL (Mars-VL-Pairs),
and preprocess them as the reference's img2dataset call does.

The reference pipeline runs img2dataset 1.47.0 over the URLs (`--timeout 10 --retries 3
--image_size 512 --resize_mode center_crop`) and, like any crawl, loses dead links. Here the
two halves are split: the download stage keeps each image as `<dest>/<key><suffix>` in its
original encoding, checked to decode, with no size cap; the standardizer then resizes it with
`img2dataset_center_crop`. A rerun skips images already there, so an interrupted fetch
resumes. What could not be fetched is listed in `<dest>/../fetch_failures.csv` (key, url,
reason), rewritten on every run, which the standardizer reads to drop those pairs instead of
calling the raw folder broken.

img2dataset's resizer (resizer.py, with albumentations 1.4 and OpenCV) decodes with
cv2.IMREAD_UNCHANGED (no EXIF rotation), mattes an alpha channel onto white, scales the shorter
side to the target with INTER_AREA when shrinking and INTER_LANCZOS4 when enlarging (sizes
rounded with Python's round), crops the centre ((h - size) // 2, (w - size) // 2) and encodes
a JPEG of quality 95. The same arithmetic is written out here in numpy (OpenCV is not a
dependency of the data environment): the Lanczos path in OpenCV's 8-bit fixed point, the area
path in its float32 accumulation order, including the integer-factor fast path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import numpy as np
import requests
from PIL import Image

from marseval import __version__
from marseval.atomic import atomic_write_bytes, atomic_write_text
from marseval.data.download import (
    RETRY_STATUS,
    TRANSIENT_ERRORS,
    DownloadError,
    RetryableError,
    require_online,
)

__all__ = ["FAILURES_FILE", "IMAGE_SUFFIXES", "MAX_PIXELS", "FetchReport", "TooManyPixels",
           "fetch_images", "find_image", "img2dataset_center_crop", "open_image", "read_failures"]

log = logging.getLogger(__name__)

FAILURES_FILE = "fetch_failures.csv"
FAILURE_COLUMNS = ("key", "url", "reason")
SUFFIX_BY_TYPE = {
    "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png",
    "image/webp": ".webp", "image/tiff": ".tif", "image/gif": ".gif", "image/bmp": ".bmp",
}
# what PIL calls a format it decoded, for bytes whose type neither header nor URL tells
SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp",
                    "TIFF": ".tif", "GIF": ".gif", "BMP": ".bmp"}
IMAGE_SUFFIXES = frozenset(SUFFIX_BY_TYPE.values()) | {".jpeg", ".tiff"}
# Far above any real image (a 30k x 30k mosaic is 0.9e9), below OpenCV's own decoder limit
# (2**30): what img2dataset could not decode either. PIL's decompression-bomb limit (about
# 179e6 pixels) is lifted for these images: large legitimate images are kept.
MAX_PIXELS = 1_000_000_000
JPEG_QUALITY = 95  # img2dataset's encode_quality default
_CHUNK_SIZE = 1 << 16
_MAX_BACKOFF_S = 30.0
_LOG_EVERY = 1000


@dataclass
class FetchReport:
    fetched: int = 0
    skipped_existing: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (key, url, reason)


class _Failure(Exception):
    """This image is lost (dead link, not an image...): listed, not raised."""


@dataclass(frozen=True)
class _Settings:
    dest: Path
    base: Path
    retries: int
    timeout: float
    backoff: float


# --------------------------------------------------------------------------- public


def find_image(folder: Path, key: str) -> Path | None:
    """The image saved for `key` in `folder`, whatever its suffix (no glob: keys may hold
    characters glob treats specially)."""
    for suffix in sorted(IMAGE_SUFFIXES):
        path = folder / f"{key}{suffix}"
        if path.is_file():
            return path
    return None


def read_failures(path: Path) -> list[tuple[str, str, str]]:
    """The (key, url, reason) rows of a failure list; none where it does not exist.
    ValueError where it is malformed."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        try:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != FAILURE_COLUMNS:
                raise ValueError(f"expected columns {list(FAILURE_COLUMNS)}, "
                                 f"found {reader.fieldnames}")
            return [(r["key"], r["url"], r["reason"]) for r in reader]
        except csv.Error as exc:  # a ValueError for callers, like a bad header or encoding
            raise ValueError(str(exc)) from None


def fetch_images(items: Sequence[tuple[str, str]], dest: Path, *, base: Path | None = None,
                 retries: int = 3, timeout: float = 10, workers: int = 8,
                 backoff: float = 1.0) -> FetchReport:
    """Save each (key, url) image as `dest/<key><suffix>`; return what happened.

    Relative URLs name files under `base` (default: `dest.parent`, the raw dataset folder)
    and are copied. Transient HTTP failures are retried `retries` times with exponential
    backoff (img2dataset: `--retries 3`); `timeout` is per connect and per read, in seconds,
    as img2dataset's `--timeout 10`. There is no cap on the size of an image (img2dataset has
    none), only on its pixel count (MAX_PIXELS); anything else that goes wrong with one image
    lands in the failure list.
    """
    dest = Path(dest)
    settings = _Settings(dest, Path(base) if base is not None else dest.parent, retries,
                         timeout, backoff)
    unique = _unique_items(items)
    dest.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dest)
    report = FetchReport()
    pending = []
    for key, url in unique:
        if find_image(dest, key) is not None:
            report.skipped_existing += 1
        else:
            pending.append((key, url))
    remote = [url for _, url in pending if _is_remote(url)]
    if remote:
        # checked only when something is left to fetch: a complete folder works offline
        require_online(f"{len(remote)} image(s) into {dest}, e.g. {remote[0]}")
    report.fetched, report.failed = _fetch_all(pending, settings, workers)
    _write_failures(dest.parent / FAILURES_FILE, report.failed)
    log.info("%s: %d image(s) fetched, %d already present, %d failed", dest,
             report.fetched, report.skipped_existing, len(report.failed))
    if report.failed:
        log.warning("%d image(s) could not be fetched; listed in %s", len(report.failed),
                    dest.parent / FAILURES_FILE)
    return report


# --------------------------------------------------------------------------- the batch


def _unique_items(items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Checked keys, first URL per key: a key is a file name, so it names one image."""
    seen: dict[str, str] = {}
    for key, url in items:
        _check_key(key)
        seen.setdefault(key, url)
    return list(seen.items())


def _check_key(key: str) -> None:
    # a leading dot also covers "." and ".."; hidden names are where temporaries live
    if not key or key.startswith(".") or any(c in key for c in "/\\\0"):
        raise DownloadError(f"image key {key!r} is not a safe file name (no path separators, "
                            "no leading dot)")


def _remove_stale_temporaries(dest: Path) -> None:
    """A killed run can leave atomic-write temporaries; they must not be published."""
    for path in dest.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _fetch_all(pending: list[tuple[str, str]], settings: _Settings,
               workers: int) -> tuple[int, list[tuple[str, str, str]]]:
    fetched, failed = 0, []
    if not pending:
        return fetched, failed
    with _session(workers) as session, ThreadPoolExecutor(max_workers=workers) as pool:
        futures: dict[Future, tuple[str, str]] = {
            pool.submit(_fetch_one, key, url, settings, session): (key, url)
            for key, url in pending}
        try:
            for done, future in enumerate(as_completed(futures), 1):
                key, url = futures[future]
                try:
                    future.result()
                    fetched += 1
                except _Failure as exc:
                    failed.append((key, url, str(exc)))
                if done % _LOG_EVERY == 0:
                    log.info("%d/%d images done", done, len(pending))
        except BaseException:
            # an unexpected error (disk full...) or Ctrl-C: do not work through the queue first
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return fetched, sorted(failed)


def _session(workers: int) -> requests.Session:
    """One session for all threads (connection reuse); its pool holds one per worker."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=workers, pool_maxsize=workers)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"marseval/{__version__} (image fetcher)"
    return session


def _write_failures(path: Path, failed: list[tuple[str, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows(failed)
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------- one image


def _is_remote(url: str) -> bool:
    return bool(urlsplit(url).scheme)


def _fetch_one(key: str, url: str, settings: _Settings, session: requests.Session) -> None:
    if _is_remote(url):
        data, content_type = _download(session, url, settings)
    else:
        data, content_type = _read_local(url, settings), ""
    image_format = _verify(data)
    suffix = _suffix(content_type, url, image_format)
    atomic_write_bytes(settings.dest / f"{key}{suffix}", data)


def _read_local(url: str, settings: _Settings) -> bytes:
    base = settings.base.resolve()
    path = (base / unquote(url)).resolve()
    if not path.is_relative_to(base):
        raise _Failure(f"relative URL points outside {base}")
    if not path.is_file():
        raise _Failure(f"no file {path}")
    return path.read_bytes()


def _download(session: requests.Session, url: str, settings: _Settings) -> tuple[bytes, str]:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise _Failure(f"unsupported URL scheme {scheme!r}")
    for attempt in range(settings.retries + 1):
        try:
            return _get(session, url, settings)
        except RetryableError as exc:
            if attempt == settings.retries:
                raise _Failure(f"{exc} (gave up after {attempt + 1} attempts)") from None
            delay = min(settings.backoff * 2 ** attempt, _MAX_BACKOFF_S)
            log.debug("%s; retrying in %.1fs", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _get(session: requests.Session, url: str, settings: _Settings) -> tuple[bytes, str]:
    """One GET: the body and its Content-Type; RetryableError for what may pass."""
    try:
        with session.get(url, stream=True, timeout=settings.timeout) as resp:
            status = resp.status_code
            if status in RETRY_STATUS or status >= 500:
                raise RetryableError(f"HTTP {status}")
            if status >= 400:
                raise _Failure(f"HTTP {status} {resp.reason}".strip())
            body = bytearray()
            for chunk in resp.iter_content(_CHUNK_SIZE):
                body += chunk
            return bytes(body), resp.headers.get("Content-Type", "")
    except TRANSIENT_ERRORS as exc:
        # connection resets, timeouts, truncated bodies
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc


def _verify(data: bytes) -> str:
    """PIL's name for the format of `data`; a failure when it does not decode as an image
    or has more than MAX_PIXELS pixels."""
    try:
        with open_image(data) as image:
            image_format = image.format or ""
            image.verify()
    except TooManyPixels as exc:
        raise _Failure(str(exc)) from None
    except Exception:  # PIL raises many types (and SyntaxError) for non-images
        raise _Failure("not an image") from None
    return image_format


def _suffix(content_type: str, url: str, image_format: str) -> str:
    """From the Content-Type, else the URL's path, else what PIL decoded."""
    mime = content_type.split(";")[0].strip().lower()
    if mime in SUFFIX_BY_TYPE:
        return SUFFIX_BY_TYPE[mime]
    suffix = PurePosixPath(unquote(urlsplit(url).path)).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix
    if image_format in SUFFIX_BY_FORMAT:
        return SUFFIX_BY_FORMAT[image_format]
    raise _Failure(f"unsupported image format {image_format or 'unknown'}")


# --------------------------------------------------------------------------- img2dataset's resizer


class TooManyPixels(ValueError):
    """An image above MAX_PIXELS: absurd for a photograph, and more than OpenCV decodes."""


_PIL_LIMIT_LOCK = threading.Lock()
_DBL_EPSILON = 2.220446049250313e-16
_FLT_EPSILON = np.float32(1.1920929e-07)
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: 8-bit resizing in fixed point
_S45 = 0.70710678118654752440084436210485
_LANCZOS_CS = ((1, 0), (-_S45, -_S45), (0, 1), (_S45, -_S45), (-1, 0), (_S45, _S45), (0, -1),
               (-_S45, _S45))
# PIL modes read as OpenCV reads them (IMREAD_UNCHANGED); the rest is converted to RGB
_KEPT_MODES = ("L", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I", "F")


@contextlib.contextmanager
def open_image(data: bytes, limit: int | None = None) -> Iterator[Image.Image]:
    """`data` opened by PIL (header read) without PIL's decompression-bomb limit, which
    rejects legitimate large images; TooManyPixels above `limit` (default MAX_PIXELS)."""
    limit = MAX_PIXELS if limit is None else limit
    with _PIL_LIMIT_LOCK:  # PIL's limit is a global: lifted only while one thread opens
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        width, height = image.size
        if width * height > limit:
            raise TooManyPixels(f"{width}x{height} = {width * height:,} pixels, above the "
                                f"limit of {limit:,}")
        yield image


def decode_unchanged(data: bytes) -> np.ndarray:
    """8-bit pixels as img2dataset has them before resizing: cv2.imdecode(IMREAD_UNCHANGED)
    (no EXIF rotation; palettes expanded, with alpha where they have transparency), an alpha
    channel matted onto white with img2dataset's formula. (h, w) for grey, else (h, w, 3) in
    RGB order (OpenCV's BGR changes nothing here: no step mixes channels). Deeper pixels
    (16-bit, float) are saturated to 0..255 first: OpenCV's JPEG encoder saturates them at the
    end, so only pixels resampled across the 255 boundary can differ."""
    with open_image(data) as image:
        image.load()
        mode = image.mode
        if mode in ("P", "PA"):
            alpha = mode == "PA" or "transparency" in image.info
            pixels = np.asarray(image.convert("RGBA" if alpha else "RGB"))
        elif mode in ("1", "LA"):
            pixels = np.asarray(image.convert("L" if mode == "1" else "RGBA"))
        else:
            pixels = np.asarray(image if mode in _KEPT_MODES else image.convert("RGB"))
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels.astype(np.float64)), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        alpha = pixels[:, :, 3, np.newaxis]
        matted = alpha / 255 * pixels[..., :3] + 255 - alpha
        pixels = np.rint(matted.clip(min=0, max=255)).astype(np.uint8)
    return pixels


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of albumentations' CenterCrop(size, size)."""
    y0, x0 = (height - size) // 2, (width - size) // 2
    return x0, y0, x0 + size, y0 + size


def resize_shorter_side(pixels: np.ndarray, size: int) -> np.ndarray:
    """albumentations' SmallestMaxSize(size) with img2dataset's interpolations: INTER_AREA
    when the shorter side shrinks, INTER_LANCZOS4 when it grows, untouched when it is `size`."""
    height, width = pixels.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return pixels
    resize = _resize_area if min(height, width) > size else _resize_lanczos4
    return resize(pixels, new_h, new_w)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG as cv2.imencode('.jpg', quality) writes it (libjpeg, 4:2:0, no optimisation)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def img2dataset_center_crop(data: bytes, size: int) -> tuple[bytes, tuple[int, int]]:
    """The image in `data` as `img2dataset --image_size size --resize_mode center_crop` stores
    it: a size x size JPEG of quality 95; with the original (width, height). TooManyPixels,
    or another exception for what does not decode."""
    pixels = decode_unchanged(data)
    height, width = pixels.shape[:2]
    resized = resize_shorter_side(pixels, size)
    x0, y0, x1, y1 = center_crop_box(*resized.shape[:2], size)
    return encode_jpeg(resized[y0:y1, x0:x1]), (width, height)


def _resize_area(pixels: np.ndarray, dst_h: int, dst_w: int) -> np.ndarray:
    """cv2.resize(INTER_AREA) of 8-bit pixels, both sides shrinking."""
    src_h, src_w = pixels.shape[:2]
    image = pixels.reshape(src_h, src_w, -1)
    scale_x, scale_y = 1.0 / (dst_w / src_w), 1.0 / (dst_h / src_h)  # as OpenCV computes
    int_x, int_y = round(scale_x), round(scale_y)
    if abs(scale_x - int_x) < _DBL_EPSILON and abs(scale_y - int_y) < _DBL_EPSILON:
        out = _area_fast(image, dst_h, dst_w, int_y, int_x)
    else:
        idx_x, alpha_x = _area_table(src_w, dst_w, scale_x)
        rows = np.zeros((src_h, dst_w, image.shape[2]), np.float32)
        for tap in range(idx_x.shape[1]):  # in OpenCV's float32 accumulation order
            rows += image[:, idx_x[:, tap], :] * alpha_x[None, :, tap, None]
        idx_y, alpha_y = _area_table(src_h, dst_h, scale_y)
        out = np.zeros((dst_h, dst_w, image.shape[2]), np.float32)
        for tap in range(idx_y.shape[1]):
            out += rows[idx_y[:, tap]] * alpha_y[:, tap, None, None]
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.reshape(dst_h, dst_w, *pixels.shape[2:])


def _area_fast(image: np.ndarray, dst_h: int, dst_w: int, int_y: int,
               int_x: int) -> np.ndarray:
    """OpenCV's integer-factor area path: block sums, rounded up at halves for 2x2."""
    cn = image.shape[2]
    sums = image.reshape(dst_h, int_y, dst_w, int_x, cn).sum(axis=(1, 3), dtype=np.int64)
    if int_x == int_y == 2 and cn in (1, 3, 4):
        out = (sums + 2) >> 2
    else:
        out = np.rint(sums.astype(np.float32) * (np.float32(1) / np.float32(int_x * int_y)))
    return np.clip(out, 0, 255).astype(np.uint8)


def _area_table(src: int, dst: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's computeResizeAreaTab: the source pixels of each output pixel and their
    float32 weights (overlap / cell width); rows padded with zero weights."""
    taps: list[list[tuple[int, float]]] = []
    for d in range(dst):
        fs1 = d * scale
        fs2 = fs1 + scale
        cell = min(scale, src - fs1)
        s2 = min(math.floor(fs2), src - 1)
        s1 = min(math.ceil(fs1), s2)
        row = [(s1 - 1, (s1 - fs1) / cell)] if s1 - fs1 > 1e-3 else []
        row += [(s, 1.0 / cell) for s in range(s1, s2)]
        if fs2 - s2 > 1e-3:
            row.append((s2, min(min(fs2 - s2, 1.0), cell) / cell))
        taps.append(row)
    width = max(len(row) for row in taps)
    idx = np.zeros((dst, width), np.int64)
    alpha = np.zeros((dst, width), np.float32)
    for d, row in enumerate(taps):
        idx[d, :len(row)] = [s for s, _ in row]
        alpha[d, :len(row)] = [a for _, a in row]
    return idx, alpha


def _resize_lanczos4(pixels: np.ndarray, dst_h: int, dst_w: int) -> np.ndarray:
    """cv2.resize(INTER_LANCZOS4) of 8-bit pixels: 8x8 taps, replicated borders, 11-bit
    fixed-point weights, exact integer sums, rounded once at the end."""
    src_h, src_w = pixels.shape[:2]
    image = pixels.reshape(src_h, src_w, -1)
    idx_x, coef_x = _lanczos4_table(src_w, dst_w)
    idx_y, coef_y = _lanczos4_table(src_h, dst_h)
    rows = np.zeros((src_h, dst_w, image.shape[2]), np.int64)
    for tap in range(8):
        rows += image[:, idx_x[:, tap], :].astype(np.int64) * coef_x[None, :, tap, None]
    out = np.zeros((dst_h, dst_w, image.shape[2]), np.int64)
    for tap in range(8):
        out += rows[idx_y[:, tap]] * coef_y[:, tap, None, None]
    shift = 2 * _COEF_BITS
    out = np.clip((out + (1 << (shift - 1))) >> shift, 0, 255).astype(np.uint8)
    return out.reshape(dst_h, dst_w, *pixels.shape[2:])


def _lanczos4_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (clamped) and fixed-point weights of each output pixel, in OpenCV's
    float32 arithmetic (resizeGeneric and interpolateLanczos4)."""
    scale = 1.0 / (dst / src)
    idx = np.zeros((dst, 8), np.int64)
    coef = np.zeros((dst, 8), np.int64)
    for d in range(dst):
        f = np.float32((d + 0.5) * scale - 0.5)
        start = math.floor(f)
        coef[d] = _lanczos4_weights(np.float32(f - np.float32(start)))
        idx[d] = np.clip(np.arange(start - 3, start + 5), 0, src - 1)
    return idx, coef


def _lanczos4_weights(x: np.float32) -> list[int]:
    if x < _FLT_EPSILON:
        weights = [np.float32(0)] * 8
        weights[3] = np.float32(1)
    else:
        x3 = np.float32(x + np.float32(3))
        y0 = -float(x3) * math.pi * 0.25
        s0, c0 = math.sin(y0), math.cos(y0)
        weights, total = [], np.float32(0)
        for i, (cs_sin, cs_cos) in enumerate(_LANCZOS_CS):
            y = -float(np.float32(x3 - np.float32(i))) * math.pi * 0.25
            weights.append(np.float32((cs_sin * s0 + cs_cos * c0) / (y * y)))
            total = np.float32(total + weights[-1])
        inverse = np.float32(np.float32(1) / total)
        weights = [np.float32(w * inverse) for w in weights]
    one = np.float32(1 << _COEF_BITS)
    return [int(np.clip(np.rint(np.float32(w * one)), -32768, 32767)) for w in weights]
