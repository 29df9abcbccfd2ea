"""Download one group of CTX tiles: archives fetched, mosaic GeoTIFFs extracted and verified.

Murray Lab serves each tile as a zip of about 2 GB holding a 47,420 x 47,420 8-bit GeoTIFF
(plus seam maps the workflow does not use). No checksums are published, so a tile is trusted
when its download has the length the server announced (resumable `.part` files, retried),
every member byte passes the zip's CRC-32 on extraction and GDAL opens the GeoTIFF with a
CRS. The group folder is staged beside its target and renamed when complete: an interrupted
job resumes from the finished tiles and partial archives; a corrupt archive is deleted,
fetched once more and, corrupt again, named in the error (the next run fetches it anew).
`source` is Murray Lab's URL, or a local folder of the same archives (the synthetic mosaic).
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from marseval.atomic import atomic_write_json
from marseval.data.download import DownloadError, fetch_file
from marseval.errors import MarsevalError
from marseval.retrieval.ctx.catalog import CtxTile
from marseval.retrieval.ctx.vrt import write_vrt

log = logging.getLogger(__name__)
GROUP_VRT, GROUP_MANIFEST = "mosaic.vrt", "tiles.json"
_COPY_CHUNK = 16 << 20


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _fetch_archive(tile: CtxTile, source: str, dest: Path, retries: int, timeout: float) -> None:
    if _is_url(source):
        fetch_file(source.rstrip("/") + "/" + tile.archive, dest, retries=retries,
                   timeout=timeout)
        return
    origin = Path(source) / tile.archive
    if not origin.is_file():
        raise MarsevalError(f"CTX tile archive {origin} does not exist")
    shutil.copyfile(origin, dest)


def _extract_mosaic(archive: Path, tile: CtxTile, dest: Path) -> None:
    """Copy the tile's `_Mosaic.tif` out of the zip; the CRC-32 check covers every byte."""
    part = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == tile.tif]
        if not members:
            raise MarsevalError(f"CTX tile archive {archive}: no {tile.tif} inside "
                                f"(has {zf.namelist()[:5]})")
        with zf.open(members[0]) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
    os.replace(part, dest)


def _verify(path: Path) -> dict:
    import rasterio

    try:
        with rasterio.open(path) as src:
            crs, shape, bands = src.crs, (src.height, src.width), src.count
    except rasterio.errors.RasterioIOError as exc:
        raise MarsevalError(f"CTX tile {path}: unreadable GeoTIFF ({exc})") from None
    if crs is None:
        raise MarsevalError(f"CTX tile {path}: has no CRS; cells cannot be placed on Mars")
    return {"height": shape[0], "width": shape[1], "bands": bands, "bytes": path.stat().st_size}


def fetch_tile(tile: CtxTile, source: str, staging: Path, retries: int = 5,
               timeout: float = 120) -> dict:
    """One tile's GeoTIFF in `staging` (kept from an earlier run once verified)."""
    tif = staging / tile.tif
    if tif.is_file():
        return {"tile": tile.key, **_verify(tif)}
    archive = staging / tile.archive
    for attempt in (1, 2):
        if not archive.is_file():
            _fetch_archive(tile, source, archive, retries, timeout)
        try:
            _extract_mosaic(archive, tile, tif)
            break
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            archive.unlink(missing_ok=True)  # the next attempt, or the next run, fetches anew
            tif.with_name(tif.name + ".part").unlink(missing_ok=True)
            if attempt == 2:
                raise MarsevalError(f"CTX tile archive {tile.archive} from {source} is corrupt "
                                    f"twice ({exc}); deleted, the next run fetches it "
                                    "again") from None
            log.warning("%s: corrupt archive (%s); fetching it again", tile.archive, exc)
    archive.unlink()  # ~2 GB each: the GeoTIFF is what the cells are cut from
    return {"tile": tile.key, **_verify(tif)}


def fetch_group(tiles: list[CtxTile], source: str, out: Path, *, workers: int = 4,
                retries: int = 5, timeout: float = 120) -> dict:
    """The group folder `out`: every tile's GeoTIFF, a VRT over them and a manifest."""
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max(1, min(workers, len(tiles)))) as pool:
            found = list(pool.map(lambda t: fetch_tile(t, source, staging, retries, timeout),
                                  tiles))
    except DownloadError as exc:
        raise MarsevalError(f"CTX tiles for {out}: {exc}") from None
    write_vrt([staging / t.tif for t in tiles], staging / GROUP_VRT)
    manifest = {"source": source, "tiles": found}
    atomic_write_json(staging / GROUP_MANIFEST, manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    log.info("%s: %d CTX tiles, %.1f GB", out, len(found),
             sum(t["bytes"] for t in found) / 1e9)
    return manifest
