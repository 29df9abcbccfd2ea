"""Many grid trials on one frozen-backbone pass (issue 15).

Trials that share what the backbone sees (the data, its order and augmentation: batch size and
seed) differ only in their heads: hyperparameters, optimizer, schedule, loss, early stopping.
`fit_group` trains them together: one data loader, one forward pass of the shared trunk per
batch, then each still-running trial's head, loss, backward and step. A trial that stops stops
updating; the pass ends when the last one stops.

Each trial's result equals the same trial fitted alone (a group of one) on the CPU, because
nothing one trial computes depends on another:
- random numbers come from separate streams (`RngStream`): the data stream (augmentation,
  worker seeds), the trunk's (dropout, drop-path of a train-mode backbone) and one per trial
  (its head's dropout), which starts where that trial's head initialisation left the global
  generator, as a lone fit continues from it;
- a train-mode trunk (the reference protocol) moves its BatchNorm statistics on every training
  batch whatever the heads do; a trial's selected state is taken when it stops (or at its best
  epoch), with the trunk's buffers of that moment, as if alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from marseval.bench.precision import MixedPrecision
from marseval.bench.protocol import PROBE, Schedules
from marseval.bench.training import (
    SELECTIONS,
    FitResult,
    HParams,
    LossFn,
    Progress,
    WeightedMean,
    load_trainable_state,
    main_output,
    make_optimizer,
    make_scheduler,
    record_epoch,
    selected_state,
    train_mode,
    training_loss,
)
from marseval.errors import MarsevalError

log = logging.getLogger(__name__)

TrunkStep = Callable[[Any], tuple[Any, Tensor]]  # batch -> (features, targets) on the device
HeadStep = Callable[[nn.Module, Any], Any]  # (model, features) -> outputs


class RngStream:
    """A private random stream: inside `with stream:` torch's global generators (CPU and every
    CUDA device) draw from this stream, and the global ones are restored afterwards."""

    def __init__(self, cpu: Tensor, cuda: list[Tensor]) -> None:
        self.cpu, self.cuda = cpu, cuda
        self._saved: tuple[Tensor, list[Tensor]] | None = None

    @classmethod
    def seeded(cls, seed: int) -> RngStream:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(seed)
            return cls.capture()

    @classmethod
    def capture(cls) -> RngStream:
        """A stream that continues from the global generators' present state."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return cls(torch.get_rng_state(), cuda)

    def __enter__(self) -> RngStream:
        saved = RngStream.capture()
        self._saved = saved.cpu, saved.cuda
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = torch.get_rng_state()
        if self.cuda:
            self.cuda = torch.cuda.get_rng_state_all()
        cpu, cuda = self._saved
        torch.set_rng_state(cpu)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
        self._saved = None

    def iterate(self, batches: Iterable) -> Iterator:
        """The items of `batches`, each produced (and the iterator made) inside this stream."""
        with self:
            iterator = iter(batches)
        while True:
            with self:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


def stream_seed(seed: int, purpose: str) -> int:
    """A stream's seed from the trial seed, distinct per purpose ("data", "trunk")."""
    return (seed * 1_000_003 + {"data": 1, "trunk": 2}[purpose]) % 2**63


@dataclass
class GroupTrial:
    """One trial of a shared pass: its model (heads + the shared trunk), settings and state."""

    model: nn.Module
    hp: HParams
    loss_fn: LossFn
    stream: RngStream  # continues from where the head's initialisation left the generator

    def __post_init__(self) -> None:
        self.progress = Progress()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any | None = None
        self.amp: MixedPrecision | None = None
        self.selected: tuple[dict[str, Tensor], int] | None = None
        self.seconds = 0.0


