"""How a report follows the Mars-Bench paper (config keys `report.*`, CLI flags of `report`).

- `exclude_datasets`: datasets left out of the whole report (statistics, figures, tables); the
  paper's text leaves out mb-change_cls_ctx, whose 35 runs all score the same.
- `legacy_nan_trim`: the aggregate IQM as the published figure shows it: a dataset with
  max == min stays in the pool as NaN and is trimmed as +infinity (`stats.iqm_nan_last`).
- `figure_style`: "default" (this project's figures) or "paper" (the reference's own: violins
  of bootstrap IQMs with the aggregated panel first, per-dataset mean +- std curves).
- `curve_normalizer`: "main" (the main runs' normaliser) or "refit" (min and max refitted over
  the whole training-size or few-shot table, as the reference's partition scripts do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marseval.errors import MarsevalError

if TYPE_CHECKING:  # pandas is not imported to parse the CLI's flags
    import pandas as pd

FIGURE_STYLES = ("default", "paper")
CURVE_NORMALIZERS = ("main", "refit")
EXCLUDE_KEY = "report.exclude_datasets"
LEADERBOARD_KEY = "report.leaderboard"
DEFAULT_REFERENCE = "resources/reference/marsbench-paper-runs"
# The tasks with published per-seed runs and their files in the reference folder (report.reference):
# the main runs first, then the training-size and few-shot sweeps. The paper published no
# detection runs. Each task's fixed normaliser is `<task>_normalizer.json` beside them.
PUBLISHED_RUNS = {
    "classification": ("classification_filtered.csv", "classification_partition_filtered.csv",
                       "classification_few_shot_filtered.csv"),
    "segmentation": ("segmentation_filtered.csv", "segmentation_partition_filtered.csv"),
}
PUBLISHED_EARTH = "earth_data.csv"  # the Earth-observation comparison (classification)
# Figure 4: the Earth-observation models against ViT-L/16, on these datasets, as display names
EARTH_MODELS = ("SatMAE_ViT-L/16", "CROMA_ViT-L/16", "prithvi_eo_v1_100", "ViT-L/16")
EARTH_BASELINE = "ViT-L/16"
# the models that belong to Figure 4 only: the paper kept them out of its main statistics
# (earth_data.csv is a table of its own), so a report does too, or their four datasets'
# normalisers and the aggregate would change with them
EARTH_ONLY_MODELS = tuple(m for m in EARTH_MODELS if m != EARTH_BASELINE)
EARTH_DATASETS = ("mb-surface_cls", "mb-atmospheric_dust_cls_edr", "mb-domars16k", "mb-frost_cls")


def published_normalizer(task: str) -> str:
    """File name of a task's published normaliser in the reference folder."""
    return f"{task}_normalizer.json"


def known_datasets() -> list[str]:
    """Every dataset of the packaged registry, sorted."""
    from marseval.registry import load_registry

    return sorted(load_registry())


@dataclass(frozen=True)
class ReportOptions:
    """The paper-reporting options of one report; checked when made."""

    exclude_datasets: tuple[str, ...] = ()
    legacy_nan_trim: bool = False
    figure_style: str = "default"
    curve_normalizer: str = "main"

    def __post_init__(self) -> None:
        _one_of("report.figure_style", self.figure_style, FIGURE_STYLES)
        _one_of("report.curve_normalizer", self.curve_normalizer, CURVE_NORMALIZERS)
        known = known_datasets()
        for name in self.exclude_datasets:
            if name not in known:
                raise MarsevalError(f"config key {EXCLUDE_KEY} (--exclude-dataset): {name!r} is "
                                    f"not a known dataset; known datasets: {', '.join(known)}")

    @classmethod
    def from_config(cls, report: Mapping[str, Any]) -> ReportOptions:
        """From the validated `report` section of a config (schema defaults filled in)."""
        return cls(exclude_datasets=tuple(report["exclude_datasets"]),
                   legacy_nan_trim=bool(report["legacy_nan_trim"]),
                   figure_style=report["figure_style"],
                   curve_normalizer=report["curve_normalizer"])

    def flags(self) -> str:
        """The `python -m marseval report` flags that make these options."""
        flags = [f"--exclude-dataset {name}" for name in self.exclude_datasets]
        if self.legacy_nan_trim:
            flags.append("--legacy-nan-trim")
        flags += [f"--figure-style {self.figure_style}",
                  f"--curve-normalizer {self.curve_normalizer}"]
        return " ".join(flags)

    def exclude(self, runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        """The runs without the excluded datasets, and those of them that were there."""
        left_out = sorted(set(self.exclude_datasets) & set(runs["dataset"]))
        return runs[~runs["dataset"].isin(left_out)].reset_index(drop=True), left_out


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MarsevalError(f"config key {key}: {value!r} is not one of {', '.join(allowed)}")


def option_flags(config: Mapping[str, Any]) -> str:
    """The report rule's flags for the config's `report` options (checked: a bad value stops
    the workflow while it is parsed, naming its key)."""
    return ReportOptions.from_config(config["report"]).flags()
