"""Object detectors behind one interface: torchvision's Faster R-CNN, RetinaNet v2 and SSD300
(COCO weights), the Mars-Bench reference's own SSD on a ResNet34 (`ssd_resnet34`, ImageNet
weights) and ultralytics' YOLO11 (n/s/m/l/x).

A `Detector` takes float images (N, 3, S, S) and targets {"boxes": (M, 4) xyxy pixels in the
S x S frame, "labels": (M,) int64 in 0..C-1}; M may be 0. `loss` returns one scalar, `predict`
per-image {"boxes", "scores", "labels"} for COCO mAP (score >= 0.001, at most 100 per image).

Two input pipelines (`build_detector(pipeline=...)`, the protocol's `detection_inputs`):
- "raw": images in [0, 1], not normalised (torchvision detectors normalise inside, YOLO wants
  [0, 1]); torchvision detectors work at S itself (no internal resize).
- "marsbench", as the reference code (marsbench/utils/transforms.py, models/detection/*.py):
  torchvision detectors get 224 px images already ImageNet-normalised (`Detector.mean_std`
  says what the data must apply), normalise them again and resize them internally as their
  builders' defaults do (Faster R-CNN and RetinaNet to 800, SSD300 to 300); Faster R-CNN has
  FrozenBatchNorm2d in its ResNet and trains only RPN + ROI heads in feature extraction;
  RetinaNet has the reference's `num_classes: 2` (an unused class 0 beside the object class).
  YOLO, absent from the reference, keeps the raw pipeline.

Pretrained weights: torchvision checkpoints load as in `models.py` (torch.hub cache,
`weights_only=True`, offline check). YOLO checkpoints are ultralytics' release assets
(`yolo11n.pt` ...) kept in ultralytics' `weights_dir` setting. SECURITY: those files are pickles
of whole model objects from a trusted source (github.com/ultralytics/assets); they load through
ultralytics' `torch_safe_load(safe_only=True)` (torch.load with weights_only=True plus
ultralytics' allow-list of its own classes), yet trusting the file remains an open issue.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from marseval.bench.model_building import (
    check_model_arguments,
    freeze,
    offline_var,
    torchvision_state_dict,
)
from marseval.bench.segmentation.models import IMAGENET_MEAN, IMAGENET_STD
from marseval.errors import MarsevalError
from marseval.registry.model_names import DETECTORS

# COCO-style evaluation: keep low-confidence boxes (they count for AP), at most 100 per image
SCORE_THRESH = 0.001
MAX_DETECTIONS = 100
YOLO_NMS_IOU = 0.7  # ultralytics' validation default

PIPELINES = ("raw", "marsbench")
# the reference's transforms.image_size for every detector (configs/transforms/default.yaml)
REFERENCE_INPUT_SIZE = 224
REFERENCE_SSD = "ssd_resnet34"  # marsbench/models/detection/SSD.py
REFERENCE_SSD_NMS = 0.45  # marsbench/configs/model/detection/ssd.yaml
# DefaultBoxGenerator's aspect ratios in SSD.py: six sets, for six maps the backbone never makes
REFERENCE_SSD_ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
_EVAL_KWARGS = {"score_thresh": SCORE_THRESH, "detections_per_img": MAX_DETECTIONS}


@dataclass(frozen=True)
class _TorchvisionSpec:
    weights: tuple[str, str]  # (model, member of its weights enum)
    default_size: int  # of the raw pipeline
    background: bool  # class index 0 is background: our labels shift by +1 inside
    kwargs: dict  # build kwargs: thresholds for COCO mAP
    rcnn_sizes: bool = False  # min_size/max_size set the internal resize (raw: S, no resize)
    # the builder the reference calls puts FrozenBatchNorm2d in the ResNet (fasterrcnn's
    # weights_backbone defaults to ImageNet, so even its weights=None model "is trained")
    frozen_norm: bool = False


_TORCHVISION: dict[str, _TorchvisionSpec] = {
    "fasterrcnn_resnet50_fpn": _TorchvisionSpec(
        ("fasterrcnn_resnet50_fpn", "COCO_V1"), 800, True,
        {"box_score_thresh": SCORE_THRESH, "box_detections_per_img": MAX_DETECTIONS},
        rcnn_sizes=True, frozen_norm=True,
    ),
    # RetinaNet scores classes with sigmoids; COCO's index 0 is just an unused class (the
    # marsbench pipeline keeps one, as the reference's num_classes: 2)
    "retinanet_resnet50_fpn_v2": _TorchvisionSpec(
        ("retinanet_resnet50_fpn_v2", "COCO_V1"), 800, False, _EVAL_KWARGS, rcnn_sizes=True,
    ),
    "ssd300_vgg16": _TorchvisionSpec(("ssd300_vgg16", "COCO_V1"), 300, True, _EVAL_KWARGS),
    REFERENCE_SSD: _TorchvisionSpec(
        ("resnet34", "IMAGENET1K_V1"), REFERENCE_INPUT_SIZE, True,
        {**_EVAL_KWARGS, "nms_thresh": REFERENCE_SSD_NMS},
    ),
}
YOLO_DEFAULT_SIZE = 640
YOLO_STRIDE = 32


# --------------------------------------------------------------------------- the interface


class Detector(nn.Module):
    """A detection network with `loss` and `predict` on S x S images.

    Images are in [0, 1] unless `mean_std` is set: then the data normalises them with that
    (mean, std) first. The modules named in `frozen` (qualified names) stay in eval mode
    whatever `train()` is asked, as `training.train_mode` also ensures for fully frozen
    children.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        num_classes: int,
        input_size: int,
        frozen: tuple[str, ...] = (),
        mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.display_name = DETECTORS[name]
        self.net = net
        self.num_classes = num_classes
        self.input_size = input_size
        self.frozen = frozen
        self.mean_std = mean_std
        self.train()

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    # -- public API

    def loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """Sum of the model's loss terms (a batch mean, see the subclasses), in any mode.

        In eval mode the loss-computing code paths switch on for this call, but normalisation
        layers with running statistics and dropout stay in eval: validation neither updates
        BatchNorm statistics nor depends on the batch's composition. Modes are restored after,
        and so is the RNG (Faster R-CNN samples RoIs): validation leaves training's stream alone.
        """
        self._check(images, targets)
        if self.training:
            return self._loss(images, targets)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._modes(loss=True):
            return self._loss(images, targets)

    def predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per image {"boxes" (K, 4) xyxy px, "scores" (K,), "labels" (K,) int64 0-based}, in
        eval mode (switched to for this call) and without gradients."""
        self._check(images, None)
        with self._modes(loss=False), torch.no_grad():
            return self._predict(images)

    # -- for subclasses

    def _loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        raise NotImplementedError

    def _predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    # -- helpers

    @contextlib.contextmanager
    def _modes(self, loss: bool) -> Iterator[None]:
        saved = [(module, module.training) for module in self.modules()]
        try:
            if not loss:
                self.eval()
            elif not self.training:
                frozen = {id(m) for name in self.frozen for m in self.get_submodule(name).modules()}
                keep_eval = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)
                for module in self.modules():
                    if id(module) not in frozen and not isinstance(module, keep_eval):
                        module.training = True
            yield
        finally:
            for module, training in saved:
                module.training = training

    def _check(self, images: Tensor, targets: list[dict[str, Tensor]] | None) -> None:
        size = self.input_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise MarsevalError(
                f"{self.name}: images must be (N, 3, {size}, {size}), got {tuple(images.shape)}"
            )
        if targets is None:
            return
        if len(targets) != len(images):
            raise MarsevalError(
                f"{self.name}: {len(images)} images but {len(targets)} targets"
            )
        bad = []
        for i, target in enumerate(targets):
            boxes, labels = target["boxes"], target["labels"]
            if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (len(boxes),):
                raise MarsevalError(
                    f"{self.name}: target {i}: boxes must be (M, 4) and labels (M,), got "
                    f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
                )
            if labels.dtype != torch.int64:
                raise MarsevalError(f"{self.name}: target {i}: labels must be int64, got "
                                    f"{labels.dtype}")
            bad.append(
                ((labels < 0) | (labels >= self.num_classes)).any()
                | (boxes[:, 2] <= boxes[:, 0]).any()
                | (boxes[:, 3] <= boxes[:, 1]).any()
            )
        if not bad:
            return
        flags = torch.stack(bad).cpu()  # one host sync for the whole batch
        if flags.any():
            i = int(flags.nonzero()[0, 0])
            raise MarsevalError(
                f"{self.name}: target {i} has a label outside 0..{self.num_classes - 1} or a box "
                f"without positive width and height: {targets[i]}"
            )


class _TorchvisionDetector(Detector):
    """torchvision detection model; `loss` is the sum of its loss dict (batch means)."""

    def __init__(self, *args, background: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shift = int(background)  # our label c is the model's c + shift

    def _loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + self.shift} for t in targets]
        losses = self.net(list(images), shifted)
        return sum(losses.values())

    def _predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        # Only RetinaNet (sigmoid scores) can predict class 0 when it is a background index:
        # the reference's unused class, which its mAP skips (no ground truth), so dropped here
        outputs = []
        for out in self.net(list(images)):
            keep = out["labels"] >= self.shift
            outputs.append({"boxes": out["boxes"][keep], "scores": out["scores"][keep],
                            "labels": out["labels"][keep] - self.shift})
        return outputs


class _YoloDetector(Detector):
    """ultralytics DetectionModel.

    `loss` is the criterion's gain-weighted box + cls + dfl sum (gains from ultralytics'
    default config) divided by the batch size: a batch mean like torchvision's losses.
    ultralytics' own trainer backpropagates batch size x this value, so its learning rates
    correspond to this loss with the rate multiplied by the batch size.
    """

    def _criterion_for(self, device: torch.device) -> None:
        # v8DetectionLoss captures the device and strides when built: rebuild after a move
        criterion = getattr(self.net, "criterion", None)
        if criterion is None or criterion.device != device:
            self.net.criterion = self.net.init_criterion()

    def _loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        self._criterion_for(images.device)
        size = float(self.input_size)
        boxes = torch.cat([t["boxes"] for t in targets]).to(images.device, torch.float32)
        xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
        batch = {
            "batch_idx": torch.cat([
                torch.full((len(t["labels"]),), i, dtype=torch.float32, device=images.device)
                for i, t in enumerate(targets)
            ]),
            "cls": torch.cat([t["labels"] for t in targets]).to(images.device, torch.float32)
            .view(-1, 1),
            "bboxes": xywh / size,  # normalised xywh, as ultralytics' data loaders give
        }
        loss, _ = self.net.loss(batch, self.net(images))
        return loss.sum() / len(images)

    def _predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        from ultralytics.utils.nms import non_max_suppression

        raw, _ = self.net(images)  # (N, 4 + C, anchors): xywh px, class probabilities
        outputs = non_max_suppression(
            raw,
            conf_thres=SCORE_THRESH,
            iou_thres=YOLO_NMS_IOU,
            multi_label=True,  # as ultralytics' validator, and torchvision's per-class boxes
            max_det=MAX_DETECTIONS,
            nc=self.num_classes,
            # no time limit: a slow CPU must not silently drop images' detections
            max_time_img=float("inf"),
        )
        return [
            {
                "boxes": out[:, :4].clamp(0, self.input_size),
                "scores": out[:, 4],
                "labels": out[:, 5].long(),
            }
            for out in outputs
        ]


# --------------------------------------------------------------------------- building


def build_detector(
    name: str,
    num_classes: int,
    pretrained: bool,
    training_type: str,
    input_size: int | None = None,
    init_seed: int | None = 0,
    pipeline: str = "raw",
) -> Detector:
    """Detector `name` (a key of DETECTORS) for `num_classes` classes.

    feature_extraction freezes the feature trunk (ResNet body, VGG conv layers, YOLO backbone
    section; the marsbench pipeline's Faster R-CNN its FPN too, the reference SSD its whole
    ResNet34) and keeps it in eval mode; transfer_learning and scratch train everything;
    scratch never loads weights. With random init (not scratch), the trunk comes from
    `torch.manual_seed(init_seed)` in a forked RNG (`init_seed=None`: the caller's RNG) and the
    rest from the caller's RNG, so a run's seed decides the trainable parts only.
    `input_size` S is the side of the square images the detector receives (default: raw
    pipeline Faster R-CNN/RetinaNet 800, SSD300 300 fixed, reference SSD 224; marsbench
    pipeline 224 for every torchvision detector; YOLO 640, a multiple of 32).
    `pipeline` is "raw" or "marsbench" (the module docstring says what each does).
    """
    if name not in DETECTORS:
        raise MarsevalError(
            f"unknown detector {name!r}: known detectors are {', '.join(DETECTORS)}"
        )
    if pipeline not in PIPELINES:
        raise MarsevalError(f"detector input pipeline must be one of {PIPELINES}, "
                            f"got {pipeline!r}")
    check_model_arguments("detector", name, num_classes, training_type)
    scratch = training_type == "scratch"
    pretrained = pretrained and not scratch
    size = _input_size(name, input_size, pipeline)

    mean_std = None
    if name in _TORCHVISION:
        spec = _TORCHVISION[name]
        # marsbench: RetinaNet too gets the reference's num_classes = background + objects
        background = spec.background or pipeline == "marsbench"
        classes = num_classes + background
        base = partial(_torchvision_base, name, size, pipeline, classes)
        net = base()
        if pretrained:
            # COCO weights go in before the class-specific layers are replaced
            _load_torchvision_weights(name, net)
        _replace_torchvision_predictor(name, net, classes)
        trunk = _torchvision_trunk(name, net, pipeline)
        if pipeline == "marsbench":
            mean_std = (IMAGENET_MEAN, IMAGENET_STD)
    else:
        base = partial(_yolo_base, name, num_classes)
        net = base()
        if pretrained:
            net.load(_yolo_checkpoint(name), verbose=False)
        trunk = tuple(f"model.{i}" for i in range(len(net.yaml["backbone"])))

    if not pretrained and not scratch and init_seed is not None:
        # same architecture from the fixed seed: copy its trunk, keep our own trainable parts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            reference = base()
        for part in trunk:
            net.get_submodule(part).load_state_dict(reference.get_submodule(part).state_dict())
        del reference

    frozen: tuple[str, ...] = ()
    if training_type == "feature_extraction":
        for part in trunk:
            freeze(net.get_submodule(part))
        # names relative to the Detector, whose `net` holds the model
        frozen = tuple(f"net.{part}" for part in trunk)

    if name in _TORCHVISION:
        return _TorchvisionDetector(name, net, num_classes, size, frozen, mean_std,
                                    background=background)
    return _YoloDetector(name, net, num_classes, size, frozen)


def _input_size(name: str, input_size: int | None, pipeline: str) -> int:
    if name in _TORCHVISION:
        default = _TORCHVISION[name].default_size
        if pipeline == "marsbench":
            default = REFERENCE_INPUT_SIZE  # SSD300 resizes it to 300 inside
        elif name == "ssd300_vgg16" and input_size not in (None, default):
            raise MarsevalError(f"detector {name} takes {default}x{default} inputs only, "
                                f"got input_size={input_size}")
    else:
        default = YOLO_DEFAULT_SIZE
        if input_size is not None and input_size % YOLO_STRIDE:
            raise MarsevalError(
                f"detector {name}: input_size must be a multiple of {YOLO_STRIDE}, got {input_size}"
            )
    size = default if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < YOLO_STRIDE:
        raise MarsevalError(f"detector {name}: input_size must be an integer >= {YOLO_STRIDE}, "
                            f"got {input_size!r}")
    return size


# --------------------------------------------------------------------------- torchvision


def _postprocessing(name: str, pipeline: str) -> dict:
    """Score threshold, detections per image and NMS of the detector's predictions. The raw
    pipeline keeps low-confidence boxes for COCO mAP (0.001, 100 per image); the marsbench
    pipeline keeps torchvision's defaults, as the reference builds its detectors (Faster R-CNN
    0.05 and 100, RetinaNet 0.05 and 300, SSD 0.01 and 200; the reference SSD's NMS 0.45)."""
    kwargs = _TORCHVISION[name].kwargs
    if pipeline == "raw":
        return dict(kwargs)
    return {key: value for key, value in kwargs.items() if key == "nms_thresh"}


def _torchvision_base(name: str, size: int, pipeline: str, classes: int) -> nn.Module:
    """The COCO architecture (91 classes; the reference SSD: `classes`), random init."""
    if name == REFERENCE_SSD:
        net = _reference_ssd(size, classes, _postprocessing(name, pipeline))
    else:
        from torchvision.models import get_model

        spec = _TORCHVISION[name]
        kwargs = _postprocessing(name, pipeline)
        if spec.rcnn_sizes and pipeline == "raw":
            kwargs.update(min_size=size, max_size=size)
        # weights_backbone=None: the builders otherwise download ImageNet weights for the trunk
        net = get_model(name, weights=None, weights_backbone=None, **kwargs)
        if spec.frozen_norm and pipeline == "marsbench":
            _freeze_batchnorm(net.backbone.body)
    if pipeline == "raw":
        # Images arrive S x S: skip the training-time resize (which also draws from the RNG);
        # in eval mode the resize to S is an identity. (marsbench resizes as torchvision does)
        net.transform._skip_resize = True
    return net


def _reference_ssd(size: int, classes: int, postprocessing: dict) -> nn.Module:
    """The reference's SSD (marsbench/models/detection/SSD.py): ResNet34 conv1..layer4 as the
    backbone, so ONE stride-32 feature map; SSDHead([512] * 6, anchors, classes) and a
    DefaultBoxGenerator for six maps, of which torchvision's SSD uses only the first (4 boxes
    a location, 0.15 and sqrt(0.15 * 0.3) of the side); NMS 0.45; `size` fixed (no rescale)."""
    from torchvision.models import resnet34
    from torchvision.models.detection.ssd import SSD, DefaultBoxGenerator, SSDHead

    backbone = _resnet_trunk(resnet34())
    anchors = DefaultBoxGenerator(REFERENCE_SSD_ASPECT_RATIOS)
    head = SSDHead([512] * len(REFERENCE_SSD_ASPECT_RATIOS),
                   anchors.num_anchors_per_location(), classes)
    return SSD(backbone, anchors, (size, size), classes, head=head, **postprocessing)


def _resnet_trunk(resnet: nn.Module) -> nn.Sequential:
    """conv1 .. layer4 of a torchvision ResNet, in one Sequential (the reference SSD's)."""
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(*(getattr(resnet, part) for part in parts))


def _load_torchvision_weights(name: str, net: nn.Module) -> None:
    """COCO weights into the COCO architecture; the reference SSD's ImageNet ResNet34 into
    its backbone (through a whole ResNet34, so every key is checked)."""
    from torchvision.models import get_model, get_model_weights

    model, member = _TORCHVISION[name].weights
    state = torchvision_state_dict(name, get_model_weights(model)[member])
    if name == REFERENCE_SSD:
        resnet = get_model(model, weights=None)
        resnet.load_state_dict(state)
        net.backbone.load_state_dict(_resnet_trunk(resnet).state_dict())
    else:
        net.load_state_dict(state)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm2d under `module` becomes torchvision's FrozenBatchNorm2d with the same
    statistics and affine values: fixed whatever the mode, as the reference's Faster R-CNN."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, child_name, frozen)
        else:
            _freeze_batchnorm(child)


def _replace_torchvision_predictor(name: str, net: nn.Module, classes: int) -> None:
    """New class-specific layers for `classes` outputs (background included where used)."""
    if name == "fasterrcnn_resnet50_fpn":
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        in_features = net.roi_heads.box_predictor.cls_score.in_features
        net.roi_heads.box_predictor = FastRCNNPredictor(in_features, classes)
    elif name == "retinanet_resnet50_fpn_v2":
        from torchvision.models.detection.retinanet import RetinaNetClassificationHead

        head = net.head.classification_head
        net.head.classification_head = RetinaNetClassificationHead(
            net.backbone.out_channels,
            head.num_anchors,
            classes,
            norm_layer=partial(nn.GroupNorm, 32),  # as the v2 builder
        )
    elif name == "ssd300_vgg16":
        from torchvision.models.detection._utils import retrieve_out_channels
        from torchvision.models.detection.ssd import SSDClassificationHead

        net.head.classification_head = SSDClassificationHead(
            retrieve_out_channels(net.backbone, (300, 300)),
            net.anchor_generator.num_anchors_per_location(),
            classes,
        )
    elif name != REFERENCE_SSD:  # pragma: no cover - its head is built for its classes
        raise AssertionError(name)


def _torchvision_trunk(name: str, net: nn.Module, pipeline: str) -> tuple[str, ...]:
    """The feature trunk: what torchvision freezes with trainable_backbone_layers=0, or what
    the reference freezes (models/detection/*.py) where the marsbench pipeline differs."""
    if name == "ssd300_vgg16":
        # VGG16 conv1_1..conv4_3 are `features`; conv5_x lead `extra[0]`, whose last child is
        # SSD's own fc6/fc7 block (trained from xavier init by torchvision's recipe)
        conv5 = list(net.backbone.extra[0].named_children())[:-1]
        return ("backbone.features", *(f"backbone.extra.0.{child}" for child, _ in conv5))
    if name == REFERENCE_SSD or (name == "fasterrcnn_resnet50_fpn" and pipeline == "marsbench"):
        return ("backbone",)  # SSD: head only; Faster R-CNN: RPN and ROI heads only
    return ("backbone.body",)  # the ResNet; FPN and heads train


# --------------------------------------------------------------------------- YOLO


def _yolo_base(name: str, num_classes: int) -> nn.Module:
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel(cfg=f"{name}.yaml", nc=num_classes, verbose=False)
    net.args = get_cfg()  # the loss reads its box/cls/dfl gains from here
    # ultralytics sets BatchNorm momentum 0.03, made for long schedules with a weight EMA.
    # This loop evaluates the live weights after every epoch, and with 0.03 the running
    # statistics of a short fit lag far behind them (eval-mode scores near zero after 60
    # steps that reach 0.99 in training mode). PyTorch's 0.1 changes only the running
    # statistics, never a training-mode output.
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = YOLO_BATCHNORM_MOMENTUM
    return net


YOLO_BATCHNORM_MOMENTUM = 0.1


def yolo_weights_dir() -> Path:
    """ultralytics' `weights_dir` setting (`yolo settings`; its settings file lives under
    YOLO_CONFIG_DIR or ~/.config/Ultralytics), a relative one resolved against the working
    directory as ultralytics does."""
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"]).expanduser().resolve()


def _yolo_offline_var() -> str | None:
    var = offline_var()
    if var is not None:
        return var
    if os.environ.get("YOLO_OFFLINE", "").strip().lower() not in {"", "0", "false", "no", "off"}:
        return "YOLO_OFFLINE"
    return None


def _yolo_checkpoint(name: str) -> dict:
    """The official checkpoint of `name`, downloaded into the weights dir when allowed."""
    from ultralytics.nn.tasks import torch_safe_load

    path = yolo_weights_dir() / f"{name}.pt"
    url = f"https://github.com/ultralytics/assets/releases/download/v8.4.0/{name}.pt"
    if not path.is_file():
        var = _yolo_offline_var()
        if var is not None:
            raise MarsevalError(
                f"pretrained weights of {name} ({path.name}) are not at {path} and {var} forbids "
                f"downloading them; fetch {url} to that path or unset {var}"
            )
        from ultralytics.utils.downloads import attempt_download_asset

        try:
            # a full path: ultralytics downloads the release asset to exactly that path
            attempt_download_asset(str(path))
        except Exception as exc:  # ConnectionError and friends from requests/curl
            raise MarsevalError(f"downloading {url} to {path} failed: {exc}") from exc
        if not path.is_file():
            raise MarsevalError(f"downloading {url} to {path} failed (no file written)")
    try:
        # weights_only=True against ultralytics' allow-list; the file stays a trusted pickle
        checkpoint, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:  # damaged file, unknown classes in the pickle
        raise MarsevalError(
            f"loading pretrained weights of {name} from {path} failed: {exc}"
        ) from exc
    return checkpoint
