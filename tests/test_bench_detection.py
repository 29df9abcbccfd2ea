"""Detectors (CPU, random init, small inputs) and the COCO mAP evaluator."""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from torch import nn

from marseval.bench.detection import models as det_models
from marseval.bench.detection.metrics import coco_metrics
from marseval.bench.detection.models import DETECTORS, Detector, build_detector
from marseval.bench.training import train_mode
from marseval.errors import MarsevalError


@pytest.fixture(autouse=True, scope="module")
def _offline(tmp_path_factory: pytest.TempPathFactory):
    """No network for anything: ultralytics offline (and its settings file in a tmp dir when
    this module imports it first), empty torch hub cache, marseval offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "1")
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        mp.setenv("MARSEVAL_OFFLINE", "1")
        yield


@pytest.fixture
def yolo_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ultralytics weights dir, so no real checkpoint is ever found."""
    folder = tmp_path / "yolo_weights"
    folder.mkdir()
    monkeypatch.setattr(det_models, "yolo_weights_dir", lambda: folder)
    return folder


# --------------------------------------------------------------------------- mAP by hand
#
# COCO AP per class and IoU threshold t: detections sorted by score, each greedily matched to
# the unmatched ground truth with the highest IoU >= t (a TP), else a FP. Precision/recall
# after each detection; precision is made monotone from the right; AP is the mean of that
# precision at the 101 recall points 0, .01, ..., 1 (0 beyond the highest recall reached).
# mAP averages over the 10 thresholds .50:.05:.95 and the classes with ground truth.


def _gt(*boxes: tuple[float, ...], labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels if labels is not None else [0] * len(boxes)),
    }


def _det(boxes: list, scores: list[float], labels: list[int] | None = None) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels if labels is not None else [0] * len(scores)),
    }


A = (10.0, 10.0, 50.0, 50.0)
B = (60.0, 60.0, 90.0, 100.0)
FAR = (200.0, 200.0, 240.0, 240.0)  # overlaps nothing


def test_map_perfect_predictions_is_one() -> None:
    # every truth found exactly, no FP: precision 1 at every recall -> AP 1 everywhere
    targets = [_gt(A, B, labels=[0, 1]), _gt(B, labels=[1])]
    predictions = [_det([A, B], [0.9, 0.8], [0, 1]), _det([B], [0.7], [1])]
    m = coco_metrics(predictions, targets, num_classes=2)
    assert m["map"] == pytest.approx(1.0)
    assert m["map_50"] == pytest.approx(1.0)
    assert m["map_75"] == pytest.approx(1.0)
    assert m["map_per_class"] == pytest.approx([1.0, 1.0])
    assert (m["n_images"], m["n_ground_truth"], m["n_predictions"]) == (2, 3, 3)


def test_map_higher_scored_false_positive_halves_ap() -> None:
    # FP (0.9) first, then TP (0.8): recall [0, 1], precision [0, 1/2], monotone [1/2, 1/2].
    # Recall point 0 takes the first detection with recall >= 0 (precision 1/2), every other
    # point the second (1/2): AP = 1/2 at every threshold.
    m = coco_metrics([_det([FAR, A], [0.9, 0.8])], [_gt(A)], num_classes=1)
    assert m["map"] == pytest.approx(0.5)
    assert m["map_50"] == pytest.approx(0.5)
    assert m["map_75"] == pytest.approx(0.5)
    # the same FP scored below the TP costs nothing: precision 1 up to recall 1
    m = coco_metrics([_det([FAR, A], [0.7, 0.8])], [_gt(A)], num_classes=1)
    assert m["map"] == pytest.approx(1.0)


