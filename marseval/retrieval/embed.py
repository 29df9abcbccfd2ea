"""The `embed` stage: one shard of a retrieval database, embedded by one model.

The database of each task is what queries are ranked over:

- paired: the images of the image-caption pairs; the captions' text embeddings travel with
  them (`text_embeddings` extra), row for row;
- landform: the labelled landform images;
- geolocalization: the tiles of the global mosaic (`tile_delta` degrees, `tile_pixels` px,
  |lat| < `max_abs_lat`), each with its lon/lat bounds.

Shard i of n holds a contiguous block of the database (numpy's array_split), so merging the
shards in order gives the database order, whatever n is.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from marseval.errors import MarsevalError
from marseval.retrieval.index import write_shard
from marseval.retrieval.tiles import Mosaic, tile_grid

if TYPE_CHECKING:  # torch loads only in the jobs that embed: evaluate reads files
    from marseval.retrieval.models import EmbeddingModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileOptions:
    delta: float = 0.2
    pixels: int = 512
    max_abs_lat: float = 80.0


def read_meta(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MarsevalError(f"{path}: not a standardized dataset ({exc})") from None
    if meta.get("task") != "retrieval":
        raise MarsevalError(f"{path}: task {meta.get('task')!r} is not a retrieval dataset")
    return meta


def database(dataset_dir: Path, meta: dict, tiles: TileOptions) -> pd.DataFrame:
    """The rows a task ranks: `id` plus what evaluation needs (label, caption, bounds)."""
    if meta["subtask"] == "geolocalization":
        return tile_grid(tiles.delta, tiles.max_abs_lat)
    samples = pd.read_parquet(Path(dataset_dir) / "samples.parquet")
    keep = ["sample_id", "image"] + [c for c in ("label", "caption") if c in samples]
    return samples[keep].rename(columns={"sample_id": "id"}).reset_index(drop=True)


def shard_rows(n_rows: int, shard: int, shards: int) -> range:
    if not 0 <= shard < shards:
        raise MarsevalError(f"shard {shard} is outside 0..{shards - 1}")
    block = np.array_split(np.arange(n_rows), shards)[shard]
    return range(int(block[0]), int(block[-1]) + 1) if len(block) else range(0)


def _batches(rows: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(rows), size):
        yield rows.iloc[start:start + size]


def sample_images(dataset_dir: Path, rows: pd.DataFrame) -> list[Image.Image]:
    images = []
    for name in rows["image"]:
        path = Path(dataset_dir) / name
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            raise MarsevalError(f"image {path}: unreadable ({exc})") from None
    return images


def tile_images(mosaic: Mosaic, rows: pd.DataFrame, pixels: int) -> list[Image.Image]:
    bounds = rows[["lon_min", "lat_min", "lon_max", "lat_max"]].itertuples(index=False)
    return [mosaic.read(tuple(b), pixels) for b in bounds]


def embed_images(model: EmbeddingModel, rows: pd.DataFrame, batch_size: int,
                 load: Callable[[pd.DataFrame], list[Image.Image]]) -> np.ndarray:
    """Embeddings of `rows` in order, `load(batch rows) -> PIL images`, batch by batch."""
    parts = [model.embed_images(load(batch)) for batch in _batches(rows, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def embed_texts(model: EmbeddingModel, texts: Sequence[str], batch_size: int) -> np.ndarray:
    parts = [model.embed_texts(list(texts[i:i + batch_size]))
             for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def embed_shard(dataset_dir: Path, model_name: str, shard: int, shards: int, out: Path, *,
                tiles: TileOptions = TileOptions(), batch_size: int = 64, device: str = "cpu",
                dtype: str = "float32") -> dict:
    """Embed shard `shard` of `shards` of a dataset's database into the folder `out`."""
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir)
    table = database(dataset_dir, meta, tiles)
    rows = table.iloc[list(shard_rows(len(table), shard, shards))]
    from marseval.retrieval.models import load_model  # torch: outside the timed embedding

    started = time.perf_counter()
    model = load_model(model_name, device)
    extra: dict[str, np.ndarray] = {}
    if meta["subtask"] == "geolocalization":
        with Mosaic(_mosaic_path(dataset_dir, meta)) as mosaic:
            embeddings = embed_images(model, rows, batch_size,
                                      lambda b: tile_images(mosaic, b, tiles.pixels))
    else:
        embeddings = embed_images(model, rows, batch_size,
                                  lambda b: sample_images(dataset_dir, b))
    if meta["subtask"] == "paired" and model.has_text:
        # a vision-only model has no captions to match: evaluation reports it not applicable
        extra["text_embeddings"] = embed_texts(model, rows["caption"].tolist(), batch_size)
    seconds = time.perf_counter() - started
    write_shard(out, embeddings, rows.drop(columns=["image"], errors="ignore"), dtype=dtype,
                extra=extra)
    log.info("%s shard %d/%d: %d items in %.1f s (%.1f items/s) with %s on %s",
             meta["name"], shard, shards, len(rows), seconds, len(rows) / max(seconds, 1e-9),
             model_name, device)
    return {"rows": len(rows), "seconds": seconds}


def _mosaic_path(dataset_dir: Path, meta: dict) -> Path:
    mosaic = meta.get("mosaic")
    if not mosaic:
        raise MarsevalError(f"{dataset_dir}/meta.json: dataset {meta['name']} has no mosaic; "
                            "geo-localization tiles are cut from mars_map/*.tif")
    return dataset_dir / mosaic["path"]
