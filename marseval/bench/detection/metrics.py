"""COCO box mAP for every detector: one pycocotools `COCOeval` over in-memory data.

Predictions and targets use the detectors' format (`detection.models`): boxes xyxy pixels, labels
0..C-1. They become COCO ground truth and results with image ids 1..N, category ids 1..C and
xywh boxes; images without ground truth stay in, so their detections count as false positives.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from marseval.errors import MarsevalError

IOU_50, IOU_75 = 0, 5  # indices into COCOeval's IoU thresholds .50:.05:.95


def coco_metrics(
    predictions: Sequence[Mapping[str, Tensor | np.ndarray]],
    targets: Sequence[Mapping[str, Tensor | np.ndarray]],
    num_classes: int,
) -> dict[str, Any]:
    """mAP@[.5:.95] ("map", the primary metric), "map_50", "map_75", "map_per_class" (None for
    classes without ground truth) and the counts "n_images", "n_ground_truth", "n_predictions".

    `predictions[i]` has "boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,); `targets[i]` has
    "boxes" (M, 4) and "labels" (M,). Metrics are COCO's with maxDets 100 and area "all".
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise MarsevalError(
            f"coco_metrics: num_classes must be an integer >= 1, got {num_classes!r}"
        )
    if len(predictions) != len(targets):
        raise MarsevalError(
            f"coco_metrics: {len(predictions)} predictions but {len(targets)} targets"
        )

    gt_annotations: list[dict[str, Any]] = []
    for i, target in enumerate(targets):
        boxes = _boxes(target, "targets", i)
        labels = _labels(target, "targets", i, len(boxes), num_classes)
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels, strict=True):
            w, h = x1 - x0, y1 - y0
            gt_annotations.append({
                "id": len(gt_annotations) + 1,
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "bbox": [x0, y0, w, h],
                "area": w * h,
                "iscrowd": 0,
            })
    if not gt_annotations:
        raise MarsevalError(
            f"coco_metrics: none of the {len(targets)} images has a ground-truth box; "
            "mAP is undefined"
        )

    results: list[dict[str, Any]] = []
    for i, prediction in enumerate(predictions):
        boxes = _boxes(prediction, "predictions", i)
        labels = _labels(prediction, "predictions", i, len(boxes), num_classes)
        scores = _array(prediction, "scores", "predictions", i).reshape(-1)
        if len(scores) != len(boxes):
            raise MarsevalError(
                f"coco_metrics: predictions[{i}] has {len(boxes)} boxes but {len(scores)} scores"
            )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise MarsevalError(f"coco_metrics: predictions[{i}] has non-finite boxes or scores")
        for (x0, y0, x1, y1), label, score in zip(boxes.tolist(), labels, scores, strict=True):
            results.append({
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            })

    gt_classes = {a["category_id"] - 1 for a in gt_annotations}
    metrics: dict[str, Any] = {
        "n_images": len(targets),
        "n_ground_truth": len(gt_annotations),
        "n_predictions": len(results),
    }
    if not results:  # loadRes fails on an empty list; nothing detected is AP 0 everywhere
        metrics.update(
            map=0.0, map_50=0.0, map_75=0.0,
            map_per_class=[0.0 if c in gt_classes else None for c in range(num_classes)],
        )
        return metrics

    precision = _coco_precision(gt_annotations, results, len(targets), num_classes)
    metrics.update(
        map=_mean(precision),
        map_50=_mean(precision[IOU_50]),
        map_75=_mean(precision[IOU_75]),
        map_per_class=[_mean(precision[:, :, c]) if c in gt_classes else None
                       for c in range(num_classes)],
    )
    return metrics


def _coco_precision(
    gt_annotations: list[dict[str, Any]],
    results: list[dict[str, Any]],
    n_images: int,
    num_classes: int,
) -> np.ndarray:
    """COCOeval's interpolated precision (IoU threshold, recall, class) at area "all" and
    maxDets 100; -1 where a class has no ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # pycocotools prints progress on stdout
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1} for i in range(n_images)],
            "annotations": gt_annotations,
            "categories": [{"id": c + 1} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    area = params.areaRngLbl.index("all")
    max_det = params.maxDets.index(100)
    # precision: [T thresholds, R recall points, K classes, A areas, M maxDets]
    return evaluator.eval["precision"][:, :, :, area, max_det]


def _mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def _array(item: Mapping[str, Any], key: str, what: str, i: int) -> np.ndarray:
    if key not in item:
        raise MarsevalError(f"coco_metrics: {what}[{i}] has no {key!r}")
    value = item[key]
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(item: Mapping[str, Any], what: str, i: int) -> np.ndarray:
    boxes = _array(item, "boxes", what, i).astype(np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise MarsevalError(
            f"coco_metrics: {what}[{i}] boxes must be (M, 4) xyxy, got shape {boxes.shape}"
        )
    return boxes


def _labels(item: Mapping[str, Any], what: str, i: int, n: int, num_classes: int) -> np.ndarray:
    labels = _array(item, "labels", what, i).reshape(-1)
    if len(labels) != n:
        raise MarsevalError(f"coco_metrics: {what}[{i}] has {n} boxes but {len(labels)} labels")
    if n and (
        not np.all(labels == np.round(labels)) or labels.min() < 0 or labels.max() >= num_classes
    ):
        raise MarsevalError(
            f"coco_metrics: {what}[{i}] has labels outside 0..{num_classes - 1}: "
            f"{sorted(set(labels.tolist()))}"
        )
    return labels.astype(np.int64)
