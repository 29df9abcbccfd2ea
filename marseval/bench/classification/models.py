"""Classification backbones (the paper's five from torchvision, any timm model) and linear heads.

A backbone returns a dict of pooled feature vectors, so the same heads run on live images and on
the feature cache. InceptionV3 also returns "aux": the input of its auxiliary classifier's final
fc (the auxiliary conv layers count as frozen backbone), which trains a second head weighted 0.4.

The Mars-Bench protocol changes two things (`marseval.bench.protocol`): `inputs="marsbench"` feeds
every model as the reference's configs do (224 px, InceptionV3 299; ImageNet mean/std; resizing
without antialias), and `heads="marsbench"` builds the reference's heads (`reference_heads`): for
SqueezeNet the backbone then returns its 512-channel feature map, which the conv head pools.

Pretrained weights load for real: torchvision checkpoints go through torch.hub into
`$TORCH_HOME/hub/checkpoints/`, timm ones through its hub loading; with `MARSEVAL_OFFLINE` or
`HF_HUB_OFFLINE` set, a missing checkpoint is an error naming the file, never a download.
Everything loads with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from marseval.bench.model_building import (
    TRAINING_TYPES,
    check_timm_offline,
    freeze,
    hf_offline,
    offline_var,
    torchvision_state_dict,
)
from marseval.bench.segmentation.models import IMAGENET_MEAN, IMAGENET_STD, INPUTS
from marseval.errors import MarsevalError

HEAD_STYLES = ("marsbench", "pooled")  # Protocol.classifier_heads


@dataclass
class Backbone:
    """A feature extractor and the preprocessing its weights expect."""

    module: nn.Module  # module(images) -> {"main": (N, D) or a feature map (N, D, h, w), ...}
    feature_dims: dict[str, int]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    display_name: str
    antialias: bool = True  # low-pass filter before shrinking (the reference's resize has none)


@dataclass(frozen=True)
class _TorchvisionSpec:
    weights: str  # enum member of the model's weights class
    display_name: str
    feature_dims: dict[str, int]
    build_kwargs: dict
    reference_size: int = 224  # Mars-Bench configs/model/classification/*.yaml input_size


# The weights are the ones the Mars-Bench paper used (ResNet101: IMAGENET1K_V2).
TORCHVISION_MODELS: dict[str, _TorchvisionSpec] = {
    "resnet101": _TorchvisionSpec("IMAGENET1K_V2", "ResNet101", {"main": 2048}, {}),
    "squeezenet1_1": _TorchvisionSpec("IMAGENET1K_V1", "SqueezeNet1.1", {"main": 512}, {}),
    # transform_input: the Google weights expect inputs scaled to [-1, 1]; torchvision turns
    # ImageNet-normalised inputs into that inside the model, as its pretrained builder does.
    "inception_v3": _TorchvisionSpec(
        "IMAGENET1K_V1",
        "InceptionV3",
        {"main": 2048, "aux": 768},
        {"aux_logits": True, "transform_input": True},
        reference_size=299,  # inceptionv3.yaml
    ),
    # swin_transformer.yaml feeds 224 px, not the 256 its weights' transforms crop
    "swin_v2_b": _TorchvisionSpec("IMAGENET1K_V1", "SwinV2-B", {"main": 1024}, {}),
    "vit_l_16": _TorchvisionSpec("IMAGENET1K_V1", "ViT-L/16", {"main": 1024}, {}),
    # not a paper model: the ResNet-50-sized backbone of the feature-cache benchmark
    "resnet50": _TorchvisionSpec("IMAGENET1K_V2", "ResNet50", {"main": 2048}, {}),
}


# --------------------------------------------------------------------------- feature modules


class _PooledFeatures(nn.Module):
    """A torchvision classifier whose final layer was replaced by an identity."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"main": torch.flatten(self.net(images), 1)}


class _InceptionFeatures(nn.Module):
    """InceptionV3 trunk returning main and auxiliary pooled features in every mode.

    torchvision only runs the auxiliary branch in training mode; a frozen backbone stays in
    eval mode, so the trunk is replayed here (the same layers, in the order of
    `Inception3._forward`) with the auxiliary branch always on.
    """

    _STEM = (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
    )
    _TOP = ("Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool", "dropout")

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        net = self.net
        x = net._transform_input(images)
        for name in self._STEM:
            x = getattr(net, name)(x)
        aux = net.AuxLogits(x)  # its fc is an identity: 768-d pooled features
        for name in self._TOP:
            x = getattr(net, name)(x)
        return {"main": torch.flatten(x, 1), "aux": aux}


