"""`python -m marseval report`: statistics, figures and tables of one task's runs tables.

Reads runs tables in the Mars-Bench schema (ours or published), leaves out the datasets of
`options.exclude_datasets`, keeps the main runs (partition "default") for the normaliser, the
per-dataset and aggregate IQMs, probability of improvement, optimality gap and the violins, and
draws training-size and few-shot curves from the other partitions, normalised with the main
normaliser or one refitted over their own table (`options.curve_normalizer`). Everything lands
in OUT: normalizer.json, per_dataset.csv, aggregate.csv, probability_of_improvement.csv,
optimality_gap.csv, summary.json, figures/ (PDF and PNG) and tables/ (CSV, Markdown, LaTeX).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from marseval.atomic import atomic_directory, atomic_write_json, atomic_write_text
from marseval.errors import MarsevalError
from marseval.report import figures, paper_style, stats, tables
from marseval.report.options import (
    EARTH_BASELINE,
    EARTH_DATASETS,
    EARTH_MODELS,
    EARTH_ONLY_MODELS,
    EXCLUDE_KEY,
    ReportOptions,
)

METRIC_LABELS = {"classification": "F1", "segmentation": "IoU", "detection": "mAP@[.5:.95]"}
MAIN = "default"
FEW_SHOT = "few_shot"
# x column and axis label of each curve
CURVES = {"training_size": ("fraction", "fraction of the training set"),
          "few_shot": ("few_shot", "training samples per class"),
          "earth_observation": ("fraction", "fraction of the training set")}


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


def our_earth_runs(runs: pd.DataFrame, need_earth_model: bool = True) -> pd.DataFrame | None:
    """Figure 4 from a runs table: the training-size runs (with `fraction`) of the
    Earth-observation models and ViT-L/16 on the paper's four datasets, or None where there are
    none; with `need_earth_model`, also None where only the ViT-L/16 baseline is there."""
    sweep = training_size_runs(runs)
    earth = sweep[sweep["model"].isin(EARTH_MODELS) & sweep["dataset"].isin(EARTH_DATASETS)]
    models = set(earth["model"]) - ({EARTH_BASELINE} if need_earth_model else set())
    return earth.reset_index(drop=True) if models else None


def without_earth_only_models(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the main statistics: all but the Earth-observation backbones', which only
    Figure 4 shows (from `our_earth_runs`), as the paper's earth_data.csv kept them apart."""
    return runs[~runs["model"].isin(EARTH_ONLY_MODELS)].reset_index(drop=True)


@dataclass
class Curves:
    """Each curve's IQM points (tables, default figures) and per-dataset mean +- std (paper
    figures), over its normalised runs."""

    iqm: dict[str, pd.DataFrame] = field(default_factory=dict)
    spread: dict[str, pd.DataFrame] = field(default_factory=dict)


