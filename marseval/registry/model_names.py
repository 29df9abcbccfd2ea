"""Model names every stage accepts, checked while the Snakefile is parsed.

Only names and their grammar live here (no torch, no hub): the config check stops a run with
a misspelled model before any job starts, instead of failing the first job that builds it.
The builders in marseval.bench and marseval.retrieval take their name lists from here.
"""

from __future__ import annotations

import difflib
from pathlib import Path

# The Mars-Bench paper's torchvision backbones (plus ResNet50); `timm:<name>` takes any timm model,
# `timm:<name>@<checkpoint file>` one with local weights.
CLASSIFICATION_BACKBONES = ("resnet101", "squeezenet1_1", "inception_v3", "swin_v2_b",
                            "vit_l_16", "resnet50")
# Earth-observation backbones (marseval.bench.classification.eo_backbones), paper Figure 4
EO_BACKBONES = ("eo:satmae_vit_l16", "eo:croma_vit_l16", "eo:prithvi_eo_v1_100")
SEGMENTATION_ARCHS = ("unet", "deeplabv3plus", "segformer", "dpt")
YOLO_SIZES = "nsmlx"
DETECTORS: dict[str, str] = {
    "fasterrcnn_resnet50_fpn": "Faster R-CNN R50-FPN",
    "retinanet_resnet50_fpn_v2": "RetinaNet v2 R50-FPN",
    "ssd300_vgg16": "SSD300 VGG16",
    # the Mars-Bench reference's own SSD (marsbench/models/detection/SSD.py): one ResNet34 map
    "ssd_resnet34": "SSD ResNet34",
    **{f"yolo11{size}": f"YOLO11{size}" for size in YOLO_SIZES},
}
TINY_CLIP = "tiny-clip"
RETRIEVAL_PREFIXES = ("open_clip:", "transformers:", "mllm:")


def _close(name: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(name, known, n=3)
    return f"; close matches: {', '.join(matches)}" if matches else ""


def split_timm_checkpoint(name: str) -> tuple[str, str | None]:
    """`timm:<arch>[@<checkpoint file>]` -> (arch, checkpoint file or None). Hub and local-dir
    names (`timm:hf-hub:org/repo@revision`) keep their `@`: they carry their own weights."""
    body = name[len("timm:"):] if name.startswith("timm:") else name
    if body.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or "@" not in body:
        return body, None
    arch, _, path = body.partition("@")
    return arch, path


def model_name_problem(task: str, name: str) -> str | None:
    """Why `name` is not a model of `task` (classification, segmentation, detection,
    retrieval), or None when it is well-formed."""
    if task == "classification":
        if name.startswith("timm:") and name[5:]:
            arch, path = split_timm_checkpoint(name)
            if path is None:
                return None
            if not arch or not path:
                return (f"{name!r}: a timm model with local weights is "
                        "timm:<architecture>@<checkpoint file>")
            if not Path(path).expanduser().is_file():
                return (f"checkpoint file {path} of {name!r} does not exist (a safetensors or "
                        "weights-only torch file)")
            return None
        if name in CLASSIFICATION_BACKBONES or name in EO_BACKBONES:
            return None
        known = list(CLASSIFICATION_BACKBONES) + list(EO_BACKBONES)
        return (f"{name!r} is not a classification model: use one of {', '.join(known)}, "
                f"timm:<timm model name> or timm:<timm model name>@<checkpoint file>"
                f"{_close(name, known)}")
    if task == "segmentation":
        arch, sep, encoder = name.partition(":")
        if sep and arch.strip().lower() in SEGMENTATION_ARCHS and encoder.strip():
            return None
        return (f"{name!r} is not a segmentation model: use <arch>:<encoder> with arch one of "
                f"{', '.join(SEGMENTATION_ARCHS)} (e.g. unet:resnet34)"
                f"{_close(arch, list(SEGMENTATION_ARCHS))}")
    if task == "detection":
        if name in DETECTORS:
            return None
        return (f"{name!r} is not a detection model: use one of {', '.join(DETECTORS)}"
                f"{_close(name, list(DETECTORS))}")
    if task == "retrieval":
        if name == TINY_CLIP or any(name.startswith(p) and name[len(p):]
                                    for p in RETRIEVAL_PREFIXES):
            return None
        return (f"{name!r} is not a retrieval model: use {TINY_CLIP}, open_clip:<architecture>"
                "[@<tag>], open_clip:hf-hub:<org>/<repo>, transformers:<repo> or "
                "mllm:<registry key>"
                f"{_close(name, [TINY_CLIP])}")
    raise ValueError(f"no model names for task {task!r}")
