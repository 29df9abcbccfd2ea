"""Fetch the images of an image-text dataset whose rows only name them by URL (Mars-VL-Pairs).

The reference pipeline runs img2dataset over the URLs and, like any crawl, loses dead links;
here each image is kept as `<dest>/<key><suffix>` in its original encoding, checked to decode.
A rerun skips images already there, so an interrupted fetch resumes. What could not be fetched
is listed in `<dest>/../fetch_failures.csv` (key, url, reason), rewritten on every run, which
the standardizer reads to drop those pairs instead of calling the raw folder broken.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

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

__all__ = ["FAILURES_FILE", "IMAGE_SUFFIXES", "FetchReport", "fetch_images", "find_image",
           "read_failures"]

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
    max_bytes: int
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
                 retries: int = 3, timeout: float = 30, workers: int = 8,
                 max_bytes: int = 50_000_000, backoff: float = 1.0) -> FetchReport:
    """Save each (key, url) image as `dest/<key><suffix>`; return what happened.

    Relative URLs name files under `base` (default: `dest.parent`, the raw dataset folder)
    and are copied. Transient HTTP failures are retried `retries` times with exponential
    backoff; anything else that goes wrong with one image lands in the failure list.
    """
    dest = Path(dest)
    settings = _Settings(dest, Path(base) if base is not None else dest.parent, retries,
                         timeout, max_bytes, backoff)
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
    if path.stat().st_size > settings.max_bytes:
        raise _Failure(f"larger than {settings.max_bytes} bytes")
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
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > settings.max_bytes:
                raise _Failure(f"larger than {settings.max_bytes} bytes ({declared})")
            body = bytearray()
            for chunk in resp.iter_content(_CHUNK_SIZE):
                body += chunk
                if len(body) > settings.max_bytes:  # no or a wrong Content-Length
                    raise _Failure(f"larger than {settings.max_bytes} bytes")
            return bytes(body), resp.headers.get("Content-Type", "")
    except TRANSIENT_ERRORS as exc:
        # connection resets, timeouts, truncated bodies
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc


def _verify(data: bytes) -> str:
    """PIL's name for the format of `data`; a failure when it does not decode as an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
            image.verify()
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
