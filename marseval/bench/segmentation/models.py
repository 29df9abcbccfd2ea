"""Segmentation models (Mars-Bench's U-Net, DeepLabV3+, SegFormer and DPT) from
segmentation-models-pytorch.

A model is named `<arch>:<encoder>`: `unet:resnet34`, `deeplabv3plus:resnet34`,
`segformer:resnet34` (the paper's SegFormer), `segformer:mit_b0` (SegFormer's own MiT encoder),
`dpt:tu-vit_base_patch16_224.augreg_in21k` (short alias `dpt:vit_base_patch16_224`). Encoders
are smp's (`smp.encoders.get_encoder_names()`) or any timm model as `tu-<timm name>`; DPT takes
timm ViTs only, and a bare timm name there gets its `tu-` prefix added.

Pretrained encoder weights come from the Hugging Face Hub (smp-hub/<encoder>.imagenet for smp
encoders, timm's own hub repos for `tu-` ones); with `MARSEVAL_OFFLINE` or `HF_HUB_OFFLINE` set,
only cached weights load and a missing file is an error naming the repo, never a download.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from marseval.bench.model_building import (
    check_model_arguments,
    check_timm_offline,
    freeze,
    hf_offline,
    offline_var,
)
from marseval.errors import MarsevalError
from marseval.registry.model_names import SEGMENTATION_ARCHS

# smp class names (smp.create_model keys are the lower-cased class names)
_SMP_ARCH = {"unet": "unet", "deeplabv3plus": "deeplabv3plus", "segformer": "segformer",
             "dpt": "dpt"}
_ARCH_DISPLAY = {"unet": "U-Net", "deeplabv3plus": "DeepLabV3+", "segformer": "SegFormer",
                 "dpt": "DPT"}
# smp's DPT default: ViT-B/16 with the ImageNet-21k AugReg weights
DPT_DEFAULT_ENCODER = "tu-vit_base_patch16_224.augreg_in21k"
_DPT_ALIASES = {"vit_base_patch16_224": DPT_DEFAULT_ENCODER}

DEFAULT_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Protocol.inputs: "marsbench" feeds models as the Mars-Bench reference does, "weights" as
# each model's pretrained weights declare
INPUTS = ("marsbench", "weights")
# the reference's size for every segmentation and detection model (configs/transforms/
# default.yaml image_size; only classifier configs name their own input_size)
REFERENCE_IMAGE_SIZE = 224


@dataclass
class Segmenter:
    """A segmentation network and the preprocessing its encoder expects."""

    module: nn.Module  # module(images (N,3,S,S), normalised) -> logits (N, C, S, S)
    input_size: int  # S, the side images are resized to
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    display_name: str  # e.g. "U-Net (ResNet34)"
    antialias: bool = True  # low-pass filter before shrinking (the reference's resize has none)


# --------------------------------------------------------------------------- names


def parse_segmenter_name(name: str) -> tuple[str, str]:
    """`<arch>:<encoder>` -> (arch, smp encoder name), aliases resolved, names checked."""
    arch, sep, encoder = name.partition(":")
    arch = arch.strip().lower()
    encoder = encoder.strip()
    if not sep or arch not in SEGMENTATION_ARCHS or not encoder:
        raise MarsevalError(
            f"unknown segmentation model {name!r}: expected <arch>:<encoder> with arch one of "
            f"{', '.join(SEGMENTATION_ARCHS)} (e.g. unet:resnet34, segformer:mit_b0, "
            "dpt:vit_base_patch16_224)"
        )
    if arch == "dpt":
        encoder = _DPT_ALIASES.get(encoder, encoder)
        if not encoder.startswith("tu-"):  # smp's DPT only takes timm encoders
            encoder = f"tu-{encoder}"
    _check_encoder(name, encoder)
    return arch, encoder


def _check_encoder(name: str, encoder: str) -> None:
    import segmentation_models_pytorch as smp

    if encoder.startswith("tu-"):
        import timm

        timm_name = encoder[len("tu-") :]
        if timm_name and timm.is_model(timm_name):
            return
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join('tu-' + c for c in close)}" if close else ""
        raise MarsevalError(
            f"segmentation model {name!r}: unknown timm encoder {timm_name!r} "
            f"(timm {timm.__version__}){hint}"
        )
    known = smp.encoders.get_encoder_names()
    if encoder in known:
        return
    close = difflib.get_close_matches(encoder, known, n=5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise MarsevalError(
        f"segmentation model {name!r}: unknown encoder {encoder!r}{hint}; "
        "smp.encoders.get_encoder_names() lists smp's, tu-<timm name> takes any timm model"
    )


def _encoder_display(encoder: str) -> str:
    base = encoder.removeprefix("tu-").split(".")[0]
    if match := re.fullmatch(r"resnet(\d+)", base):
        return f"ResNet{match[1]}"
    if match := re.fullmatch(r"mit_b(\d)", base):
        return f"MiT-B{match[1]}"
    if match := re.fullmatch(r"vit_(tiny|small|base|large|huge)_patch(\d+)_\d+", base):
        size = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}[match[1]]
        return f"ViT-{size}/{match[2]}"
    return base


def _preprocessing(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics, or for a timm encoder those of its pretrained config."""
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(encoder[len("tu-") :])
        except RuntimeError:  # an unknown pretrained tag: reported when building
            cfg = None
        if cfg is not None and cfg.mean is not None and cfg.std is not None:
            return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


