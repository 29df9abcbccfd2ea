"""Fit and score one classifier: a grid trial or a final run, on cached features or online.

With a frozen backbone and no augmentation the heads train on the feature cache and the
backbone is never built. Otherwise images go through the backbone every epoch. Both paths
build the heads from the same seed and visit the training samples in the same order, so they
differ only by the float16 rounding of the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marseval.bench.classification.data import ImageDataset, targets
from marseval.bench.classification.features import read_cache
from marseval.bench.classification.losses import classification_loss, effective_loss, num_outputs
from marseval.bench.classification.models import make_heads, reference_heads
from marseval.bench.experiment import Experiment, Setup, Split, to_device
from marseval.bench.shared_pass import HeadStep, TrunkStep
from marseval.bench.training import HParams, LossFn, evaluate, seed_everything
from marseval.errors import MarsevalError


class Heads(nn.Module):
    """The trainable part in feature extraction, applied to cached features."""

    def __init__(self, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: head(features[key].float()) for key, head in self.heads.items()}


class ClassificationExperiment(Experiment):
    """A classification (dataset, model) pair, on the feature cache or online."""

    task = "classification"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        if setup.rules.classifier_heads == "marsbench" and setup.head != "linear":
            raise MarsevalError(f"head {setup.head!r} is a probe-protocol head; the "
                                f"{setup.protocol!r} protocol builds the reference's heads")
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
            # every model of this experiment shares the backbone module; a train-mode frozen
            # backbone (marsbench) moves its BatchNorm statistics, so each model starts from
            # the loaded ones, as each reference run starts from freshly loaded weights
            self._pristine_buffers = {name: buffer.detach().clone() for name, buffer
                                      in self._backbone.module.named_buffers()}

    def _build_backbone(self):
        from marseval.bench.classification.models import build_backbone
        from marseval.bench.model_building import freeze

        # a random-init backbone (tests, embedded default) comes from a fixed seed inside
        # build_backbone, so the feature cache and online training see the same one
        pretrained = self.setup.pretrained and self.setup.training_type != "scratch"
        rules = self.setup.rules  # preprocessing and head style of the protocol
        backbone = build_backbone(self.setup.model, pretrained=pretrained, inputs=rules.inputs,
                                  heads=rules.classifier_heads)
        if self.setup.training_type == "feature_extraction":
            freeze(backbone.module)
        return backbone

    def split(self, name: str, subset: str | None = None) -> Split:
        rows = self.rows(name, subset)
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
                              b.std, augment=augment, antialias=b.antialias)
        return Split(list(rows["sample_id"]), y, images=images,
                     num_workers=self.setup.num_workers)

    def build_model(self, hp: HParams, seed: int) -> nn.Module:
        seed_everything(seed)
        outputs = num_outputs(self.subtask, self.num_classes, self._loss(hp))
        if self.setup.rules.classifier_heads == "marsbench":
            heads = reference_heads(self.setup.model, self.feature_dims, outputs,
                                    self.setup.training_type)
        else:
            heads = make_heads(self.feature_dims, outputs, self.setup.head)
        if self.cached:
            return Heads(heads).to(self.device)
        from marseval.bench.classification.models import Classifier

        with torch.no_grad():
            for name, buffer in self._backbone.module.named_buffers():
                buffer.copy_(self._pristine_buffers[name])
        return Classifier(self._backbone, heads,
                          frozen=self.setup.training_type == "feature_extraction").to(self.device)

    def share_trunk(self, models: list[nn.Module]) -> tuple[TrunkStep, HeadStep]:
        """Online with a frozen backbone, every model holds the one backbone module: it runs
        once per batch and each model's heads read its features."""
        if self.cached or self.setup.training_type != "feature_extraction":
            return super().share_trunk(models)
        backbone = self._backbone.module

        def trunk(batch: Any) -> tuple[Any, Any]:
            images, targets = batch
            return backbone(to_device(images, self.device)), to_device(targets, self.device)

        return trunk, lambda model, features: model.head_forward(features)

    def _loss(self, hp: HParams) -> str:
        return effective_loss(self.subtask, hp.loss, self.setup.rules.binary_single_logit)

    def loss_fn(self, hp: HParams) -> LossFn:
        return classification_loss(self.subtask, self._loss(hp))

    def score(self, model: nn.Module, split: Split, batch_size: int = 256) -> dict[str, Any]:
        # torchmetrics imports transformers and scipy.signal (seconds): only jobs that test
        from marseval.bench.classification.metrics import (
            classification_metrics,
            primary_metric_name,
        )

        outputs, y = evaluate(model, self._step, split.batches(batch_size, shuffle_seed=None),
                              self.setup.rules.precision)
        # "torchmetrics" decides logits vs probabilities per batch: these batches, in test order
        metrics = classification_metrics(self.subtask, outputs.cpu(), y.cpu(), self.num_classes,
                                         self.setup.rules.metrics, batch_size)
        # the paper's metric under a task-independent key, for tables and selection
        metrics["metric"] = primary_metric_name(self.subtask)
        metrics["primary"] = metrics["f1"]
        return metrics


def read_cache_meta(features_dir: Path) -> dict[str, Any]:
    return json.loads((features_dir / "meta.json").read_text())
