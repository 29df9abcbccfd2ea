"""Streaming segmentation scores: Mars-Bench's per-image IoU and dataset-level mIoU and Dice.

Only per-class sums and a C x C confusion matrix are kept, so a test set is scored batch by
batch without holding its masks in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from marseval.errors import MarsevalError


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else float("nan")


class SegmentationScorer:
    """Accumulates predicted and true class-id maps; `compute()` gives the scores.

    `iou` is IoU as Mars-Bench reports it: per image and class where the class is in the
    prediction or the truth, averaged per class over those images, then over the classes that
    appeared anywhere (background included). `miou`/`dice` are dataset-level, from the
    confusion matrix over all pixels. `dice_per_image` is the Dice the reference logs as
    `test/dice` (torchmetrics `GeneralizedDiceScore(per_class=True, input_format="index")`, then
    the mean over classes): per image and class 2 I / (P + T) where the class is in the truth
    (its class weight cancels), 0 where it is not, averaged over all images, then over all
    classes.
    """

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MarsevalError(
                f"SegmentationScorer: num_classes must be >= 1, got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.iou_sum = torch.zeros(num_classes, dtype=torch.float64)  # sum of per-image IoUs
        self.image_count = torch.zeros(num_classes, dtype=torch.int64)  # images with a union
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [true, pred]
        self.dice_sum = torch.zeros(num_classes, dtype=torch.float64)  # per-image Dice, summed
        self.n_images = 0

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Score class-id maps `preds` against `target`: (N, H, W) or one (H, W) image each."""
        preds, target = torch.as_tensor(preds), torch.as_tensor(target)
        if preds.shape != target.shape:
            raise MarsevalError(
                f"SegmentationScorer.update: preds {tuple(preds.shape)} and target "
                f"{tuple(target.shape)} differ in shape"
            )
        if preds.dim() == 2:
            preds, target = preds.unsqueeze(0), target.unsqueeze(0)
        if preds.dim() != 3:
            raise MarsevalError(
                f"SegmentationScorer.update: expected (N, H, W) or (H, W) class ids, got shape "
                f"{tuple(preds.shape)}"
            )
        for label, values in (("preds", preds), ("target", target)):
            if values.is_floating_point() or values.is_complex():
                raise MarsevalError(
                    f"SegmentationScorer.update: {label} must hold integer class ids, got "
                    f"{values.dtype} (argmax the logits first)"
                )
        n, c = preds.shape[0], self.num_classes
        if n == 0 or preds[0].numel() == 0:
            return
        # counted on the predictions' device (the GPU in evaluation); sums come back to the CPU
        preds = preds.long().reshape(n, -1)
        target = target.to(preds.device).long().reshape(n, -1)
        for label, values in (("preds", preds), ("target", target)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= c:
                raise MarsevalError(
                    f"SegmentationScorer.update: {label} holds class id "
                    f"{low if low < 0 else high}, outside 0..{c - 1}"
                )

        # per image and class: counts in the prediction, in the truth and in both
        offset = torch.arange(n, device=preds.device).unsqueeze(1) * c
        pred_count = torch.bincount((offset + preds).flatten(), minlength=n * c).view(n, c)
        true_count = torch.bincount((offset + target).flatten(), minlength=n * c).view(n, c)
        hit = preds == target
        inter = torch.bincount((offset + target)[hit], minlength=n * c).view(n, c)
        union = (pred_count + true_count - inter).cpu()
        inter = inter.cpu()
        present = union > 0
        iou = torch.where(present, inter.double() / union.clamp(min=1).double(), 0.0)
        self.iou_sum += iou.sum(0)
        in_truth = true_count.cpu() > 0
        cardinality = (pred_count + true_count).cpu().clamp(min=1).double()
        self.dice_sum += torch.where(in_truth, 2 * inter.double() / cardinality, 0.0).sum(0)
        self.image_count += present.sum(0)

        self.confusion += (
            torch.bincount((target * c + preds).flatten(), minlength=c * c).view(c, c).cpu()
        )
        self.n_images += n

    def compute(self) -> dict[str, Any]:
        """Scores as plain Python numbers and lists (None for classes that never appeared)."""
        if self.n_images == 0:
            raise MarsevalError("SegmentationScorer.compute: no images were scored")
        iou_per_class = [
            float(s) / int(k) if k > 0 else None
            for s, k in zip(self.iou_sum.tolist(), self.image_count.tolist(), strict=True)
        ]
        confusion = self.confusion.double()
        tp = confusion.diagonal()
        fp = confusion.sum(0) - tp  # predicted as the class, truly another
        fn = confusion.sum(1) - tp  # truly the class, predicted as another
        union = tp + fp + fn
        miou_per_class = [
            float(t / u) if u > 0 else None
            for t, u in zip(tp.tolist(), union.tolist(), strict=True)
        ]
        dice_per_class = [
            float(2 * t / (2 * t + p + n)) if t + p + n > 0 else None
            for t, p, n in zip(tp.tolist(), fp.tolist(), fn.tolist(), strict=True)
        ]
        return {
            "iou": _mean(iou_per_class),
            "iou_per_class": iou_per_class,
            "miou": _mean(miou_per_class),
            "miou_per_class": miou_per_class,
            "dice": _mean(dice_per_class),
            "dice_per_class": dice_per_class,
            "dice_per_image": float(self.dice_sum.mean() / self.n_images),
            "dice_per_image_per_class": (self.dice_sum / self.n_images).tolist(),
            "pixel_accuracy": float(tp.sum() / confusion.sum()),
            "n_images": self.n_images,
        }
