"""The Mars-Bench reference's detection pipeline (docs/fidelity.md row 9), CPU, random init:
what the detectors receive, which parts train, RetinaNet's class count and the reference SSD
(marsbench/models/detection/*.py, marsbench/utils/transforms.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from torch import nn

from marseval.bench.detection import models as det_models
from marseval.bench.detection.data import DetectionDataset
from marseval.bench.detection.models import build_detector
from marseval.bench.experiment import Setup, open_experiment
from marseval.bench.training import train_mode
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.errors import MarsevalError
from marseval.registry import get_dataset
from marseval.registry.model_names import DETECTORS

# marsbench/configs/transforms/default.yaml
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(autouse=True, scope="module")
def _offline(tmp_path_factory: pytest.TempPathFactory):
    """No downloads: an empty torch hub cache and marseval offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        mp.setenv("MARSEVAL_OFFLINE", "1")
        mp.setenv("YOLO_OFFLINE", "1")
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
        yield


@pytest.fixture(scope="module")
def boulders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det")
    spec = get_dataset("mb-boulder_det")
    raw = generate_benchmark(spec, seed=0, size=48, samples={"train": 4, "val": 2, "test": 2})
    write_zenodo(raw, spec, root / "raw")
    standardize(root / "raw", root / "std", "mb-boulder_det", "synthetic", [0.5, 1.0], [])
    return root / "std"


class _Stop(Exception):
    """Raised by a hook once the inputs of interest are captured (skips the heavy forward)."""


