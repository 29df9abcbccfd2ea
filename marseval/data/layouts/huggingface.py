"""Reader of the Hugging Face layout: parquet shards of a dataset repo snapshot.

Shards are `data/<split>-NNNNN-of-NNNNN.parquet` (or `<config>/<split>/NNNN.parquet`); splits are
train, val, test plus the upstream subsets `partition_train_<p>x_partition` (detection:
`<p>x_partition`) and `few_shot_train_<k>_shot`. Columns: `image` (an HF Image struct
{bytes, path}) with `label` (int; multi-label: list of ints or its literal), `mask` (Image), or
some of `pascal_voc_annotation`, `coco_annotation`, `yolo_annotation` (structs or JSON strings):
boxes come from the first of these the shard has (`common.DETECTION_FORMATS`), or from the one
asked for.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from marseval.data.layouts.common import (
    DETECTION_FORMATS,
    MAIN_SPLITS,
    read_mapping,
    subset_key,
    voc_class,
)
from marseval.data.records import ImageRef, RawDataset, RawSample
from marseval.errors import DataError
from marseval.registry import DatasetSpec

SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")


def split_of(path: Path) -> str:
    """The split a parquet shard belongs to, from its name or its folder."""
    if m := SHARD.match(path.stem):
        return m["split"]
    return path.parent.name


def read(root: Path, spec: DatasetSpec, detection_format: str | None = None) -> RawDataset:
    shards: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.parquet")):
        shards[split_of(path)].append(path)
    classes = read_mapping(root / "mapping.json", spec.name)
    samples: list[RawSample] = []
    extra: dict[str, list[RawSample]] = {}
    for split, paths in shards.items():
        rows, names = _rows(paths, spec, split, detection_format)
        classes = classes or names
        if split in MAIN_SPLITS:
            samples.extend(rows)
        elif (key := subset_key(split)) is not None:
            extra[key] = rows
    return RawDataset(samples, classes=classes, subsets=_match_subsets(samples, extra),
                      layout="huggingface")


def _class_names(path: Path) -> list[str] | None:
    """ClassLabel names recorded by `datasets` in the parquet schema metadata."""
    meta = pq.read_schema(path).metadata or {}
    try:
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        label = features.get("label") or {}
        label = label.get("feature", label)  # Sequence(ClassLabel) for multi-label
        return list(label["names"]) if "names" in label else None
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _image(cell: Any, fallback: str, dataset: str, split: str, where: str) -> ImageRef:
    if isinstance(cell, dict) and cell.get("bytes"):
        name = Path(cell.get("path") or fallback).name
        return ImageRef(name, data=cell["bytes"])
    raise DataError(dataset, "image cell holds no encoded bytes", split=split, file=where)


def _rows(paths: list[Path], spec: DatasetSpec, split: str,
          detection_format: str | None = None) -> tuple[list[RawSample], list[str] | None]:
    samples, names = [], None
    main = MAIN_SPLITS.get(split, "train")
    for path in paths:
        names = names or _class_names(path)
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(spec.name, f"unreadable parquet ({exc})", split=split,
                            file=str(path)) from None
        columns = set(table.column_names)
        if "image" not in columns:
            raise DataError(spec.name, f"no 'image' column (columns: {sorted(columns)})",
                            split=split, file=str(path))
        box_column = (_box_column(columns, detection_format, spec, split, path)
                      if spec.task == "detection" else None)
        for index, row in enumerate(table.to_pylist()):
            where = f"{path}#row{index}"
            fallback = f"{split}-{path.stem}-{index:06d}.png"
            sample = RawSample(split=main, image=_image(row["image"], fallback, spec.name, split,
                                                        where), origin=where)
            if spec.task == "classification":
                _set_label(sample, row, spec, split, where)
                if spec.pairs and row.get("image_after") is not None:
                    sample.image_after = _image(row["image_after"], "after-" + fallback,
                                                spec.name, split, where)
            elif spec.task == "segmentation":
                if "mask" not in row:
                    raise DataError(spec.name, "no 'mask' column", split=split, file=str(path))
                sample.mask = _image(row["mask"], "mask-" + fallback, spec.name, split, where)
            elif spec.task == "detection":
                sample.boxes = _boxes(row, box_column, spec, split, where)
            samples.append(sample)
    return samples, names


def _set_label(sample: RawSample, row: dict, spec: DatasetSpec, split: str, where: str) -> None:
    if "label" not in row:
        raise DataError(spec.name, "no 'label' column", split=split, file=where)
    value = row["label"]
    try:
        if isinstance(value, str):
            value = ast.literal_eval(value)
        if spec.subtask == "multilabel":
            value = [value] if isinstance(value, int) else list(value)
            sample.labels = sorted({int(v) for v in value})
        else:
            sample.label = int(value)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise DataError(spec.name, f"unparseable label {row['label']!r} ({exc})", split=split,
                        file=where) from None


def _box_column(columns: set[str], preferred: str | None, spec: DatasetSpec, split: str,
                path: Path) -> str:
    """The annotation column boxes are read from: the one asked for, else the first present."""
    wanted = [f"{fmt}_annotation" for fmt in ([preferred] if preferred else DETECTION_FORMATS)]
    column = next((c for c in wanted if c in columns), None)
    if column is None:
        raise DataError(spec.name, f"no box column (one of {wanted}; columns: "
                        f"{sorted(columns)})", split=split, file=str(path))
    return column


def _boxes(row: dict, column: str, spec: DatasetSpec, split: str,
           where: str) -> list[list[float]]:
    """Pixel boxes `[x1, y1, x2, y2, class]` (class 0-based) from one annotation column."""
    cell = row[column]
    if not cell:
        return []  # an image with no objects
    try:
        if isinstance(cell, str):
            cell = json.loads(cell)
        if column == "coco_annotation":
            inner = cell.get("annotations", cell)
            # COCO category ids start at 1; 0 is reserved for background
            return [[x, y, x + w, y + h, int(c) - 1]
                    for (x, y, w, h), c in zip(inner["bbox"], inner["category_id"], strict=True)]
        if column == "yolo_annotation":
            width, height = _size(row, spec, split, where)
            return [[(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                     (cy + h / 2) * height, int(c)]
                    for (cx, cy, w, h), c in zip(cell["bbox"], cell["category"], strict=True)]
        objects = cell.get("objects", cell)
        classes = spec.class_names()
        return [[b["xmin"], b["ymin"], b["xmax"], b["ymax"],
                 voc_class(str(n).strip(), classes, spec.name, split, where)]
                for b, n in zip(objects["bbox"], objects["name"], strict=True)]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise DataError(spec.name, f"malformed {column} ({type(exc).__name__}: {exc})",
                        split=split, file=where) from None


def _size(row: dict, spec: DatasetSpec, split: str, where: str) -> tuple[int, int]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(row["image"]["bytes"])) as im:
            return im.size
    except OSError as exc:
        raise DataError(spec.name, f"undecodable image ({exc})", split=split,
                        file=where) from None


def _match_subsets(train: list[RawSample],
                   extra: dict[str, list[RawSample]]) -> dict[str, list[str]]:
    """Upstream subset splits repeat training rows: map them back by file name, else by bytes."""
    by_name = {s.image.name: s.stem for s in train if s.split == "train"}
    by_hash: dict[str, str] | None = None  # built only if some row's file name is unknown
    subsets = {}
    for key, rows in extra.items():
        stems = []
        for row in rows:
            stem = by_name.get(row.image.name)
            if stem is None:
                if by_hash is None:
                    by_hash = {hashlib.sha1(s.image.read()).hexdigest(): s.stem
                               for s in train if s.split == "train"}
                stem = by_hash.get(hashlib.sha1(row.image.read()).hexdigest(), row.stem)
            stems.append(stem)
        subsets[key] = stems
    return subsets
