"""One training loop for heads on cached features and for online training through a backbone.

The caller's `step(model, batch) -> (outputs, targets)` decides what the model sees (cached
features or images) and moves the batch to its device; `fit` owns the optimiser, the schedule,
early stopping on validation loss, best-state selection and per-epoch checkpoints that resume to
exactly the result of an uninterrupted run (on the CPU, for a seeded caller).

Epochs are numbered from 1 everywhere: `train_batches(epoch)`, `history`, `best_epoch`.

Constants the Mars-Bench paper does not state are ours and are named below: the plateau and step
schedules' factors and intervals. min_delta = 0.01 and the 0.4 auxiliary-loss weight of
InceptionV3 follow the paper's code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from marseval.atomic import atomic_writer
from marseval.bench.losses import ALL_LOSSES
from marseval.bench.precision import MixedPrecision, as_float32
from marseval.bench.protocol import FROZEN_MODES, PROBE, Schedules
from marseval.errors import MarsevalError

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "plateau", "step")
SELECTIONS = ("best", "last")

SGD_MOMENTUM = 0.9
AUX_LOSS_WEIGHT = 0.4  # InceptionV3 auxiliary logits, as in the paper's code
STEP_DIVISIONS = 3  # probe protocol: StepLR every max_epochs // 3 epochs (at least 1)

_CHECKPOINT_VERSION = 2  # 2: the loss scaler of mixed precision

Outputs = Tensor | Mapping[str, Tensor]
Step = Callable[[nn.Module, Any], tuple[Outputs, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class HParams:
    """One grid point. Values are coerced to plain float/int/str so JSON and parquet compare."""

    lr: float
    weight_decay: float
    batch_size: int
    optimizer: str
    lr_schedule: str
    max_epochs: int
    patience: int
    loss: str

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise MarsevalError(f"hyperparameter {name} must be a number >= 0, got {value}")
            object.__setattr__(self, name, value)
        for name, low in (("batch_size", 1), ("max_epochs", 1), ("patience", 0)):
            raw = getattr(self, name)
            if isinstance(raw, bool) or not float(raw).is_integer() or int(raw) < low:
                raise MarsevalError(f"hyperparameter {name} must be an integer >= {low}, got {raw}")
            object.__setattr__(self, name, int(raw))
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", SCHEDULES),
            ("loss", ALL_LOSSES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise MarsevalError(f"hyperparameter {name}={value!r} is not one of {allowed}")
            # plain str (not numpy.str_): checkpoints compare and store these with weights_only
            object.__setattr__(self, name, str(value))


@dataclass
class FitResult:
    """What `fit` found. `best_state` holds the selected weights (see `fit`), on the CPU."""

    best_epoch: int  # epoch of the lowest validation loss (0 if no epoch had a finite one)
    epochs_run: int
    best_val_loss: float  # inf if no epoch had a finite validation loss
    best_state: dict[str, Tensor]
    history: list[dict]  # per epoch: epoch, lr, train_loss, val_loss
    seconds: float  # training time, summed over interrupted and resumed calls
    state_epoch: int = field(default=0)  # the epoch whose weights `best_state` holds


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) and ask torch for deterministic kernels."""
    # cuBLAS needs this before its first use to be deterministic; harmless on the CPU
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(params: Iterable[nn.Parameter], hp: HParams) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over the parameters that require gradients."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise MarsevalError("the model has no trainable parameters")
    if hp.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            trainable, lr=hp.lr, momentum=SGD_MOMENTUM, weight_decay=hp.weight_decay
        )
    raise MarsevalError(f"unknown optimizer {hp.optimizer!r}; expected one of {OPTIMIZERS}")


