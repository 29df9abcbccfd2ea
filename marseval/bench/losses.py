"""Every loss name the grid's loss axes accept, over the three tasks."""

from __future__ import annotations

from marseval.bench.classification.losses import LOSSES
from marseval.bench.segmentation.losses import SEGMENTATION_LOSSES

# Detectors are trained on the sum of their own loss terms (torchvision's, ultralytics').
DETECTION_LOSSES = ("default",)

# Every name the grid's loss axes accept, for validating a hyperparameter record.
ALL_LOSSES = tuple(dict.fromkeys((*LOSSES, *SEGMENTATION_LOSSES, *DETECTION_LOSSES)))