# --------------------------------------------------------------------------- building


def _create(arch: str, encoder: str, num_classes: int, size: int, weights: bool) -> nn.Module:
    import segmentation_models_pytorch as smp

    kwargs: dict = {}
    if encoder.startswith("tu-"):
        # tu- encoders take True/None: the weights are named by the tag in the encoder name
        encoder_weights: str | bool | None = True if weights else None
    else:
        encoder_weights = "imagenet" if weights else None
    if arch == "dpt":
        # timm ViTs have a fixed input size; building at `size` resamples the position embedding
        kwargs["img_size"] = size
    return smp.create_model(
        _SMP_ARCH[arch],
        encoder_name=encoder,
        encoder_weights=encoder_weights,
        classes=num_classes,
        **kwargs,
    )


def _hub_source(encoder: str) -> str:
    """Where pretrained weights of `encoder` come from, for error messages."""
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        with contextlib.suppress(RuntimeError):
            cfg = get_pretrained_cfg(encoder[len("tu-") :])
            if cfg is not None and cfg.hf_hub_id:
                return f"Hugging Face Hub repo {cfg.hf_hub_id} (model.safetensors)"
            if cfg is not None and cfg.url:
                return cfg.url
        return f"timm's pretrained weights of {encoder[len('tu-'):]}"
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[encoder]["pretrained_settings"]["imagenet"]
    return f"Hugging Face Hub repo {settings['repo_id']} (config.json, model.safetensors)"


def _build_pretrained(make: Callable[[], nn.Module], name: str, encoder: str) -> nn.Module:
    if not encoder.startswith("tu-"):
        import segmentation_models_pytorch as smp

        available = smp.encoders.encoders[encoder]["pretrained_settings"]
        if "imagenet" not in available:
            raise MarsevalError(
                f"segmentation model {name!r}: encoder {encoder} has no ImageNet weights "
                f"(available: {', '.join(available) or 'none'}); use pretrained=False"
            )
    var = offline_var()
    if var is not None and encoder.startswith("tu-"):
        # weights that would come from a plain URL must already be in $TORCH_HOME
        check_timm_offline(encoder[len("tu-") :], var)
    guard = hf_offline() if var is not None else contextlib.nullcontext()
    try:
        with guard:
            return make()
    except MarsevalError:
        raise
    except Exception as exc:  # hub errors come from huggingface_hub, timm and smp
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if var is not None:
            from huggingface_hub import constants

            raise MarsevalError(
                f"pretrained weights of segmentation model {name!r} need the "
                f"{_hub_source(encoder)}, which is not in the cache {constants.HF_HUB_CACHE} "
                f"and {var} forbids downloading it; fetch it there or unset {var} ({first})"
            ) from exc
        raise MarsevalError(
            f"building segmentation model {name!r} with pretrained weights from the "
            f"{_hub_source(encoder)} failed: {first}"
        ) from exc


