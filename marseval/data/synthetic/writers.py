"""Serialise a `RawDataset` in the raw layouts the real sources use.

The writers are the inverse of `marseval.data.layouts`: what they write, the readers read back
to the same samples (tests/test_layouts.py checks it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from marseval.data import annotations as ann
from marseval.data.multiband import embed_bands, write_series_tiff
from marseval.data.records import RawDataset, RawSample
from marseval.registry import SPLITS, DatasetSpec


def _size(sample: RawSample) -> tuple[int, int]:
    with Image.open(io.BytesIO(sample.image.read())) as im:
        return im.size


def _bands(sample: RawSample) -> int:
    with Image.open(io.BytesIO(sample.image.read())) as im:
        return len(im.getbands())


def _subset_name(key: str, task: str, layout: str) -> str:
    kind, value = key.split(":")
    if kind == "fraction":
        stem = f"{float(value):.2f}x_partition"
        return stem if layout == "zenodo" or task == "detection" else f"partition_train_{stem}"
    return f"{value}_shot" if layout == "zenodo" else f"few_shot_train_{value}_shot"


# --------------------------------------------------------------------------- Zenodo layout
def write_zenodo(raw: RawDataset, spec: DatasetSpec, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    classes = raw.classes or spec.class_names()
    (dest / "mapping.json").write_text(
        json.dumps({str(i): name for i, name in enumerate(classes)}, indent=1))
    if spec.task == "classification":
        _zenodo_classification(raw, spec, dest, classes)
    elif spec.task == "segmentation":
        for s in raw.samples:
            for folder, (name, data) in (("images", _zenodo_image(s, spec)),
                                         ("masks", (s.mask.name, s.mask.read()))):
                path = dest / "data" / s.split / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        _zenodo_subsets(raw, spec, dest, lambda s: {"file_id": s.image.name, "split": s.split})
    else:
        _zenodo_detection(raw, dest, classes)
        _zenodo_subsets(raw, spec, dest, lambda s: {"file_id": s.image.name, "split": s.split})


def _zenodo_image(s: RawSample, spec: DatasetSpec) -> tuple[str, bytes]:
    """File name and bytes; a multi-band TIFF holding the image at `keep_bands` (MMLS)."""
    if spec.keep_bands is None:
        return s.image.name, s.image.read()
    with Image.open(io.BytesIO(s.image.read())) as im:
        rgb = np.asarray(im)
    total = max(spec.bands or 0, max(spec.keep_bands) + 1)
    return f"{s.stem}.tif", write_series_tiff(embed_bands(rgb, spec.keep_bands, total))


def _classification_row(s: RawSample, spec: DatasetSpec, classes: list[str]) -> dict:
    if spec.subtask == "multilabel":
        return {"file_id": s.image.name, "feature_name": "", "label": str(s.labels),
                "split": s.split}
    return {"file_id": s.image.name, "feature_name": classes[s.label], "label": str(s.label),
            "split": s.split}


def _zenodo_classification(raw: RawDataset, spec: DatasetSpec, dest: Path,
                           classes: list[str]) -> None:
    rows = []
    for s in raw.samples:
        row = _classification_row(s, spec, classes)
        folder = dest / "data" / s.split / row["feature_name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / s.image.name).write_bytes(s.image.read())
        if s.image_after is not None:
            (folder / s.image_after.name).write_bytes(s.image_after.read())
        rows.append(row)
    pd.DataFrame(rows).to_csv(dest / "annotation.csv", index=False)
    _zenodo_subsets(raw, spec, dest, lambda s: _classification_row(s, spec, classes))


def _zenodo_subsets(raw: RawDataset, spec: DatasetSpec, dest: Path, row_of) -> None:
    by_stem = {s.stem: s for s in raw.samples if s.split == "train"}
    for key, stems in raw.subsets.items():
        folder = "partitions" if key.startswith("fraction") else "few_shot"
        path = dest / folder / f"{_subset_name(key, spec.task, 'zenodo')}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([row_of(by_stem[stem]) for stem in stems]).to_csv(path, index=False)


def _zenodo_detection(raw: RawDataset, dest: Path, classes: list[str]) -> None:
    for split in SPLITS:
        samples = [s for s in raw.samples if s.split == split]
        base = dest / "data" / split
        for folder in ("images", "labels", "pascal_voc"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        coco_images = []
        for s in samples:
            width, height = _size(s)
            (base / "images" / s.image.name).write_bytes(s.image.read())
            (base / "labels" / f"{s.stem}.txt").write_text(ann.format_yolo(s.boxes, width,
                                                                             height))
            (base / "pascal_voc" / f"{s.stem}.xml").write_text(
                ann.format_voc(s.image.name, s.boxes, classes, width, height, _bands(s)))
            coco_images.append((s.image.name, width, height, s.boxes))
        (base / "coco_annotations.json").write_text(
            json.dumps(ann.format_coco(coco_images, classes)))


# ---------------------------------------------------------------------- Hugging Face layout
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _image_cell(ref) -> dict:
    return {"bytes": ref.read(), "path": ref.name}


def _features(spec: DatasetSpec, classes: list[str]) -> dict:
    """The `datasets` feature description that hub parquet files carry in their metadata."""
    features: dict = {"image": {"_type": "Image"}}
    if spec.task == "classification":
        label = {"_type": "ClassLabel", "names": classes}
        features["label"] = ({"_type": "Sequence", "feature": label}
                             if spec.subtask == "multilabel" else label)
    elif spec.task == "segmentation":
        features["mask"] = {"_type": "Image"}
    return features


def _hf_row(s: RawSample, spec: DatasetSpec) -> dict:
    row = {"image": _image_cell(s.image)}
    if spec.task == "classification":
        row["label"] = s.labels if spec.subtask == "multilabel" else s.label
        if s.image_after is not None:
            row["image_after"] = _image_cell(s.image_after)
    elif spec.task == "segmentation":
        row["mask"] = _image_cell(s.mask)
    else:
        row["coco_annotation"] = {"annotations": {
            "bbox": [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in s.boxes],
            # COCO category ids start at 1
            "category_id": [int(b[4]) + 1 for b in s.boxes],
        }}
    return row


def write_parquet(rows: list[dict], path: Path, features: dict) -> None:
    table = pa.Table.from_pylist(rows)
    if "image" in table.column_names:
        table = table.set_column(table.column_names.index("image"), "image",
                                 pa.array([r["image"] for r in rows], type=IMAGE_TYPE))
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def write_huggingface(raw: RawDataset, spec: DatasetSpec, dest: Path) -> None:
    classes = raw.classes or spec.class_names()
    features = _features(spec, classes)
    by_stem = {s.stem: s for s in raw.samples if s.split == "train"}
    splits = {split: [s for s in raw.samples if s.split == split] for split in SPLITS}
    for key, stems in raw.subsets.items():
        splits[_subset_name(key, spec.task, "huggingface")] = [by_stem[x] for x in stems]
    for split, samples in splits.items():
        write_parquet([_hf_row(s, spec) for s in samples],
                      dest / "data" / f"{split}-00000-of-00001.parquet", features)
