"""Grid search: one shard of trials for a (dataset, model) pair (selection: `selection.py`).

A shard records each finished trial in a progress file beside its output, so a killed job
resumes where it stopped; the output itself appears only when the whole shard is done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from marseval.atomic import atomic_write_bytes
from marseval.bench.experiment import Setup, open_experiment
from marseval.bench.selection import HPARAM_FIELDS
from marseval.bench.training import HParams
from marseval.errors import MarsevalError


def hparams(trial: dict[str, Any]) -> HParams:
    return HParams(**{k: trial[k] for k in HPARAM_FIELDS})


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def progress_path(out: Path) -> Path:
    return out.with_name(f".{out.stem}.progress.parquet")


def run_shard(setup: Setup, trials: list[dict[str, Any]], out: Path, seed: int = 0) -> pd.DataFrame:
    """Run the trials not yet recorded; one row per trial in `out` (parquet)."""
    progress = progress_path(out)
    done = pd.read_parquet(progress) if progress.exists() else pd.DataFrame()
    recorded = set(done["trial_id"]) if len(done) else set()
    todo = [t for t in trials if t["trial_id"] not in recorded]
    print(f"{len(trials)} trials in this shard, {len(recorded)} already recorded, "
          f"{len(todo)} to run")
    rows = done.to_dict("records") if len(done) else []
    if todo:
        experiment = open_experiment(setup)
        train, val = experiment.split("train"), experiment.split("val")
        for number, trial in enumerate(todo, start=1):
            _, result = experiment.fit(hparams(trial), seed, train=train, val=val,
                                       progress=f"trial {number}/{len(todo)}")
            rows.append({**trial, "best_val_loss": result.best_val_loss,
                         "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                         "seconds": result.seconds})
            _write_parquet(pd.DataFrame(rows), progress)  # a killed job keeps what it did
    frame = pd.DataFrame(rows).set_index("trial_id").loc[[t["trial_id"] for t in trials]]
    frame = frame.reset_index()
    _write_parquet(frame, out)
    progress.unlink(missing_ok=True)
    return frame


def load_best(path: Path) -> HParams:
    try:
        return HParams(**json.loads(path.read_text())["hyperparameters"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MarsevalError(f"cannot read selected hyperparameters from {path}: {exc}") from None
