"""Segmentation losses: cross-entropy, Dice, MONAI's generalized Dice and CE + generalized Dice.

Every loss takes logits (N, C, H, W) and an int64 class-id mask (N, H, W). MONAI is imported
only by the losses that use it: `import monai` takes seconds.
"""

from __future__ import annotations

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

# MONAI's weight types; "linear" is its uniform weighting (every class weight 1)
_GD_WEIGHTS = {"square": "square", "simple": "simple", "linear": "uniform"}


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
    """Cross-entropy + generalized Dice (square weights), summed."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss()
        self.generalized_dice = GeneralizedDice("square")

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        return self.cross_entropy(logits, mask) + self.generalized_dice(logits, mask)


def segmentation_loss(name: str, num_classes: int) -> nn.Module:
    """Loss `name` (one of SEGMENTATION_LOSSES): forward(logits, mask) -> scalar."""
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
        from segmentation_models_pytorch.losses import DiceLoss

        return DiceLoss("multiclass", from_logits=True)
    if name == "combined":
        return CombinedLoss()
    return GeneralizedDice(name.removeprefix("generalized_dice_"))