def test_map_box_with_known_iou() -> None:
    # truth 40 x 40 (area 1600); prediction 40 x 28.8 inside it: IoU = 1152 / 1600 = 0.72.
    # TP at t in {.50, .55, .60, .65, .70} (AP 1), FP at the five thresholds above (AP 0):
    # mAP = 5/10, mAP@.5 = 1, mAP@.75 = 0.
    m = coco_metrics([_det([(10.0, 10.0, 50.0, 38.8)], [0.9])], [_gt(A)], num_classes=1)
    assert m["map_50"] == pytest.approx(1.0)
    assert m["map_75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.5)


def test_map_negative_image_false_positive_counts() -> None:
    # image 1: truth A found (0.8); image 2 has no truth but a detection scored 0.9: a FP ranked
    # first, as in the test above -> AP 1/2. Without the negative image, AP 1.
    targets = [_gt(A), _gt()]
    predictions = [_det([A], [0.8]), _det([A], [0.9])]
    assert coco_metrics(predictions, targets, num_classes=1)["map"] == pytest.approx(0.5)
    assert coco_metrics(predictions[:1], targets[:1], num_classes=1)["map"] == pytest.approx(1.0)


def test_map_two_classes_averaged() -> None:
    # class 0: one truth found exactly -> AP 1.
    # class 1: three truths, one found (TP, no FP): recall 1/3 at precision 1. Recall points
    # 0, .01, ..., .33 (34 points) get precision 1, the rest 0 -> AP 34/101 at every threshold.
    # class 2: no truth (its FP is ignored, as in COCO) -> None, left out of the mean.
    c1 = [(0.0, 0.0, 20.0, 20.0), (30.0, 0.0, 50.0, 20.0), (60.0, 0.0, 80.0, 20.0)]
    targets = [_gt(A, *c1, labels=[0, 1, 1, 1])]
    predictions = [_det([A, c1[0], FAR], [0.9, 0.8, 0.95], [0, 1, 2])]
    m = coco_metrics(predictions, targets, num_classes=3)
    assert m["map_per_class"][0] == pytest.approx(1.0)
    assert m["map_per_class"][1] == pytest.approx(34 / 101)
    assert m["map_per_class"][2] is None
    assert m["map"] == pytest.approx((1 + 34 / 101) / 2)
    assert m["map_50"] == pytest.approx((1 + 34 / 101) / 2)


def test_map_no_predictions_is_zero_and_numpy_inputs_work() -> None:
    targets = [{"boxes": np.array([A]), "labels": np.array([1])}]
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}]
    m = coco_metrics(empty, targets, num_classes=2)
    assert (m["map"], m["map_50"], m["map_75"]) == (0.0, 0.0, 0.0)
    assert m["map_per_class"] == [None, 0.0]
    assert m["n_predictions"] == 0


def test_map_rejects_bad_input() -> None:
    with pytest.raises(MarsevalError, match="ground-truth"):
        coco_metrics([_det([A], [0.9])], [_gt()], num_classes=1)
    with pytest.raises(MarsevalError, match="1 predictions but 2 targets"):
        coco_metrics([_det([A], [0.9])], [_gt(A), _gt(A)], num_classes=1)
    with pytest.raises(MarsevalError, match=r"predictions\[0\].*outside 0..0"):
        coco_metrics([_det([A], [0.9], [1])], [_gt(A)], num_classes=1)
    with pytest.raises(MarsevalError, match=r"targets\[0\].*outside 0..1"):
        coco_metrics([_det([A], [0.9])], [_gt(A, labels=[-1])], num_classes=2)


def test_map_matches_torchmetrics_on_random_predictions() -> None:
    from pycocotools.cocoeval import Params
    from torchmetrics.detection import MeanAveragePrecision

    g = torch.Generator().manual_seed(0)
    num_classes, targets, predictions = 3, [], []
    for i in range(12):
        n = 0 if i % 4 == 3 else int(torch.randint(1, 6, (), generator=g))  # some negatives
        xy = torch.rand(n, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 80], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
        # jittered truths (some dropped, some relabelled) plus random false positives
        keep = torch.rand(n, generator=g) < 0.8
        jitter = boxes[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 6
        k = int(torch.randint(0, 5, (), generator=g))
        xy = torch.rand(k, 2, generator=g) * 200
        fp = torch.cat([xy, xy + 10 + torch.rand(k, 2, generator=g) * 80], 1)
        pred_boxes = torch.cat([jitter, fp])
        x0y0 = torch.minimum(pred_boxes[:, :2], pred_boxes[:, 2:])
        x1y1 = torch.maximum(pred_boxes[:, :2], pred_boxes[:, 2:])
        pred_labels = torch.cat([labels[keep], torch.randint(0, num_classes, (k,), generator=g)])
        flip = torch.rand(len(pred_labels), generator=g) < 0.15
        pred_labels[flip] = (pred_labels[flip] + 1) % num_classes
        predictions.append({
            "boxes": torch.cat([x0y0, x1y1], 1),
            "scores": torch.rand(len(pred_labels), generator=g),
            "labels": pred_labels,
        })

    ours = coco_metrics(predictions, targets, num_classes)
    # torchmetrics' default thresholds are float32 linspaces, a recall landing exactly on a
    # multiple of .01 can then fall on the other side: give it pycocotools' float64 ones
    params = Params(iouType="bbox")
    reference = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools",
        iou_thresholds=params.iouThrs.tolist(), rec_thresholds=params.recThrs.tolist(),
    )
    reference.update(predictions, targets)
    theirs = reference.compute()
    assert 0.05 < ours["map"] < 0.95  # a non-trivial case
    for key in ("map", "map_50", "map_75"):
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-6)
    per_class = dict(zip(theirs["classes"].tolist(), theirs["map_per_class"].tolist(),
                         strict=True))
    for c, value in enumerate(ours["map_per_class"]):
        if value is None:
            assert per_class.get(c, -1) == -1
        else:
            assert value == pytest.approx(per_class[c], abs=1e-6)


