"""Grid search: one shard of trials for a (dataset, model) pair (selection: `selection.py`).

The trials run in shared passes (`marseval.bench.shared_pass`): those with one batch size, up
to `max_trials` at a time, train on one frozen-backbone pass per batch. A trial's record is the
same whatever `max_trials` is (1 runs them one by one through the same code). A shard records
each trial in a progress file beside its output as the trial stops, so a killed job resumes
with the trials not yet recorded; the output itself appears only when the whole shard is done.
On CUDA a group that runs out of memory is split in two and run again (logged).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from marseval.atomic import atomic_write_bytes
from marseval.bench.experiment import Experiment, Setup, Split, open_experiment
from marseval.bench.grid import shared_groups
from marseval.bench.selection import HPARAM_FIELDS
from marseval.bench.training import HParams
from marseval.errors import MarsevalError

log = logging.getLogger(__name__)


def hparams(trial: dict[str, Any]) -> HParams:
    return HParams(**{k: trial[k] for k in HPARAM_FIELDS})


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def progress_path(out: Path) -> Path:
    return out.with_name(f".{out.stem}.progress.parquet")


def run_shard(setup: Setup, trials: list[dict[str, Any]], out: Path, seed: int = 0,
              max_trials: int = 1) -> pd.DataFrame:
    """Run the trials not yet recorded; one row per trial in `out` (parquet)."""
    progress = progress_path(out)
    done = pd.read_parquet(progress) if progress.exists() else pd.DataFrame()
    recorded = set(done["trial_id"]) if len(done) else set()
    todo = [t for t in trials if t["trial_id"] not in recorded]
    groups = shared_groups(todo, max_trials)
    print(f"{len(trials)} trials in this shard, {len(recorded)} already recorded, "
          f"{len(todo)} to run in {len(groups)} shared pass(es)")
    rows = done.to_dict("records") if len(done) else []
    if todo:
        experiment = open_experiment(setup)
        train, val = experiment.split("train"), experiment.split("val")
        for number, group in enumerate(groups, start=1):
            print(f"shared pass {number}/{len(groups)}: {len(group)} trial(s), batch size "
                  f"{group[0]['batch_size']}", flush=True)
            _run_group(experiment, group, seed, train, val, rows, progress)
    frame = pd.DataFrame(rows).set_index("trial_id").loc[[t["trial_id"] for t in trials]]
    frame = frame.reset_index()
    _write_parquet(frame, out)
    progress.unlink(missing_ok=True)
    return frame


def _run_group(experiment: Experiment, group: list[dict[str, Any]], seed: int, train: Split,
               val: Split, rows: list[dict[str, Any]], progress: Path) -> None:
    """One shared pass; each trial's row is written as it stops (a killed job keeps it)."""
    import torch

    def record(index: int, result) -> None:
        rows.append({**group[index], "best_val_loss": result.best_val_loss,
                     "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                     "seconds": result.seconds})
        _write_parquet(pd.DataFrame(rows), progress)

    try:
        experiment.fit_group([hparams(trial) for trial in group], seed, train=train, val=val,
                             on_finish=record)
    except torch.cuda.OutOfMemoryError:
        if len(group) == 1:
            raise
        finished = {row["trial_id"] for row in rows}
        left = [trial for trial in group if trial["trial_id"] not in finished]
        torch.cuda.empty_cache()
        half = (len(left) + 1) // 2
        log.warning("a shared pass of %d trials ran out of GPU memory: running its %d "
                    "unfinished trials in passes of %d", len(group), len(left), half)
        for part in (left[:half], left[half:]):
            if part:
                _run_group(experiment, part, seed, train, val, rows, progress)


def load_best(path: Path) -> HParams:
    try:
        return HParams(**json.loads(path.read_text())["hyperparameters"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MarsevalError(f"cannot read selected hyperparameters from {path}: {exc}") from None
