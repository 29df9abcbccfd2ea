"""Classification losses and the head size each (subtask, loss) pair needs.

cross_entropy: softmax over the outputs with integer targets (multiclass; binary with 2 outputs).
bce: one sigmoid per output with float targets (binary with 1 output; multilabel multi-hot).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from marseval.errors import MarsevalError

LOSSES = ("cross_entropy", "bce")

# The losses each subtask admits (Mars-Bench trains multilabel heads with BCE only).
_ALLOWED = {
    "binary": ("cross_entropy", "bce"),
    "multiclass": ("cross_entropy",),
    "multilabel": ("bce",),
}


def _check(subtask: str, loss: str) -> None:
    if subtask not in _ALLOWED:
        raise MarsevalError(
            f"unknown classification subtask {subtask!r}; expected one of {tuple(_ALLOWED)}"
        )
    if loss not in LOSSES:
        raise MarsevalError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if loss not in _ALLOWED[subtask]:
        raise MarsevalError(
            f"loss {loss!r} does not fit subtask {subtask!r}; use one of {_ALLOWED[subtask]}"
        )


def effective_loss(subtask: str, loss: str, binary_single_logit: bool) -> str:
    """The loss a trial trains with. In the Mars-Bench reference every binary set trains one
    logit with BCE, also under the name cross-entropy (`_initialize_criterion`); the probe
    protocol keeps the two-logit softmax for cross-entropy."""
    _check(subtask, loss)
    return "bce" if subtask == "binary" and binary_single_logit else loss


def num_outputs(subtask: str, num_classes: int, loss: str) -> int:
    """Width of the classification head: 1 for binary BCE, 2 for binary cross-entropy, else C."""
    _check(subtask, loss)
    if subtask == "binary":
        return 1 if loss == "bce" else 2
    return num_classes


class _CrossEntropy(nn.Module):
    """Cross-entropy on integer class targets (accepts (N,) or (N, 1) targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = nn.CrossEntropyLoss()

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs, targets.reshape(-1).long())


class _BinaryBCE(nn.Module):
    """BCE with logits on a single binary logit: outputs (N,) or (N, 1), targets (N,) in {0, 1}."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs.reshape(-1), targets.reshape(-1).to(outputs.dtype))


class _MultilabelBCE(nn.Module):
    """BCE with logits per label: outputs and multi-hot targets both (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs, targets.to(outputs.dtype))


def classification_loss(subtask: str, loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss function `(logits, targets) -> scalar` (mean over the batch) for a subtask."""
    _check(subtask, loss)
    if loss == "cross_entropy":
        return _CrossEntropy()
    return _BinaryBCE() if subtask == "binary" else _MultilabelBCE()