# --------------------------------------------------------------------------- detectors

# name -> input size for the CPU tests (SSD300 is fixed at 300)
SMALL = {
    "fasterrcnn_resnet50_fpn": 128,
    "retinanet_resnet50_fpn_v2": 128,
    "ssd300_vgg16": None,
    "yolo11n": 128,
}


def _targets(size: int) -> list[dict[str, torch.Tensor]]:
    s = size / 128  # the same boxes in any frame
    return [
        {"boxes": torch.tensor([[8.0, 12.0, 60.0, 70.0], [70.0, 40.0, 120.0, 100.0]]) * s,
         "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # negative
    ]


def _frozen_state(model: Detector) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm statistics) of the frozen trunk."""
    state = {}
    for part in model.frozen:
        module = model.get_submodule(part)
        for key, value in [*module.named_parameters(), *module.named_buffers()]:
            state[f"{part}.{key}"] = value.detach().clone()
    return state


def _norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers() if "running" in k}


@pytest.mark.parametrize("name", list(SMALL))
def test_feature_extraction_train_step_and_predict(name: str) -> None:
    torch.manual_seed(0)
    model = build_detector(name, num_classes=3, pretrained=False,
                           training_type="feature_extraction", input_size=SMALL[name])
    size = model.input_size
    assert size == (SMALL[name] or 300)
    assert model.display_name == DETECTORS[name]
    assert model.frozen
    frozen = _frozen_state(model)
    assert any(not p.requires_grad for p in model.parameters())
    assert all(not p.requires_grad for k, p in model.named_parameters() if k in frozen)
    trainable = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    assert trainable

    # the training loop's mode rule keeps every frozen part in eval mode
    train_mode(model)
    assert model.training
    assert all(not model.get_submodule(part).training for part in model.frozen)

    images = torch.rand(2, 3, size, size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model.loss(images, _targets(size))
    assert loss.ndim == 0 and math.isfinite(loss.item())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    after = _frozen_state(model)
    assert all(torch.equal(frozen[k], after[k]) for k in frozen), "frozen trunk changed"
    assert any(not torch.equal(trainable[k], p) for k, p in model.named_parameters()
               if k in trainable), "no trainable parameter changed"

    model.eval()
    predictions = model.predict(images)
    assert len(predictions) == 2
    for out in predictions:
        k = len(out["scores"])
        assert k <= 100
        assert out["boxes"].shape == (k, 4) and out["labels"].shape == (k,)
        assert out["labels"].dtype == torch.int64
        assert ((out["labels"] >= 0) & (out["labels"] < 3)).all()
        assert ((out["scores"] >= 0.001) & (out["scores"] <= 1)).all()
        boxes = out["boxes"]
        assert ((boxes >= 0) & (boxes <= size)).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()

    # validation loss: eval mode, no gradients; BatchNorm statistics, RNG and modes untouched
    norms, rng = _norm_buffers(model), torch.get_rng_state()
    with torch.no_grad():
        eval_loss = model.loss(images, _targets(size))
    assert torch.equal(rng, torch.get_rng_state())
    assert eval_loss.ndim == 0 and math.isfinite(eval_loss.item())
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(v, _norm_buffers(model)[k]) for k, v in norms.items())


def test_predict_and_loss_restore_modes() -> None:
    model = build_detector("yolo11n", 3, pretrained=False, training_type="feature_extraction",
                           input_size=64)
    images, targets = torch.rand(2, 3, 64, 64), _targets(64)
    train_mode(model)
    modes = {name: m.training for name, m in model.named_modules()}
    model.predict(images)  # eval for the call only
    model.loss(images, targets)  # train mode: used as it is
    assert modes == {name: m.training for name, m in model.named_modules()}
    model.eval()
    with torch.no_grad():
        model.loss(images, targets)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn_v2", "yolo11n"])
def test_random_init_seeding(name: str) -> None:
    def build(seed: int) -> Detector:
        torch.manual_seed(seed)
        return build_detector(name, 2, pretrained=False, training_type="feature_extraction",
                              input_size=64)

    a, b, c = build(1), build(1), build(2)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    trunk = [k for k in state_a if any(k.startswith(f"{p}.") for p in a.frozen)]
    rest = [k for k in state_a if k not in trunk and state_a[k].is_floating_point()]
    # the frozen trunk comes from init_seed, the trainable parts from the caller's seed
    assert trunk and all(torch.equal(state_a[k], state_c[k]) for k in trunk)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in rest)
    # scratch: the trunk too follows the caller's seed
    torch.manual_seed(2)
    scratch = build_detector(name, 2, pretrained=False, training_type="scratch", input_size=64)
    assert not scratch.frozen
    # (YOLO's DFL layer is a fixed projection, never trained by ultralytics either)
    assert all(p.requires_grad for k, p in scratch.named_parameters() if ".dfl." not in k)
    assert any(not torch.equal(state_a[k], scratch.state_dict()[k]) for k in trunk)


def test_build_errors() -> None:
    with pytest.raises(MarsevalError, match="known detectors are .*yolo11x"):
        build_detector("yolo12n", 3, pretrained=False, training_type="scratch")
    with pytest.raises(MarsevalError, match="num_classes"):
        build_detector("yolo11n", 0, pretrained=False, training_type="scratch")
    with pytest.raises(MarsevalError, match="training type"):
        build_detector("yolo11n", 1, pretrained=False, training_type="finetune")
    with pytest.raises(MarsevalError, match="multiple of 32"):
        build_detector("yolo11n", 1, pretrained=False, training_type="scratch", input_size=100)
    with pytest.raises(MarsevalError, match="300x300"):
        build_detector("ssd300_vgg16", 1, pretrained=False, training_type="scratch",
                       input_size=128)


def test_loss_rejects_bad_targets() -> None:
    model = build_detector("yolo11n", 2, pretrained=False, training_type="scratch",
                           input_size=64)
    images = torch.rand(1, 3, 64, 64)
    box = torch.tensor([[1.0, 1.0, 20.0, 20.0]])
    with pytest.raises(MarsevalError, match="target 0 has a label outside 0..1"):
        model.loss(images, [{"boxes": box, "labels": torch.tensor([2])}])
    with pytest.raises(MarsevalError, match="positive width"):
        model.loss(images, [{"boxes": box[:, [2, 1, 0, 3]], "labels": torch.tensor([0])}])
    with pytest.raises(MarsevalError, match=r"images must be \(N, 3, 64, 64\)"):
        model.predict(torch.rand(1, 3, 96, 96))


def test_pretrained_torchvision_offline_names_the_file() -> None:
    from torchvision.models import get_model_weights

    url = get_model_weights("retinanet_resnet50_fpn_v2")["COCO_V1"].url
    file = os.path.basename(urlparse(url).path)
    with pytest.raises(MarsevalError, match=f"{file}.*MARSEVAL_OFFLINE"):
        build_detector("retinanet_resnet50_fpn_v2", 3, pretrained=True,
                       training_type="feature_extraction")


def test_pretrained_torchvision_loads_coco_layout_before_new_predictor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stand-in for the COCO checkpoint, built as torchvision builds the pretrained model
    (FrozenBatchNorm2d trunk, 91 classes): it loads, then the predictor is replaced."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    coco = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), 91)
    with torch.no_grad():
        coco.backbone.body.bn1.running_mean.uniform_()  # differs from a fresh BatchNorm2d
    monkeypatch.setattr(det_models, "torchvision_state_dict", lambda name, w: coco.state_dict())
    model = build_detector("fasterrcnn_resnet50_fpn", 4, pretrained=True,
                           training_type="transfer_learning", input_size=128)
    assert torch.equal(model.net.backbone.body.bn1.running_mean,
                       coco.backbone.body.bn1.running_mean)
    assert torch.equal(model.net.backbone.fpn.layer_blocks[0][0].weight,
                       coco.backbone.fpn.layer_blocks[0][0].weight)
    assert model.net.roi_heads.box_predictor.cls_score.out_features == 5  # 4 + background
    assert all(p.requires_grad for p in model.parameters()) and not model.frozen


def test_pretrained_yolo_offline_names_the_file(yolo_weights: Path) -> None:
    with pytest.raises(MarsevalError, match=f"yolo11n.pt.*{yolo_weights}.*forbids"):
        build_detector("yolo11n", 3, pretrained=True, training_type="feature_extraction")


def test_pretrained_yolo_loads_a_local_checkpoint(yolo_weights: Path) -> None:
    """A checkpoint in the official layout (a pickled fp16 model in a dict) in the weights dir
    loads through ultralytics' restricted loader; the trunk takes its weights."""
    from ultralytics.nn.tasks import DetectionModel

    source = DetectionModel("yolo11n.yaml", nc=80, verbose=False)
    torch.save({"model": source.half(), "ema": None, "train_args": {}}, yolo_weights / "yolo11n.pt")
    model = build_detector("yolo11n", 3, pretrained=True, training_type="feature_extraction",
                           input_size=64)
    assert torch.equal(model.net.model[0].conv.weight, source.model[0].conv.weight.float())
    assert model.net.model[-1].nc == 3
    assert all(not p.requires_grad for p in model.net.model[0].parameters())
    assert model.frozen == tuple(f"net.model.{i}" for i in range(11))  # yolo11's backbone
