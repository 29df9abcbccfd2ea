"""Shared passes of grid trials (issue 15), as the tune jobs run them.

A tune job (one grid shard) runs its trials in groups (`marseval.bench.grid.shared_groups`,
used here as is): the trials of one batch size, shortest `max_epochs` first, at most
`bench.shared_pass_trials` at a time. A group reads one stream of batches; what else its
trials share depends on the pair (`shared_part`):

- `trunk`: frozen-backbone training (feature extraction) of a classifier online or a
  segmenter: the frozen backbone (encoder) runs once per batch, each trial its head (decoder);
- `data`: detection (RetinaNet's FPN and YOLO's neck train on the frozen body inside the
  detector's own forward; Faster R-CNN in the reference protocol freezes body and FPN, so its
  features could be shared before the RPN, not built yet) and any trained backbone
  (`training_type` other than feature extraction): the images are decoded once per batch,
  every trial runs whole;
- `cache`: classification on the feature cache (probe protocol): features were computed once
  by the `features` job, trials are head-only already.
"""

from __future__ import annotations

from marseval.bench.grid import TRUNK_TASKS, shared_groups, shared_part

__all__ = ["TRUNK_TASKS", "describe", "shared_groups", "shared_part"]


SHARED_PARTS = {
    "trunk": "decoded batches and the frozen {trunk} once per batch; each trial its {head}",
    "data": "decoded batches only; every trial runs its whole network",
    "cache": "feature batches; features computed once (`features`), trials are head-only",
}


def describe(task: str, part: str) -> str:
    """What a shared pass of `task` shares, in words."""
    trunk, head = (("encoder", "decoder") if task == "segmentation" else ("backbone", "head"))
    return SHARED_PARTS[part].format(trunk=trunk, head=head)


