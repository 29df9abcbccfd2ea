"""A global lon/lat grid of `delta`-degree cells, for tests that need a database of known
cells (the workflow's database is cut from the CTX mosaic: marseval.retrieval.ctx).

Cells are indexed by integers (no floating-point accumulation), so a cell's bounds round-trip
exactly: `cell_of(cell centre)` gives the cell back.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from marseval.errors import MarsevalError


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


def cell_of(lon: float, lat: float, delta: float, max_abs_lat: float) -> tuple[int, int]:
    """(row, col) of the cell holding a point (west and south edges inclusive)."""
    return (math.floor((lat + max_abs_lat) / delta + 1e-9),
            math.floor((lon + 180.0) / delta + 1e-9))
