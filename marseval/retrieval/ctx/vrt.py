"""A GDAL VRT mosaic over CTX tiles, and the tile files it lists.

GDAL's own gdalbuildvrt is not reachable from Python here (rasterio bundles GDAL but not its
utilities, and GDAL publishes no wheel), so the VRT is written in GDAL's documented XML
format (https://gdal.org/drivers/raster/vrt.html): one SimpleSource per tile, placed by its
geotransform. GDAL reads it back (tests compare VRT and tile pixels). Every tile must share
the first tile's CRS, pixel size, band count and data type, as one mosaic's tiles do.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from marseval.atomic import atomic_write_text
from marseval.errors import MarsevalError

_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def _describe(path: Path) -> dict:
    import rasterio

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise MarsevalError(f"CTX tile {path}: has no CRS; it cannot join the mosaic")
            return {"crs": src.crs, "transform": src.transform, "width": src.width,
                    "height": src.height, "count": src.count, "dtype": src.dtypes[0],
                    "nodata": src.nodata}
    except rasterio.errors.RasterioIOError as exc:
        raise MarsevalError(f"CTX tile {path}: unreadable ({exc})") from None


def _check_alike(first: dict, other: dict, path: Path, name: str) -> None:
    a, b = first["transform"], other["transform"]
    same = (other["crs"] == first["crs"] and other["count"] == first["count"]
            and other["dtype"] == first["dtype"]
            and abs(b.a - a.a) <= 1e-9 * abs(a.a) and abs(b.e - a.e) <= 1e-9 * abs(a.e))
    if not same:
        raise MarsevalError(f"CTX tile {path}: CRS, pixel size, bands or data type differ "
                            f"from {name}; one VRT holds tiles of one mosaic only")


def write_vrt(tiles: list[Path], out: Path) -> Path:
    """A VRT mosaic of `tiles` at `out`; source paths are relative to the VRT's folder."""
    if not tiles:
        raise MarsevalError(f"{out}: no tiles to build a VRT from")
    info = [_describe(Path(p)) for p in tiles]
    first = info[0]
    for path, other in zip(tiles[1:], info[1:], strict=True):
        _check_alike(first, other, Path(path), Path(tiles[0]).name)
    px, py = first["transform"].a, first["transform"].e  # py < 0: north up
    left = min(i["transform"].c for i in info)
    top = max(i["transform"].f for i in info)
    right = max(i["transform"].c + i["width"] * px for i in info)
    bottom = min(i["transform"].f + i["height"] * py for i in info)
    width, height = round((right - left) / px), round((bottom - top) / py)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = first["crs"].to_wkt()
    ET.SubElement(root, "GeoTransform").text = f"{left!r}, {px!r}, 0.0, {top!r}, 0.0, {py!r}"
    for band in range(1, first["count"] + 1):
        element = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[first["dtype"]],
                                band=str(band))
        if first["nodata"] is not None:
            ET.SubElement(element, "NoDataValue").text = repr(first["nodata"])
        for path, tile in zip(tiles, info, strict=True):
            source = ET.SubElement(element, "SimpleSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = \
                os.path.relpath(Path(path).resolve(), Path(out).resolve().parent)
            ET.SubElement(source, "SourceBand").text = str(band)
            ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(tile["width"]),
                          ySize=str(tile["height"]))
            ET.SubElement(source, "DstRect",
                          xOff=str(round((tile["transform"].c - left) / px)),
                          yOff=str(round((tile["transform"].f - top) / py)),
                          xSize=str(tile["width"]), ySize=str(tile["height"]))
    ET.indent(root)
    atomic_write_text(Path(out), ET.tostring(root, encoding="unicode") + "\n")
    return Path(out)


def vrt_sources(vrt: Path) -> list[Path]:
    """The tile files a VRT lists (band 1), in VRT order."""
    vrt = Path(vrt)
    try:
        root = ET.parse(vrt).getroot()
    except (OSError, ET.ParseError) as exc:
        raise MarsevalError(f"{vrt}: not a readable VRT ({exc})") from None
    band = root.find("VRTRasterBand")
    if band is None:
        raise MarsevalError(f"{vrt}: VRT has no raster band")
    paths = []
    for name in band.iter("SourceFilename"):
        relative = name.get("relativeToVRT") == "1"
        paths.append((vrt.parent / name.text) if relative else Path(name.text))
    return paths
