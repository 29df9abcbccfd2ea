"""Robust, resumable downloads of Zenodo records (and plain URLs).

Everything here is written for unattended workflow runs: partial downloads are
kept as ``<name>.part`` and resumed, every file is checksum-verified before it
becomes visible under its final name, and archives are extracted only if no
member could escape the target directory.

Set ``MARSEVAL_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) to forbid network access.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import requests
import urllib3.exceptions

from marseval.atomic import atomic_write_json
from marseval.errors import MarsevalError

__all__ = [
    "DownloadError",
    "download_zenodo_record",
    "fetch_file",
    "safe_extract",
    "zenodo_record_files",
]

logger = logging.getLogger(__name__)

ZENODO_API = "https://zenodo.org/api"
COMPLETION_MARKER = ".download_complete.json"
OFFLINE_ENV_VARS = ("MARSEVAL_OFFLINE", "HF_HUB_OFFLINE")

_CHUNK_SIZE = 1 << 20
_SUPPORTED_ALGOS = ("md5", "sha1", "sha256", "sha512")
# Status codes worth retrying: server-side hiccups and rate limiting.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_ZIP_SUFFIXES = (".zip",)
TRANSIENT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)
# The "data" filter (Python >= 3.11.4) re-checks every member as a second guard.
_TAR_EXTRACT_KWARGS: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_TAR_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
)
# What a truncated or corrupt archive raises while being read.
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
)
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(MarsevalError):
    """Raised when a download, verification or extraction fails."""


class RetryableError(Exception):
    """Internal: a transient failure that warrants another attempt."""


class _IncompleteRange(Exception):
    """Internal: a 206 response covered less than asked; request the rest."""


# --------------------------------------------------------------------------- helpers


def offline_var() -> str | None:
    """The environment variable that forbids network access, if one is set."""
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return var
    return None


def require_online(what: str) -> None:
    var = offline_var()
    if var is not None:
        raise DownloadError(f"downloads are disabled ({var} is set); cannot fetch {what}")


def _parse_checksum(checksum: str, context: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` into ``("md5", "<hex>")``."""
    algo, sep, digest = checksum.strip().partition(":")
    if not sep:
        # Zenodo's deposit API returns bare md5 hex digests.
        algo, digest = "md5", checksum.strip()
    algo, digest = algo.lower(), digest.lower()
    if algo not in _SUPPORTED_ALGOS or not re.fullmatch(r"[0-9a-f]+", digest):
        raise DownloadError(f"unsupported or malformed checksum {checksum!r} for {context}")
    if len(digest) != hashlib.new(algo).digest_size * 2:
        raise DownloadError(f"checksum {checksum!r} for {context} has the wrong length for {algo}")
    return algo, digest


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK_SIZE), b""):
            h.update(block)
    return h.hexdigest()


def _content_range(resp: requests.Response) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _download_once(session: requests.Session, url: str, part: Path, timeout: float) -> bool:
    """Run one HTTP request that extends ``part`` to the full file.

    Returns True if the final content was assembled from more than one request
    (i.e. resumed), which makes a checksum mismatch potentially our fault.
    Raises RetryableError for transient failures; the bytes received so far
    stay in ``part`` so the next attempt can resume from there.
    """
    offset = part.stat().st_size if part.exists() else 0
    # identity encoding: byte ranges and Content-Length must refer to the raw file.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            status = resp.status_code
            if status == 416 and offset:
                cr = resp.headers.get("Content-Range", "")
                m = re.match(r"bytes\s+\*/(\d+)", cr)
                if m and int(m.group(1)) != offset:
                    # The .part is longer than the remote file: it is garbage.
                    logger.warning(
                        "discarding stale %s (%d bytes > remote %s)", part, offset, m.group(1)
                    )
                    part.unlink(missing_ok=True)
                    raise RetryableError(f"stale partial file for {url}")
                logger.info("%s: partial file already complete (%d bytes)", url, offset)
                return True
            if status in RETRY_STATUS or status >= 500:
                raise RetryableError(f"HTTP {status} from {url}")
            if status >= 400:
                raise DownloadError(f"HTTP {status} {resp.reason} while downloading {url}")

            resumed = False
            mode = "wb"
            total = None
            if status == 206 and offset:
                rng = _content_range(resp)
                if rng is None or rng[0] != offset:
                    # Server answered a different range than asked; cannot append safely.
                    logger.warning(
                        "%s: unexpected Content-Range %r, restarting",
                        url,
                        resp.headers.get("Content-Range"),
                    )
                    part.unlink(missing_ok=True)
                    raise RetryableError(f"unexpected Content-Range from {url}")
                mode, resumed, total = "ab", True, rng[2]
                logger.info("%s: resuming at byte %d", url, offset)
            elif offset:
                # 200 to a Range request: server ignores ranges, start over.
                logger.info("%s: server ignored Range header, restarting from zero", url)
                offset = 0
            elif status == 206:
                raise DownloadError(f"unexpected 206 response to a non-range request for {url}")

            expected_len = resp.headers.get("Content-Length")
            received = 0
            with open(part, mode) as fh:
                # Raw, undecoded reads: urllib3's decoding path buffers and would
                # drop the last bytes received before a connection drop, and any
                # Content-Encoding is part of what the checksum covers anyway.
                while chunk := resp.raw.read(_CHUNK_SIZE, decode_content=False):
                    fh.write(chunk)
                    received += len(chunk)
                # Durable before it can be renamed to its final name.
                fh.flush()
                os.fsync(fh.fileno())
            if expected_len is not None and received < int(expected_len):
                raise RetryableError(
                    f"short read from {url}: got {received} of {expected_len} bytes"
                )
            if total is not None and part.stat().st_size < total:
                if not received:
                    raise RetryableError(f"empty partial response from {url}")
                # Server sent a shorter range than requested; ask for the rest.
                raise _IncompleteRange(url)
            return resumed
    except TRANSIENT_ERRORS as exc:
        # Connection resets, timeouts and truncated bodies are all transient.
        raise RetryableError(f"{type(exc).__name__} while downloading {url}: {exc}") from exc


