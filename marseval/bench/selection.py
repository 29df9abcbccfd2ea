"""Selection of the best grid trial from a pair's tuning shards.

Kept apart from `tune.py` so the `select` job imports pandas only, not torch and the model
libraries (seconds of start-up for a job that reads a few parquet rows).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from marseval.atomic import atomic_write_json
from marseval.errors import MarsevalError

HPARAM_FIELDS = ("lr", "weight_decay", "batch_size", "optimizer", "lr_schedule", "max_epochs",
                 "patience", "loss")


def select_best(shards: list[Path], out: Path) -> dict[str, Any]:
    """The trial with the lowest validation loss; ties go to the fewest epochs, then the id."""
    frames = []
    for path in shards:
        try:
            frames.append(pd.read_parquet(path))
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise MarsevalError(f"cannot read tuning shard {path}: {exc}") from None
    trials = pd.concat(frames, ignore_index=True)
    finite = trials[trials["best_val_loss"].map(lambda v: math.isfinite(v))]
    if finite.empty:
        raise MarsevalError(f"no trial in {[str(p) for p in shards]} reached a finite "
                            "validation loss")
    best = finite.sort_values(["best_val_loss", "best_epoch", "trial_id"]).iloc[0]
    record = {"trial_id": best["trial_id"],
              "hyperparameters": {k: _plain(best[k]) for k in HPARAM_FIELDS},
              "best_val_loss": float(best["best_val_loss"]),
              "best_epoch": int(best["best_epoch"]), "trials": len(trials)}
    atomic_write_json(out, record)
    return record


def _plain(value: Any) -> Any:
    """numpy scalars to JSON-able Python values."""
    return value.item() if hasattr(value, "item") else value
