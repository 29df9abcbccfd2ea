"""Geo-localization: the point a retrieved cell stands for.

The database cells come from the CTX chain (marseval.retrieval.ctx), each with its lon/lat
bounds. A retrieved cell stands for its south-west corner (`sw_corner`), the point the
MarsRetrieval reference names and scores its tiles by, or for its centre.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from marseval.errors import MarsevalError

CONVENTIONS = ("centre", "sw_corner")


def tile_locations(tiles: pd.DataFrame, convention: str = "centre") -> np.ndarray:
    """(N, 2) lon/lat each tile stands for when it is retrieved."""
    if convention == "centre":
        return np.stack([(tiles.lon_min + tiles.lon_max) / 2,
                         (tiles.lat_min + tiles.lat_max) / 2], axis=1).astype(np.float64)
    if convention == "sw_corner":
        return tiles[["lon_min", "lat_min"]].to_numpy(np.float64)
    raise MarsevalError(f"unknown tile location convention {convention!r}; use {CONVENTIONS}")
