"""Classification metrics as Mars-Bench defines them, computed with torchmetrics.

The primary metric ("f1") is the positive-class F1 for binary tasks and the F1 weighted by
support for multiclass and multilabel tasks (a label is predicted when its sigmoid exceeds 0.5).

Two definitions (`Protocol.metrics`):

- "exact": logits are turned into hard 0/1 or class-index predictions here (logit > 0), before
  torchmetrics sees them: torchmetrics applies a sigmoid to float inputs only when some value
  lies outside [0, 1], so raw logits that happen to lie inside [0, 1] would be thresholded
  themselves.
- "torchmetrics": as the reference computes them (`BaseClassificationModel._common_step` feeds
  raw logits to a MetricCollection, one `update` per test batch). torchmetrics decides per
  `update` call whether the batch is logits (a sigmoid, then > 0.5) or probabilities (> 0.5 on
  the values themselves): a binary or multilabel batch whose logits all lie in [0, 1] (e.g.
  SqueezeNet's ReLU head) is thresholded at logit 0.5, not 0. So the batches matter: the
  outputs are cut into consecutive batches of `batch_size` rows in test order (the reference's
  unshuffled test loader) and each is decided alone. Multiclass predictions are the argmax in
  both definitions.

Zero-division conventions match scikit-learn's defaults (checked in the tests): a class with no
true and no predicted samples scores F1 = 0 in `per_class_f1`; the multiclass macro mean skips
such classes (scikit-learn infers the labels from targets and predictions), the multilabel macro
mean keeps every label (scikit-learn's indicator format has all columns); weighted means give
absent classes weight 0.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_f1_score,
    multiclass_accuracy,
    multiclass_f1_score,
    multilabel_accuracy,
    multilabel_f1_score,
)
from torchmetrics.utilities.compute import normalize_logits_if_needed

from marseval.errors import MarsevalError

SUBTASKS = ("binary", "multiclass", "multilabel")
DEFINITIONS = ("torchmetrics", "exact")

_PRIMARY = {
    "binary": "f1_positive_class",
    "multiclass": "f1_weighted",
    "multilabel": "f1_weighted",
}


def _check_subtask(subtask: str) -> None:
    if subtask not in SUBTASKS:
        raise MarsevalError(
            f"unknown classification subtask {subtask!r}; expected one of {SUBTASKS}"
        )


def primary_metric_name(subtask: str) -> str:
    """What "f1" means for `subtask`: `f1_positive_class` (binary) or `f1_weighted`."""
    _check_subtask(subtask)
    return _PRIMARY[subtask]


def predictions(subtask: str, outputs: Tensor) -> Tensor:
    """Hard predictions from logits: class indices (binary, multiclass) or 0/1 (multilabel)."""
    _check_subtask(subtask)
    if subtask == "multilabel":
        return (outputs > 0).long()  # sigmoid(x) > 0.5 exactly when x > 0
    if subtask == "binary" and (outputs.ndim == 1 or outputs.shape[-1] == 1):
        return (outputs.reshape(-1) > 0).long()
    return outputs.argmax(dim=-1)


def reference_predictions(subtask: str, outputs: Tensor, batch_size: int | None = None) -> Tensor:
    """Hard predictions as torchmetrics forms them from raw logits fed `batch_size` rows at a
    time (None: all at once): per batch, a sigmoid unless every value lies in [0, 1], then
    > 0.5 (binary single logit, multilabel); the argmax otherwise."""
    _check_subtask(subtask)
    single_logit = subtask == "binary" and (outputs.ndim == 1 or outputs.shape[-1] == 1)
    if subtask != "multilabel" and not single_logit:
        return outputs.argmax(dim=-1)
    if single_logit:
        outputs = outputs.reshape(-1)
    size = len(outputs) if batch_size is None else batch_size
    if size < 1:
        raise MarsevalError(f"batch_size must be >= 1, got {batch_size}")
    # torchmetrics' own decision (`_binary/_multilabel_stat_scores_format`), one batch at a time
    return torch.cat([(normalize_logits_if_needed(chunk, "sigmoid") > 0.5).long()
                      for chunk in outputs.split(size)])


def classification_metrics(
    subtask: str, outputs: Tensor, targets: Tensor, num_classes: int,
    definition: str = "exact", batch_size: int | None = None,
) -> dict[str, float | list[float]]:
    """Test metrics from logits `outputs` and integer `targets`.

    binary: outputs (N,) or (N, 1) single logit, or (N, 2) two logits; targets (N,) in {0, 1}.
    multiclass: outputs (N, C); targets (N,) class indices. multilabel: outputs (N, C); targets
    (N, C) multi-hot. Returns "f1" (primary, see `primary_metric_name`), "accuracy", "macro_f1"
    and "per_class_f1" (a list of C values; for binary [negative, positive]).

    Multilabel "accuracy" is torchmetrics' micro-averaged label accuracy (the fraction of correct
    sample-label decisions, i.e. 1 - Hamming loss), not the subset (exact-match) accuracy.

    `definition` (one of DEFINITIONS) picks how logits become predictions (module docstring);
    "torchmetrics" decides per batch of `batch_size` rows, in the order given.
    """
    _check_subtask(subtask)
    if definition not in DEFINITIONS:
        raise MarsevalError(f"unknown metrics definition {definition!r}; expected one of "
                            f"{DEFINITIONS}")
    outputs, targets = outputs.detach().float().cpu(), targets.detach().long().cpu()
    if len(outputs) != len(targets):
        raise MarsevalError(f"{len(outputs)} outputs but {len(targets)} targets")
    if len(targets) == 0:
        raise MarsevalError("cannot compute metrics on an empty split")
    if definition == "torchmetrics":
        preds = reference_predictions(subtask, outputs, batch_size)
    else:
        preds = predictions(subtask, outputs)

    if subtask == "multilabel":
        if outputs.shape != targets.shape or outputs.shape[-1] != num_classes:
            raise MarsevalError(
                f"multilabel outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} "
                f"must both be (N, {num_classes})"
            )

        def f1(average: str | None) -> Tensor:
            return multilabel_f1_score(preds, targets, num_labels=num_classes, average=average)

        accuracy = multilabel_accuracy(preds, targets, num_labels=num_classes, average="micro")
        primary = f1("weighted")
    else:
        targets = targets.reshape(-1)
        if subtask == "binary" and num_classes != 2:
            raise MarsevalError(f"binary subtask needs num_classes=2, got {num_classes}")
        if outputs.ndim == 2 and outputs.shape[-1] not in (1, num_classes):
            raise MarsevalError(
                f"{subtask} outputs have {outputs.shape[-1]} columns for {num_classes} classes"
            )

        def f1(average: str | None) -> Tensor:
            return multiclass_f1_score(preds, targets, num_classes=num_classes, average=average)

        if subtask == "binary":
            accuracy = binary_accuracy(preds, targets)
            primary = binary_f1_score(preds, targets)
        else:
            # torchmetrics' multiclass default is macro accuracy; the plain fraction is "micro"
            accuracy = multiclass_accuracy(preds, targets, num_classes=num_classes, average="micro")
            primary = f1("weighted")

    return {
        "f1": float(primary),
        "accuracy": float(accuracy),
        "macro_f1": float(f1("macro")),
        "per_class_f1": [float(v) for v in f1(None)],
    }


__all__ = ["DEFINITIONS", "SUBTASKS", "classification_metrics", "predictions",
           "primary_metric_name", "reference_predictions"]
