"""Losses and metrics as the Mars-Bench reference code computes them (docs/fidelity.md rows 6, 11).

Generalized Dice and Dice: `BaseSegmentationModel._generalized_dice_loss` / `_dice_loss`
(`Protocol.dice_formula`). Metrics: torchmetrics' `MeanAveragePrecision` with its float32
thresholds, and F1 on raw logits decided per batch (`Protocol.metrics`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from marseval.bench.classification.metrics import classification_metrics
from marseval.bench.detection.metrics import detection_metrics
from marseval.bench.experiment import Setup
from marseval.bench.protocol import MARSBENCH, PROBE
from marseval.bench.segmentation.losses import segmentation_loss
from marseval.bench.training import HParams

# --------------------------------------------------------------------------- generalized Dice

# zero logits: p = 1/3 everywhere; 6 pixels, class 0 on 4, class 1 on 2, class 2 absent.
# Per class: sum p = 2, intersection 4/3, 2/3, 0; sum (p + t) = 6, 4, 2.
ZERO_LOGITS = torch.zeros(2, 3, 1, 3)
MASK = torch.tensor([[[0, 0, 1]], [[0, 1, 0]]])


def _gds_loss(weights: list[float], eps: float = 1e-5) -> float:
    intersection, total = [4 / 3, 2 / 3, 0.0], [6.0, 4.0, 2.0]
    numerator = 2 * sum(w * i for w, i in zip(weights, intersection, strict=True)) + eps
    return 1 - numerator / (sum(w * t for w, t in zip(weights, total, strict=True)) + eps)


def test_reference_generalized_dice_by_hand_and_monai_differs() -> None:
    # reference: the absent class's sum is clamped to 1e-5, so its weight is 1e10 (square) or
    # 1e5 (simple) and its 2 units of probability dominate the denominator.
    # square: 1 - (2 (4/3/16 + 2/3/4) + eps) / (6/16 + 4/4 + 2e10 + eps) = 1 - 0.5/2e10
    # simple: 1 - (2 (1/3 + 1/3) + eps) / (6/4 + 4/2 + 2e5 + eps) = 1 - (4/3)/200003.5
    # linear: 1 - (2 (4/3 + 2/3) + eps) / (12 + eps) = 2/3
    reference = {"square": _gds_loss([1 / 16, 1 / 4, 1e10]),
                 "simple": _gds_loss([1 / 4, 1 / 2, 1e5]),
                 "linear": _gds_loss([1.0, 1.0, 1.0])}
    assert reference["square"] == pytest.approx(1 - 0.5 / 2e10, abs=1e-9)
    assert reference["simple"] == pytest.approx(1 - (4 / 3) / 200003.5, abs=1e-9)
    # MONAI gives the absent class the largest finite weight: 1/4 (square), 1/2 (simple)
    # (1 - (1/2)/(15/8) = 11/15 and 1 - (4/3)/(9/2) = 19/27 without the 1e-5 smoothing)
    monai = {"square": _gds_loss([1 / 16, 1 / 4, 1 / 4]),
             "simple": _gds_loss([1 / 4, 1 / 2, 1 / 2]),
             "linear": _gds_loss([1.0, 1.0, 1.0])}
    assert monai["square"] == pytest.approx(11 / 15, abs=1e-5)
    assert monai["simple"] == pytest.approx(19 / 27, abs=1e-5)
    for weighting in ("square", "simple", "linear"):
        name = f"generalized_dice_{weighting}"
        ours = segmentation_loss(name, 3, MARSBENCH.dice_formula)(ZERO_LOGITS, MASK).item()
        assert ours == pytest.approx(reference[weighting], abs=1e-6), weighting
        probe = segmentation_loss(name, 3, PROBE.dice_formula)(ZERO_LOGITS, MASK).item()
        assert probe == pytest.approx(monai[weighting], abs=1e-6), weighting
    # the switch matters wherever a class is absent, except for uniform ("linear") weights
    assert reference["square"] - monai["square"] > 0.26
    assert reference["simple"] - monai["simple"] > 0.29
    assert reference["linear"] == pytest.approx(monai["linear"])


def _numpy_reference_gdl(logits: np.ndarray, mask: np.ndarray, weighting: str) -> float:
    """The reference's formula in plain numpy (float64)."""
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    p = shifted / shifted.sum(1, keepdims=True)
    t = (mask[:, None] == np.arange(logits.shape[1])[None, :, None, None]).astype(float)
    s = np.maximum(t.sum((0, 2, 3)), 1e-5)
    w = {"square": 1 / s**2, "simple": 1 / s, "linear": np.ones_like(s)}[weighting]
    return 1 - ((2 * (w * (p * t).sum((0, 2, 3))).sum() + 1e-5)
                / ((w * (p + t).sum((0, 2, 3))).sum() + 1e-5))


