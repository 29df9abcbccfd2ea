"""The `embed` stage: one shard of a retrieval database, embedded by one model.

The database of each task is what queries are ranked over:

- paired: the images of the image-caption pairs; the captions' text embeddings travel with
  them (`text_embeddings` extra), row for row;
- landform: the labelled landform images;
- geolocalization: the cells of one cut CTX group (`--cells`, marseval.retrieval.ctx),
  each with its lon/lat bounds; one embedding shard per group.

Shard i of n holds a contiguous block of the database (numpy's array_split), so merging the
shards in order gives the database order, whatever n is.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from marseval.errors import MarsevalError
from marseval.retrieval.ctx.cells import cell_images, read_cells
from marseval.retrieval.shards import write_shard

if TYPE_CHECKING:  # torch loads only in the jobs that embed: evaluate reads files
    from marseval.retrieval.models import EmbeddingModel

log = logging.getLogger(__name__)


def read_meta(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MarsevalError(f"{path}: not a standardized dataset ({exc})") from None
    if meta.get("task") != "retrieval":
        raise MarsevalError(f"{path}: task {meta.get('task')!r} is not a retrieval dataset")
    return meta


# Mars-VL-Pairs' caption columns as the standardized samples hold them (the reference's
# `caption_key`: refined_caption by default, ori_caption the ablation)
CAPTION_COLUMNS = {"refined_caption": "caption", "ori_caption": "ori_caption"}


def database(dataset_dir: Path, meta: dict, cells: Path | None = None,
             caption_key: str = "refined_caption") -> pd.DataFrame:
    """The rows a task ranks: `id` plus what evaluation needs (label, caption, bounds)."""
    if meta["subtask"] == "geolocalization":
        if cells is None:
            raise MarsevalError(f"{dataset_dir}: geo-localization embeds cut CTX cells; "
                                "give the cell group (--cells)")
        return read_cells(cells)
    samples = pd.read_parquet(Path(dataset_dir) / "samples.parquet")
    if meta["subtask"] == "paired":
        if caption_key not in CAPTION_COLUMNS:
            raise MarsevalError(f"caption key {caption_key!r}: use one of "
                                f"{sorted(CAPTION_COLUMNS)}")
        samples["caption"] = samples[CAPTION_COLUMNS[caption_key]]
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


class SampleLoader:
    """Batch rows -> their images. An image that does not decode stops the job (the error
    names it, then `stop_hint`), or with `skip` is named in the log, counted and left out
    (its row with it: `kept` lists the rows whose images were loaded, in order)."""

    def __init__(self, dataset_dir: Path, skip: bool = False, stop_hint: str = "") -> None:
        self.dataset_dir, self.skip, self.stop_hint = Path(dataset_dir), skip, stop_hint
        self.kept: list = []
        self.skipped: list[str] = []

    def __call__(self, batch: pd.DataFrame) -> list[Image.Image]:
        images = []
        for index, name in zip(batch.index, batch["image"], strict=True):
            path = self.dataset_dir / name
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            except OSError as exc:
                if not self.skip:
                    raise MarsevalError(f"image {path}: unreadable ({exc}){self.stop_hint}"
                                        ) from None
                log.warning("image %s: unreadable (%s); left out of the shard", path, exc)
                self.skipped.append(str(path))
                continue
            self.kept.append(index)
        return images


def sample_images(dataset_dir: Path, rows: pd.DataFrame) -> list[Image.Image]:
    """The images of `rows`; one that does not decode stops the job, naming it."""
    return SampleLoader(dataset_dir)(rows)


def embed_images(model: EmbeddingModel, rows: pd.DataFrame, batch_size: int,
                 load: Callable[[pd.DataFrame], list[Image.Image]]) -> np.ndarray:
    """Embeddings of `rows` in order, `load(batch rows) -> PIL images`, batch by batch."""
    return embed_stream(model, (image for batch in _batches(rows, batch_size)
                                for image in load(batch)), batch_size)


def embed_stream(model: EmbeddingModel, images: Iterator[Image.Image], batch_size: int
                 ) -> np.ndarray:
    """Embeddings of a stream of images in order, `batch_size` at a time."""
    parts, batch = [], []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            parts.append(model.embed_images(batch))
            batch = []
    if batch:
        parts.append(model.embed_images(batch))
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def embed_texts(model: EmbeddingModel, texts: Sequence[str], batch_size: int) -> np.ndarray:
    parts = [model.embed_texts(list(texts[i:i + batch_size]))
             for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def embed_shard(dataset_dir: Path, model_name: str, shard: int, shards: int, out: Path, *,
                cells: Path | None = None, batch_size: int = 64, device: str = "cpu",
                dtype: str = "float32", caption_key: str = "refined_caption",
                skip_bad_images: bool = False) -> dict:
    """Embed shard `shard` of `shards` of a dataset's database into the folder `out`."""
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir)
    table = database(dataset_dir, meta, cells, caption_key)
    rows = table.iloc[list(shard_rows(len(table), shard, shards))]
    from marseval.retrieval.models import load_model  # torch: outside the timed embedding

    started = time.perf_counter()
    model = load_model(model_name, device)
    extra: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    if meta["subtask"] == "geolocalization":
        embeddings = embed_stream(model, cell_images(cells, rows["member"].tolist()),
                                  batch_size)
    else:
        loader = SampleLoader(dataset_dir, skip_bad_images,
                              "; the shard stops (retrieval.bad_images: skip leaves such "
                              "images out)")
        embeddings = embed_images(model, rows, batch_size, loader)
        rows = rows.loc[loader.kept]
        skipped = loader.skipped
    if meta["subtask"] == "paired" and model.has_text:
        # a vision-only model has no captions to match: evaluation reports it not applicable
        extra["text_embeddings"] = embed_texts(model, rows["caption"].tolist(), batch_size)
    seconds = time.perf_counter() - started
    write_shard(out, embeddings, rows.drop(columns=["image", "member"], errors="ignore"),
                dtype=dtype, extra=extra)
    # benchmarks/gpu_check.py reads this line: the device stays at its end
    log.info("%s shard %d/%d: %d items in %.1f s (%.1f items/s) with %s on %s",
             meta["name"], shard, shards, len(rows), seconds, len(rows) / max(seconds, 1e-9),
             model_name, device)
    log.info("%s shard %d/%d: %d unreadable images left out", meta["name"], shard, shards,
             len(skipped))
    return {"rows": len(rows), "seconds": seconds, "skipped": skipped}