def _spy(experiment, model: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The images the torchvision model receives, and what its backbone gets after the model's
    own transform (normalise again, resize), for the first test batch of `experiment`."""
    seen: dict[str, object] = {}

    def net_input(module, args):
        seen["images"] = [image.detach().clone() for image in args[0]]

    def backbone_input(module, args):
        seen["backbone"] = args[0].detach().clone()
        raise _Stop

    model.net.register_forward_pre_hook(net_input)
    model.net.backbone.register_forward_pre_hook(backbone_input)
    with pytest.raises(_Stop):
        experiment.score(model, experiment.split("test"))
    return seen["images"], seen["backbone"]


# --------------------------------------------------------------------------- inputs


def test_marsbench_detector_receives_imagenet_normalised_224_images(boulders: Path) -> None:
    # marsbench: Resize(224) + Normalize(ImageNet) before the detector (utils/transforms.py),
    # then torchvision's GeneralizedRCNNTransform resizes to its min_size 800 inside
    experiment = open_experiment(Setup(boulders, "fasterrcnn_resnet50_fpn", pretrained=False,
                                       protocol="marsbench"))
    assert experiment.input_size == 224
    model = experiment.build_model(None, seed=0)
    images, backbone = _spy(experiment, model)
    rows = experiment.rows("test")
    plain = DetectionDataset(boulders, rows, 224)  # [0, 1] images of the same rows
    assert len(images) == 2 and images[0].shape == (3, 224, 224)
    for i, image in enumerate(images):
        torch.testing.assert_close(image, (plain[i][0] - MEAN) / STD)
    assert backbone.shape == (2, 3, 800, 800)
    # normalised a second time by the model itself: ((x - m) / s - m) / s at every pixel
    twice = ((images[0] - MEAN) / STD)[:, :1, :1]
    torch.testing.assert_close(backbone[0, :, :1, :1], twice, atol=0.05, rtol=0)


def test_probe_detector_receives_01_images_at_its_own_size(boulders: Path) -> None:
    experiment = open_experiment(Setup(boulders, "fasterrcnn_resnet50_fpn", pretrained=False,
                                       protocol="probe"))
    assert experiment.input_size == 800
    model = experiment.build_model(None, seed=0)
    images, backbone = _spy(experiment, model)
    plain = DetectionDataset(boulders, experiment.rows("test"), 800)
    torch.testing.assert_close(images[0], plain[0][0])
    assert float(images[0].min()) >= 0.0 and float(images[0].max()) <= 1.0
    assert backbone.shape == (2, 3, 800, 800)  # no resize inside (800 is its input)
    torch.testing.assert_close(backbone[0], (images[0] - MEAN) / STD)


def test_yolo_keeps_raw_inputs_in_marsbench() -> None:
    # YOLO11 is not in the reference code: [0, 1] images at ultralytics' 640 in both pipelines
    model = build_detector("yolo11n", 1, pretrained=False, training_type="feature_extraction",
                           pipeline="marsbench")
    assert model.mean_std is None and model.input_size == 640
    with pytest.raises(MarsevalError, match="pipeline"):
        build_detector("yolo11n", 1, pretrained=False, training_type="scratch",
                       pipeline="reference")


# --------------------------------------------------------------------------- Faster R-CNN

# RPNHead(256, 3 anchors): 3x3 conv 256->256, 1x1 convs to 3 objectness and 3 x 4 deltas
RPN_PARAMS = (256 * 256 * 9 + 256) + (256 * 3 + 3) + (256 * 12 + 12)
# TwoMLPHead on 7 x 7 x 256 RoI features, then FastRCNNPredictor(1024, 2) (background + 1)
ROI_PARAMS = (256 * 49 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 2 + 2) + (1024 * 8 + 8)


def _trainable(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts by second-level module (net.<part>.<sub>)."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = ".".join(name.split(".")[1:3])
            counts[part] = counts.get(part, 0) + p.numel()
    return counts


def test_marsbench_faster_rcnn_trains_rpn_and_roi_heads_only() -> None:
    model = build_detector("fasterrcnn_resnet50_fpn", 1, pretrained=False,
                           training_type="feature_extraction", pipeline="marsbench")
    counts = _trainable(model)
    assert {k.split(".")[0] for k in counts} == {"rpn", "roi_heads"}
    assert sum(counts.values()) == RPN_PARAMS + ROI_PARAMS == 14_499_865
    # torchvision's pretrained builder (what the reference calls) has FrozenBatchNorm2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = model.net.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53

    probe = build_detector("fasterrcnn_resnet50_fpn", 1, pretrained=False,
                           training_type="feature_extraction", pipeline="raw")
    counts = _trainable(probe)
    assert {k.split(".")[0] for k in counts} == {"backbone", "rpn", "roi_heads"}
    assert counts["backbone.fpn"] > 0  # the probe trains the FPN (backbone.body frozen)


# --------------------------------------------------------------------------- RetinaNet


def test_marsbench_retinanet_has_the_references_two_classes() -> None:
    # RetinaNet.py: RetinaNetClassificationHead(256, 9, num_classes=2, GroupNorm(32)) with the
    # data config's num_classes: 2 (background + 1), though RetinaNet has no background
    model = build_detector("retinanet_resnet50_fpn_v2", 1, pretrained=False,
                           training_type="feature_extraction", pipeline="marsbench")
    head = model.net.head.classification_head
    assert head.num_classes == 2 and head.cls_logits.out_channels == 9 * 2
    probe = build_detector("retinanet_resnet50_fpn_v2", 1, pretrained=False,
                           training_type="feature_extraction", pipeline="raw")
    assert probe.net.head.classification_head.cls_logits.out_channels == 9 * 1
    # the reference trains FPN + head, its ResNet body frozen (and not FrozenBatchNorm: the
    # v2 builder keeps BatchNorm2d)
    assert {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("backbone") else
            k.split(".")[0] for k in _trainable(model)} == {"backbone.fpn", "head"}
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.net.backbone.body.modules())

    # the unused class 0 never becomes a prediction of ours; class 1 is our class 0
    model.net.transform.min_size, model.net.transform.max_size = (64,), 64  # CPU-sized test
    images = torch.rand(1, 3, 224, 224)
    found = {}
    for favoured in (0, 1):
        with torch.no_grad():
            bias = torch.full((9, 2), -10.0)
            bias[:, favoured] = 10.0
            head.cls_logits.bias.copy_(bias.flatten())
            head.cls_logits.weight.zero_()
        found[favoured] = model.predict(images)[0]["labels"].tolist()
    assert found[0] == [] and len(found[1]) > 0 and set(found[1]) == {0}
    # targets of our class 0 are the model's class 1. With every logit 0 (p = 0.5) each
    # anchor's focal-loss gradient (alpha 0.25, gamma 2) is the same for both classes except
    # at the matched anchors: a negative's (1 - a)(2 p^2 (1 - p) ln 2 + p^3) for class 0, a
    # positive's -a(2 p (1 - p)^2 ln 2 + (1 - p)^3) for class 1; the loss is divided by the
    # number of matched anchors, so the two bias gradients differ by exactly one such pair
    target = [{"boxes": torch.tensor([[20.0, 20.0, 120.0, 120.0]]), "labels": torch.tensor([0])}]
    with torch.no_grad():
        head.cls_logits.bias.zero_()
    train_mode(model, "train")
    model.loss(images, target).backward()
    grad = head.cls_logits.bias.grad.view(9, 2).sum(0)
    negative = 0.75 * (2 * 0.125 * math.log(2) + 0.125)
    positive = -0.25 * (2 * 0.125 * math.log(2) + 0.125)
    assert float(grad[0] - grad[1]) == pytest.approx(negative - positive, rel=1e-4)


# --------------------------------------------------------------------------- reference SSD


def test_reference_ssd_builds_as_the_reference() -> None:
    assert "ssd_resnet34" in DETECTORS
    torch.manual_seed(0)
    model = build_detector("ssd_resnet34", 1, pretrained=False,
                           training_type="feature_extraction", input_size=64,
                           pipeline="marsbench")
    net = model.net
    assert model.mean_std is not None and model.frozen == ("net.backbone",)
    # one stride-32 feature map from ResNet34's conv1..layer4
    assert net.backbone(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert net.anchor_generator.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    assert net.nms_thresh == 0.45 and net.transform.fixed_size == (64, 64)
    # SSDHead([512] * 6, anchors, 2): 3x3 convs to A x 2 scores and A x 4 deltas per level
    head_params = sum((512 * 9 + 1) * a * (2 + 4) for a in (4, 6, 6, 6, 4, 4))
    assert head_params == 829_620
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("net.head.")}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == head_params
    assert net.head.classification_head.module_list[0].out_channels == 4 * 2

    # only the first level's 4 boxes a location exist: 2 x 2 x 4 anchors, the first two
    # centred on (16, 16) with sides 0.15 x 64 and sqrt(0.15 x 0.3) x 64
    from torchvision.models.detection.image_list import ImageList

    anchors = net.anchor_generator(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]),
                                   [torch.zeros(1, 512, 2, 2)])[0]
    assert anchors.shape == (16, 4)
    side = math.sqrt(0.15 * 0.3) * 64
    torch.testing.assert_close(anchors[:2], torch.tensor([
        [16 - 4.8, 16 - 4.8, 16 + 4.8, 16 + 4.8],
        [16 - side / 2, 16 - side / 2, 16 + side / 2, 16 + side / 2]]), atol=1e-4, rtol=0)


def test_reference_ssd_trains_its_head_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_detector("ssd_resnet34", 1, pretrained=False,
                           training_type="feature_extraction", input_size=64,
                           pipeline="marsbench")
    head = {k: v.detach().clone() for k, v in model.named_parameters() if ".head." in k}
    backbone = {k: v.detach().clone() for k, v in model.named_parameters() if ".backbone." in k}
    stats = model.net.backbone[1].running_mean.clone()
    images = (torch.rand(2, 3, 64, 64) - MEAN) / STD
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[30.0, 5.0, 60.0, 30.0]]), "labels": torch.tensor([0])}]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train_mode(model, "train")  # the reference: frozen by requires_grad only, train mode
    loss = model.loss(images, targets)
    assert math.isfinite(loss.item())
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())
    assert any(not torch.equal(v, after[k]) for k, v in head.items())
    # its ResNet34 keeps BatchNorm2d, whose statistics adapt in train mode as the reference's
    assert not torch.equal(stats, model.net.backbone[1].running_mean)

    out = model.predict(images)
    assert len(out) == 2
    for found in out:
        k = len(found["scores"])
        assert 0 < k <= 16  # at most one box per anchor and class
        assert found["labels"].tolist() == [0] * k
        assert ((found["boxes"] >= 0) & (found["boxes"] <= 64)).all()


def test_reference_ssd_loads_imagenet_resnet34_through_the_offline_helper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchvision.models import ResNet34_Weights, resnet34

    file = os.path.basename(urlparse(ResNet34_Weights.IMAGENET1K_V1.url).path)
    with pytest.raises(MarsevalError, match=f"{file}.*MARSEVAL_OFFLINE"):
        build_detector("ssd_resnet34", 1, pretrained=True, training_type="feature_extraction")

    source = resnet34()
    with torch.no_grad():
        source.layer4[2].bn2.running_var.uniform_(2.0, 3.0)
    asked = []

    def state_dict(name, weights):
        asked.append((name, weights))
        return source.state_dict()

    monkeypatch.setattr(det_models, "torchvision_state_dict", state_dict)
    model = build_detector("ssd_resnet34", 1, pretrained=True, training_type="feature_extraction")
    assert asked == [("ssd_resnet34", ResNet34_Weights.IMAGENET1K_V1)]
    assert torch.equal(model.net.backbone[0].weight, source.conv1.weight)
    assert torch.equal(model.net.backbone[7][2].bn2.running_var, source.layer4[2].bn2.running_var)
    assert model.input_size == 224


# --------------------------------------------------------------------------- post-processing


def _postprocessing(net: nn.Module) -> tuple[float, int, float]:
    """(score threshold, detections per image, NMS IoU) a torchvision detector predicts with."""
    if hasattr(net, "roi_heads"):  # Faster R-CNN
        heads = net.roi_heads
        return heads.score_thresh, heads.detections_per_img, heads.nms_thresh
    return net.score_thresh, net.detections_per_img, net.nms_thresh


@pytest.mark.parametrize(("name", "reference"), [
    # torchvision's builder defaults, which the reference never overrides
    ("fasterrcnn_resnet50_fpn", (0.05, 100, 0.5)),
    ("retinanet_resnet50_fpn_v2", (0.05, 300, 0.5)),
    ("ssd300_vgg16", (0.01, 200, 0.45)),
    ("ssd_resnet34", (0.01, 200, 0.45)),  # SSD.py: nms_thresh=0.45, SSD's other defaults
])
def test_marsbench_detectors_predict_with_the_references_postprocessing(
        name: str, reference: tuple[float, int, float]) -> None:
    marsbench = build_detector(name, 1, pretrained=False, training_type="feature_extraction",
                               pipeline="marsbench")
    raw = build_detector(name, 1, pretrained=False, training_type="feature_extraction",
                         pipeline="raw")
    assert _postprocessing(marsbench.net) == pytest.approx(reference)
    # the probe keeps low-confidence boxes for COCO mAP: 0.001, at most 100 per image
    assert _postprocessing(raw.net)[:2] == pytest.approx((0.001, 100))