def fit_group(
    trials: Sequence[GroupTrial],
    trunk_step: TrunkStep,
    head_step: HeadStep,
    train_batches: Callable[[int], Iterable],
    val_batches: Callable[[], Iterable],
    *,
    seed: int,
    selection: str = "best",
    min_delta: float = 0.01,
    frozen: str = "eval",
    schedules: Schedules = PROBE.schedules,
    precision: str = "32",
    on_finish: Callable[[int, FitResult], None] | None = None,
) -> list[FitResult]:
    """Fit every trial of a group on shared trunk passes; one `FitResult` per trial, in order.

    `trunk_step(batch)` runs the shared frozen part and returns (features, targets) on the
    device; `head_step(model, features)` a trial's own part. Early stopping, selection and
    schedules are those of `training.fit`, per trial. On return each trial's model holds its
    selected state (the trunk's buffers included: the caller scores one trial at a time).
    `on_finish(index, result)` is called as each trial stops, so a caller can record it
    before the others end.
    """
    if selection not in SELECTIONS:
        raise MarsevalError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not trials:
        raise MarsevalError("a shared pass needs at least one trial")
    for trial in trials:
        trial.optimizer = make_optimizer(trial.model.parameters(), trial.hp)
        trial.scheduler = make_scheduler(trial.optimizer, trial.hp, schedules)
        trial.amp = MixedPrecision.for_model(precision, trial.model)
    trunk_amp = trials[0].amp
    data, trunk = (RngStream.seeded(stream_seed(seed, "data")),
                   RngStream.seeded(stream_seed(seed, "trunk")))

    def forward_trunk(batch: Any) -> tuple[Any, Tensor]:
        with trunk, torch.no_grad(), trunk_amp.autocast():
            return trunk_step(batch)

    position = {id(trial): index for index, trial in enumerate(trials)}
    epoch = 0
    while active := [t for t in trials if not t.progress.finished]:
        epoch += 1
        started = time.perf_counter()
        for trial in active:
            train_mode(trial.model, frozen)  # the shared trunk's mode is the same for all
        train_losses = {id(t): WeightedMean() for t in active}
        for batch in data.iterate(train_batches(epoch)):
            features, targets = forward_trunk(batch)
            for trial in active:
                with trial.stream, trial.amp.autocast():
                    loss = training_loss(trial.loss_fn, head_step(trial.model, features),
                                         targets)
                trial.optimizer.zero_grad(set_to_none=True)
                with trial.stream:
                    trial.amp.backward_and_step(loss, trial.optimizer)
                train_losses[id(trial)].add(loss, len(targets))
        val_losses = _validate(active, forward_trunk, head_step, val_batches())
        spent = (time.perf_counter() - started) / len(active)
        for trial in active:
            train_loss = train_losses[id(trial)].value(f"train_batches({epoch}) yielded no "
                                                       "batches")
            trial.progress.epoch = epoch
            lr = float(trial.optimizer.param_groups[0]["lr"])
            record_epoch(trial.progress, trial.model, trial.scheduler, trial.hp, min_delta, lr,
                         train_loss, val_losses[id(trial)])
            trial.seconds += spent
            if trial.progress.finished:  # the trunk's buffers of this moment go with it
                trial.selected = selected_state(trial.progress, trial.model, selection)
                if on_finish is not None:
                    on_finish(position[id(trial)], _result(trial, load=False))
        log.debug("shared pass epoch %d: %d of %d trials ran", epoch, len(active), len(trials))
    return [_result(trial) for trial in trials]


def _validate(active: list[GroupTrial], forward_trunk: Callable[[Any], tuple[Any, Tensor]],
              head_step: HeadStep, batches: Iterable) -> dict[int, float]:
    """Each active trial's sample-weighted mean validation loss, on shared trunk passes."""
    for trial in active:
        trial.model.eval()
    means = {id(t): WeightedMean() for t in active}
    with torch.no_grad():
        for batch in batches:
            features, targets = forward_trunk(batch)
            for trial in active:
                with trial.amp.autocast():
                    outputs = head_step(trial.model, features)
                    loss = trial.loss_fn(main_output(outputs), targets)
                means[id(trial)].add(loss, len(targets))
    return {key: mean.value("validation got no batches") for key, mean in means.items()}


def _result(trial: GroupTrial, load: bool = True) -> FitResult:
    state, state_epoch = trial.selected
    if load:
        load_trainable_state(trial.model, state)
    progress = trial.progress
    return FitResult(best_epoch=progress.best_epoch, epochs_run=progress.epoch,
                     best_val_loss=progress.best_val_loss, best_state=state,
                     history=progress.history, seconds=trial.seconds, state_epoch=state_epoch)
