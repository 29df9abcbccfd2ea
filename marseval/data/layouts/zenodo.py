"""Reader of the Zenodo (folder) layout of Mars-Bench.

classification  annotation.csv (file_id, feature_name, label, split);
                images at data/<split>/<feature_name>/<file_id>
                (multi-label: data/<split>/<file_id>; change detection: the row names the
                "before" image, "after" is the same path with "before" replaced by "after")
segmentation    data/<split>/images/ and data/<split>/masks/, paired by file stem (MMLS:
                Image<x>/Mask<x>); multi-band TIFF images keep the registry's `keep_bands`
detection       data/<split>/images/ with pascal_voc/<stem>.xml, coco_annotations.json,
                labels/<stem>.txt (YOLO): the first present, or the one asked for
optional        mapping.json, partitions/<p>x_partition.csv, few_shot/<k>_shot.csv
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from marseval.data import annotations as ann
from marseval.data import multiband
from marseval.data.layouts.common import (
    DETECTION_FORMATS,
    read_mapping,
    subset_key,
    voc_class,
)
from marseval.data.records import ImageRef, RawDataset, RawSample
from marseval.errors import DataError
from marseval.registry import SPLITS, DatasetSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
ANNOTATION_COLUMNS = ("file_id", "label", "split")


def find_root(path: Path, dataset: str) -> Path:
    """The folder holding annotation.csv or data/: the given one or its single subfolder."""
    def is_root(p: Path) -> bool:
        return (p / "annotation.csv").is_file() or (p / "data").is_dir()

    if is_root(path):
        return path
    candidates = [p for p in sorted(path.iterdir()) if p.is_dir() and is_root(p)]
    if len(candidates) == 1:
        return candidates[0]
    if any((path / s).is_dir() for s in SPLITS):  # detection archives that start at data/
        return path
    raise DataError(dataset, "no annotation.csv or data/ folder found in the raw download",
                    file=str(path))


def read(path: Path, spec: DatasetSpec, detection_format: str | None = None) -> RawDataset:
    root = find_root(path, spec.name)
    classes = read_mapping(root / "mapping.json", spec.name)
    notes: list[str] = []
    if spec.task == "classification":
        samples = _classification(root, spec)
    elif spec.task == "segmentation":
        samples, notes = _segmentation(root, spec)
    elif spec.task == "detection":
        samples, coco_classes = _detection(root, spec, detection_format)
        classes = classes or coco_classes
    else:
        raise DataError(spec.name, f"task {spec.task!r} has no Zenodo layout reader")
    return RawDataset(samples, classes=classes, subsets=_subsets(root, spec.name),
                      layout="zenodo", notes=notes)


def _read_csv(path: Path, dataset: str, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(dataset, f"malformed annotation file ({exc})", file=str(path)) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(dataset, f"annotation file lacks column(s) {missing}; has "
                        f"{list(frame.columns)}", file=str(path))
    return frame


def _parse_label(value: str, multilabel: bool, dataset: str, split: str,
                 where: str) -> int | list[int]:
    try:
        parsed = ast.literal_eval(value.strip())
        if multilabel:
            parsed = [parsed] if isinstance(parsed, int) else list(parsed)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in parsed):
                raise ValueError("labels must be integers")
            return sorted(set(parsed))
        if not isinstance(parsed, int) or isinstance(parsed, bool):
            raise ValueError("label must be an integer")
        return parsed
    except (ValueError, SyntaxError, TypeError) as exc:
        raise DataError(dataset, f"unparseable label {value!r} ({exc})", split=split,
                        file=where) from None


def _classification(root: Path, spec: DatasetSpec) -> list[RawSample]:
    csv = root / "annotation.csv"
    if not csv.is_file():
        raise DataError(spec.name, "annotation.csv is missing", file=str(csv))
    frame = _read_csv(csv, spec.name, ANNOTATION_COLUMNS)
    multilabel = spec.subtask == "multilabel"
    samples = []
    for number, row in enumerate(frame.itertuples(index=False), start=2):
        where = f"{csv}:{number}"
        split = row.split.strip()
        if split not in SPLITS:
            raise DataError(spec.name, f"unknown split {split!r}", file=where)
        folder = root / "data" / split
        feature = getattr(row, "feature_name", "")
        image = folder / feature / row.file_id if feature else folder / row.file_id
        label = _parse_label(row.label, multilabel, spec.name, split, where)
        sample = RawSample(split=split, image=ImageRef(row.file_id, path=image), origin=where)
        if multilabel:
            sample.labels = label
        else:
            sample.label = label
        if spec.pairs:
            after = image.parent / image.name.replace("before", "after")
            if after == image:
                after = Path(str(image).replace("before", "after"))
            sample.image_after = ImageRef(after.name, path=after)
        samples.append(sample)
    return samples


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _pair_key(path: Path) -> str:
    # MMLS names its pairs Image<x>.tif / Mask<x>.tif (Image_patch_10_1 / Mask_patch_10_1)
    stem = path.stem
    for prefix in ("Image", "Mask"):
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    return stem


def _segmentation_image(path: Path, spec: DatasetSpec, split: str) -> ImageRef:
    """The image file, or for a multi-band TIFF the registry's `keep_bands` as an RGB PNG."""
    if spec.keep_bands is None or path.suffix.lower() not in multiband.TIFF_SUFFIXES:
        return ImageRef(path.name, path=path)
    try:
        png = multiband.rgb_png(path.read_bytes(), spec.keep_bands)
    except Exception as exc:  # PIL, rasterio and the band checks raise many types
        raise DataError(spec.name, f"cannot keep bands {list(spec.keep_bands)} of this TIFF "
                        f"({exc})", split=split, file=str(path)) from None
    return ImageRef(f"{path.stem}.png", data=png)


