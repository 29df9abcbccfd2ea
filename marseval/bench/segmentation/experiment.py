"""Fit and score one segmentation model (segmentation-models-pytorch) on a standardized set.

Images and masks are resized to the model's input size. Scoring happens at that size, as in
the paper, or (`score_resolution="native"`) on the original masks, with logits upsampled
bilinearly to each image's own size before the argmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from marseval.bench.experiment import SCORE_RESOLUTIONS, Experiment, Setup, Split, to_device
from marseval.bench.segmentation.data import SegmentationDataset
from marseval.bench.segmentation.losses import segmentation_loss
from marseval.bench.segmentation.metrics import SegmentationScorer
from marseval.bench.segmentation.models import Segmenter, build_segmenter
from marseval.bench.shared_pass import HeadStep, TrunkStep
from marseval.bench.training import HParams, LossFn, seed_everything
from marseval.errors import MarsevalError

PRIMARY_METRIC = "iou"  # Mars-Bench's per-image IoU; "miou" (dataset level) sits beside it


class SegmentationExperiment(Experiment):
    task = "segmentation"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        if setup.score_resolution not in SCORE_RESOLUTIONS:
            raise MarsevalError(f"score_resolution must be one of {SCORE_RESOLUTIONS}, got "
                                f"{setup.score_resolution!r}")
        spec = self._build(seed=0)  # the preprocessing and names every seed shares
        self.input_size, self.mean, self.std = spec.input_size, spec.mean, spec.std
        self.antialias = spec.antialias  # the protocol's resize (Protocol.inputs)
        self.display_name = spec.display_name

    def _build(self, seed: int) -> Segmenter:
        seed_everything(seed)
        return build_segmenter(self.setup.model, self.num_classes,
                               pretrained=self.setup.pretrained,
                               training_type=self.setup.training_type,
                               input_size=self.setup.input_size,  # an explicit size wins
                               inputs=self.setup.rules.inputs)

    def split(self, name: str, subset: str | None = None) -> Split:
        rows = self.rows(name, subset)
        images = SegmentationDataset(self.setup.dataset_dir, rows, self.input_size, self.mean,
                                     self.std, augment=self.setup.augment and name == "train",
                                     antialias=self.antialias)
        return Split(images.ids, images=images, num_workers=self.setup.num_workers)

    def build_model(self, hp: HParams, seed: int) -> nn.Module:
        return self._build(seed).module.to(self.device)

    def share_trunk(self, models: list[nn.Module]) -> tuple[TrunkStep, HeadStep]:
        """A frozen encoder (feature extraction) is shared: the models get the first one's
        (all hold the same weights), it encodes each batch once, and each model's decoder
        and head read the encoding, as smp's own forward does."""
        if self.setup.training_type != "feature_extraction":
            return super().share_trunk(models)
        encoder = models[0].encoder
        for model in models[1:]:
            model.encoder = encoder

        def trunk(batch: Any) -> tuple[Any, Any]:
            images, masks = batch
            return encoder(to_device(images, self.device)), to_device(masks, self.device)

        def head(model: nn.Module, encoded: Any) -> torch.Tensor:
            # DPT's encoder returns (features, prefix tokens), the others a list of features
            decoded = (model.decoder(*encoded) if isinstance(encoded, tuple)
                       else model.decoder(list(encoded)))
            return model.segmentation_head(decoded)

        return trunk, head

    def loss_fn(self, hp: HParams) -> LossFn:
        return segmentation_loss(hp.loss, self.num_classes,
                                 self.setup.rules.dice_formula).to(self.device)

    def score(self, model: nn.Module, split: Split, batch_size: int = 16) -> dict[str, Any]:
        scorer = SegmentationScorer(self.num_classes)
        native = self.setup.score_resolution == "native"
        model.eval()
        position = 0
        with torch.no_grad():
            for images, masks in split.batches(batch_size, shuffle_seed=None):
                with self.autocast(model):
                    logits = model(to_device(images, self.device))
                logits = logits.float()
                if not native:
                    scorer.update(logits.argmax(1).cpu(), masks)
                    continue
                for row in logits:
                    truth = split.images.native_mask(position)
                    position += 1
                    upsampled = F.interpolate(row[None], size=tuple(truth.shape),
                                              mode="bilinear", align_corners=False)
                    scorer.update(upsampled[0].argmax(0).cpu(), truth)
        metrics = scorer.compute()
        metrics["metric"] = PRIMARY_METRIC
        metrics["primary"] = metrics[PRIMARY_METRIC]
        metrics["score_resolution"] = self.setup.score_resolution
        return metrics
