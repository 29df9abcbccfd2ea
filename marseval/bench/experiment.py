"""What the experiments of every task share: the setup, the data, batching and seeded fitting.

An experiment is one (dataset, model) pair. It loads the standardized dataset once and fits as
many models as asked (grid trials, final runs); each task supplies how a split becomes
batches, how a model is built for a seed, its loss and its test metrics. `open_experiment`
picks the task from the dataset's meta.json.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from marseval.bench.precision import MixedPrecision
from marseval.bench.protocol import Protocol, get_protocol
from marseval.bench.samples import load_samples, split_frame
from marseval.bench.shared_pass import GroupTrial, HeadStep, RngStream, TrunkStep, fit_group
from marseval.bench.training import FitResult, HParams, LossFn, fit
from marseval.errors import MarsevalError

SCORE_RESOLUTIONS = ("input", "native")


@dataclass(frozen=True)
class Setup:
    """What every trial and run of one (dataset, model) pair shares."""

    dataset_dir: Path
    model: str
    features_dir: Path | None = None  # classification: None trains online through the backbone
    pretrained: bool = True
    training_type: str = "feature_extraction"
    augment: bool = False
    device: str = "cpu"
    selection: str = "best"
    head: str = "linear"  # classification head
    num_workers: int = 0  # image-decoding processes of the online path
    input_size: int | None = None  # segmentation/detection: None keeps the model's default
    score_resolution: str = "input"  # segmentation: score at the model input size or native
    drop_empty: bool = False  # detection: drop images without boxes (the reference code does)
    protocol: str = "probe"  # marseval.bench.protocol: frozen-backbone mode, schedule constants

    def __post_init__(self) -> None:
        protocol = get_protocol(self.protocol)
        if self.features_dir is not None and not protocol.feature_cache:
            raise MarsevalError(
                f"a feature cache ({self.features_dir}) cannot be used in the {protocol.name!r} "
                "protocol: its frozen backbone trains in train mode with augmentation, so "
                "features change every pass (bench.protocol: probe caches them)")

    @property
    def rules(self) -> Protocol:
        return get_protocol(self.protocol)


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass
class Split:
    """One split (or training subset) ready for batching: cached tensors or an image dataset."""

    ids: list[str]
    targets: torch.Tensor | None = None  # cached path: the targets beside `features`
    features: dict[str, torch.Tensor] | None = None  # cached path
    images: Dataset | None = None  # online path: (input, target) items
    num_workers: int = 0
    collate_fn: Callable | None = None

    def batches(self, batch_size: int, shuffle_seed: int | None) -> Iterator[Any]:
        """Batches in file order, or shuffled by `shuffle_seed` (training).

        A shuffled epoch drops a trailing batch of one sample: BatchNorm layers in training
        mode (heads, decoders, necks) cannot normalise a single value."""
        n = len(self.ids)
        if shuffle_seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
        groups = [order[start:start + batch_size] for start in range(0, n, batch_size)]
        if shuffle_seed is not None and len(groups) > 1 and len(groups[-1]) == 1:
            groups.pop()
        if self.features is None:
            # the same batches as the cached path, decoded by DataLoader workers
            yield from DataLoader(
                self.images, batch_sampler=[g.tolist() for g in groups],
                num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                collate_fn=self.collate_fn)
            return
        for index in groups:
            yield {k: v[index] for k, v in self.features.items()}, self.targets[index]


def to_device(value: Any, device: str) -> Any:
    """Tensors, and tensors inside dicts and lists, moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