def test_reference_generalized_dice_matches_numpy_on_small_logits() -> None:
    torch.manual_seed(0)
    # small logits keep the absent class's probability mass moderate: the loss stays < 1
    logits = torch.randn(2, 3, 2, 3) * 0.1
    mask = torch.tensor([[[0, 1, 1], [0, 0, 1]], [[1, 0, 0], [1, 1, 0]]])  # class 2 absent
    present = torch.tensor([[[0, 1, 2], [0, 0, 1]], [[1, 0, 0], [1, 1, 0]]])  # all present
    for weighting in ("square", "simple", "linear"):
        name = f"generalized_dice_{weighting}"
        for target in (mask, present):
            expected = _numpy_reference_gdl(logits.double().numpy(), target.numpy(), weighting)
            ours = segmentation_loss(name, 3, "marsbench")(logits, target).item()
            assert ours == pytest.approx(expected, rel=1e-5), (weighting, target)
        # with every class present the two formulas agree; with one absent only "linear" does
        both = [segmentation_loss(name, 3, f)(logits, present).item()
                for f in ("marsbench", "monai")]
        assert both[0] == pytest.approx(both[1], rel=1e-5), weighting
        absent = [segmentation_loss(name, 3, f)(logits, mask).item()
                  for f in ("marsbench", "monai")]
        assert (abs(absent[0] - absent[1]) > 0.05) == (weighting != "linear"), weighting


def test_reference_dice_loss_by_hand_differs_from_smp() -> None:
    # reference `_dice_loss`: per image and class (2 I + 1) / (sum p + sum t + 1), zero logits,
    # each image has class counts 2, 1, 0 over 3 pixels (sum p = 1 per class):
    #   (4/3 + 1)/4 = 7/12, (2/3 + 1)/3 = 5/9, 1/2 -> mean 59/108 -> loss 49/108
    # smp DiceLoss sums over the batch, no smoothing, skips the absent class:
    #   1 - 2(4/3)/6 = 5/9, 1 - 2(2/3)/4 = 2/3, 0 -> mean 11/27
    ours = segmentation_loss("dice", 3, MARSBENCH.dice_formula)(ZERO_LOGITS, MASK).item()
    assert ours == pytest.approx(49 / 108, abs=1e-6)
    smp = segmentation_loss("dice", 3, PROBE.dice_formula)(ZERO_LOGITS, MASK).item()
    assert smp == pytest.approx(11 / 27, abs=1e-6)


def test_reference_combined_is_cross_entropy_plus_square_generalized_dice() -> None:
    # zero logits: cross-entropy ln 3; the reference's combined takes square weights 1:1
    expected = math.log(3) + _gds_loss([1 / 16, 1 / 4, 1e10])
    ours = segmentation_loss("combined", 3, "marsbench")(ZERO_LOGITS, MASK).item()
    assert ours == pytest.approx(expected, abs=1e-6)
    monai = segmentation_loss("combined", 3, "monai")(ZERO_LOGITS, MASK).item()
    assert monai == pytest.approx(math.log(3) + _gds_loss([1 / 16, 1 / 4, 1 / 4]), abs=1e-6)


def test_segmentation_experiment_trains_on_its_protocol_dice_formula(tmp_path: Path) -> None:
    from test_bench_dense import standardized

    from marseval.bench.segmentation.experiment import SegmentationExperiment

    data = standardized(tmp_path, "mb-crater_binary_seg", {"train": 2, "val": 2, "test": 2},
                        size=32)
    hp = HParams(lr=0.01, weight_decay=0.0, batch_size=2, optimizer="adamw",
                 lr_schedule="none", max_epochs=1, patience=1, loss="generalized_dice_square")
    # two classes, class 1 absent: reference weight 1e10 on it, MONAI 1/16
    logits, mask = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    # sums p = 2, 2; t = 4, 0; intersections 2, 0; p + t = 6, 2
    values = {}
    for protocol in (MARSBENCH, PROBE):
        experiment = SegmentationExperiment(Setup(data, "unet:resnet18", pretrained=False,
                                                  input_size=32, protocol=protocol.name))
        values[protocol.name] = experiment.loss_fn(hp)(logits, mask).item()
    assert values["marsbench"] == pytest.approx(1 - (2 * 2 / 16 + 1e-5)
                                                / (6 / 16 + 2 * 1e10 + 1e-5), abs=1e-6)
    assert values["probe"] == pytest.approx(1 - (2 * 2 / 16 + 1e-5) / (6 / 16 + 2 / 16 + 1e-5),
                                            abs=1e-6)


