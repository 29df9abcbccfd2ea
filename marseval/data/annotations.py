"""Detection box formats: YOLO text, COCO JSON and Pascal VOC XML, to and from pixel boxes.

Boxes inside marseval are `[x1, y1, x2, y2, class]` in pixels, class 0-based.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

Box = list[float]


class AnnotationError(ValueError):
    """A malformed annotation; the caller adds the dataset and file."""


def parse_yolo(text: str, width: int, height: int) -> list[Box]:
    """`class cx cy w h` per line, normalised to [0, 1]."""
    boxes: list[Box] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise AnnotationError(f"line {number}: expected 5 fields, got {len(fields)}")
        try:
            cls = int(float(fields[0]))
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as exc:
            raise AnnotationError(f"line {number}: {exc}") from None
        boxes.append(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
             (cy + h / 2) * height, cls]
        )
    return boxes


def format_yolo(boxes: Sequence[Box], width: int, height: int) -> str:
    lines = []
    for x1, y1, x2, y2, cls in boxes:
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(cls)} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}")
    return "\n".join(lines) + ("\n" if lines else "")


def parse_voc(text: str) -> tuple[list[Box], list[str]]:
    """Boxes and their class *names* (VOC stores names, the caller maps them to indices)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise AnnotationError(f"invalid XML: {exc}") from None
    boxes, names = [], []
    for obj in root.iter("object"):
        name, bnd = obj.findtext("name"), obj.find("bndbox")
        if name is None or bnd is None:
            raise AnnotationError("an <object> lacks <name> or <bndbox>")
        try:
            coords = [float(bnd.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise AnnotationError(f"object {name!r}: non-numeric or missing bndbox") from None
        boxes.append([*coords, -1])
        names.append(name.strip())
    return boxes, names


def format_voc(filename: str, boxes: Sequence[Box], classes: Sequence[str], width: int,
               height: int, depth: int) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size, tag).text = str(value)
    for x1, y1, x2, y2, cls in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(cls)]
        bnd = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2), strict=True):
            ET.SubElement(bnd, tag).text = f"{value:.4f}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def parse_coco(doc: dict[str, Any] | str) -> tuple[dict[str, list[Box]], list[str]]:
    """Boxes per image file name (classes 0-based in category order) and the category names."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"invalid JSON: {exc}") from None
    try:
        categories = sorted(doc["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        files = {img["id"]: img["file_name"] for img in doc["images"]}
        boxes: dict[str, list[Box]] = {name: [] for name in files.values()}
        for ann in doc["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes[files[ann["image_id"]]].append([x, y, x + w, y + h, index[ann["category_id"]]])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"not a COCO detection file ({type(exc).__name__}: {exc})") from None
    return boxes, [str(c["name"]) for c in categories]


def format_coco(images: Sequence[tuple[str, int, int, Sequence[Box]]],
                classes: Sequence[str]) -> dict[str, Any]:
    """A COCO document for (file name, width, height, boxes) tuples; category ids start at 1."""
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
    }
    for image_id, (name, width, height, boxes) in enumerate(images, start=1):
        doc["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for x1, y1, x2, y2, cls in boxes:
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1,
                "image_id": image_id,
                "category_id": int(cls) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            })
    return doc