class Experiment(ABC):
    """A (dataset, model) pair of one task."""

    task: str
    display_name: str
    cached: bool = False  # heads train on a feature cache (classification only)

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.device = resolve_device(setup.device)
        self.meta, self.frame, self.subsets = load_samples(setup.dataset_dir)
        if self.meta["task"] != self.task:
            raise MarsevalError(f"{setup.dataset_dir} is a {self.meta['task']} dataset, not "
                                f"{self.task}")
        self.subtask = self.meta["subtask"]
        self.num_classes = int(self.meta["num_classes"])

    def rows(self, name: str, subset: str | None = None) -> pd.DataFrame:
        return split_frame(self.frame, name, self.subsets[subset] if subset else None)

    @abstractmethod
    def split(self, name: str, subset: str | None = None) -> Split:
        """Split `name` (restricted to training subset `subset`) ready for batching."""

    @abstractmethod
    def build_model(self, hp: HParams, seed: int) -> nn.Module:
        """The model to fit, its trainable part initialised from `seed`, on the device."""

    @abstractmethod
    def loss_fn(self, hp: HParams) -> LossFn:
        """The training and validation loss `(outputs, targets) -> scalar` of `hp.loss`."""

    @abstractmethod
    def score(self, model: nn.Module, split: Split, batch_size: int = 16) -> dict[str, Any]:
        """Test metrics; "metric" names the paper's metric and "primary" holds its value."""

    def autocast(self, model: nn.Module) -> AbstractContextManager[None]:
        """The protocol's mixed precision around a scoring forward pass."""
        return MixedPrecision.for_model(self.setup.rules.precision, model).autocast()

    def _step(self, model: nn.Module, batch: Any) -> tuple[Any, Any]:
        inputs, targets = batch
        return model(to_device(inputs, self.device)), to_device(targets, self.device)

    def fit(self, hp: HParams, seed: int, subset: str | None = None,
            checkpoint: Path | None = None, progress: str | None = None,
            train: Split | None = None, val: Split | None = None
            ) -> tuple[nn.Module, FitResult]:
        train = train or self.split("train", subset)
        val = val or self.split("val")
        model = self.build_model(hp, seed)
        result = fit(
            model, self._step,
            lambda epoch: train.batches(hp.batch_size, shuffle_seed=seed * 100_003 + epoch),
            lambda: val.batches(hp.batch_size, shuffle_seed=None),
            self.loss_fn(hp), hp,
            checkpoint=checkpoint, selection=self.setup.selection, progress=progress,
            frozen=self.setup.rules.frozen_backbone, schedules=self.setup.rules.schedules,
            precision=self.setup.rules.precision)
        model.load_state_dict(result.best_state, strict=False)
        return model, result

    # ----------------------------------------------------------------------- shared passes

    def share_trunk(self, models: list[nn.Module]) -> tuple[TrunkStep, HeadStep]:
        """How the models of one shared pass split into a shared trunk and their own heads.

        Here nothing but the data is shared: each model runs whole on the same batches, as
        the task's own step runs it (a detector's step is its loss on images and targets).
        Tasks whose frozen part can be computed once per batch override this."""
        def trunk(batch: Any) -> tuple[Any, Any]:
            moved = to_device(batch, self.device)
            return moved, moved[1]

        return trunk, lambda model, moved: self._step(model, moved)[0]

    def fit_group(self, hps: list[HParams], seed: int, train: Split | None = None,
                  val: Split | None = None, subset: str | None = None,
                  on_finish: Callable[[int, FitResult], None] | None = None
                  ) -> list[tuple[nn.Module, FitResult]]:
        """Fit the trials `hps` on shared passes (marseval.bench.shared_pass): each result
        equals the trial's alone (a group of one). Their batch sizes must agree."""
        sizes = sorted({hp.batch_size for hp in hps})
        if len(sizes) != 1:
            raise MarsevalError(f"the trials of a shared pass must share batch_size, which "
                                f"decides the batches the backbone sees; got {sizes}")
        batch_size = sizes[0]
        train = train or self.split("train", subset)
        val = val or self.split("val")
        trials = []
        for hp in hps:
            model = self.build_model(hp, seed)  # seeds the generators, initialises the heads
            trials.append(GroupTrial(model, hp, self.loss_fn(hp), RngStream.capture()))
        trunk, head = self.share_trunk([trial.model for trial in trials])
        rules = self.setup.rules
        results = fit_group(
            trials, trunk, head,
            lambda epoch: train.batches(batch_size, shuffle_seed=seed * 100_003 + epoch),
            lambda: val.batches(batch_size, shuffle_seed=None),
            seed=seed, selection=self.setup.selection, frozen=rules.frozen_backbone,
            schedules=rules.schedules, precision=rules.precision, on_finish=on_finish)
        return [(trial.model, result) for trial, result in zip(trials, results, strict=True)]


def dataset_task(dataset_dir: Path) -> str:
    import json

    path = Path(dataset_dir) / "meta.json"
    try:
        return json.loads(path.read_text())["task"]
    except (OSError, ValueError, KeyError) as exc:
        raise MarsevalError(f"cannot read the task from {path}: {exc}") from None


def open_experiment(setup: Setup) -> Experiment:
    """The experiment of the dataset's task (classification, segmentation, detection)."""
    task = dataset_task(setup.dataset_dir)
    if task == "classification":
        from marseval.bench.classification.experiment import ClassificationExperiment as kind
    elif task == "segmentation":
        from marseval.bench.segmentation.experiment import SegmentationExperiment as kind
    elif task == "detection":
        from marseval.bench.detection.experiment import DetectionExperiment as kind
    else:
        raise MarsevalError(f"{setup.dataset_dir}: task {task!r} has no Mars-Bench experiment "
                            "(retrieval sets go through the retrieval stage)")
    return kind(setup)
