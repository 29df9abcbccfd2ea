"""The CTX chain of the geo-localization database: names, downloads, VRT, warped cells."""

from __future__ import annotations

import functools
import http.server
import math
import re
import shutil
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_bounds

from marseval.data.synthetic.ctx import CTX_CRS, ctx_bounds_m, write_ctx_archives
from marseval.errors import MarsevalError
from marseval.retrieval.ctx.catalog import (
    MARS_LONLAT,
    CtxTile,
    cells_per_tile,
    ctx_tiles,
    parse_tile,
    tile_groups,
)
from marseval.retrieval.ctx.cells import (
    CellOptions,
    cell_images,
    cell_name,
    cut_group,
    read_cells,
    tile_cells,
    warp_cell,
)
from marseval.retrieval.ctx.fetch import GROUP_MANIFEST, GROUP_VRT, fetch_group
from marseval.retrieval.ctx.vrt import vrt_sources, write_vrt

# --------------------------------------------------------------------------- names


def test_tile_names_are_murray_labs():
    tile = CtxTile(-4, -32)
    assert tile.archive == "MurrayLab_GlobalCTXMosaic_V01_E-004_N-32.zip"
    assert tile.tif == "MurrayLab_CTX_V01_E-004_N-32_Mosaic.tif"
    assert CtxTile(76, 84).key == "E076_N84" and CtxTile(0, 0).key == "E000_N00"
    assert CtxTile(-180, -8).key == "E-180_N-08"
    assert parse_tile("MurrayLab_GlobalCTXMosaic_V01_E160_N-20.zip") == CtxTile(160, -20)


def test_the_reference_keeps_3600_tiles():
    tiles = ctx_tiles(80)
    assert len(tiles) == 90 * 40  # by hand: longitudes -180..176, latitudes -80..76
    assert {t.lat for t in tiles} == set(range(-80, 80, 4))
    assert len(tiles) * cells_per_tile(0.2) == 1_440_000  # the card's "over 1.4 million"
    assert all(parse_tile(t.tif) == t for t in tiles)
    assert [t.tif for t in tiles] == sorted(t.tif for t in tiles)
    # build_tiles.py tests the edge nearer the equator: 78 keeps the tile from -80 to -76
    assert min(t.lat for t in ctx_tiles(78)) == -80 and max(t.lat for t in ctx_tiles(78)) == 76
    assert len(ctx_tiles(80, [-8, -4, 8, 4])) == 4 * 2
    groups = tile_groups(tiles, 40)
    assert len(groups) == 90 and sum(map(len, groups)) == 3600


def test_bad_regions_are_refused():
    with pytest.raises(MarsevalError, match="multiples of 4"):
        ctx_tiles(80, [-10, -4, 8, 4])
    with pytest.raises(MarsevalError, match="no CTX tile"):
        ctx_tiles(80, [0, 80, 8, 84])


# the reference's tile-name parser (mars_datasets/geolocalization_dataset.py)
_REFERENCE_NAME = re.compile(r"^(E_|E)(\d+_\d+)_(N|N_)(\d+_\d+)\.png$")


def _reference_corner(name: str) -> tuple[float, float]:
    m = _REFERENCE_NAME.match(name)
    lon = float(m.group(2).replace("_", ".")) * (-1 if m.group(1) == "E_" else 1)
    lat = float(m.group(4).replace("_", ".")) * (-1 if m.group(3) == "N_" else 1)
    return lon, lat


def test_cell_names_round_trip_through_the_reference_parser():
    assert cell_name(-123.4, 12.6, 0.2) == "E_123_4_N12_6"  # the protocol's example
    for tile in (CtxTile(-124, 12), CtxTile(176, -80), CtxTile(0, -4)):
        cells = tile_cells(tile, 0.2)
        assert len(cells) == 400 and len({c[0] for c in cells}) == 400
        for name, lon0, lat0, lon1, lat1 in cells:
            assert _reference_corner(name + ".png") == pytest.approx((lon0, lat0), abs=1e-9)
            assert lon1 - lon0 == pytest.approx(0.2) and lat1 - lat0 == pytest.approx(0.2)
            assert tile.lon <= lon0 < lon1 <= tile.lon + 4