def make_scheduler(optimizer: torch.optim.Optimizer, hp: HParams,
                   schedules: Schedules = PROBE.schedules) -> Any | None:
    """The per-epoch learning-rate schedule, or None for a constant rate.

    cosine: CosineAnnealingLR(T_max, eta_min); plateau: ReduceLROnPlateau on the validation
    loss; step: StepLR. The constants come from the protocol (`protocol.Schedules`): the
    reference's fixed ones (T_max 100, eta_min 1e-6; step 10, gamma 0.1; patience 5, factor
    0.1), or the probe's scaled to the trial (T_max = max_epochs down to 0; step every
    max(1, max_epochs // 3); plateau patience max(1, patience // 2), before early stopping).
    """
    if hp.lr_schedule == "none":
        return None
    if hp.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=schedules.cosine_t_max or hp.max_epochs,
            eta_min=schedules.cosine_eta_min)
    if hp.lr_schedule == "plateau":
        patience = schedules.plateau_patience
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=schedules.plateau_factor,
            patience=max(1, hp.patience // 2) if patience is None else patience)
    if hp.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=schedules.step_size or max(1, hp.max_epochs // STEP_DIVISIONS),
            gamma=schedules.step_gamma)
    raise MarsevalError(f"unknown lr_schedule {hp.lr_schedule!r}; expected one of {SCHEDULES}")


# ---------------------------------------------------------------------------------------------
# model state


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """CPU copies of the trainable parameters and all buffers (frozen weights never change)."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {
        name: value.detach().to("cpu", copy=True)
        for name, value in model.state_dict(keep_vars=True).items()
        if name not in frozen
    }


def load_trainable_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a `trainable_state`; only frozen parameters may be missing from it."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    wrong = [k for k in missing if k not in frozen]
    if wrong or unexpected:
        raise MarsevalError(
            f"state does not fit the model: missing {wrong[:5]}, unexpected {list(unexpected)[:5]}"
        )


def train_mode(model: nn.Module, frozen: str = "eval") -> None:
    """model.train(). frozen="eval" (probe protocol): fully frozen submodules (a
    feature-extraction backbone) stay in eval mode, so their BatchNorm statistics do not drift
    and their dropout stays off. frozen="train" (Mars-Bench reference): every module trains,
    whatever a model's own `train()` override keeps in eval (smp's frozen encoder, detectors'
    frozen parts): freezing is `requires_grad=False` and nothing else, as in the reference."""
    if frozen not in FROZEN_MODES:
        raise MarsevalError(f"frozen backbone mode must be one of {FROZEN_MODES}, got {frozen!r}")
    if frozen == "train":
        for module in model.modules():
            module.training = True
        return
    model.train()

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()
            else:
                visit(child)

    visit(model)


# ---------------------------------------------------------------------------------------------
# batches


def main_output(outputs: Outputs) -> Tensor:
    """The "main" entry of dict outputs (InceptionV3's main and aux), else the outputs."""
    return outputs["main"] if isinstance(outputs, Mapping) else outputs


def training_loss(loss_fn: LossFn, outputs: Outputs, targets: Tensor) -> Tensor:
    """loss(main) + 0.4 * loss(aux) for InceptionV3-style dict outputs, else loss(outputs)."""
    if isinstance(outputs, Mapping):
        loss = loss_fn(outputs["main"], targets)
        if outputs.get("aux") is not None:
            loss = loss + AUX_LOSS_WEIGHT * loss_fn(outputs["aux"], targets)
        return loss
    return loss_fn(outputs, targets)


class WeightedMean:
    """The sample-weighted mean of per-batch mean losses, summed on the loss's device: one
    host sync when read, not one per batch."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, loss: Tensor, n: int) -> None:
        weighted = loss.detach().double() * n
        self.total = weighted if self.total is None else self.total + weighted
        self.count += n

    def value(self, empty: str) -> float:
        """The mean; `empty` is the error when no batch was added."""
        if self.total is None:
            raise MarsevalError(empty)
        return float(self.total.item()) / self.count


def validation_loss(model: nn.Module, step: Step, batches: Iterable, loss_fn: LossFn,
                    precision: str = "32") -> float:
    """The sample-weighted mean of per-batch losses in eval mode (no gradients).

    Per batch rather than on concatenated outputs, so segmentation logits of a whole split
    never sit in memory at once; for mean-reduced losses the two agree. The steps run under
    `precision`'s autocast, as Lightning's validation steps do."""
    model.eval()
    amp = MixedPrecision.for_model(precision, model)
    mean = WeightedMean()
    with torch.no_grad():
        for batch in batches:
            with amp.autocast():
                outputs, targets = step(model, batch)
                loss = loss_fn(main_output(outputs), targets)
            mean.add(loss, len(targets))
    return mean.value("validation got no batches")


def _collect(model: nn.Module, step: Step, batches: Iterable,
             precision: str = "32") -> tuple[Tensor, Tensor]:
    """Main outputs (float32) and targets of all batches, concatenated on the model's device."""
    model.eval()
    amp = MixedPrecision.for_model(precision, model)
    outputs, targets = [], []
    with torch.no_grad():
        for batch in batches:
            with amp.autocast():
                out, y = step(model, batch)
            outputs.append(as_float32(main_output(out)))
            targets.append(y)
    if not outputs:
        raise MarsevalError("evaluation got no batches")
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model: nn.Module, step: Step, batches: Iterable,
             precision: str = "32") -> tuple[Tensor, Tensor]:
    """(outputs, targets) over `batches` in eval mode without gradients, on the CPU.

    Dict outputs contribute their "main" entry; the steps run under `precision`'s autocast."""
    outputs, targets = _collect(model, step, batches, precision)
    return outputs.cpu(), targets.cpu()


