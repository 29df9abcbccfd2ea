"""Cut CTX tiles into geo-localization cells, as the MarsRetrieval reference does.

Per 4-degree tile (data_processing/geolocalization/cut.py, thumb_gen.py, build_tiles.py):
cell (row, col) spans `lon + col * delta` to `min(that + delta, lon + 4)` (likewise in
latitude); its two corners go from the Mars sphere to the tile's own projection; GDAL warps
that box, bilinear, to `pixels` wide and `round(pixels * h / w)` high with nodata 0; the
result is squared to `pixels` x `pixels` bicubic (PIL) and named after its south-west corner,
`E_123_4_N12_6` for (-123.4, 12.6). Empty (all-nodata) cells are kept as the reference
does, unless `drop_empty`. A group's cells go into one tar (PNG members in name order, as
the reference's WebDataset shards) beside a table of their ids and lon/lat bounds.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from marseval.atomic import atomic_directory, atomic_write_json
from marseval.errors import MarsevalError
from marseval.retrieval.ctx.catalog import (
    MARS_LONLAT,
    TILE_DEGREES,
    CtxTile,
    cells_per_side,
    parse_tile,
)
from marseval.retrieval.ctx.vrt import vrt_sources

log = logging.getLogger(__name__)
CELLS_TAR, CELLS_TABLE, CELLS_MANIFEST = "cells.tar", "cells.parquet", "cells.json"
BOUNDS = ["lon_min", "lat_min", "lon_max", "lat_max"]


@dataclass(frozen=True)
class CellOptions:
    delta: float = 0.2
    pixels: int = 512
    drop_empty: bool = False


def cell_name(lon: float, lat: float, delta: float) -> str:
    """The reference's cell name: corner to ceil(-log10 delta) decimals, '.' and '-' -> '_'."""
    decimals = max(0, math.ceil(-math.log10(delta)))

    def part(value: float) -> str:
        return f"{value:.{decimals}f}".replace(".", "_").replace("-", "_")

    return f"E{part(lon)}_N{part(lat)}"


def tile_cells(tile: CtxTile, delta: float) -> list[tuple[str, float, float, float, float]]:
    """(name, lon_min, lat_min, lon_max, lat_max) of every cell of a tile, reference order."""
    side = cells_per_side(delta)
    cells = []
    for row in range(side):
        for col in range(side):
            lon0, lat0 = tile.lon + col * delta, tile.lat + row * delta
            lon1 = min(lon0 + delta, tile.lon + TILE_DEGREES)
            lat1 = min(lat0 + delta, tile.lat + TILE_DEGREES)
            cells.append((cell_name(lon0, lat0, delta), lon0, lat0, lon1, lat1))
    return cells


def warp_cell(src, bounds: tuple[float, float, float, float], pixels: int) -> np.ndarray | None:
    """(bands, h, w) pixels of lon/lat `bounds` warped from the open dataset `src`."""
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.warp import reproject, transform

    lon0, lat0, lon1, lat1 = bounds
    # the reference transforms the two corners only (exact for the CTX cylindrical grid)
    xs, ys = transform(MARS_LONLAT, src.crs, [lon0, lon1], [lat0, lat1])
    x0, x1 = sorted(xs)
    y0, y1 = sorted(ys)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None  # the reference writes nothing for a degenerate cell
    height = int(round(pixels * (y1 - y0) / (x1 - x0)))
    out = np.zeros((src.count, height, pixels), dtype=src.dtypes[0])
    reproject(source=_bands(src), destination=out,
              dst_transform=from_bounds(x0, y0, x1, y1, pixels, height), dst_crs=src.crs,
              resampling=Resampling.bilinear, dst_nodata=0)
    return out


def _bands(src):
    import rasterio

    return rasterio.band(src, list(range(1, src.count + 1)))


def square_thumbnail(pixels: np.ndarray, size: int) -> Image.Image:
    """thumb_gen.py: non-uint8 min-max scaled to uint8, then resized to size x size bicubic.

    One band stays greyscale ('L'): the reference's RGB copy of it has three equal channels,
    and PIL resizes each channel alike, so the embedding input is the same.
    """
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (np.zeros(pixels.shape, np.uint8) if high <= low else
                  (255 * (pixels.astype(np.float64) - low) / (high - low)).astype(np.uint8))
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels[:3], 0, -1))
    return image.resize((size, size), Image.Resampling.BICUBIC)


