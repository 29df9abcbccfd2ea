"""Fit and score one classifier: a grid trial or a final run, on cached features or online.

With a frozen backbone and no augmentation the heads train on the feature cache and the
backbone is never built. Otherwise images go through the backbone every epoch. Both paths
build the heads from the same seed and visit the training samples in the same order, so they
differ only by the float16 rounding of the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marseval.bench.data import ImageDataset, load_samples, split_frame, targets
from marseval.bench.features import read_cache
from marseval.bench.losses import classification_loss, num_outputs
from marseval.bench.metrics import classification_metrics, primary_metric_name
from marseval.bench.models import make_heads
from marseval.bench.training import FitResult, HParams, evaluate, fit, seed_everything


@dataclass(frozen=True)
class Setup:
    """What every trial and run of one (dataset, model) pair shares."""

    dataset_dir: Path
    model: str
    features_dir: Path | None = None  # None: online through the backbone
    pretrained: bool = True
    training_type: str = "feature_extraction"
    augment: bool = False
    device: str = "cpu"
    selection: str = "best"
    head: str = "linear"
    num_workers: int = 0  # image-decoding processes of the online path


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class Heads(nn.Module):
    """The trainable part in feature extraction, applied to cached features."""

    def __init__(self, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: head(features[key].float()) for key, head in self.heads.items()}


@dataclass
class Split:
    """One split (or training subset) ready for batching."""

    ids: list[str]
    targets: torch.Tensor
    features: dict[str, torch.Tensor] | None = None  # cached path
    images: ImageDataset | None = None  # online path
    num_workers: int = 0

    def batches(self, batch_size: int, shuffle_seed: int | None) -> Iterator[Any]:
        n = len(self.ids)
        if shuffle_seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
        if self.features is None:
            # the same order as the cached path, decoded by DataLoader workers
            yield from torch.utils.data.DataLoader(
                self.images, batch_size=batch_size, sampler=order.tolist(),
                num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
            return
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            yield {k: v[index] for k, v in self.features.items()}, self.targets[index]


class Experiment:
    """A (dataset, model) pair: loads the data once, fits as many heads as asked."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.device = resolve_device(setup.device)
        self.meta, self.frame, self.subsets = load_samples(setup.dataset_dir)
        self.subtask = self.meta["subtask"]
        self.num_classes = self.meta["num_classes"]
        self.cached = setup.features_dir is not None
        self._backbone = None
        if self.cached:
            cache_meta = read_cache_meta(setup.features_dir)
            self.feature_dims = cache_meta["feature_dims"]
            self.display_name = cache_meta["display_name"]
        else:
            self._backbone = self._build_backbone()
            self.feature_dims = dict(self._backbone.feature_dims)
            self.display_name = self._backbone.display_name

    def _build_backbone(self):
        from marseval.bench.models import build_backbone, freeze

        # a random-init backbone (tests, embedded default) comes from a fixed seed inside
        # build_backbone, so the feature cache and online training see the same one
        pretrained = self.setup.pretrained and self.setup.training_type != "scratch"
        backbone = build_backbone(self.setup.model, pretrained=pretrained)
        if self.setup.training_type == "feature_extraction":
            freeze(backbone.module)
        return backbone

    def split(self, name: str, subset: str | None = None) -> Split:
        ids = self.subsets[subset] if subset else None
        rows = split_frame(self.frame, name, ids)
        y = targets(rows, self.meta)
        if self.cached:
            cache_ids, feats = read_cache(self.setup.features_dir, name)
            position = {sid: i for i, sid in enumerate(cache_ids)}
            index = torch.as_tensor([position[sid] for sid in rows["sample_id"]])
            return Split(list(rows["sample_id"]), y,
                         features={k: torch.from_numpy(v[index.numpy()].astype("float32"))
                                   for k, v in feats.items()})
        b = self._backbone
        augment = self.setup.augment and name == "train"
        images = ImageDataset(self.setup.dataset_dir, rows, self.meta, b.input_size, b.mean,
                              b.std, augment=augment)
        return Split(list(rows["sample_id"]), y, images=images,
                     num_workers=self.setup.num_workers)

    def model(self, outputs: int, seed: int) -> nn.Module:
        seed_everything(seed)
        heads = make_heads(self.feature_dims, outputs, self.setup.head)
        if self.cached:
            return Heads(heads).to(self.device)
        from marseval.bench.models import Classifier

        return Classifier(self._backbone, heads,
                          frozen=self.setup.training_type == "feature_extraction").to(self.device)

    def _step(self, model: nn.Module, batch: Any) -> tuple[Any, torch.Tensor]:
        inputs, y = batch
        if isinstance(inputs, dict):
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
        else:
            inputs = inputs.to(self.device)
        return model(inputs), y.to(self.device)

    def fit(self, hp: HParams, seed: int, subset: str | None = None,
            checkpoint: Path | None = None, progress: str | None = None,
            train: Split | None = None, val: Split | None = None
            ) -> tuple[nn.Module, FitResult]:
        train = train or self.split("train", subset)
        val = val or self.split("val")
        outputs = num_outputs(self.subtask, self.num_classes, hp.loss)
        model = self.model(outputs, seed)
        result = fit(
            model, self._step,
            lambda epoch: train.batches(hp.batch_size, shuffle_seed=seed * 100_003 + epoch),
            lambda: val.batches(hp.batch_size, shuffle_seed=None),
            classification_loss(self.subtask, hp.loss), hp,
            checkpoint=checkpoint, selection=self.setup.selection, progress=progress)
        model.load_state_dict(result.best_state, strict=False)
        return model, result

    def score(self, model: nn.Module, split: Split, batch_size: int = 256) -> dict[str, Any]:
        outputs, y = evaluate(model, self._step, split.batches(batch_size, shuffle_seed=None))
        metrics = classification_metrics(self.subtask, outputs.cpu(), y.cpu(), self.num_classes)
        # the paper's metric under a task-independent key, for tables and selection
        metrics["metric"] = primary_metric_name(self.subtask)
        metrics["primary"] = metrics["f1"]
        return metrics


def read_cache_meta(features_dir: Path) -> dict[str, Any]:
    import json

    return json.loads((features_dir / "meta.json").read_text())
