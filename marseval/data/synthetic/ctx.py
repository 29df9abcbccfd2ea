"""Fake CTX V01 tiles: the synthetic planet served as Murray Lab serves the CTX mosaic.

Each 4-degree tile is the synthetic global mosaic warped (bilinear) into the CTX mosaic's
projection, an equirectangular grid in metres on the Mars sphere (the reference transforms
the tile corners from `+proj=longlat +a=3396190 +b=3396190`), `pixels` square, 8-bit, and
packed as Murray Lab packs it: `MurrayLab_GlobalCTXMosaic_V01_<key>.zip` holding
`MurrayLab_GlobalCTXMosaic_V01_<key>/MurrayLab_CTX_V01_<key>_Mosaic.tif` beside other files.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from marseval.retrieval.ctx.catalog import MARS_LONLAT, CtxTile

MARS_RADIUS_M = 3396190.0
CTX_CRS = (f"+proj=eqc +lat_ts=0 +lat_0=0 +lon_0=0 +x_0=0 +y_0=0 +a={MARS_RADIUS_M:.0f} "
           f"+b={MARS_RADIUS_M:.0f} +units=m +no_defs")


def ctx_bounds_m(tile: CtxTile) -> tuple[float, float, float, float]:
    """The tile's bounds in the CTX projection (metres east and north of lon 0, lat 0)."""
    scale = math.pi / 180 * MARS_RADIUS_M
    lon0, lat0, lon1, lat1 = tile.bounds
    return lon0 * scale, lat0 * scale, lon1 * scale, lat1 * scale


def fake_tile(mosaic: np.ndarray, tile: CtxTile, pixels: int) -> bytes:
    """The GeoTIFF bytes of one tile cut from a global lon/lat mosaic (height x width)."""
    from rasterio.enums import Resampling
    from rasterio.io import MemoryFile
    from rasterio.transform import from_bounds
    from rasterio.warp import reproject

    height, width = mosaic.shape
    out = np.zeros((pixels, pixels), np.uint8)
    transform = from_bounds(*ctx_bounds_m(tile), pixels, pixels)
    reproject(mosaic, out, src_transform=from_bounds(-180, -90, 180, 90, width, height),
              src_crs=MARS_LONLAT, dst_transform=transform, dst_crs=CTX_CRS,
              resampling=Resampling.bilinear)
    profile = {"driver": "GTiff", "width": pixels, "height": pixels, "count": 1,
               "dtype": "uint8", "crs": CTX_CRS, "transform": transform}
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(out[np.newaxis])
        return memory.read()


def write_ctx_archives(mosaic: np.ndarray, tiles: list[CtxTile], dest: Path,
                       pixels: int) -> None:
    """One Murray Lab style zip per tile in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for tile in tiles:
        with zipfile.ZipFile(dest / tile.archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{tile.folder}/{tile.tif}", fake_tile(mosaic, tile, pixels))
            zf.writestr(f"{tile.folder}/{tile.key}_README.txt",
                        "synthetic CTX tile written by marseval (not Murray Lab data)\n")