def _open_tile(path: Path):
    import rasterio

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise MarsevalError(f"CTX tile {path}: unreadable ({exc}); delete it, or its group "
                            "folder, and rerun to fetch it again") from None
    if src.crs is None:
        src.close()
        raise MarsevalError(f"CTX tile {path}: has no CRS; cells cannot be placed on Mars")
    return src


def cut_tile(path: Path, options: CellOptions) -> list[dict]:
    """Every cell of one tile file: rows of the cell table, each with its PNG bytes."""
    tile = parse_tile(path.name)
    rows = []
    with _open_tile(path) as src:
        for name, *bounds in tile_cells(tile, options.delta):
            pixels = warp_cell(src, tuple(bounds), options.pixels)
            if pixels is None:
                continue
            buffer = io.BytesIO()
            square_thumbnail(pixels, options.pixels).save(buffer, "PNG")
            rows.append({"id": name, "member": f"{name}.png", "tile": tile.key,
                         **dict(zip(BOUNDS, bounds, strict=True)),
                         "empty": not pixels.any(), "png": buffer.getvalue()})
    return rows


def cut_group(vrt: Path, out: Path, options: CellOptions, workers: int = 1,
              expected: list[str] | None = None) -> dict:
    """Cut every tile the group's VRT lists into `out/` (cells.tar, cells.parquet, cells.json).

    Tiles are cut in parallel and written to the tar as they finish, in VRT order, so memory
    holds a few tiles' cells, not the group's. `expected` tile keys, when given, must be the
    VRT's.
    """
    tiles = vrt_sources(vrt)
    found = [parse_tile(p.name).key for p in tiles]
    if expected is not None and found != list(expected):
        raise MarsevalError(f"{vrt}: lists tiles {found[:3]}... where {list(expected)[:3]}... "
                            "were expected; delete its folder to fetch the group again")
    rows, empty = [], 0
    with atomic_directory(out) as tmp:
        with tarfile.open(tmp / CELLS_TAR, "w") as tar, _mapper(workers, len(tiles)) as run:
            for tile_rows in run(cut_tile, tiles, [options] * len(tiles)):
                for row in sorted(tile_rows, key=lambda r: r["member"]):
                    empty += row["empty"]
                    if options.drop_empty and row["empty"]:
                        continue
                    png = row.pop("png")
                    info = tarfile.TarInfo(row["member"])
                    info.size = len(png)
                    tar.addfile(info, io.BytesIO(png))
                    rows.append(row)
        table = pd.DataFrame(rows, columns=["id", "member", "tile", *BOUNDS, "empty"])
        table.to_parquet(tmp / CELLS_TABLE, index=False)
        manifest = {"tiles": found, "cells": len(rows),
                    "empty_cells": int(empty), "empty_dropped": options.drop_empty,
                    "delta": options.delta, "pixels": options.pixels}
        atomic_write_json(tmp / CELLS_MANIFEST, manifest)
    log.info("%s: %d cells from %d CTX tiles; %d empty (all nodata), %s", out, len(rows),
             len(tiles), empty, "dropped" if options.drop_empty else "kept as the reference")
    return manifest


@contextmanager
def _mapper(workers: int, tasks: int) -> Iterator:
    """An ordered map: a process pool for several workers and tasks, else the builtin."""
    if workers > 1 and tasks > 1:
        with ProcessPoolExecutor(min(workers, tasks)) as pool:
            yield pool.map
    else:
        yield map


def read_cells(folder: Path) -> pd.DataFrame:
    """The cell table of one cut group, checked against its manifest."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / CELLS_MANIFEST).read_text())
        table = pd.read_parquet(folder / CELLS_TABLE)
    except (OSError, ValueError) as exc:
        raise MarsevalError(f"{folder}: not a cut CTX cell group ({exc})") from None
    if len(table) != manifest["cells"]:
        raise MarsevalError(f"{folder}: {CELLS_TABLE} has {len(table)} rows, the manifest "
                            f"{manifest['cells']}; cut the group again")
    return table


def cell_images(folder: Path, members: list[str]) -> Iterator[Image.Image]:
    """The PNG cells `members` (in tar order) of a group, read sequentially from its tar."""
    wanted = iter(members)
    expected = next(wanted, None)
    path = Path(folder) / CELLS_TAR
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                if info.name != expected:
                    continue
                with Image.open(tar.extractfile(info)) as image:
                    yield image.convert("RGB")
                expected = next(wanted, None)
                if expected is None:
                    return
    except (OSError, tarfile.TarError) as exc:
        raise MarsevalError(f"{path}: unreadable ({exc}); cut the group again") from None
    if expected is not None:
        raise MarsevalError(f"{path}: cell {expected} missing or out of order; cut the group again")
