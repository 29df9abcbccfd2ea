"""The hyperparameter grid: expansion per task, stable trial ids, shards."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from marseval.errors import MarsevalError

AXES = ("lr_schedule", "lr", "weight_decay", "batch_size", "optimizer", "max_epochs", "patience")


def losses_for(grid: dict[str, Any], task: str, subtask: str) -> list[str]:
    """The loss axis of a task; classification keeps only the losses its subtask admits."""
    if task == "classification":
        listed = grid["classification_loss"]
        if subtask == "multilabel":
            return ["bce"]  # one sigmoid per label is the only multi-label formulation
        if subtask == "multiclass":
            return ["cross_entropy"]
        return list(listed)  # binary: cross-entropy on two outputs and/or BCE on one
    return list(grid[f"{task}_loss"])


def trial_id(params: dict[str, Any]) -> str:
    """A short id that changes when any hyperparameter changes (never with grid order)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def expand(grid: dict[str, Any], task: str, subtask: str) -> list[dict[str, Any]]:
    """Every grid point of a task, each with its `trial_id`, in a fixed order."""
    trials = []
    for values in itertools.product(*(grid[a] for a in AXES), losses_for(grid, task, subtask)):
        params = dict(zip((*AXES, "loss"), values, strict=True))
        trials.append({"trial_id": trial_id(params), **params})
    return trials


def shard(trials: list[dict[str, Any]], index: int, count: int) -> list[dict[str, Any]]:
    """Round-robin shard `index` of `count`: shards get similar mixes of cheap and dear trials."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} is not in 0..{count - 1}")
    return trials[index::count]


# ----------------------------------------------------------------------- shared passes

# the tasks whose frozen part a shared pass computes once per batch (issue 15)
TRUNK_TASKS = ("classification", "segmentation")


def shared_part(task: str, training_type: str, cached: bool) -> str:
    """What the trials of one shared pass share: `trunk`, `data` or `cache`."""
    if cached:
        return "cache"
    if training_type != "feature_extraction" or task not in TRUNK_TASKS:
        return "data"
    return "trunk"


def shared_groups(trials: list[dict[str, Any]], max_trials: int) -> list[list[dict[str, Any]]]:
    """The trials in groups that can share a pass: one batch size, at most `max_trials`, in
    order of `max_epochs` (a pass lasts as long as its longest trial, so trials of like length
    go together; records do not depend on the grouping)."""
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise MarsevalError(f"bench.shared_pass_trials must be an integer >= 1, got "
                            f"{max_trials!r}")
    by_size: dict[int, list[dict[str, Any]]] = {}
    for trial in sorted(trials, key=lambda trial: trial["max_epochs"]):  # stable
        by_size.setdefault(int(trial["batch_size"]), []).append(trial)
    return [same[i:i + max_trials] for same in by_size.values()
            for i in range(0, len(same), max_trials)]
