"""Pieces both raw layouts share: subset names and class-name files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from marseval.errors import DataError

# "partition_train_0.05x_partition" (classification, segmentation), "0.05x_partition" (detection)
PARTITION = re.compile(r"^(?:partition_train_)?(?P<p>[0-9]*\.?[0-9]+)x_partition$")
FEWSHOT = re.compile(r"^(?:few_shot_train_)?(?P<k>[0-9]+)_shot$")
MAIN_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# Detection annotations, most preferred first, in both layouts. The reference reads only the
# format its model config names, and all three of its detectors name pascal_voc (Mars-Bench
# marsbench/configs/model/detection/*.yaml `bbox_format: pascal_voc`; HFDetection.py reads
# `<format>_annotation`, the local loaders pascal_voc/<stem>.xml). COCO (pixel x, y, w, h)
# comes next, YOLO (normalised, needs the image size) last.
DETECTION_FORMATS = ("pascal_voc", "coco", "yolo")


def subset_key(name: str) -> str | None:
    """Our subset name for an upstream partition/few-shot split or file stem, else None."""
    from marseval.data.records import fewshot_key, fraction_key

    if m := PARTITION.match(name):
        return fraction_key(float(m["p"]))
    if m := FEWSHOT.match(name):
        return fewshot_key(int(m["k"]))
    return None


def read_mapping(path: Path, dataset: str) -> list[str] | None:
    """Class names from an optional mapping.json ({"0": name | [abbr, name]} or [names])."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(dataset, f"malformed mapping file ({exc})", file=str(path)) from None
    if isinstance(doc, dict):
        try:
            items = [doc[k] for k in sorted(doc, key=int)]
        except ValueError:
            raise DataError(dataset, "mapping keys must be class indices", file=str(path)) from None
    elif isinstance(doc, list):
        items = doc
    else:
        raise DataError(dataset, "mapping must be an object or a list", file=str(path))
    # [abbr, long name] pairs: keep the abbreviation, as the reference code does
    return [str(v[0]) if isinstance(v, list) and v else str(v) for v in items]


def voc_class(name: str, classes: list[str], dataset: str, split: str, origin: str) -> int:
    """0-based class index of a Pascal VOC object name."""
    if name in classes:
        return classes.index(name)
    if len(classes) == 1:  # single-class sets name their objects freely ("Boulder", "boulder")
        return 0
    raise DataError(dataset, f"object class {name!r} is not one of {classes}", split=split,
                    file=origin)
