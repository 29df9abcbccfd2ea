"""Training protocols: the Mars-Bench reference code's behaviour, and the fast linear probe.

`marsbench` trains as kerner-lab/Mars-Bench does (`../shared/reference/marsbench-protocol.md`,
docs/fidelity.md): the frozen backbone only has `requires_grad=False` and stays in train mode
(BatchNorm statistics adapt, dropout and drop-path stay on), online augmentation, the last
epoch's weights are tested, the schedulers use `configs/training/dev.yaml`'s constants, and
binary sets train one logit with BCE even when the grid names cross-entropy.
`probe` is this workflow's own protocol: frozen backbone in eval mode, features cached once,
best-validation weights tested, schedules scaled to each trial's epochs. Every difference is a
field here, so a run record names what it did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from marseval.errors import MarsevalError

FROZEN_MODES = ("train", "eval")


@dataclass(frozen=True)
class Schedules:
    """Constants of the learning-rate schedules; None scales with the trial (see each field)."""

    cosine_t_max: int | None  # None: the trial's max_epochs
    cosine_eta_min: float
    step_size: int | None  # None: max(1, max_epochs // 3)
    step_gamma: float
    plateau_patience: int | None  # None: max(1, patience // 2), so it acts before early stopping
    plateau_factor: float


@dataclass(frozen=True)
class Protocol:
    name: str
    frozen_backbone: str  # "train": BatchNorm statistics and dropout of a frozen backbone live
    augment: bool  # online augmentation of the training split
    selection: str  # "last" or "best" (validation loss) weights are tested
    feature_cache: bool  # whether a frozen backbone's features may be cached
    binary_single_logit: bool  # binary sets: one logit with BCE whatever the loss is named
    schedules: Schedules
    dice_formula: str  # generalized Dice loss: "marsbench" (the reference's own) or "monai"
    inputs: str  # "marsbench": the reference's sizes, ImageNet mean/std, resizing; "weights":
    #              what each model's pretrained weights declare
    classifier_heads: str  # "marsbench": heads as the reference builds them (SqueezeNet's
    #                        conv head); "pooled": linear heads on pooled vectors (cacheable)
    detection_inputs: str  # "marsbench": resized and ImageNet-normalised before the detector
    #                        (which normalises again); "raw": [0, 1] images, detector normalises
    precision: str  # on CUDA: "16-mixed" (autocast) or "32"; always float32 on the CPU
    metrics: str  # "torchmetrics": as the reference computes them (MeanAveragePrecision's
    #               float32 thresholds, F1 on raw logits); "exact": COCO's definition, sigmoid

    def record(self) -> dict[str, Any]:
        return asdict(self)


MARSBENCH = Protocol(
    name="marsbench",
    frozen_backbone="train",  # marsbench/models/*: requires_grad=False only
    augment=True,  # marsbench/utils/transforms.py
    selection="last",  # training/execution.py tests the in-memory model: ckpt_last
    feature_cache=False,  # train-mode BatchNorm and augmentation change every pass
    binary_single_logit=True,  # _initialize_criterion: binary -> BCEWithLogits, 1 output
    # configs/training/dev.yaml: CosineAnnealingLR(T_max=100, eta_min=1e-6), StepLR(10, 0.1),
    # ReduceLROnPlateau(patience=5, factor=0.1)
    schedules=Schedules(cosine_t_max=100, cosine_eta_min=1e-6, step_size=10, step_gamma=0.1,
                        plateau_patience=5, plateau_factor=0.1),
    dice_formula="marsbench",  # BaseSegmentationModel._initialize_criterion
    inputs="marsbench",  # utils/transforms.py, configs/model/classification/*.yaml
    classifier_heads="marsbench",  # models/classification/*.py
    detection_inputs="marsbench",  # utils/transforms.py before the torchvision detectors
    precision="16-mixed",  # configs/training/dev.yaml
    metrics="torchmetrics",  # BaseClassificationModel, BaseDetectionModel
)
PROBE = Protocol(
    name="probe",
    frozen_backbone="eval",
    augment=False,
    selection="best",
    feature_cache=True,
    binary_single_logit=False,  # cross_entropy: two logits and softmax; bce: one logit
    schedules=Schedules(cosine_t_max=None, cosine_eta_min=0.0, step_size=None, step_gamma=0.1,
                        plateau_patience=None, plateau_factor=0.1),
    dice_formula="monai",
    inputs="weights",
    classifier_heads="pooled",
    detection_inputs="raw",
    precision="32",
    metrics="exact",
)
PROTOCOLS = {p.name: p for p in (MARSBENCH, PROBE)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise MarsevalError(f"bench.protocol: unknown protocol {name!r}; expected one of "
                            f"{sorted(PROTOCOLS)}") from None


def resolved(protocol: Protocol, *, augment: bool | None = None,
             selection: str | None = None) -> tuple[bool, str]:
    """`augment` and `selection` as asked, or the protocol's where not asked (None)."""
    return (protocol.augment if augment is None else augment,
            protocol.selection if selection is None else selection)