def _segmentation(root: Path, spec: DatasetSpec) -> tuple[list[RawSample], list[str]]:
    samples = []
    for split in SPLITS:
        folder = root / "data" / split
        masks = {_pair_key(p): p for p in _images(folder / "masks")}
        for image in _images(folder / "images"):
            mask = masks.get(_pair_key(image))
            if mask is None:
                raise DataError(spec.name, "image has no mask in masks/", split=split,
                                file=str(image))
            samples.append(RawSample(split=split, image=_segmentation_image(image, spec, split),
                                     mask=ImageRef(mask.name, path=mask), origin=str(image)))
    converted = sum(s.image.path is None for s in samples)
    notes = [f"{converted} multi-band TIFF image(s): bands {list(spec.keep_bands or ())} kept "
             "as 8-bit RGB PNG (float [0, 1] x 255)"] if converted else []
    return samples, notes


def _detection_format(folder: Path, preferred: str | None) -> str | None:
    present = {
        "coco": (folder / "coco_annotations.json").is_file(),
        "yolo": (folder / "labels").is_dir(),
        "pascal_voc": (folder / "pascal_voc").is_dir(),
    }
    if preferred:
        return preferred if present[preferred] else None
    return next((f for f in DETECTION_FORMATS if present[f]), None)


def _detection(root: Path, spec: DatasetSpec,
               preferred: str | None) -> tuple[list[RawSample], list[str] | None]:
    from PIL import Image

    base = root / "data" if (root / "data").is_dir() else root
    classes = spec.class_names()
    samples: list[RawSample] = []
    coco_classes = None
    for split in SPLITS:
        folder = base / split
        images = _images(folder / "images")
        if not images:
            continue
        fmt = _detection_format(folder, preferred)
        if fmt is None:
            wanted = preferred or " or ".join(DETECTION_FORMATS)
            raise DataError(spec.name, f"no {wanted} annotations next to images/", split=split,
                            file=str(folder))
        coco = None
        if fmt == "coco":
            coco_file = folder / "coco_annotations.json"
            try:
                coco, coco_classes = ann.parse_coco(coco_file.read_text())
            except ann.AnnotationError as exc:
                raise DataError(spec.name, str(exc), split=split, file=str(coco_file)) from None
        for image in images:
            if fmt == "coco":
                boxes = coco.get(image.name, [])
                origin = str(folder / "coco_annotations.json")
            elif fmt == "yolo":
                label_file = folder / "labels" / f"{image.stem}.txt"
                origin = str(label_file)
                try:
                    with Image.open(image) as im:
                        width, height = im.size
                except OSError as exc:
                    raise DataError(spec.name, f"unreadable image ({exc})", split=split,
                                    file=str(image)) from None
                text = label_file.read_text() if label_file.is_file() else ""
                try:
                    boxes = ann.parse_yolo(text, width, height)
                except ann.AnnotationError as exc:
                    raise DataError(spec.name, str(exc), split=split, file=origin) from None
            else:
                xml = folder / "pascal_voc" / f"{image.stem}.xml"
                origin = str(xml)
                boxes = []
                if xml.is_file():
                    try:
                        boxes, names = ann.parse_voc(xml.read_text())
                    except ann.AnnotationError as exc:
                        raise DataError(spec.name, str(exc), split=split, file=origin) from None
                    for box, name in zip(boxes, names, strict=True):
                        box[4] = voc_class(name, classes, spec.name, split, origin)
            samples.append(RawSample(split=split, image=ImageRef(image.name, path=image),
                                     boxes=boxes, origin=origin))
    return samples, coco_classes


def _subsets(root: Path, dataset: str) -> dict[str, list[str]]:
    """Upstream training subsets shipped as partitions/*.csv and few_shot/*.csv."""
    subsets: dict[str, list[str]] = {}
    for folder in ("partitions", "few_shot"):
        for csv in sorted((root / folder).glob("*.csv")):
            key = subset_key(csv.stem)
            if key is None:
                continue
            frame = _read_csv(csv, dataset, ("file_id",))
            if "split" in frame.columns:
                frame = frame[frame["split"].str.strip() == "train"]
            subsets[key] = [Path(f).stem for f in frame["file_id"]]
    return subsets

