"""`python -m marseval report`: statistics, figures and tables of one task's runs tables.

Reads runs tables in the Mars-Bench schema (ours or published), keeps the main runs
(partition "default") for the normaliser, the per-dataset and aggregate IQMs, probability of
improvement, optimality gap and the violins, and draws training-size and few-shot curves from
the other partitions with the same normaliser. Everything lands in OUT: normalizer.json,
per_dataset.csv, aggregate.csv, probability_of_improvement.csv, optimality_gap.csv,
summary.json, figures/ (PDF and PNG) and tables/ (CSV, Markdown, LaTeX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from marseval.atomic import atomic_directory, atomic_write_json, atomic_write_text
from marseval.errors import MarsevalError
from marseval.report import figures, stats, tables

METRIC_LABELS = {"classification": "F1", "segmentation": "IoU", "detection": "mAP@[.5:.95]"}
MAIN = "default"
FEW_SHOT = "few_shot"


def _csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def load(paths: list[Path]) -> pd.DataFrame:
    # the published tables hold a few runs without a score (blank cells): left out
    return pd.concat([stats.read_runs(p, drop_missing=True) for p in paths], ignore_index=True)


def training_size_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of the training-size sweep with a numeric `fraction`; the main runs are 1.0.

    The published sweep files repeat the main runs as partition "1": those copies are left
    out where the main runs are present, so no run counts twice."""
    sweep = runs[runs["partition"] != FEW_SHOT]
    if (sweep["partition"] == MAIN).any():
        sweep = sweep[sweep["partition"] != "1"]
    sweep = sweep.copy()
    sweep["fraction"] = [1.0 if p == MAIN else float(p) for p in sweep["partition"]]
    return sweep


def run_report(runs_paths: list[Path], task: str, out: Path, reps: int = 1000, ci: float = 0.95,
               seed: int = 0, normalizer_path: Path | None = None,
               earth_path: Path | None = None) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label = METRIC_LABELS.get(task, "score")
    runs = load(runs_paths)
    main = runs[runs["partition"] == MAIN]
    if main.empty:
        raise MarsevalError(f"{', '.join(map(str, runs_paths))}: no main runs (partition "
                            f"name 'default') to report on")
    if normalizer_path is not None:
        normalizer = stats.read_normalizer(normalizer_path)
    else:
        normalizer, _ = stats.fit_normalizer(main)
    stats.write_normalizer(out / "normalizer.json", normalizer)
    normalized, dropped = stats.normalize(main, normalizer)

    per_dataset = stats.per_dataset(main, "score", reps, ci, seed)
    _csv(per_dataset, out / "per_dataset.csv")
    comparable = not normalized.empty  # False when every dataset scored the same in all runs
    if comparable:
        aggregate = stats.aggregate(normalized, reps, ci, seed)
        improvement = stats.probability_of_improvement(normalized, reps, ci, seed)
        gap = stats.optimality_gap(normalized, reps=reps, ci=ci, seed=seed)
    else:
        aggregate = pd.DataFrame(columns=["model", "iqm", "ci_low", "ci_high", "n_datasets"])
        improvement = pd.DataFrame(columns=["model_x", "model_y", "probability", "ci_low",
                                            "ci_high"])
        gap = pd.DataFrame(columns=["model", "gap", "ci_low", "ci_high"])
    _csv(aggregate, out / "aggregate.csv")
    _csv(improvement, out / "probability_of_improvement.csv")
    _csv(gap, out / "optimality_gap.csv")

    sweep = training_size_runs(runs)
    few_shot = runs[runs["partition"] == FEW_SHOT]
    curves: dict[str, pd.DataFrame] = {}
    if comparable and sweep["fraction"].nunique() > 1:
        sweep_normalized, _ = stats.normalize(sweep, normalizer)
        curves["training_size"] = stats.curve(sweep_normalized, "fraction", "normalized", reps,
                                              ci, seed)
    if comparable and not few_shot.empty:
        shots_normalized, _ = stats.normalize(few_shot, normalizer)
        curves["few_shot"] = stats.curve(shots_normalized.astype({"few_shot": int}), "few_shot",
                                         "normalized", reps, ci, seed)

    earth = None
    if earth_path is not None:
        earth = stats.read_runs(earth_path, drop_missing=True)
        earth = earth.assign(fraction=[1.0 if p == MAIN else float(p)
                                       for p in earth["partition"]])
    # one colour per model across every figure, Earth-observation models included
    models = set(runs["model"]) | (set(earth["model"]) if earth is not None else set())
    colours = figures.model_colours(sorted(models))
    with atomic_directory(out / "figures") as folder:
        if comparable:
            figures.normalized_violins(normalized, aggregate, folder / "normalized_violins",
                                       f"normalised {label}", colours=colours)
        figures.raw_violins(main, folder / "raw_violins", label, colours=colours)
        if "training_size" in curves:
            figures.curves(curves["training_size"], "fraction", folder / "training_size",
                           "fraction of the training set", f"IQM of normalised {label}",
                           log_x=True, colours=colours)
        if "few_shot" in curves:
            figures.curves(curves["few_shot"], "few_shot", folder / "few_shot",
                           "training samples per class", f"IQM of normalised {label}",
                           colours=colours)
        if earth is not None:
            figures.earth_comparison(earth, folder / "earth_observation", label,
                                     colours=colours)

    with atomic_directory(out / "tables") as folder:
        for name, frame in tables.results_tables(per_dataset).items():
            tables.write_table(frame, folder / name, caption=f"{task}: {name.replace('_', ' ')}")
        tables.write_table(aggregate, folder / "aggregate",
                           caption=f"{task}: aggregated IQM of normalised {label}")
        for name, frame in curves.items():
            tables.write_table(frame, folder / name, caption=f"{task}: {name.replace('_', ' ')}")

    summary = {"task": task, "runs": [str(p) for p in runs_paths], "n_runs": len(runs),
               "n_main_runs": len(main), "models": sorted(main["model"].unique()),
               "datasets": sorted(main["dataset"].unique()), "dropped_datasets": dropped,
               "reps": reps, "ci": ci, "seed": seed,
               "normalizer": str(normalizer_path) if normalizer_path else "fitted"}
    atomic_write_json(out / "summary.json", summary)
    return summary