def _build_random(make: Callable[[], nn.Module], name: str, arch: str) -> nn.Module:
    try:
        return make()
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:  # smp/timm reject the combo
        hint = f" (DPT takes timm ViTs, e.g. {DPT_DEFAULT_ENCODER})" if arch == "dpt" else ""
        raise MarsevalError(f"building segmentation model {name!r} failed{hint}: {exc}") from exc


def _check_module(module: nn.Module, name: str, arch: str, size: int) -> None:
    encoder = module.encoder
    if arch == "dpt" and len(set(encoder.output_strides)) != 1:
        # a CNN "works" in smp's DPT, but DPT's reassembly assumes constant-resolution tokens
        raise MarsevalError(
            f"segmentation model {name!r}: DPT needs a plain ViT encoder (tokens at one "
            f"resolution), this encoder has output strides {list(encoder.output_strides)}"
        )
    stride = int(encoder.output_stride)
    if size % stride:
        raise MarsevalError(
            f"segmentation model {name!r}: input_size {size} must be a multiple of {stride} "
            f"(the encoder's output stride), e.g. {max(stride, size // stride * stride)}"
        )


def build_segmenter(
    name: str,
    num_classes: int,
    pretrained: bool,
    training_type: str,
    input_size: int | None = None,
    init_seed: int | None = 0,
    inputs: str = "weights",
) -> Segmenter:
    """Build segmentation model `name` (`<arch>:<encoder>`) with `num_classes` output maps.

    feature_extraction freezes the encoder (and keeps it in eval mode); transfer_learning
    trains everything; scratch ignores `pretrained` and draws every weight from the caller's
    RNG. Otherwise a random-init encoder (`pretrained=False`) comes from
    `torch.manual_seed(init_seed)` in a forked RNG, so every run seed shares it, while decoder
    and head always come from the caller's RNG (`init_seed=None`: the encoder too).

    inputs="marsbench" preprocesses as the reference (`utils/transforms.py`): 224 px unless
    `input_size` says otherwise, ImageNet mean/std for every encoder (also DPT's timm ViT, whose
    weights declare 0.5), resizing without antialias; "weights" uses the encoder's own mean/std.
    """
    check_model_arguments("segmentation model", name, num_classes, training_type)
    if inputs not in INPUTS:
        raise MarsevalError(f"segmentation model {name!r}: inputs must be one of {INPUTS}, "
                            f"got {inputs!r}")
    reference = inputs == "marsbench"
    default = REFERENCE_IMAGE_SIZE if reference else DEFAULT_INPUT_SIZE
    size = default if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MarsevalError(f"segmentation model {name!r}: input_size must be a positive "
                            f"integer, got {input_size!r}")
    arch, encoder = parse_segmenter_name(name)

    weights = pretrained and training_type != "scratch"
    make = partial(_create, arch, encoder, num_classes, size, weights)
    if weights:
        module = _build_pretrained(make, name, encoder)
        _check_module(module, name, arch, size)
    else:
        module = _build_random(make, name, arch)  # the caller's RNG: decoder and head
        _check_module(module, name, arch, size)
        if training_type != "scratch" and init_seed is not None:
            # the encoder from a fixed seed, shared by every run seed; building the whole
            # model again keeps smp's own encoder init (the encoder is built first)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                fixed = _build_random(make, name, arch)
            module.encoder.load_state_dict(fixed.encoder.state_dict())
            del fixed

    if training_type == "feature_extraction":
        # smp >= 0.6: model.train() then leaves the encoder alone as well
        if callable(getattr(module, "freeze_encoder", None)):
            module.freeze_encoder()
        # all encoder parameters frozen: the training loop's train_mode keeps it in eval
        freeze(module.encoder)
        module.encoder.eval()

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if reference else _preprocessing(encoder)
    return Segmenter(
        module=module,
        input_size=size,
        mean=mean,
        std=std,
        display_name=f"{_ARCH_DISPLAY[arch]} ({_encoder_display(encoder)})",
        antialias=not reference,
    )
