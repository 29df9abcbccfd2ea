"""COCO box mAP for every detector, in two definitions (`Protocol.metrics`).

- "exact" (`coco_metrics`): one pycocotools `COCOeval` over in-memory data with its own float64
  thresholds and xywh boxes converted in float64.
- "torchmetrics" (`torchmetrics_metrics`): as the reference computes it
  (`BaseDetectionModel`: `torchmetrics.detection.MeanAveragePrecision(iou_type="bbox")`, its
  defaults, pycocotools backend). Its IoU and recall thresholds are `torch.linspace(...)
  .tolist()`, float32 values (0.6 becomes 0.6000000238...): where a class's recall lands exactly
  on such a value (6 of 10 objects found) COCOeval's float64 threshold reads that point and the
  float32 one the next, so the two differ; boxes go to xywh in float32.

Predictions and targets use the detectors' format (`detection.models`): boxes xyxy pixels, labels
0..C-1. Both keep every image: images without ground truth stay in, so their detections count
as false positives.
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
DEFINITIONS = ("torchmetrics", "exact")


def detection_metrics(
    predictions: Sequence[Mapping[str, Tensor | np.ndarray]],
    targets: Sequence[Mapping[str, Tensor | np.ndarray]],
    num_classes: int,
    definition: str = "exact",
) -> dict[str, Any]:
    """`coco_metrics` ("exact") or `torchmetrics_metrics` ("torchmetrics"): the same keys."""
    if definition == "exact":
        return coco_metrics(predictions, targets, num_classes)
    if definition == "torchmetrics":
        return torchmetrics_metrics(predictions, targets, num_classes)
    raise MarsevalError(f"unknown metrics definition {definition!r}; expected one of "
                        f"{DEFINITIONS}")


def torchmetrics_metrics(
    predictions: Sequence[Mapping[str, Tensor | np.ndarray]],
    targets: Sequence[Mapping[str, Tensor | np.ndarray]],
    num_classes: int,
) -> dict[str, Any]:
    """The keys of `coco_metrics`, from torchmetrics' `MeanAveragePrecision` as the reference
    builds it (default thresholds, max detections 1/10/100, macro average); inputs are checked
    as in `coco_metrics`. `class_metrics=True` only adds the per-class values (a second
    evaluation); "map" is the reference's."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    truths, found = _checked(predictions, targets, num_classes, "torchmetrics_metrics")
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True)
    # float32 boxes and scores, as the reference's tensors
    metric.update(
        [{"boxes": torch.as_tensor(b, dtype=torch.float32),
          "scores": torch.as_tensor(s, dtype=torch.float32),
          "labels": torch.as_tensor(c)} for b, c, s in found],
        [{"boxes": torch.as_tensor(b, dtype=torch.float32), "labels": torch.as_tensor(c)}
         for b, c in truths],
    )
    result = metric.compute()
    gt_classes = {int(c) for _, labels in truths for c in labels}
    per_class = dict(zip(result["classes"].reshape(-1).tolist(),
                         result["map_per_class"].reshape(-1).tolist(), strict=True))
    return {
        "n_images": len(truths),
        "n_ground_truth": sum(len(labels) for _, labels in truths),
        "n_predictions": sum(len(scores) for _, _, scores in found),
        "map": float(result["map"]),
        "map_50": float(result["map_50"]),
        "map_75": float(result["map_75"]),
        "map_per_class": [per_class[c] if c in gt_classes else None for c in range(num_classes)],
    }


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
    truths, found = _checked(predictions, targets, num_classes, "coco_metrics")
    gt_annotations: list[dict[str, Any]] = []
    for i, (boxes, labels) in enumerate(truths):
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
    results: list[dict[str, Any]] = []
    for i, (boxes, labels, scores) in enumerate(found):
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


def _checked(
    predictions: Sequence[Mapping[str, Tensor | np.ndarray]],
    targets: Sequence[Mapping[str, Tensor | np.ndarray]],
    num_classes: int,
    who: str,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Checked (boxes, labels) per target and (boxes, labels, scores) per prediction."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise MarsevalError(f"{who}: num_classes must be an integer >= 1, got {num_classes!r}")
    if len(predictions) != len(targets):
        raise MarsevalError(f"{who}: {len(predictions)} predictions but {len(targets)} targets")
    truths = []
    for i, target in enumerate(targets):
        boxes = _boxes(target, "targets", i, who)
        truths.append((boxes, _labels(target, "targets", i, len(boxes), num_classes, who)))
    if not any(len(labels) for _, labels in truths):
        raise MarsevalError(f"{who}: none of the {len(targets)} images has a ground-truth box; "
                            "mAP is undefined")
    found = []
    for i, prediction in enumerate(predictions):
        boxes = _boxes(prediction, "predictions", i, who)
        labels = _labels(prediction, "predictions", i, len(boxes), num_classes, who)
        scores = _array(prediction, "scores", "predictions", i, who).reshape(-1)
        if len(scores) != len(boxes):
            raise MarsevalError(
                f"{who}: predictions[{i}] has {len(boxes)} boxes but {len(scores)} scores"
            )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise MarsevalError(f"{who}: predictions[{i}] has non-finite boxes or scores")
        found.append((boxes, labels, scores))
    return truths, found


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


def _array(item: Mapping[str, Any], key: str, what: str, i: int, who: str) -> np.ndarray:
    if key not in item:
        raise MarsevalError(f"{who}: {what}[{i}] has no {key!r}")
    value = item[key]
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(item: Mapping[str, Any], what: str, i: int, who: str) -> np.ndarray:
    boxes = _array(item, "boxes", what, i, who).astype(np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise MarsevalError(
            f"{who}: {what}[{i}] boxes must be (M, 4) xyxy, got shape {boxes.shape}"
        )
    return boxes


def _labels(item: Mapping[str, Any], what: str, i: int, n: int, num_classes: int,
            who: str) -> np.ndarray:
    labels = _array(item, "labels", what, i, who).reshape(-1)
    if len(labels) != n:
        raise MarsevalError(f"{who}: {what}[{i}] has {n} boxes but {len(labels)} labels")
    if n and (
        not np.all(labels == np.round(labels)) or labels.min() < 0 or labels.max() >= num_classes
    ):
        raise MarsevalError(
            f"{who}: {what}[{i}] has labels outside 0..{num_classes - 1}: "
            f"{sorted(set(labels.tolist()))}"
        )
    return labels.astype(np.int64)