# --------------------------------------------------------------------------- detection mAP


def _ten_objects_six_found() -> tuple[list[dict], list[dict]]:
    # one class, 10 truths; the 6 best-scored detections are exact copies of 6 of them (IoU 1,
    # a TP at every IoU threshold), nothing else: recall 0.1 .. 0.6 at precision 1.
    truths = torch.tensor([(10.0 * i, 0.0, 10.0 * i + 8, 8.0) for i in range(10)])
    targets = [{"boxes": truths, "labels": torch.zeros(10, dtype=torch.long)}]
    predictions = [{"boxes": truths[:6], "scores": torch.linspace(0.9, 0.4, 6),
                    "labels": torch.zeros(6, dtype=torch.long)}]
    return predictions, targets


def test_torchmetrics_float32_thresholds_read_the_next_recall_point() -> None:
    # COCOeval's recall points are float64 .00 .. 1.00: the 61 points <= 0.6 find a detection
    # with recall >= them (precision 1), the other 40 none (0): AP = 61/101 at every IoU.
    # torchmetrics' are torch.linspace(0, 1, 101).tolist(): float32, point 60 is 0.6000000238
    # > 6/10, so it finds none either: AP = 60/101.
    points = torch.linspace(0.0, 1.0, 101).tolist()
    assert points[60] > 6 / 10 and max(points[:60]) < 6 / 10
    predictions, targets = _ten_objects_six_found()
    exact = detection_metrics(predictions, targets, 1, PROBE.metrics)
    reference = detection_metrics(predictions, targets, 1, MARSBENCH.metrics)
    for key in ("map", "map_50", "map_75"):
        assert exact[key] == pytest.approx(61 / 101, abs=1e-9), key
        assert reference[key] == pytest.approx(60 / 101, abs=1e-6), key
    assert exact["map_per_class"] == pytest.approx([61 / 101])
    assert reference["map_per_class"] == pytest.approx([60 / 101])
    assert (reference["n_images"], reference["n_ground_truth"],
            reference["n_predictions"]) == (1, 10, 6)


def test_torchmetrics_with_float64_thresholds_gives_the_exact_value() -> None:
    # the thresholds are the only difference: torchmetrics fed COCOeval's float64 ones agrees
    from pycocotools.cocoeval import Params
    from torchmetrics.detection import MeanAveragePrecision

    predictions, targets = _ten_objects_six_found()
    params = Params(iouType="bbox")
    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=params.iouThrs.tolist(),
                                  rec_thresholds=params.recThrs.tolist())
    metric.update(predictions, targets)
    assert float(metric.compute()["map"]) == pytest.approx(61 / 101, abs=1e-6)


def test_torchmetrics_definition_keeps_negative_images_and_classes() -> None:
    # class 0 as above (60/101); class 1: one truth found exactly (1); class 2 never in the
    # truths -> None; a negative image with a class-1 detection scored below the TP costs nothing
    predictions, targets = _ten_objects_six_found()
    targets[0] = {"boxes": torch.cat([targets[0]["boxes"], torch.tensor([[0.0, 20, 8, 28]])]),
                  "labels": torch.tensor([0] * 10 + [1])}
    predictions[0] = {"boxes": torch.cat([predictions[0]["boxes"],
                                          torch.tensor([[0.0, 20, 8, 28]])]),
                      "scores": torch.cat([predictions[0]["scores"], torch.tensor([0.95])]),
                      "labels": torch.tensor([0] * 6 + [1])}
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    predictions.append({"boxes": torch.tensor([[50.0, 50, 60, 60]]),
                        "scores": torch.tensor([0.1]), "labels": torch.tensor([1])})
    m = detection_metrics(predictions, targets, 3, "torchmetrics")
    assert m["map_per_class"][0] == pytest.approx(60 / 101, abs=1e-6)
    assert m["map_per_class"][1] == pytest.approx(1.0)
    assert m["map_per_class"][2] is None
    assert m["map"] == pytest.approx((60 / 101 + 1) / 2, abs=1e-6)
    assert (m["n_images"], m["n_ground_truth"], m["n_predictions"]) == (2, 11, 8)