class _MainOutput(nn.Module):
    """A network whose output is the main feature as it is: timm's pooled features, or a
    torchvision trunk's last feature map (N, D, h, w) for a head that pools it itself."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"main": self.net(images)}


# --------------------------------------------------------------------------- building


def known_models() -> list[str]:
    from marseval.bench.classification.eo_backbones import known_eo_models

    return sorted(TORCHVISION_MODELS) + known_eo_models()


def split_checkpoint_name(name: str) -> tuple[str, str | None]:
    """`timm:<arch>[@<checkpoint file>]` -> (arch, file or None); hub names
    (`timm:hf-hub:org/repo@revision`) keep their `@`."""
    from marseval.registry.model_names import split_timm_checkpoint

    return split_timm_checkpoint(name)


def build_backbone(name: str, pretrained: bool, init_seed: int | None = 0, *,
                   inputs: str = "weights", heads: str = "pooled") -> Backbone:
    """Build backbone `name` (a key of TORCHVISION_MODELS or `timm:<model name>`).

    With `pretrained=False` the weights are random, drawn from `torch.manual_seed(init_seed)`
    in a forked RNG, so every job (feature cache, online training) gets the same backbone and
    the caller's RNG is untouched; `init_seed=None` draws from the caller's RNG instead.
    `inputs` and `heads` are the protocol's (`Protocol.inputs`, `.classifier_heads`): "weights"
    and "pooled" give each weights' own preprocessing and pooled vectors (cacheable);
    "marsbench" the reference's preprocessing (`reference_inputs`) and, for SqueezeNet, the
    feature map its conv head needs.
    """
    if inputs not in INPUTS or heads not in HEAD_STYLES:
        raise MarsevalError(f"backbone {name!r}: inputs must be one of {INPUTS} and heads one "
                            f"of {HEAD_STYLES}, got {inputs!r} and {heads!r}")
    if name.startswith("timm:"):
        arch, path = split_checkpoint_name(name)
        builder: Callable[[], Backbone] = (
            partial(_build_timm_from_file, arch, path, pretrained) if path is not None
            else partial(_build_timm, arch, pretrained))
    elif name.startswith("eo:"):
        from marseval.bench.classification.eo_backbones import build_eo

        builder = partial(build_eo, name[len("eo:"):], pretrained)
    elif name in TORCHVISION_MODELS:
        builder = partial(_build_torchvision, name, pretrained, feature_map=heads == "marsbench")
    else:
        raise MarsevalError(
            f"unknown model {name!r}: known models are {', '.join(known_models())}; "
            "`timm:<name>` works for any timm model (e.g. timm:resnet50), "
            "`timm:<name>@<checkpoint file>` for one with local weights"
        )
    if pretrained or init_seed is None:
        backbone = builder()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            backbone = builder()
    return reference_inputs(name, backbone) if inputs == "marsbench" else backbone


def reference_inputs(name: str, backbone: Backbone) -> Backbone:
    """`backbone` fed as the Mars-Bench reference feeds its classifiers.

    Size: `configs/model/classification/*.yaml` input_size (224; InceptionV3 299; SwinV2-B
    224 where its weights' transforms crop 256). Mean/std: ImageNet's for every model
    (`configs/transforms/default.yaml` rgb, `utils/transforms.py`). Resize: albumentations'
    A.Resize, OpenCV INTER_LINEAR without antialias. The reference has no timm models: a
    `timm:` model keeps its own input size (a fixed-size ViT takes no other) under the same
    ImageNet mean/std and resize, the reference's rule for every model.
    """
    spec = TORCHVISION_MODELS.get(name)
    size = spec.reference_size if spec is not None else backbone.input_size
    return replace(backbone, input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   antialias=False)


def _build_torchvision(name: str, pretrained: bool, feature_map: bool = False) -> Backbone:
    from torchvision.models import get_model, get_model_weights

    spec = TORCHVISION_MODELS[name]
    weights = get_model_weights(name)[spec.weights]
    kwargs = dict(spec.build_kwargs)
    if name == "inception_v3":
        # random init: torchvision's truncated-normal init; pretrained: overwritten anyway
        kwargs["init_weights"] = not pretrained
    net = get_model(name, weights=None, **kwargs)
    if pretrained:
        net.load_state_dict(torchvision_state_dict(name, weights))

    if name.startswith("resnet"):
        net.fc = nn.Identity()
        module: nn.Module = _PooledFeatures(net)
    elif name == "squeezenet1_1" and feature_map:
        module = _MainOutput(net.features)  # for the reference's conv head (reference_heads)
    elif name == "squeezenet1_1":
        # The paper's head is dropout + 1x1 conv + ReLU + global pooling on the feature map;
        # the pooled heads use a linear layer on globally pooled 512-d features instead, so
        # that features can be cached as vectors (a 1x1 conv then pooling is the same linear
        # map as pooling then linear, up to the ReLU before the pooling).
        net.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        module = _PooledFeatures(net)
    elif name == "inception_v3":
        net.fc = nn.Identity()
        net.AuxLogits.fc = nn.Identity()
        module = _InceptionFeatures(net)
    elif name == "swin_v2_b":
        net.head = nn.Identity()
        module = _PooledFeatures(net)
    elif name == "vit_l_16":
        net.heads = nn.Identity()
        module = _PooledFeatures(net)
    else:  # pragma: no cover - TORCHVISION_MODELS and this switch go together
        raise AssertionError(name)

    preprocess = weights.transforms()
    return Backbone(
        module=module,
        feature_dims=dict(spec.feature_dims),
        input_size=int(preprocess.crop_size[0]),
        mean=tuple(float(v) for v in preprocess.mean),
        std=tuple(float(v) for v in preprocess.std),
        display_name=spec.display_name,
    )


def _build_timm(model_name: str, pretrained: bool) -> Backbone:
    import timm
    from timm.data import resolve_data_config

    hub_name = model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if not model_name or not (hub_name or timm.is_model(model_name)):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise MarsevalError(
            f"unknown timm model {model_name!r} (timm {timm.__version__}){hint}; "
            "timm.list_models('*pattern*') lists the names"
        )

    offline = offline_var() if pretrained else None
    if offline is not None and not hub_name:
        check_timm_offline(model_name, offline)
    guard = hf_offline() if offline is not None else contextlib.nullcontext()
    try:
        with guard:
            net = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except MarsevalError:
        raise
    except Exception as exc:  # hub errors come from several libraries
        where = f" ({offline} is set: only cached weights load)" if offline else ""
        raise MarsevalError(
            f"building timm model {model_name!r} (pretrained={pretrained}) failed{where}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc

    config = resolve_data_config({}, model=net)
    _, height, width = config["input_size"]
    if height != width:
        raise MarsevalError(
            f"timm model {model_name!r} expects non-square {height}x{width} "
            "inputs; only square inputs are supported"
        )
    # num_classes=0 returns pre-logits features: head_hidden_size where a model has a
    # hidden head layer (e.g. MobileNetV3), num_features otherwise
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    return Backbone(
        module=_MainOutput(net),
        feature_dims={"main": int(dim)},
        input_size=int(height),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        display_name=model_name,
    )


def _build_timm_from_file(arch: str, path: str, pretrained: bool) -> Backbone:
    """timm architecture `arch` with the weights of a local checkpoint (safetensors or a
    weights-only torch file; wrappers and `module.`/`model.` prefixes removed). The classifier
    head's keys may be present or not (the backbone has num_classes=0); any other mismatch
    is an error naming the file and the keys. `pretrained=False`: the architecture with
    random weights, the file unread (as every model without pretrained weights)."""
    from marseval.bench.checkpoints import load_strict, read_checkpoint, unwrap_state_dict

    file = Path(path).expanduser()
    if pretrained and not file.is_file():
        raise MarsevalError(f"checkpoint file {file} of timm:{arch}@{path} does not exist")
    backbone = _build_timm(arch, pretrained=False)
    net = backbone.module.net
    if pretrained:
        state = unwrap_state_dict(read_checkpoint(file), str(file))
        head = net.pretrained_cfg.get("classifier") if hasattr(net, "pretrained_cfg") else None
        heads = head if isinstance(head, (list, tuple)) else [head] if head else []
        load_strict(net, state, str(file), ignore_prefixes=[f"{h}." for h in heads])
    return replace(backbone, display_name=f"{arch}@{file.name}")


# --------------------------------------------------------------------------- classifier


HEADS = ("linear", "batchnorm_linear")


def make_heads(feature_dims: dict[str, int], num_outputs: int,
               kind: str = "linear") -> nn.ModuleDict:
    """One head per feature key: a linear layer (the paper's), or, as in MAE's linear probe,
    a linear layer after a parameter-free BatchNorm, which makes the head indifferent to the
    scale of the features (random-init backbones give features of tiny scale)."""
    if kind not in HEADS:
        raise MarsevalError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")

    def head(dim: int) -> nn.Module:
        linear = nn.Linear(dim, num_outputs)
        if kind == "linear":
            return linear
        return nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear)

    return nn.ModuleDict({key: head(dim) for key, dim in feature_dims.items()})


def squeezenet_head(channels: int, num_outputs: int) -> nn.Sequential:
    """torchvision's SqueezeNet classifier with its conv replaced, as the reference builds it
    (`models/classification/SqueezeNet.py`: `classifier[1] = Conv2d(512, C, 1)`), plus the
    flatten of `SqueezeNet.forward`. The ReLU makes every logit >= 0."""
    return nn.Sequential(
        nn.Dropout(p=0.5),
        nn.Conv2d(channels, num_outputs, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(1),
    )


def reference_heads(name: str, feature_dims: dict[str, int], num_outputs: int,
                    training_type: str) -> nn.ModuleDict:
    """The heads the Mars-Bench reference puts on model `name` (`models/classification/*.py`).

    SqueezeNet: `squeezenet_head` on the feature map (`build_backbone(..., heads="marsbench")`).
    InceptionV3: `fc` and `AuxLogits.fc` both become Linear(., C), but feature extraction
    re-enables `fc` only: the auxiliary head stays frozen at its random init while the training
    loss still adds 0.4 x its loss (nothing trainable gets a gradient from it) and evaluation
    uses the main logits only. transfer_learning and scratch train it. Every other model
    (ResNet, SwinV2, ViT, timm): a linear layer on the pooled features.
    """
    def head(key: str, dim: int) -> nn.Module:
        if name == "squeezenet1_1" and key == "main":
            return squeezenet_head(dim, num_outputs)
        return nn.Linear(dim, num_outputs)

    heads = nn.ModuleDict({key: head(key, dim) for key, dim in feature_dims.items()})
    if "aux" in heads and training_type == "feature_extraction":
        heads["aux"].requires_grad_(False)
    return heads


class Classifier(nn.Module):
    """Backbone + one head per feature key ("main"; "aux" for InceptionV3).

    With `frozen=True` the backbone's parameters are frozen and it stays in eval mode whatever
    `train()` is asked: its BatchNorm statistics never drift and its dropout stays off, so the
    online path computes the same features as the cache.
    """

    def __init__(
        self, backbone: Backbone, heads: nn.ModuleDict | int, frozen: bool = False
    ) -> None:
        super().__init__()
        self.spec = backbone  # preprocessing and names; its module is registered below
        self.backbone = backbone.module
        self.heads = (
            heads if isinstance(heads, nn.ModuleDict) else make_heads(backbone.feature_dims, heads)
        )
        self.frozen = frozen
        if frozen:
            freeze(self.backbone)
            self.backbone.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def head_forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Logits per head from (possibly cached float16) features."""
        # .to() is a no-op for float32 live features, so forward == head_forward(backbone(x))
        dtype = next(self.heads.parameters()).dtype  # float16 cache -> the heads' dtype
        return {key: head(features[key].to(dtype)) for key, head in self.heads.items()}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.head_forward(self.backbone(images))


def build_classifier(
    name: str, num_outputs: int, pretrained: bool, training_type: str, *,
    inputs: str = "weights", heads: str = "pooled"
) -> Classifier:
    """A classifier for `training_type` (feature_extraction, transfer_learning, scratch).

    Random-init backbones of feature_extraction/transfer_learning are the fixed-seed ones of
    `build_backbone` (the cached features); scratch draws its init from the caller's RNG, so
    runs with different seeds start from different backbones. `inputs` and `heads`: the
    protocol's (see `build_backbone`); heads="marsbench" builds `reference_heads`.
    """
    if training_type not in TRAINING_TYPES:
        raise MarsevalError(
            f"unknown training type {training_type!r}; expected one of {', '.join(TRAINING_TYPES)}"
        )
    style = {"inputs": inputs, "heads": heads}
    if training_type == "scratch":
        backbone = build_backbone(name, pretrained=False, init_seed=None, **style)
    else:
        backbone = build_backbone(name, pretrained=pretrained, **style)
    made: nn.ModuleDict | int = (
        reference_heads(name, backbone.feature_dims, num_outputs, training_type)
        if heads == "marsbench" else num_outputs)
    return Classifier(backbone, made, frozen=training_type == "feature_extraction")