# --------------------------------------------------------------------------- warping

TILE = CtxTile(-4, -32)


def write_tile(path: Path, pixels: np.ndarray, tile: CtxTile = TILE, crs: str | None = CTX_CRS,
               nodata: float | None = None) -> Path:
    height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype=str(pixels.dtype), crs=crs, nodata=nodata,
                       transform=from_bounds(*ctx_bounds_m(tile), width, height)) as dst:
        dst.write(pixels[np.newaxis])
    return path


def texture(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (size, size), dtype=np.uint8)


@pytest.mark.skipif(shutil.which("gdalwarp") is None,
                    reason="gdalwarp (Debian gdal-bin, installed by .ci/run) is missing")
@pytest.mark.parametrize("cell", [0, 21, 399])
def test_a_cell_is_gdalwarps_warp_of_its_bounds(tmp_path, cell):
    # 2,000 px over 4 degrees: a cell of 100 px warped to 64 (the reference's 5 m/px
    # downsampled by 4.6), by the reference's call path: gdal.Warp == gdalwarp
    source = write_tile(tmp_path / TILE.tif, texture(2000))
    name, *bounds = tile_cells(TILE, 0.2)[cell]
    with rasterio.open(source) as src:
        got = warp_cell(src, tuple(bounds), 64)[0]
    scale = math.pi / 180 * 3396190
    x0, y0, x1, y1 = (v * scale for v in bounds)
    out = tmp_path / "reference.tif"
    subprocess.run(["gdalwarp", "-q", "-te", repr(x0), repr(y0), repr(x1), repr(y1),
                    "-ts", "64", str(round(64 * (y1 - y0) / (x1 - x0))), "-r", "bilinear",
                    "-dstnodata", "0", str(source), str(out)], check=True)
    with rasterio.open(out) as ref:
        expected = ref.read(1)
    assert got.shape == expected.shape == (64, 64)
    np.testing.assert_array_equal(got, expected)


def test_a_linear_ramp_warps_to_its_values_at_pixel_centres(tmp_path):
    # an independent oracle: bilinear interpolation of a plane is the plane; 40 px over
    # 4 degrees upsampled 12.8x, so interior output pixels hit the ramp exactly
    columns = np.tile(np.arange(40, dtype=np.float32) * 5 + 10, (40, 1))
    source = write_tile(tmp_path / TILE.tif, columns)
    lon0, lat0 = -2.0, -30.0
    with rasterio.open(source) as src:
        got = warp_cell(src, (lon0, lat0, lon0 + 1.0, lat0 + 1.0), 128)[0]
    # source column c holds 10 + 5 c at longitude -4 + (c + 0.5) / 10: output pixel j's
    # centre at lon0 + (j + 0.5) / 128 is source column (lon0 + 4) * 10 + (j + 0.5) * 10/128 - 0.5
    j = np.arange(128)
    expected = 10 + 5 * ((lon0 + 4) * 10 + (j + 0.5) * 10 / 128 - 0.5)
    np.testing.assert_allclose(got[64, 8:-8], expected[8:-8], atol=1e-3)
    assert got.dtype == np.float32 and np.ptp(got[:, 64]) < 1e-3  # constant down a column


def test_cell_bounds_round_trip_between_lonlat_and_the_tile_projection():
    from rasterio.warp import transform

    for _name, lon0, lat0, lon1, lat1 in tile_cells(TILE, 0.2)[::37]:
        xs, ys = transform(MARS_LONLAT, CTX_CRS, [lon0, lon1], [lat0, lat1])
        lons, lats = transform(CTX_CRS, MARS_LONLAT, xs, ys)
        np.testing.assert_allclose([lons, lats], [[lon0, lon1], [lat0, lat1]], atol=1e-9)


# --------------------------------------------------------------------------- VRT