# --------------------------------------------------------------------------- classification F1

# single logits (ReLU-like, >= 0), batch size 2: batch 1 lies in [0, 1], batch 2 does not
LOGITS = torch.tensor([0.3, 0.8, 2.0, 0.3])
TARGETS = torch.tensor([1, 0, 1, 0])


def test_binary_f1_on_raw_logits_is_decided_per_batch() -> None:
    # exact: every logit > 0 -> predictions 1 1 1 1: TP 2, FP 2, FN 0 -> F1 = 4/6 = 2/3.
    # torchmetrics, batches of 2: [0.3, 0.8] in [0, 1] -> thresholded as probabilities: 0 1;
    # [2.0, 0.3] -> sigmoid (0.88, 0.57) > 0.5: 1 1. Predictions 0 1 1 1: TP 1, FP 2, FN 1
    # -> F1 = 2/5. One batch of 4 holds 2.0 -> sigmoid everywhere -> 2/3 again.
    exact = classification_metrics("binary", LOGITS, TARGETS, 2, PROBE.metrics, batch_size=2)
    per_batch = classification_metrics("binary", LOGITS, TARGETS, 2, MARSBENCH.metrics,
                                       batch_size=2)
    one_batch = classification_metrics("binary", LOGITS, TARGETS, 2, "torchmetrics",
                                       batch_size=4)
    assert exact["f1"] == pytest.approx(2 / 3)
    assert per_batch["f1"] == pytest.approx(2 / 5)
    assert one_batch["f1"] == pytest.approx(2 / 3)
    assert per_batch["accuracy"] == pytest.approx(1 / 4)  # 0 1 1 1 against 1 0 1 0
    # oracle: the reference's stateful metric, one update per batch with the raw logits
    from torchmetrics import F1Score

    metric = F1Score(task="binary")
    for logits, targets in zip(LOGITS.split(2), TARGETS.split(2), strict=True):
        metric.update(logits, targets)
    assert float(metric.compute()) == pytest.approx(per_batch["f1"])


def test_multilabel_f1_on_logits_in_the_unit_interval() -> None:
    # logits [[0.2, 0.7], [0.9, 0.0]], targets [[1, 1], [0, 0]], one batch, all in [0, 1].
    # torchmetrics: > 0.5 on the values -> [[0, 1], [1, 0]]: label 0 TP 0 FP 1 FN 1 -> F1 0,
    # label 1 TP 1 -> F1 1; weighted by support (1, 1): 1/2.
    # exact: logit > 0 -> [[1, 1], [1, 0]]: label 0 TP 1 FP 1 -> F1 2/3, label 1 1 -> 5/6.
    logits = torch.tensor([[0.2, 0.7], [0.9, 0.0]])
    targets = torch.tensor([[1, 1], [0, 0]])
    reference = classification_metrics("multilabel", logits, targets, 2, "torchmetrics")
    exact = classification_metrics("multilabel", logits, targets, 2, "exact")
    assert reference["f1"] == pytest.approx(1 / 2)
    assert exact["f1"] == pytest.approx(5 / 6)
    assert reference["per_class_f1"] == pytest.approx([0.0, 1.0])


def test_multiclass_predictions_are_the_argmax_in_both_definitions() -> None:
    logits = torch.tensor([[0.2, 0.7, 0.1], [0.9, 0.0, 0.05], [0.3, 0.3, 0.4]])
    targets = torch.tensor([1, 2, 2])
    # argmax 1, 0, 2: class 1 F1 1, class 2 F1 2/3 (TP 1, FN 1), class 0 F1 0 (no support)
    # weighted by support (0, 1, 2): (1 + 2 * 2/3) / 3 = 7/9
    for definition in ("torchmetrics", "exact"):
        m = classification_metrics("multiclass", logits, targets, 3, definition, batch_size=1)
        assert m["f1"] == pytest.approx(7 / 9), definition