def curve_runs(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The runs of each curve there is: a sweep over more than one fraction, few-shot runs."""
    found = {}
    sweep = training_size_runs(runs)
    if sweep["fraction"].nunique() > 1:
        found["training_size"] = sweep
    few_shot = runs[runs["partition"] == FEW_SHOT]
    if not few_shot.empty:
        found["few_shot"] = few_shot.astype({"few_shot": int})
    return found


def make_curves(runs: pd.DataFrame, earth: pd.DataFrame | None, normalizer: stats.Normalizer,
                options: ReportOptions, reps: int, ci: float, seed: int) -> Curves:
    """Curves normalised with the main `normalizer`, or (curve_normalizer "refit") with min and
    max over each curve's own table, as the reference's partition and few-shot scripts do.
    The Earth-observation runs (no IQM curve) are normalised over their own table, as
    plot_earth_data_results.py does."""
    curves = Curves()
    for name, table in curve_runs(runs).items():
        x = CURVES[name][0]
        own = stats.fit_normalizer(table)[0] if options.curve_normalizer == "refit" else normalizer
        normalized, _ = stats.normalize(table, own)
        if normalized.empty:
            continue
        curves.iqm[name] = stats.curve(normalized, x, "normalized", reps, ci, seed)
        curves.spread[name] = stats.spread(normalized, x)
    if earth is not None:
        normalized, _ = stats.normalize(earth, stats.fit_normalizer(earth)[0])
        if not normalized.empty:
            curves.spread["earth_observation"] = stats.spread(normalized, "fraction")
    return curves


def run_report(runs_paths: list[Path], task: str, out: Path, reps: int = 1000, ci: float = 0.95,
               seed: int = 0, normalizer_path: Path | None = None,
               earth_path: Path | None = None,
               options: ReportOptions | None = None) -> dict[str, Any]:
    options = options or ReportOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label = METRIC_LABELS.get(task, "score")
    every_run, excluded = options.exclude(load(runs_paths))
    runs = without_earth_only_models(every_run)
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
    # the published aggregate pooled the datasets with max == min as NaN (legacy_nan_trim)
    pooled = (stats.normalize(main, normalizer, keep_constant=True)[0]
              if options.legacy_nan_trim else normalized)

    per_dataset = stats.per_dataset(main, "score", reps, ci, seed)
    _csv(per_dataset, out / "per_dataset.csv")
    comparable = not normalized.empty  # False when every dataset scored the same in all runs
    if comparable:
        aggregate = stats.aggregate(pooled, reps, ci, seed, nan_last=options.legacy_nan_trim)
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

    earth = None
    if earth_path is not None:
        earth, _ = options.exclude(stats.read_runs(earth_path, drop_missing=True))
        earth = earth.assign(fraction=[1.0 if p == MAIN else float(p)
                                       for p in earth["partition"]])
    else:  # the Earth-observation backbones run through this workflow
        earth = our_earth_runs(every_run)
    curves = (make_curves(runs, earth, normalizer, options, reps, ci, seed) if comparable
              else Curves())
    # one colour per model across every figure, Earth-observation models included
    models = set(runs["model"]) | (set(earth["model"]) if earth is not None else set())
    context = Drawing(label, figures.model_colours(sorted(models)), _left_out_note(excluded))
    with atomic_directory(out / "figures") as folder:
        if comparable and options.figure_style == "paper":
            distributions = stats.bootstrap_distributions(pooled, reps, seed,
                                                          nan_last=options.legacy_nan_trim)
            context.save(paper_style.bootstrap_violins_figure(
                distributions, f"normalised {label}", order=figures.model_order(aggregate),
                colours=context.colours), folder / "normalized_violins")
        elif comparable:
            context.save(figures.normalized_violins_figure(
                normalized, aggregate, f"normalised {label}", colours=context.colours),
                folder / "normalized_violins")
        context.save(figures.raw_violins_figure(main, label, colours=context.colours),
                     folder / "raw_violins")
        draw = draw_paper_curves if options.figure_style == "paper" else draw_curves
        draw(curves, earth, folder, context)

    with atomic_directory(out / "tables") as folder:
        caption = f" (left out: {', '.join(excluded)})" if excluded else ""
        for name, frame in tables.results_tables(per_dataset).items():
            tables.write_table(frame, folder / name,
                               caption=f"{task}: {name.replace('_', ' ')}{caption}")
        tables.write_table(aggregate, folder / "aggregate",
                           caption=f"{task}: aggregated IQM of normalised {label}{caption}")
        for name, frame in curves.iqm.items():
            tables.write_table(frame, folder / name,
                               caption=f"{task}: {name.replace('_', ' ')}{caption}")
        if options.figure_style == "paper":
            for name, frame in curves.spread.items():
                tables.write_table(frame, folder / f"{name}_per_dataset",
                                   caption=f"{task}: {name.replace('_', ' ')}, mean and std "
                                           f"of normalised {label} per dataset{caption}")

    summary = {"task": task, "runs": [str(p) for p in runs_paths], "n_runs": len(runs),
               "n_main_runs": len(main), "models": sorted(main["model"].unique()),
               "earth_observation_only": sorted(set(every_run["model"]) & set(EARTH_ONLY_MODELS)),
               "datasets": sorted(main["dataset"].unique()), "dropped_datasets": dropped,
               "excluded_datasets": excluded, "reps": reps, "ci": ci, "seed": seed,
               "normalizer": str(normalizer_path) if normalizer_path else "fitted",
               "legacy_nan_trim": options.legacy_nan_trim,
               "figure_style": options.figure_style,
               "curve_normalizer": options.curve_normalizer}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _left_out_note(excluded: list[str]) -> str | None:
    if not excluded:
        return None
    return f"left out ({EXCLUDE_KEY}): {', '.join(map(figures._title, excluded))}"


@dataclass
class Drawing:
    """What every figure of one report shares: the metric, the model colours, a note."""

    label: str
    colours: dict[str, figures.Colour]
    note: str | None = None

    def save(self, fig: Figure, stem: Path) -> list[Path]:
        """`fig` with the note (which datasets were left out) on top, as PDF and PNG."""
        if self.note:
            fig.suptitle(self.note, fontsize=8, color="0.3")
        return figures.save_figure(fig, stem)


def draw_curves(curves: Curves, earth: pd.DataFrame | None, folder: Path,
                context: Drawing) -> None:
    """This project's curves: IQM of normalised scores pooled over datasets with bootstrap
    bands; the Earth-observation comparison on the raw metric."""
    for name, frame in curves.iqm.items():
        x, xlabel = CURVES[name]
        context.save(figures.curves_figure(frame, x, xlabel, f"IQM of normalised {context.label}",
                                           log_x=name == "training_size",
                                           colours=context.colours), folder / name)
    if earth is not None:
        context.save(figures.earth_comparison_figure(earth, context.label,
                                                     colours=context.colours),
                     folder / "earth_observation")


def draw_paper_curves(curves: Curves, earth: pd.DataFrame | None, folder: Path,
                      context: Drawing) -> None:
    """The reference's curves, the Earth-observation comparison among them: per dataset, mean
    +- 1 std of normalised scores over the seeds on a log x axis (fractions in %), at most 5
    panels a row. `earth` is drawn from `curves.spread` (normalised over its own table)."""
    ylabel = f"normalised {context.label} (mean ± 1 std)"
    for name, frame in curves.spread.items():
        x, xlabel = CURVES[name]
        layout = figures.PAPER_LAYOUT if x == "fraction" else figures.Layout(
            columns=figures.PAPER_LAYOUT.columns, sharey=True)
        context.save(figures.spread_figure(frame, x, xlabel, ylabel, log_x=True,
                                           colours=context.colours, layout=layout),
                     folder / name)
