"""CTX V01 tile names, the tiles a run needs and their grouping into jobs.

Murray Lab publishes the mosaic as 4x4-degree tiles named by their south-west corner:
`MurrayLab_GlobalCTXMosaic_V01_E-004_N-32.zip` holds the folder of the same name with
`MurrayLab_CTX_V01_E-004_N-32_Mosaic.tif` (longitudes -180..176, latitudes -88..84). The
MarsRetrieval reference keeps a tile when its edge nearer the equator lies within
`max_abs_lat` (build_tiles.py: `t_lat = lat + 4 if lat < 0 else lat; skip if |t_lat| >= 80`):
3,600 tiles for 80 degrees.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from marseval.errors import MarsevalError

TILE_DEGREES = 4
MURRAY_LAB_URL = "https://murray-lab.caltech.edu/CTX/V01/tiles/"
# the reference's geographic CRS of cell bounds (cut.py): the IAU Mars sphere
MARS_LONLAT = "+proj=longlat +a=3396190 +b=3396190 +no_defs"
_CORNER = re.compile(r"[EN]-?\d+")


def _signed(value: int, width: int) -> str:
    return f"{'-' if value < 0 else ''}{abs(value):0{width}d}"


@dataclass(frozen=True, order=True)
class CtxTile:
    """One 4-degree tile, by its south-west corner in integer degrees."""

    lon: int
    lat: int

    @property
    def key(self) -> str:
        return f"E{_signed(self.lon, 3)}_N{_signed(self.lat, 2)}"

    @property
    def archive(self) -> str:
        return f"MurrayLab_GlobalCTXMosaic_V01_{self.key}.zip"

    @property
    def folder(self) -> str:
        return f"MurrayLab_GlobalCTXMosaic_V01_{self.key}"

    @property
    def tif(self) -> str:
        return f"MurrayLab_CTX_V01_{self.key}_Mosaic.tif"

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self.lon, self.lat, self.lon + TILE_DEGREES, self.lat + TILE_DEGREES


def parse_tile(name: str) -> CtxTile:
    """The tile a file is named after, read as the reference's parse_filename_corner."""
    found = _CORNER.findall(name.rsplit("/", 1)[-1].upper())
    if len(found) != 2 or found[0][0] != "E" or found[1][0] != "N":
        raise MarsevalError(f"{name}: not a CTX V01 tile name (E<lon>_N<lat>)")
    return CtxTile(int(found[0][1:]), int(found[1][1:]))


def _inner_edge(lat: int) -> int:
    return lat + TILE_DEGREES if lat < 0 else lat


def ctx_tiles(max_abs_lat: float, region: list[float] | None = None) -> list[CtxTile]:
    """The tiles of a run in file-name order (the reference sorts the tile paths).

    `region` (lon_min, lat_min, lon_max, lat_max) keeps only tiles inside it, on the 4-degree
    grid: the embedded default's small planet, or a regional study.
    """
    if region is not None:
        lon0, lat0, lon1, lat1 = region
        if any(v % TILE_DEGREES for v in region) or lon0 >= lon1 or lat0 >= lat1:
            raise MarsevalError(f"retrieval.ctx.region {region}: needs lon_min < lon_max and "
                                f"lat_min < lat_max, all multiples of {TILE_DEGREES} degrees")
    tiles = []
    for lat in range(-88, 88, TILE_DEGREES):
        if abs(_inner_edge(lat)) >= max_abs_lat:
            continue
        for lon in range(-180, 180, TILE_DEGREES):
            if region is None or (region[0] <= lon and lon + TILE_DEGREES <= region[2]
                                  and region[1] <= lat and lat + TILE_DEGREES <= region[3]):
                tiles.append(CtxTile(lon, lat))
    if not tiles:
        raise MarsevalError(f"no CTX tile lies within |lat| < {max_abs_lat}"
                            + (f" and region {region}" if region else ""))
    return sorted(tiles, key=lambda t: t.tif)


def tile_groups(tiles: list[CtxTile], per_group: int) -> list[list[CtxTile]]:
    """Consecutive tiles, `per_group` at a time: one download and one cutting job each."""
    if per_group < 1:
        raise MarsevalError(f"retrieval.ctx.tiles_per_group must be >= 1, got {per_group}")
    return [tiles[i:i + per_group] for i in range(0, len(tiles), per_group)]


def cells_per_side(delta: float) -> int:
    """Cells along a tile's side: the reference's ceil(4 / delta), the last one clipped."""
    return math.ceil(TILE_DEGREES / delta - 1e-9)


def cells_per_tile(delta: float) -> int:
    return cells_per_side(delta) ** 2
