"""All run records of a task in one table, in the Mars-Bench schema.

`model,dataset,test metric,training_type,seed,partition name` come first, as in the published
per-seed results, so theirs and ours go through the same reporting code; extra columns follow,
`data_source` among them (the dataset's source: a leaderboard report refuses synthetic runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from marseval.atomic import atomic_write_text
from marseval.errors import MarsevalError

SCHEMA = ["model", "dataset", "test metric", "training_type", "seed", "partition name"]
# Secondary test metrics of each task, as extra columns after the schema's.
EXTRA_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "segmentation": ("miou", "dice", "pixel_accuracy"),
    "detection": ("map_50", "map_75"),
}


def partition_name(record: dict) -> str:
    """Mars-Bench's names: "default" for the full set, the fraction ("0.25"), "few_shot"."""
    partition = record["partition"]
    if partition.startswith("fraction_"):
        return f"{float(partition.split('_', 1)[1]):g}"
    if partition.startswith("fewshot_"):
        return "few_shot"
    return partition


def collect(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MarsevalError(f"cannot read run record {path}: {exc}") from None
        try:
            rows.append(_row(record))
        except KeyError as exc:
            raise MarsevalError(f"run record {path} lacks the key {exc}") from None
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["dataset", "model", "partition name", "few_shot", "seed"],
                                  kind="stable").reset_index(drop=True)
    return frame


def _row(record: dict) -> dict:
    """One table row of a run record."""
    test = record["test"]
    few_shot = record["partition"].split("_", 1)[1] if record["partition"].startswith(
        "fewshot_") else ""
    return {
        "model": record["model_display"],
        "dataset": record["dataset"],
        "test metric": test["primary"],
        "training_type": record["training_type"],
        "seed": record["seed"],
        "partition name": partition_name(record),
        "few_shot": few_shot,
        "metric": test["metric"],
        "model_id": record["model"],
        # the standardized dataset's source; empty for records written before it was kept
        "data_source": record.get("data_source") or "",
        **{name: test.get(name) for name in EXTRA_METRICS.get(record["task"], ())},
        "n_train": record["n_train"],
        "best_epoch": record["best_epoch"],
        "epochs_run": record["epochs_run"],
        "device": record["device"],
    }


def write_runs_table(paths: list[Path], out: Path) -> pd.DataFrame:
    frame = collect(paths)
    atomic_write_text(out, frame.to_csv(index=False))
    return frame