class Replay(nn.Module):
    """Returns the given logits, one batch per call, whatever the images."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        super().__init__()
        self.batches = list(batches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.batches.pop(0)
        assert len(out) == len(images)
        return out


def test_classification_experiment_scores_its_batches_per_protocol(tmp_path: Path) -> None:
    from test_bench_classify import standardized

    from marseval.bench.classification.experiment import ClassificationExperiment

    data = standardized(tmp_path, "mb-frost_cls", {"train": 4, "val": 2, "test": 4})
    scores = {}
    for protocol in (MARSBENCH, PROBE):
        experiment = ClassificationExperiment(Setup(data, "timm:resnet10t", pretrained=False,
                                                    protocol=protocol.name))
        test = experiment.split("test")
        model = Replay(list(LOGITS.reshape(-1, 1).split(2)))
        scores[protocol.name] = experiment.score(model, test, batch_size=2)
    y = test.targets.tolist()

    def f1(preds: list[int]) -> float:  # positive-class F1 by counting
        tp = sum(p == t == 1 for p, t in zip(preds, y, strict=True))
        wrong = sum(p != t for p, t in zip(preds, y, strict=True))
        return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0

    # predictions as in the test above: per batch 0 1 1 1 (marsbench), all 1 (probe)
    assert f1([0, 1, 1, 1]) != f1([1, 1, 1, 1]), y  # the synthetic targets tell them apart
    assert scores["marsbench"]["f1"] == pytest.approx(f1([0, 1, 1, 1]))
    assert scores["probe"]["f1"] == pytest.approx(f1([1, 1, 1, 1]))


# --------------------------------------------------------------------------- segmentation Dice


def test_per_image_dice_is_the_reference_test_dice() -> None:
    from torchmetrics.segmentation import GeneralizedDiceScore

    from marseval.bench.segmentation.metrics import SegmentationScorer

    # truth [0 0 1] / [0 1 0] (class 2 absent), predicted [0 1 2] / [0 1 1].
    # image 1: class 0 T 2 P 1 I 1 -> 2/3; class 1 T 1 P 1 I 0 -> 0; class 2 not in truth -> 0
    # image 2: class 0 T 2 P 1 I 1 -> 2/3; class 1 T 1 P 2 I 1 -> 2/3; class 2 -> 0
    # per class over the 2 images: 2/3, 1/3, 0; mean over classes 1/3
    truth = torch.tensor([[[0, 0, 1]], [[0, 1, 0]]])
    preds = torch.tensor([[[0, 1, 2]], [[0, 1, 1]]])
    scorer = SegmentationScorer(3)
    scorer.update(preds[:1], truth[:1])  # batches do not matter: sums over images
    scorer.update(preds[1:], truth[1:])
    m = scorer.compute()
    assert m["dice_per_image_per_class"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert m["dice_per_image"] == pytest.approx(1 / 3)
    # the reference's metric itself (BaseSegmentationModel: weight_type from the config)
    for weight_type in ("square", "simple", "linear"):
        reference = GeneralizedDiceScore(num_classes=3, weight_type=weight_type, per_class=True,
                                         input_format="index")
        reference.update(preds, truth)
        assert reference.compute().tolist() == pytest.approx(m["dice_per_image_per_class"])
    assert m["dice"] != pytest.approx(m["dice_per_image"])  # the dataset-level Dice differs


def test_final_runs_score_in_batches_of_the_training_batch_size_in_marsbench(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from test_bench_classify import standardized

    from marseval.bench.classification.experiment import ClassificationExperiment
    from marseval.bench.runs import train_runs

    data = standardized(tmp_path, "mb-frost_cls", {"train": 4, "val": 2, "test": 4})
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"hyperparameters": {
        "lr": 0.01, "weight_decay": 0.0, "batch_size": 3, "optimizer": "sgd",
        "lr_schedule": "none", "max_epochs": 1, "patience": 1, "loss": "bce"}}))
    sizes = {}
    original = ClassificationExperiment.score

    def recording_score(self, model, split, **kwargs):
        sizes[self.setup.protocol] = kwargs.get("batch_size")
        return original(self, model, split, **kwargs)

    monkeypatch.setattr(ClassificationExperiment, "score", recording_score)
    for protocol in (MARSBENCH, PROBE):
        out = tmp_path / protocol.name / "seed0.json"
        out.parent.mkdir()
        train_runs(Setup(data, "timm:resnet10t", pretrained=False, protocol=protocol.name),
                   best, "default", [0], [out])
    assert sizes == {"marsbench": 3, "probe": None}