def test_the_vrt_reads_as_its_tiles(tmp_path):
    tiles = [CtxTile(-4, -32), CtxTile(0, -32), CtxTile(0, -28)]  # an L: a hole in the box
    paths = [write_tile(tmp_path / t.tif, texture(50, seed=i), t) for i, t in enumerate(tiles)]
    vrt = write_vrt(paths, tmp_path / "mosaic.vrt")
    assert vrt_sources(vrt) == paths
    with rasterio.open(vrt) as mosaic:
        assert mosaic.shape == (100, 100)
        whole = mosaic.read(1)
        for path in paths:
            with rasterio.open(path) as tile:
                window = mosaic.window(*tile.bounds)
                row, col = round(window.row_off), round(window.col_off)
                np.testing.assert_array_equal(whole[row:row + 50, col:col + 50], tile.read(1))
        assert (whole[:50, :50] == 0).all()  # E-004_N-28 is not in the group


def test_a_vrt_refuses_tiles_of_another_mosaic(tmp_path):
    a = write_tile(tmp_path / TILE.tif, texture(50))
    b = write_tile(tmp_path / CtxTile(0, -32).tif, texture(40), CtxTile(0, -32))
    with pytest.raises(MarsevalError, match="pixel size"):
        write_vrt([a, b], tmp_path / "mosaic.vrt")


# --------------------------------------------------------------------------- download


GROUP = [CtxTile(-4, -4), CtxTile(0, -4), CtxTile(-4, 0)]


@pytest.fixture()
def archives(tmp_path) -> Path:
    folder = tmp_path / "served"
    planet = np.tile(np.arange(720) // 3, (360, 1)).astype(np.uint8)  # brighter eastwards
    write_ctx_archives(planet, GROUP, folder, 40)
    return folder


@pytest.fixture()
def server(archives):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archives))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_a_group_downloads_over_http_and_cuts_into_cells(tmp_path, server):
    group = tmp_path / "group0"
    manifest = fetch_group(GROUP, server, group, workers=2, retries=0)
    assert sorted(p.name for p in group.iterdir()) == sorted(
        [GROUP_MANIFEST, GROUP_VRT, *(t.tif for t in GROUP)])  # archives deleted
    assert [t["tile"] for t in manifest["tiles"]] == [t.key for t in GROUP]
    assert not (tmp_path / ".group0.partial").exists()
    cells = tmp_path / "cells"
    done = cut_group(group / GROUP_VRT, cells, CellOptions(delta=1.0, pixels=16), workers=2)
    table = read_cells(cells)
    assert done["cells"] == len(table) == 3 * 16 and done["empty_cells"] == 0
    assert table["id"].is_unique
    # a tile's cells stay in its 4 degrees, and the SW corner is in the cell's name
    for row in table.itertuples():
        tile = parse_tile(f"E{row.tile.split('_')[0][1:]}_{row.tile.split('_')[1]}")
        assert tile.lon <= row.lon_min < row.lon_max <= tile.lon + 4
        assert row.id == cell_name(row.lon_min, row.lat_min, 1.0)
    with tarfile.open(cells / "cells.tar") as tar:
        assert tar.getnames() == table["member"].tolist()
    images = list(cell_images(cells, table["member"].tolist()))
    assert all(im.mode == "RGB" and im.size == (16, 16) for im in images)
    # the planet brightens eastwards: 1 px per 0.5 degree, 3 columns per level
    means = [np.asarray(im)[..., 0].mean() for im in images]
    expected = [((row.lon_min + row.lon_max) / 2 + 180) * 2 / 3 for row in table.itertuples()]
    np.testing.assert_allclose(means, expected, atol=1.0)


def test_a_corrupt_archive_is_named_deleted_and_fetched_again_next_run(tmp_path, server,
                                                                      archives):
    broken = archives / GROUP[1].archive
    good = broken.read_bytes()
    data = bytearray(good)
    with zipfile.ZipFile(broken) as zf:
        info = zf.getinfo(f"{GROUP[1].folder}/{GROUP[1].tif}")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle] ^= 0xFF  # one flipped byte: the CRC-32 check catches it
    broken.write_bytes(bytes(data))
    group = tmp_path / "group0"
    with pytest.raises(MarsevalError, match=re.escape(GROUP[1].archive) + ".*corrupt"):
        fetch_group(GROUP, server, group, workers=1, retries=0)
    assert not group.exists()  # nothing half-written where the cutting job looks
    staging = tmp_path / ".group0.partial"
    assert (staging / GROUP[0].tif).is_file() and not (staging / GROUP[1].archive).exists()
    broken.write_bytes(good)  # the server's copy is fine again
    fetch_group(GROUP, server, group, workers=1, retries=0)
    assert (group / GROUP[1].tif).is_file() and not staging.exists()


