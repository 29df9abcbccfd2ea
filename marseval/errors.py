"""Errors that point the user at the exact input that is wrong."""

from __future__ import annotations


class MarsevalError(RuntimeError):
    """Base class: errors the CLI reports as one clear line instead of a traceback."""


class DataError(MarsevalError):
    """Bad raw data: names the dataset, the split and the file."""

    def __init__(
        self, dataset: str, message: str, split: str | None = None, file: str | None = None
    ) -> None:
        self.dataset, self.split, self.file = dataset, split, file
        where = [f"dataset {dataset}"]
        if split:
            where.append(f"split {split}")
        if file:
            where.append(f"file {file}")
        super().__init__(f"{', '.join(where)}: {message}")


class PlanError(MarsevalError):
    """Bad input to the cost planner: names the config file and key, or the throughput row."""