# --------------------------------------------------------------------------- fetch


def fetch_file(
    url: str,
    dest: Path,
    checksum: str | None = None,
    retries: int = 3,
    timeout: float = 60,
    backoff: float = 1.0,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming and verifying; return ``dest``.

    Data is streamed into ``dest.part`` and resumed with an HTTP Range request
    if that exists. ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"``.
    Transient failures are retried ``retries`` times with exponential backoff
    (``backoff * 2**k`` seconds). ``dest`` only appears once verified.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    algo_digest = _parse_checksum(checksum, url) if checksum else None

    if dest.exists():
        if algo_digest is None:
            # dest is only ever created by an atomic rename after a full download.
            logger.info("%s already exists (no checksum given), skipping download", dest)
            return dest
        if _hash_file(dest, algo_digest[0]) == algo_digest[1]:
            logger.info("%s already exists and matches %s, skipping download", dest, checksum)
            return dest
        logger.warning("%s exists but does not match %s; downloading again", dest, checksum)

    require_online(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    sess = session if session is not None else requests.Session()
    failures = 0
    restarted_after_mismatch = False
    try:
        while True:
            try:
                resumed = _download_once(sess, url, part, timeout)
            except _IncompleteRange:
                # Progress was made, so this does not use up a retry.
                continue
            except RetryableError as exc:
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"giving up on {url} -> {dest} after {failures} attempts: {exc}"
                    ) from exc
                delay = backoff * 2 ** (failures - 1)
                logger.warning(
                    "%s (attempt %d/%d); retrying in %.1fs", exc, failures, retries + 1, delay
                )
                time.sleep(delay)
                continue

            if algo_digest is not None:
                algo, expected = algo_digest
                actual = _hash_file(part, algo)
                if actual != expected:
                    part.unlink(missing_ok=True)
                    if resumed and not restarted_after_mismatch:
                        # The stale prefix may be the culprit: one clean retry.
                        restarted_after_mismatch = True
                        logger.warning(
                            "%s: %s mismatch after resumed download (expected %s, got %s); "
                            "retrying once from scratch",
                            dest.name,
                            algo,
                            expected,
                            actual,
                        )
                        continue
                    raise DownloadError(
                        f"checksum mismatch for {dest} (from {url}): "
                        f"expected {algo}:{expected}, got {algo}:{actual}"
                    )
            os.replace(part, dest)
            logger.info("downloaded %s -> %s", url, dest)
            return dest
    finally:
        if own_session:
            sess.close()


# --------------------------------------------------------------------------- zenodo


def zenodo_record_files(
    record_id: str,
    api_base: str = ZENODO_API,
    session: requests.Session | None = None,
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """List a Zenodo record's files as dicts with ``key``, ``url``, ``checksum``, ``size``."""
    url = f"{api_base.rstrip('/')}/records/{record_id}"
    require_online(f"Zenodo record {record_id} ({url})")
    sess = session if session is not None else requests.Session()
    try:
        resp = sess.get(url, timeout=timeout, headers={"Accept": "application/json"})
        if resp.status_code >= 400:
            raise DownloadError(
                f"HTTP {resp.status_code} fetching Zenodo record {record_id} from {url}"
            )
        payload = resp.json()
    # Before RequestException: requests' JSONDecodeError is both.
    except ValueError as exc:
        raise DownloadError(
            f"Zenodo record {record_id} ({url}) returned invalid JSON: {exc}"
        ) from exc
    except requests.RequestException as exc:
        raise DownloadError(f"could not fetch Zenodo record {record_id} from {url}: {exc}") from exc
    finally:
        if session is None:
            sess.close()

    try:
        return _parse_zenodo_files(payload, record_id)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DownloadError(
            f"malformed metadata for Zenodo record {record_id} ({url}): {exc!r}"
        ) from exc


def _parse_zenodo_files(payload: Any, record_id: str) -> list[dict[str, Any]]:
    files = payload["files"]
    # InvenioRDM-style records nest files as {"entries": {key: entry}}.
    if isinstance(files, dict):
        files = list(files["entries"].values())
    if not isinstance(files, list):
        raise TypeError(f"'files' is {type(files).__name__}, expected a list")
    out = []
    for entry in files:
        key = entry.get("key") or entry.get("filename")
        if not isinstance(key, str) or not key:
            raise ValueError(f"file entry without a name: {entry!r}")
        # The key becomes a local filename; refuse anything that is not a plain name.
        if key in {".", ".."} or "/" in key or "\\" in key:
            raise DownloadError(f"refusing unsafe file name {key!r} in Zenodo record {record_id}")
        links = entry.get("links") or {}
        link = links.get("self") or links.get("content") or links.get("download")
        if not isinstance(link, str) or not link:
            raise ValueError(f"no download link for {key!r}")
        raw_checksum = entry.get("checksum")
        checksum = None
        if raw_checksum:
            algo, digest = _parse_checksum(str(raw_checksum), f"{key} in Zenodo record {record_id}")
            checksum = f"{algo}:{digest}"
        size = entry.get("size", entry.get("filesize"))
        out.append(
            {
                "key": key,
                "url": link,
                "checksum": checksum,
                "size": int(size) if size is not None else None,
            }
        )
    return out


# --------------------------------------------------------------------------- extraction


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(_ZIP_SUFFIXES):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def _refuse(name: str, archive: Path, reason: str) -> DownloadError:
    return DownloadError(f"refusing to extract {name!r} from {archive}: {reason}")


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_member_name(name: str, archive: Path) -> None:
    parts = re.split(r"[\\/]+", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise _refuse(name, archive, "path escapes the target directory")


def _check_lands_inside(root: str, name: str, archive: Path) -> str:
    # realpath follows symlinks already extracted, catching writes through links.
    real = os.path.realpath(os.path.join(root, name))
    if not _within(root, real):
        raise _refuse(name, archive, "resolves outside the target directory")
    return real


def _extract_tar(archive: Path, root: str) -> list[str]:
    names: list[str] = []
    with tarfile.open(archive) as tf:
        for member in tf:
            name = member.name
            _check_member_name(name, archive)
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise _refuse(name, archive, "special files (devices, FIFOs) are not allowed")
            _check_lands_inside(root, name, archive)
            if member.issym():
                link = member.linkname
                if os.path.isabs(link) or link.startswith("\\"):
                    raise _refuse(name, archive, f"absolute symlink to {link!r}")
                link_target = os.path.join(os.path.dirname(os.path.join(root, name)), link)
                if not _within(root, os.path.realpath(link_target)):
                    raise _refuse(name, archive, f"symlink points outside ({link!r})")
            elif member.islnk():
                link = member.linkname
                if (
                    os.path.isabs(link)
                    or ".." in re.split(r"[\\/]+", link)
                    or not _within(root, os.path.realpath(os.path.join(root, link)))
                ):
                    raise _refuse(name, archive, f"hardlink points outside ({link!r})")
            try:
                tf.extract(member, root, **_TAR_EXTRACT_KWARGS)
            except _TAR_FILTER_ERRORS as exc:
                raise _refuse(name, archive, str(exc)) from exc
            if not member.isdir():
                names.append(name)
    return names


def _extract_zip(archive: Path, root: str) -> list[str]:
    names: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        # Zip entries are never links, so checking all names up front is sufficient.
        for info in infos:
            _check_member_name(info.filename, archive)
            _check_lands_inside(root, info.filename, archive)
        for info in infos:
            zf.extract(info, root)
            if not info.is_dir():
                names.append(info.filename)
    return names


def _merge_move(src: Path, dst: Path) -> None:
    src_is_dir = src.is_dir() and not src.is_symlink()
    dst_is_dir = dst.is_dir() and not dst.is_symlink()
    if src_is_dir and dst_is_dir:
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
        src.rmdir()
        return
    # Replace (never write through) whatever is in the way, e.g. a symlink in target.
    if dst_is_dir:
        shutil.rmtree(dst)
    elif src_is_dir and (dst.exists() or dst.is_symlink()):
        dst.unlink()
    os.replace(src, dst)


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract a zip/tar archive into ``target``; return the extracted non-directory paths.

    Members that would land outside ``target`` (absolute paths, ``..``, links
    pointing outside) cause a DownloadError and leave ``target`` untouched,
    because extraction happens in a temporary sibling directory first.
    """
    archive, target = Path(archive), Path(target)
    kind = _archive_kind(archive)
    if kind is None:
        raise DownloadError(f"unsupported archive type: {archive}")
    # abspath so that e.g. Path(".") still gets a sibling, not a child, as scratch dir.
    parent = Path(os.path.abspath(target)).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target.name or 'target'}.extract-", dir=parent)
    root = os.path.realpath(tmp)
    try:
        try:
            names = _extract_tar(archive, root) if kind == "tar" else _extract_zip(archive, root)
        except _ARCHIVE_ERRORS as exc:
            raise DownloadError(f"corrupt or unreadable archive {archive}: {exc}") from exc
        target.mkdir(parents=True, exist_ok=True)
        for child in Path(root).iterdir():
            _merge_move(child, target / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %d files from %s into %s", len(names), archive, target)
    seen: dict[str, None] = dict.fromkeys(os.path.normpath(n) for n in names)
    return [target / n for n in seen]


# --------------------------------------------------------------------------- record


def _link_or_copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # Hardlink: large non-archive files should not take twice the disk space.
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _marker_satisfies(marker: Path, record_id: str, files: list[str] | None, extract: bool) -> bool:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or str(data.get("record_id")) != str(record_id):
        return False
    if data.get("extract") != extract:
        return False
    done = {f.get("key") for f in data.get("files", []) if isinstance(f, dict)}
    if files is None:
        return data.get("requested") is None
    return set(files) <= done


def download_zenodo_record(
    record_id: str,
    dest: Path,
    api_base: str = ZENODO_API,
    files: list[str] | None = None,
    extract: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download (and extract) the files of a Zenodo record into ``dest``; return ``dest``.

    Raw downloads are cached in ``dest/_downloads``; archives are extracted into
    ``dest`` and other files copied there. ``dest/.download_complete.json`` is
    written last, so its presence means the record is complete; if it already
    covers the requested files, nothing is downloaded again.
    """
    dest = Path(dest)
    marker = dest / COMPLETION_MARKER
    if marker.exists() and _marker_satisfies(marker, record_id, files, extract):
        logger.info("Zenodo record %s already complete in %s", record_id, dest)
        return dest
    require_online(f"Zenodo record {record_id}")

    with requests.Session() as session:
        entries = zenodo_record_files(record_id, api_base=api_base, session=session)
        if files is not None:
            by_key = {e["key"]: e for e in entries}
            missing = [f for f in files if f not in by_key]
            if missing:
                raise DownloadError(
                    f"Zenodo record {record_id} has no file(s) {missing}; "
                    f"available: {sorted(by_key)}"
                )
            entries = [by_key[f] for f in files]
        if not entries:
            raise DownloadError(f"Zenodo record {record_id} lists no files to download")

        downloads = dest / "_downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        done = []
        for entry in entries:
            local = fetch_file(
                entry["url"],
                downloads / entry["key"],
                checksum=entry["checksum"],
                retries=retries,
                backoff=backoff,
                session=session,
            )
            is_archive = extract and _archive_kind(local) is not None
            if is_archive:
                safe_extract(local, dest)
            else:
                _link_or_copy_atomic(local, dest / entry["key"])
            done.append({**entry, "extracted": is_archive})

    atomic_write_json(
        marker,
        {
            "record_id": str(record_id),
            "api_base": api_base,
            "requested": files,
            "extract": extract,
            "files": done,
        },
    )
    logger.info("Zenodo record %s complete in %s", record_id, dest)
    return dest
