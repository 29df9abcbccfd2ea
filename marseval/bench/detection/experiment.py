"""Fit and score one detector (torchvision or ultralytics YOLO) on a standardized set.

Every detector computes its own training loss (torchvision's loss dict, ultralytics'
v8DetectionLoss); the training step hands that scalar to the loop as the model's output, and
the loss function passes it through. Predictions are scaled back to each image's own pixels
and scored by one COCO evaluator for all detectors (`detection.metrics.detection_metrics`: COCO's
definition, or torchmetrics' as the reference, per `Protocol.metrics`), never by a library's own
validator.

Images without boxes stay in as negatives; `Setup.drop_empty=True` drops them from every
split, as the Mars-Bench reference code does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from marseval.bench.detection.data import (
    DetectionDataset,
    collate_detection,
    drop_images_without_boxes,
)
from marseval.bench.detection.metrics import detection_metrics
from marseval.bench.detection.models import Detector, build_detector
from marseval.bench.experiment import Experiment, Setup, Split, to_device
from marseval.bench.losses import DETECTION_LOSSES
from marseval.bench.precision import as_float32
from marseval.bench.training import HParams, LossFn, seed_everything
from marseval.errors import MarsevalError

PRIMARY_METRIC = "map"  # COCO mAP@[.5:.95]; "map_50" sits beside it


def _model_loss(outputs: Tensor, targets: Any) -> Tensor:
    """The detector already reduced its loss terms to `outputs`."""
    return outputs


class DetectionExperiment(Experiment):
    task = "detection"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        spec = self._build(seed=0)
        self.input_size, self.display_name = spec.input_size, spec.display_name
        self.mean_std = spec.mean_std  # the marsbench pipeline normalises before the detector

    def _build(self, seed: int) -> Detector:
        seed_everything(seed)
        return build_detector(self.setup.model, self.num_classes,
                              pretrained=self.setup.pretrained,
                              training_type=self.setup.training_type,
                              input_size=self.setup.input_size,
                              pipeline=self.setup.rules.detection_inputs)

    def split(self, name: str, subset: str | None = None) -> Split:
        rows = self.rows(name, subset)
        if self.setup.drop_empty:
            rows = drop_images_without_boxes(rows)
        images = DetectionDataset(self.setup.dataset_dir, rows, self.input_size,
                                  augment=self.setup.augment and name == "train",
                                  mean_std=self.mean_std)
        return Split(images.ids, images=images, num_workers=self.setup.num_workers,
                     collate_fn=collate_detection)

    def build_model(self, hp: HParams, seed: int) -> nn.Module:
        return self._build(seed).to(self.device)

    def loss_fn(self, hp: HParams) -> LossFn:
        if hp.loss not in DETECTION_LOSSES:
            raise MarsevalError(f"detection loss {hp.loss!r} is not one of {DETECTION_LOSSES}: "
                                "detectors train on their own loss terms")
        return _model_loss

    def _step(self, model: nn.Module, batch: Any) -> tuple[Tensor, list[dict[str, Tensor]]]:
        images, targets = to_device(batch, self.device)
        return model.loss(images, targets), targets

    def score(self, model: nn.Module, split: Split, batch_size: int = 16) -> dict[str, Any]:
        dataset: DetectionDataset = split.images
        predictions, truths = [], []
        model.eval()
        with torch.no_grad():
            for images, _ in split.batches(batch_size, shuffle_seed=None):
                with self.autocast(model):
                    found_in_batch = model.predict(to_device(images, self.device))
                for found in as_float32(found_in_batch):
                    index = len(predictions)
                    sx, sy = dataset.scale(index)
                    boxes = found["boxes"].cpu() / torch.tensor([sx, sy, sx, sy])
                    predictions.append({"boxes": boxes, "scores": found["scores"].cpu(),
                                        "labels": found["labels"].cpu()})
                    truths.append(dataset.native_boxes(index))
        metrics = detection_metrics(predictions, truths, self.num_classes,
                                    self.setup.rules.metrics)
        metrics["metric"] = PRIMARY_METRIC
        metrics["primary"] = metrics[PRIMARY_METRIC]
        return metrics
