"""Segmentation losses: cross-entropy, Dice, generalized Dice and CE + generalized Dice.

Every loss takes logits (N, C, H, W) and an int64 class-id mask (N, H, W). Two formulas of the
Dice losses (`Protocol.dice_formula`): "marsbench", the reference code's own
(`BaseSegmentationModel._dice_loss` and `_generalized_dice_loss`), and "monai", MONAI's
generalized Dice and smp's Dice. MONAI is imported only by the losses that use it:
`import monai` takes seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marseval.errors import MarsevalError

SEGMENTATION_LOSSES = (
    "cross_entropy",
    "dice",
    "generalized_dice_square",
    "generalized_dice_simple",
    "generalized_dice_linear",
    "combined",
)

DICE_FORMULAS = ("marsbench", "monai")

# MONAI's weight types; "linear" is its uniform weighting (every class weight 1)
_GD_WEIGHTS = {"square": "square", "simple": "simple", "linear": "uniform"}
_SMOOTH = 1e-5  # the reference's generalized Dice smoothing and class-sum floor


def _probabilities_and_one_hot(logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    # float32: square weights 1/(sum g)^2 underflow in float16 under autocast (the reference's
    # softmax runs in float32 under autocast too)
    probs = F.softmax(logits.float(), 1)
    return probs, F.one_hot(mask, probs.shape[1]).permute(0, 3, 1, 2).float()


class ReferenceGeneralizedDice(nn.Module):
    """The reference's generalized Dice loss (`BaseSegmentationModel._generalized_dice_loss`).

    Sums over the whole batch and all pixels; class sums s_c are clamped to >= 1e-5, so a class
    absent from the batch gets the weight 1e10 (square) or 1e5 (simple) and any probability put
    on it weighs heavily (MONAI gives it the largest finite weight instead). "linear" is uniform.
    """

    def __init__(self, weighting: str) -> None:
        super().__init__()
        if weighting not in _GD_WEIGHTS:
            raise MarsevalError(f"generalized Dice weighting {weighting!r}: expected one of "
                                f"{sorted(_GD_WEIGHTS)}")
        self.weighting = weighting

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        probs, target = _probabilities_and_one_hot(logits, mask)
        class_sums = target.sum((0, 2, 3)).clamp(min=_SMOOTH)
        if self.weighting == "square":
            weights = 1 / class_sums**2
        elif self.weighting == "simple":
            weights = 1 / class_sums
        else:
            weights = torch.ones_like(class_sums)
        intersection = (probs * target).sum((0, 2, 3))
        total = (probs + target).sum((0, 2, 3))
        score = ((2 * (weights * intersection).sum() + _SMOOTH)
                 / ((weights * total).sum() + _SMOOTH))
        return 1 - score


class ReferenceDice(nn.Module):
    """The reference's Dice loss (`BaseSegmentationModel._dice_loss`): soft Dice per image and
    class, (2 I + 1) / (sum p + sum g + 1), averaged over images and classes (absent ones too).

    smp's DiceLoss ("monai" formula) sums over the batch instead and skips absent classes.
    """

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        probs, target = _probabilities_and_one_hot(logits, mask)
        intersection = (probs * target).sum((2, 3))
        total = probs.sum((2, 3)) + target.sum((2, 3))
        return 1 - ((2 * intersection + 1) / (total + 1)).mean()


class GeneralizedDice(nn.Module):
    """MONAI's generalized Dice loss (Sudre et al. 2017) with sums over the whole batch.

    Class weights are 1/(sum g)^2 (square), 1/sum g (simple) or 1 (linear); MONAI gives a class
    absent from the batch (infinite weight) the largest finite weight instead.
    """

    def __init__(self, weighting: str) -> None:
        super().__init__()
        from monai.losses import GeneralizedDiceLoss

        self.weighting = weighting
        self.loss = GeneralizedDiceLoss(
            softmax=True,
            to_onehot_y=True,
            w_type=_GD_WEIGHTS[weighting],
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            batch=True,
        )

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        # float32: square weights 1/(sum g)^2 underflow in float16 under autocast
        return self.loss(logits.float(), mask.unsqueeze(1))


class CombinedLoss(nn.Module):
    """Cross-entropy + generalized Dice (square weights), summed 1:1 (the reference's
    `combined`; its config's `alpha` is never read)."""

    def __init__(self, generalized_dice: nn.Module) -> None:
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss()
        self.generalized_dice = generalized_dice

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        return self.cross_entropy(logits, mask) + self.generalized_dice(logits, mask)


def _generalized_dice(weighting: str, dice_formula: str) -> nn.Module:
    if dice_formula == "marsbench":
        return ReferenceGeneralizedDice(weighting)
    return GeneralizedDice(weighting)


def segmentation_loss(name: str, num_classes: int, dice_formula: str = "monai") -> nn.Module:
    """Loss `name` (one of SEGMENTATION_LOSSES): forward(logits, mask) -> scalar.

    `dice_formula` (one of DICE_FORMULAS) picks the Dice and generalized Dice formulas of
    "dice", "generalized_dice_*" and "combined"; cross-entropy is the same in both."""
    if dice_formula not in DICE_FORMULAS:
        raise MarsevalError(f"unknown Dice formula {dice_formula!r}; expected one of "
                            f"{DICE_FORMULAS}")
    if name not in SEGMENTATION_LOSSES:
        raise MarsevalError(
            f"unknown segmentation loss {name!r}; known: {', '.join(SEGMENTATION_LOSSES)}"
        )
    if num_classes < 2:
        # softmax over one channel is constant: every loss here needs two or more classes
        raise MarsevalError(f"segmentation loss {name!r} needs num_classes >= 2, "
                            f"got {num_classes}")
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    if name == "dice":
        if dice_formula == "marsbench":
            return ReferenceDice()
        from segmentation_models_pytorch.losses import DiceLoss

        return DiceLoss("multiclass", from_logits=True)
    if name == "combined":
        # the reference's `combined` always takes square weights, whatever weight_type says
        return CombinedLoss(_generalized_dice("square", dice_formula))
    return _generalized_dice(name.removeprefix("generalized_dice_"), dice_formula)
