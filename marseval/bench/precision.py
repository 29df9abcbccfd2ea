"""Mixed precision as the Mars-Bench reference trains: Lightning's `precision="16-mixed"`.

Lightning's 16-mixed runs every training, validation and test step under
`torch.autocast(dtype=float16)` and scales the loss with a `GradScaler` for the backward pass.
The same happens here on CUDA. On the CPU everything stays float32 (Lightning would switch to
bfloat16 there; CPU runs are the tests and the embedded default, where bitwise
reproducibility matters more than speed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from marseval.errors import MarsevalError

PRECISIONS = ("16-mixed", "32")
# the devices where "16-mixed" autocasts, and to what
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"cuda": torch.float16}


class MixedPrecision:
    """Autocast and loss scaling for one fit on one device (inactive: plain float32)."""

    def __init__(self, precision: str, device_type: str) -> None:
        if precision not in PRECISIONS:
            raise MarsevalError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device_type = device_type
        self.dtype = AUTOCAST_DTYPES.get(device_type) if precision == "16-mixed" else None
        # float16 needs loss scaling against gradient underflow; bfloat16 would not
        self.scaler = (torch.amp.GradScaler(device_type) if self.dtype == torch.float16
                       else None)

    @classmethod
    def for_model(cls, precision: str, model: nn.Module) -> MixedPrecision:
        parameter = next(model.parameters(), None)
        return cls(precision, parameter.device.type if parameter is not None else "cpu")

    @property
    def active(self) -> bool:
        return self.dtype is not None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """loss.backward() and optimizer.step(), through the scaler when there is one."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))


def as_float32(outputs: Any) -> Any:
    """Autocast outputs (float16) back to float32 for losses, metrics and storage."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, Mapping):
        return {key: as_float32(value) for key, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(as_float32(value) for value in outputs)
    return outputs
