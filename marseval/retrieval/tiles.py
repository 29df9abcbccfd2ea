"""Geo-localization tiles: where a retrieved cell stands, and the global cell grid.

The database cells come from the CTX chain (marseval.retrieval.ctx). A retrieved cell stands
for its centre, or for its south-west corner (`convention="sw_corner"`), the point the
MarsRetrieval reference names and scores its tiles by. `tile_grid` is the global grid of
`delta`-degree cells indexed by integers (no floating-point accumulation), so a cell's bounds
round-trip exactly: `cell_of(cell centre)` gives the cell back.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

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