def test_a_missing_archive_is_named(tmp_path, archives, server):
    (archives / GROUP[2].archive).unlink()
    with pytest.raises(MarsevalError, match=re.escape(GROUP[2].archive)):
        fetch_group(GROUP, server, tmp_path / "group0", retries=0)
    with pytest.raises(MarsevalError, match=re.escape(GROUP[2].archive) + " does not exist"):
        fetch_group(GROUP, str(archives), tmp_path / "group1")


def test_a_tile_without_a_crs_stops_with_a_clear_error(tmp_path):
    source = tmp_path / "served"
    source.mkdir()
    tif = write_tile(tmp_path / TILE.tif, texture(40), crs=None)
    with zipfile.ZipFile(source / TILE.archive, "w") as zf:
        zf.write(tif, f"{TILE.folder}/{TILE.tif}")
    with pytest.raises(MarsevalError, match=re.escape(TILE.tif) + ": has no CRS"):
        fetch_group([TILE], str(source), tmp_path / "group0")
    assert not (tmp_path / "group0").exists()


def test_empty_cells_are_kept_or_dropped_and_counted(tmp_path):
    pixels = texture(40)
    pixels[:, :20] = 0  # the western half of the tile is nodata
    group = tmp_path / "group"
    group.mkdir()
    write_tile(group / TILE.tif, pixels, nodata=0)
    write_vrt([group / TILE.tif], group / GROUP_VRT)
    kept = cut_group(group / GROUP_VRT, tmp_path / "kept", CellOptions(1.0, 8))
    dropped = cut_group(group / GROUP_VRT, tmp_path / "dropped", CellOptions(1.0, 8, True))
    assert (kept["cells"], kept["empty_cells"]) == (16, 8)  # by hand: 2 of 4 columns
    assert (dropped["cells"], dropped["empty_cells"]) == (8, 8)
    table = read_cells(tmp_path / "dropped")
    assert (table["lon_min"] >= -2).all() and not table["empty"].any()
    assert read_cells(tmp_path / "kept")["empty"].sum() == 8


def test_a_damaged_cell_group_is_named(tmp_path, archives):
    group = tmp_path / "group0"
    fetch_group(GROUP[:1], str(archives), group)
    cells = tmp_path / "cells"
    cut_group(group / GROUP_VRT, cells, CellOptions(2.0, 8))
    table = read_cells(cells)
    with pytest.raises(MarsevalError, match="missing or out of order"):
        list(cell_images(cells, [*table["member"], "E_9_N_9.png"]))
    pd.DataFrame(table.iloc[:2]).to_parquet(cells / "cells.parquet")
    with pytest.raises(MarsevalError, match="has 2 rows, the manifest 4"):
        read_cells(cells)


def test_group_folders_change_with_their_tiles(tmp_path, archives):
    from marseval.retrieval.ctx.plan import group_ids, group_tiles

    def config(region, per_group):
        return {"retrieval": {"max_abs_lat": 80,
                              "ctx": {"region": region, "tiles_per_group": per_group}}}

    small = config([-8, -4, 8, 4], 3)
    ids = group_ids(small)
    assert len(ids) == 3 and ids[0].startswith("000-") and ids == group_ids(small)
    # file-name order, as the reference sorts its tile paths: "-" sorts before digits
    assert group_tiles(small, ids[0]) == "E-004_N-04,E-004_N00,E-008_N-04"
    regrouped = group_ids(config([-8, -4, 8, 4], 4))
    assert regrouped[0] != ids[0]  # other tiles: another folder, never the stale one
    with pytest.raises(MarsevalError, match="not a group of this config"):
        group_tiles(small, "000-00000000")
    # a stale folder under the expected name stops the cutting job
    group = tmp_path / "group"
    fetch_group(GROUP[:2], str(archives), group)
    with pytest.raises(MarsevalError, match="were expected; delete its folder"):
        cut_group(group / GROUP_VRT, tmp_path / "cells", CellOptions(2.0, 8),
                  expected=[GROUP[0].key])
    assert not (tmp_path / "cells").exists()
