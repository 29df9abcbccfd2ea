"""Synthetic MarsRetrieval raw data: captioned pairs, labelled landforms, a global mosaic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from marseval.data.records import ImageRef
from marseval.data.synthetic import scenes
from marseval.data.synthetic.ctx import write_ctx_archives
from marseval.data.synthetic.generate import (
    GEO_LANDFORM_MOTIFS,
    LANDFORM_MOTIFS,
    encode_png,
    rng_for,
)
from marseval.data.synthetic.writers import write_parquet
from marseval.registry import DatasetSpec
from marseval.retrieval.ctx.catalog import MARS_LONLAT, CtxTile, ctx_tiles

CTX_FOLDER = "ctx_tiles"  # the fake CTX archives (retrieval.ctx.source synthetic)


def write_retrieval(spec: DatasetSpec, dest: Path, seed: int, size: int, opts: dict) -> None:
    writers = {"paired": _pairs, "landform": _landforms, "geolocalization": _geolocalization}
    dest.mkdir(parents=True, exist_ok=True)
    writers[spec.subtask](spec, dest, rng_for(seed, spec.name), size, opts)


def _pairs(spec: DatasetSpec, dest: Path, rng: np.random.Generator, size: int,
           opts: dict) -> None:
    motifs = list(scenes.MOTIFS)
    rows = []
    (dest / "images").mkdir(exist_ok=True)
    for i in range(opts["pairs"]):
        chosen = [motifs[j] for j in rng.choice(len(motifs), size=int(rng.integers(1, 3)),
                                                replace=False)]
        key = f"{i:09d}"
        (dest / "images" / f"{key}.png").write_bytes(
            encode_png(scenes.scene_with_motifs(chosen, rng, size=size, bands=3)))
        rows.append({"key": key, "image_url": f"images/{key}.png",
                     "ori_caption": " ".join(chosen).replace("_", " "),
                     "refined_caption": scenes.caption(chosen, rng)})
    (dest / "data").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(dest / "data" / "train-00000-of-00001.parquet", index=False)


def _landforms(spec: DatasetSpec, dest: Path, rng: np.random.Generator, size: int,
               opts: dict) -> None:
    classes = list(spec.classes) if spec.classes else list(LANDFORM_MOTIFS)
    rows = []
    for label, name in enumerate(classes):
        motif = LANDFORM_MOTIFS.get(name, scenes.MOTIFS[label % len(scenes.MOTIFS)])
        for j in range(opts["landform_images_per_class"]):
            pixels = scenes.scene_with_motifs([motif], rng, size=size, bands=3)
            ref = ImageRef(f"{name}_{j:04d}.png", data=encode_png(pixels))
            rows.append({"image": {"bytes": ref.data, "path": ref.name}, "label": label})
    order = rng.permutation(len(rows))  # the hub files are not sorted by class
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": classes}}
    write_parquet([rows[i] for i in order], dest / "data" / "train-00000-of-00001.parquet",
                  features)


def _geolocalization(spec: DatasetSpec, dest: Path, rng: np.random.Generator, size: int,
                     opts: dict) -> None:
    import rasterio
    from rasterio.transform import from_bounds

    landforms = list(spec.classes) if spec.classes else list(GEO_LANDFORM_MOTIFS)
    motifs = [GEO_LANDFORM_MOTIFS.get(n, "crater") for n in landforms]
    width, height = opts["mosaic_width"], opts["mosaic_height"]
    ctx = opts.get("ctx")
    tiles = ctx_tiles(ctx["max_abs_lat"], ctx["region"]) if ctx else []
    mosaic, sites = scenes.global_mosaic(motifs, rng, width, height,
                                         n_sites=opts["sites_per_landform"], bands=1,
                                         window=_site_window(tiles, width, height))
    if ctx:  # the run's database: fake CTX tiles of this planet, as Murray Lab serves them
        write_ctx_archives(mosaic, tiles, dest / CTX_FOLDER, ctx["pixels"])
    (dest / "mars_map").mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": "uint8", "crs": MARS_LONLAT,
               "transform": from_bounds(-180, -90, 180, 90, width, height)}
    with rasterio.open(dest / "mars_map" / "global_mosaic.tif", "w", **profile) as dst:
        dst.write(mosaic[np.newaxis])
    for landform, motif in zip(landforms, motifs, strict=True):
        # pixel centre -> lon/lat of the equirectangular grid
        points = [{"lon": -180 + (c + 0.5) * 360 / width, "lat": 90 - (r + 0.5) * 180 / height}
                  for r, c in sites[motif]]
        (dest / "ground_truth").mkdir(exist_ok=True)
        pd.DataFrame(points).to_csv(dest / "ground_truth" / f"{landform}.csv", index=False)
        folder = dest / "image_queries" / landform
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(opts["queries_per_landform"]):
            pixels = scenes.scene_with_motifs([motif], rng, size=size, bands=1)
            (folder / f"query_{j:02d}.png").write_bytes(encode_png(pixels))


def _site_window(tiles: list[CtxTile], width: int, height: int
                 ) -> tuple[int, int, int, int] | None:
    """Mosaic rows and columns the CTX tiles cover: ground truth the database can reach."""
    if not tiles:
        return None
    lon0, lat0 = min(t.lon for t in tiles), min(t.lat for t in tiles)
    lon1, lat1 = max(t.bounds[2] for t in tiles), max(t.bounds[3] for t in tiles)
    return (round((90 - lat1) / 180 * height), round((90 - lat0) / 180 * height),
            round((lon0 + 180) / 360 * width), round((lon1 + 180) / 360 * width))