def _train_epoch(
    model: nn.Module,
    step: Step,
    batches: Iterable,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    frozen: str,
    amp: MixedPrecision,
) -> float:
    """One pass over the training batches; the sample-weighted mean training loss."""
    train_mode(model, frozen)
    mean = WeightedMean()
    for batch in batches:
        with amp.autocast():  # forward and loss, as Lightning's training_step
            outputs, targets = step(model, batch)
            loss = training_loss(loss_fn, outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        amp.backward_and_step(loss, optimizer)
        mean.add(loss, len(targets))
    return mean.value(f"train_batches({epoch}) yielded no batches")


# ---------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict[str, Any]:
    # Plain tensors, ints and tuples only, so the checkpoint loads with weights_only=True.
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    # no fsync: after a crash a damaged checkpoint is discarded and training restarts
    with atomic_writer(path, fsync=False) as handle:
        torch.save(obj, handle)


_CHECKPOINT_KEYS = {
    "version",
    "settings",
    "epoch",
    "finished",
    "model",
    "optimizer",
    "scheduler",
    "best_state",
    "best_epoch",
    "best_val_loss",
    "stop_reference",
    "wait",
    "history",
    "seconds",
    "rng",
    "scaler",
}


def _discard(path: Path, why: str) -> None:
    log.warning("discarding training checkpoint %s (%s); training starts from scratch", path, why)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at `path` if it is readable and was made with the same settings."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        _discard(path, f"unreadable: {type(exc).__name__}: {exc}")
        return None
    if not isinstance(state, dict) or set(state) != _CHECKPOINT_KEYS:
        _discard(path, "not a marseval training checkpoint")
        return None
    if state["version"] != _CHECKPOINT_VERSION or state["settings"] != settings:
        _discard(path, "made with other hyperparameters or settings")
        return None
    return state


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class Progress:
    """Everything about a fit that a checkpoint must restore."""

    epoch: int = 0
    finished: bool = False
    best_state: dict[str, Tensor] | None = None
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reference: float = math.inf  # the loss an epoch must beat by min_delta to reset `wait`
    wait: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def record_epoch(state: Progress, model: nn.Module, scheduler: Any | None, hp: HParams,
                 min_delta: float, lr: float, train_loss: float, val_loss: float) -> None:
    """An epoch's end: history, best state, early stopping, the schedule's step."""
    epoch = state.epoch
    state.history.append(
        {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss}
    )
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_epoch = val_loss, epoch
        state.best_state = trainable_state(model)
    if val_loss < state.stop_reference - min_delta:
        state.stop_reference, state.wait = val_loss, 0
    else:
        state.wait += 1
    # wait > 0: patience 0 stops at the first epoch without improvement, as Lightning does
    out_of_patience = state.wait > 0 and state.wait >= hp.patience
    state.finished = out_of_patience or not math.isfinite(val_loss) or epoch >= hp.max_epochs
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def selected_state(state: Progress, model: nn.Module, selection: str
                   ) -> tuple[dict[str, Tensor], int]:
    """The weights a finished fit returns and their epoch: the last, or the best validation's."""
    if selection == "last" or state.best_state is None:
        return trainable_state(model), state.epoch
    return state.best_state, state.best_epoch


def _resume(
    path: Path,
    settings: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    amp: MixedPrecision,
) -> Progress | None:
    """Restore model, optimizer, scheduler and RNG from a checkpoint; None if there is none.

    A checkpoint that does not load cleanly is deleted and the model left as it was."""
    state = _read_checkpoint(path, settings)
    if state is None:
        return None
    initial = trainable_state(model)
    try:
        load_trainable_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        amp.load_state_dict(state["scaler"])
        progress = Progress(
            epoch=int(state["epoch"]),
            finished=bool(state["finished"]),
            best_state=state["best_state"],
            best_epoch=int(state["best_epoch"]),
            best_val_loss=float(state["best_val_loss"]),
            stop_reference=float(state["stop_reference"]),
            wait=int(state["wait"]),
            history=list(state["history"]),
            seconds=float(state["seconds"]),
        )
        rng = state["rng"]
    except Exception as exc:
        load_trainable_state(model, initial)
        _discard(path, f"does not fit this model: {type(exc).__name__}: {exc}")
        return None
    _set_rng_state(rng)  # last: a failed resume must not change the caller's random streams
    log.info("resuming training from %s after epoch %d", path, progress.epoch)
    return progress


def _checkpoint(
    path: Path,
    settings: dict[str, Any],
    progress: Progress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    amp: MixedPrecision,
) -> None:
    state = {
        "version": _CHECKPOINT_VERSION,
        "settings": settings,
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "scaler": amp.state_dict(),
        **asdict(progress),
    }
    _save_atomic(state, path)


def fit(
    model: nn.Module,
    step: Step,
    train_batches: Callable[[int], Iterable],
    val_batches: Callable[[], Iterable],
    loss_fn: LossFn,
    hp: HParams,
    *,
    checkpoint: Path | None = None,
    selection: str = "best",
    progress: str | None = None,
    min_delta: float = 0.01,
    frozen: str = "eval",
    schedules: Schedules = PROBE.schedules,
    precision: str = "32",
) -> FitResult:
    """Train the parameters of `model` that require gradients; early stopping on validation loss.

    An epoch counts as an improvement when its validation loss is below the last improving one
    minus `min_delta`; training stops after `patience` epochs without improvement, at
    `max_epochs`, or when the validation loss is not finite. The best state is the one at the
    strictly lowest validation loss (as a checkpoint callback keeps it, independent of
    `min_delta`). selection="best" returns it; selection="last" returns the last epoch's
    weights instead, as the Mars-Bench reference code tests them. On return the model holds the
    returned state.

    With `checkpoint`, the state is written after every epoch and a later call with the same
    path, hyperparameters and settings resumes from it (an unreadable or mismatched one is
    deleted with a warning). The file is kept; the caller removes it once its result is stored.
    `progress` labels a per-epoch tqdm bar on stderr. `frozen`, `schedules` and `precision`
    come from the protocol (`train_mode`, `make_scheduler`, `MixedPrecision`).
    """
    if selection not in SELECTIONS:
        raise MarsevalError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not min_delta >= 0:
        raise MarsevalError(f"min_delta must be >= 0, got {min_delta}")
    started = time.perf_counter()
    settings = {"hparams": asdict(hp), "selection": selection, "min_delta": float(min_delta),
                "frozen": frozen, "schedules": asdict(schedules), "precision": precision}
    amp = MixedPrecision.for_model(precision, model)
    optimizer = make_optimizer(model.parameters(), hp)
    scheduler = make_scheduler(optimizer, hp, schedules)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    state = None
    if checkpoint is not None:
        state = _resume(checkpoint, settings, model, optimizer, scheduler, amp)
        if state is None:  # a failed resume may have half-loaded them: start them afresh
            optimizer = make_optimizer(model.parameters(), hp)
            scheduler = make_scheduler(optimizer, hp, schedules)
            amp = MixedPrecision.for_model(precision, model)
    state = state or Progress()
    previous_seconds = state.seconds

    bar = tqdm(
        total=hp.max_epochs,
        initial=state.epoch,
        desc=progress,
        unit="epoch",
        file=sys.stderr,
        mininterval=1.0,
        disable=progress is None,
    )
    try:
        while not state.finished:
            state.epoch += 1
            epoch = state.epoch
            lr = float(optimizer.param_groups[0]["lr"])
            train_loss = _train_epoch(model, step, train_batches(epoch), loss_fn, optimizer, epoch,
                                      frozen, amp)
            val_loss = validation_loss(model, step, val_batches(), loss_fn, precision)
            record_epoch(state, model, scheduler, hp, min_delta, lr, train_loss, val_loss)
            state.seconds = previous_seconds + time.perf_counter() - started
            if checkpoint is not None:
                _checkpoint(checkpoint, settings, state, model, optimizer, scheduler, amp)
            log.debug("epoch %d: train loss %.6g, val loss %.6g", epoch, train_loss, val_loss)
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", refresh=False)
    finally:
        bar.close()

    selected, state_epoch = selected_state(state, model, selection)
    load_trainable_state(model, selected)
    return FitResult(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        best_val_loss=state.best_val_loss,
        best_state=selected,
        history=state.history,
        seconds=previous_seconds + time.perf_counter() - started,
        state_epoch=state_epoch,
    )
