"""Geo-localization tiles: a global mosaic cut into cells of `delta` degrees.

The paper cuts the CTX global mosaic into 0.2-degree cells between latitudes -80 and 80, each
resampled to 512 px. Cells are indexed by integers (no floating-point accumulation), so a cell's
bounds round-trip exactly: `cell_of(tile centre)` gives the tile back. A tile's predicted
location is its centre; the MarsRetrieval reference code names tiles by their south-west
corner and scores that corner, available as `convention="sw_corner"`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from marseval.errors import MarsevalError

CONVENTIONS = ("centre", "sw_corner")


def _count(span: float, delta: float) -> int:
    n = span / delta
    if abs(n - round(n)) > 1e-9:
        raise MarsevalError(f"tile size {delta} degrees does not divide {span} degrees evenly")
    return round(n)


def tile_grid(delta: float, max_abs_lat: float) -> pd.DataFrame:
    """One row per cell: id, lon_min, lat_min, lon_max, lat_max, row, col (row 0 = south)."""
    if delta <= 0 or not 0 < max_abs_lat <= 90:
        raise MarsevalError(f"tile grid needs delta > 0 and 0 < max_abs_lat <= 90 "
                            f"(got {delta}, {max_abs_lat})")
    n_lon, n_lat = _count(360.0, delta), _count(2 * max_abs_lat, delta)
    row, col = np.divmod(np.arange(n_lat * n_lon), n_lon)
    lon_min, lat_min = -180.0 + col * delta, -max_abs_lat + row * delta
    ids = [f"tile_r{r:05d}_c{c:05d}" for r, c in zip(row, col, strict=True)]
    return pd.DataFrame({"id": ids, "lon_min": lon_min, "lat_min": lat_min,
                         "lon_max": lon_min + delta, "lat_max": lat_min + delta,
                         "row": row, "col": col})


def tile_locations(tiles: pd.DataFrame, convention: str = "centre") -> np.ndarray:
    """(N, 2) lon/lat each tile stands for when it is retrieved."""
    if convention == "centre":
        return np.stack([(tiles.lon_min + tiles.lon_max) / 2,
                         (tiles.lat_min + tiles.lat_max) / 2], axis=1).astype(np.float64)
    if convention == "sw_corner":
        return tiles[["lon_min", "lat_min"]].to_numpy(np.float64)
    raise MarsevalError(f"unknown tile location convention {convention!r}; use {CONVENTIONS}")


def cell_of(lon: float, lat: float, delta: float, max_abs_lat: float) -> tuple[int, int]:
    """(row, col) of the cell holding a point (west and south edges inclusive)."""
    return (math.floor((lat + max_abs_lat) / delta + 1e-9),
            math.floor((lon + 180.0) / delta + 1e-9))


class Mosaic:
    """A global mosaic GeoTIFF read tile by tile (windows, so the file never loads whole)."""

    def __init__(self, path: Path) -> None:
        import rasterio

        self.path = Path(path)
        try:
            self._src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise MarsevalError(f"mosaic {self.path}: unreadable ({exc})") from None
        if self._src.count not in (1, 3):
            raise MarsevalError(f"mosaic {self.path}: {self._src.count} bands; expected 1 "
                                "(greyscale, as CTX) or 3")
        self._to_mosaic = self._lonlat_transformer()

    def _lonlat_transformer(self):
        """Lon/lat bounds -> the mosaic's CRS; identity for a lon/lat mosaic."""
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds

        crs = self._src.crs
        if crs is None or crs.is_geographic:
            return None
        params = crs.to_dict()
        radius = params.get("R") or params.get("a")
        if radius is None:
            raise MarsevalError(f"mosaic {self.path}: projected CRS {crs} names no sphere "
                                "radius; cannot place lon/lat tiles on it")
        minor = params.get("b", radius)
        lonlat = CRS.from_proj4(f"+proj=longlat +a={radius} +b={minor} +no_defs")
        return lambda b: transform_bounds(lonlat, crs, *b)

    def read(self, bounds: tuple[float, float, float, float], pixels: int) -> Image.Image:
        """The cell (lon_min, lat_min, lon_max, lat_max) resampled to pixels x pixels."""
        from rasterio.enums import Resampling
        from rasterio.windows import from_bounds

        if self._to_mosaic is not None:
            bounds = self._to_mosaic(bounds)
        window = from_bounds(*bounds, transform=self._src.transform)
        data = self._src.read(window=window, out_shape=(self._src.count, pixels, pixels),
                              boundless=True, fill_value=0, resampling=Resampling.bilinear)
        if data.dtype != np.uint8:
            data = _to_uint8(data)
        return Image.fromarray(data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1))

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> Mosaic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_uint8(data: np.ndarray) -> np.ndarray:
    """16-bit or float mosaics: stretch each tile's 1-99 percentile range to 0..255."""
    low, high = np.percentile(data, [1, 99])
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((data - low) * scale, 0, 255).astype(np.uint8)
