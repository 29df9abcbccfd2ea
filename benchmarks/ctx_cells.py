"""Cutting speed of the geo-localization cells from a full-size CTX tile, and the disk they take.

A Murray Lab CTX V01 tile is a 47,420 x 47,420 8-bit GeoTIFF (uncompressed, 2,254,080,140
bytes) over 4 x 4 degrees in the mosaic's equirectangular projection. This writes one such
tile (content: smooth 1/f terrain with fine noise, so reads and PNG sizes are not those of a
constant image), then cuts `--cells` of its 400 cells of 0.2 degrees as the `ctx_cells` job
does (marseval.retrieval.ctx.cells: warp bilinear to 512 px, square bicubic, PNG), one at a
time, and reports the median seconds per cell and PNG bytes per cell. From those: the time and
disk of the paper's 1,440,000 cells. The PNG size of real CTX imagery is not known here (no
data can be downloaded): the recorded size is that of the synthetic texture, bounded by the
uncompressed 262,144 bytes of a 512 x 512 8-bit cell.

Run: python benchmarks/ctx_cells.py [--size 47420] [--cells 40] [--pixels 512]
Writes benchmarks/results/ctx_cells_cpu.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

PAPER_CELLS = 1_440_000
PAPER_TILES = 3600
TILE_BYTES = 2_254_080_140  # one uncompressed CTX V01 GeoTIFF (github.com/delhoume/bigmars)
ARCHIVE_BYTES = 8e12 / 3960  # 3,960 zips take about 8 TB (same source)


def _terrain_block(rng: np.random.Generator, rows: int, cols: int, row0: int) -> np.ndarray:
    """Rows of a smooth field (sums of long waves) plus pixel noise: a stand-in for CTX."""
    r = (row0 + np.arange(rows))[:, None] / 47420
    c = np.arange(cols)[None, :] / 47420
    field = np.zeros((rows, cols))
    for k, (fr, fc, phase) in enumerate(rng.uniform(0, 1, (8, 3)) * [40, 40, 6.28], start=1):
        field += np.sin(2 * np.pi * (fr * r * k + fc * c * k) + phase) / k
    noise = rng.normal(0, 12, (rows, cols))
    return np.clip(128 + 40 * field + noise, 0, 255).astype(np.uint8)


def write_full_tile(path: Path, size: int) -> float:
    """A CTX-sized tile at `path`, written in row blocks; seconds taken."""
    import rasterio
    from rasterio.transform import from_bounds
    from rasterio.windows import Window

    from marseval.data.synthetic.ctx import CTX_CRS, ctx_bounds_m
    from marseval.retrieval.ctx.catalog import CtxTile

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": CTX_CRS, "transform": from_bounds(*ctx_bounds_m(CtxTile(0, 0)), size, size)}
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 1024):
            rows = min(1024, size - row)
            dst.write(_terrain_block(rng, rows, size, row)[np.newaxis],
                      window=Window(0, row, size, rows))
    return time.perf_counter() - started


def time_cells(path: Path, cells: int, pixels: int) -> tuple[list[float], list[int]]:
    """Seconds and PNG bytes of `cells` cells spread over the tile, cut one by one."""
    import rasterio

    from marseval.retrieval.ctx.catalog import CtxTile
    from marseval.retrieval.ctx.cells import square_thumbnail, tile_cells, warp_cell

    every = tile_cells(CtxTile(0, 0), 0.2)
    chosen = every[:: max(1, len(every) // cells)][:cells]
    seconds, sizes = [], []
    with rasterio.open(path) as src:
        warp_cell(src, tuple(chosen[0][1:]), pixels)  # warm-up: GDAL opens, caches
        for _name, *bounds in chosen:
            started = time.perf_counter()
            image = square_thumbnail(warp_cell(src, tuple(bounds), pixels), pixels)
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            seconds.append(time.perf_counter() - started)
            sizes.append(buffer.tell())
    return seconds, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=47420, help="tile side, pixels")
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results/ctx_cells_cpu.json")
    args = parser.parse_args()
    import rasterio

    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:
        path = Path(tmp) / "MurrayLab_CTX_V01_E000_N00_Mosaic.tif"
        write_seconds = write_full_tile(path, args.size)
        seconds, sizes = time_cells(path, args.cells, args.pixels)
    per_cell = statistics.median(seconds)
    png = statistics.median(sizes)
    results = {
        "machine": machine(rasterio=rasterio.__version__, gdal=rasterio.__gdal_version__),
        "tile_pixels": args.size, "cell_pixels": args.pixels, "cells_timed": len(seconds),
        "tile_write_seconds": round(write_seconds, 1),
        "seconds_per_cell_median": round(per_cell, 4),
        "seconds_per_cell_min_max": [round(min(seconds), 4), round(max(seconds), 4)],
        "cells_per_second_one_core": round(1 / per_cell, 2),
        "png_bytes_per_cell_median": int(png),
        "paper": {
            "cells": PAPER_CELLS,
            "cpu_hours": round(PAPER_CELLS * per_cell / 3600, 1),
            "hours_on_32_cores": round(PAPER_CELLS * per_cell / 3600 / 32, 2),
            "cells_gb_at_measured_png": round(PAPER_CELLS * png / 1e9, 1),
            "cells_gb_uncompressed_bound": round(PAPER_CELLS * args.pixels ** 2 / 1e9, 1),
            "tiles_tb": round(PAPER_TILES * TILE_BYTES / 1e12, 2),
            "archives_tb": round(PAPER_TILES * ARCHIVE_BYTES / 1e12, 2),
        },
    }
    write_results(args.out, results)
    paper = results["paper"]
    print(f"| tile px | cell px | s/cell (median of {len(seconds)}) | cells/s/core | PNG KB |\n"
          f"|---|---|---|---|---|\n| {args.size} | {args.pixels} | {per_cell:.4f} | "
          f"{1 / per_cell:.1f} | {png / 1e3:.0f} |\n\n"
          f"1.44 M cells: {paper['cpu_hours']} CPU-hours ({paper['hours_on_32_cores']} h on 32 "
          f"cores); cells {paper['cells_gb_at_measured_png']} GB (at most "
          f"{paper['cells_gb_uncompressed_bound']} GB); GeoTIFFs {paper['tiles_tb']} TB; "
          f"archives {paper['archives_tb']} TB")


if __name__ == "__main__":
    main()
