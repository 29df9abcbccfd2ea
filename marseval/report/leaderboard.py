"""Leaderboard mode of the report (`python -m marseval report --leaderboard`, report.leaderboard).

Our runs and the published Mars-Bench runs of the same task go through one report under the
paper's fixed normaliser (`<task>_normalizer.json` in the reference folder), so every published
model keeps its published normalised scores whatever we add, and each of our models is placed
among them by its own scores. Normalised values above 1 or below 0 (a model better or worse than
every published run) are kept and shown, never clipped.

Only what both sides have is compared: datasets of the main runs (partition "default") with runs
of ours and published runs, and on those datasets the training fractions and few-shot k of the
curves that both sides ran; everything left out is listed with its reason in summary.json, on
the figures and in the table captions. A model of ours named like a published one is suffixed
" (ours)"; every table has a `source` column (ours / published).

Refused, one message each: a task the paper published no runs of (detection), runs of ours on
synthetic data or of unknown source (the runs table's `data_source` column, from each dataset's
meta.json), a compared dataset that the published normaliser lacks.

Writes into OUT: normalizer.json (the published one), aggregate.csv (rank, model, source, IQM,
interval), per_dataset.csv (raw metric, with source), dataset_ranks.csv (per dataset, each of our
models' rank among all models by mean score and its mean normalised score),
probability_of_improvement.csv (each of ours over each published model), optimality_gap.csv,
summary.json, figures/ and tables/.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from marseval.atomic import atomic_directory, atomic_write_json
from marseval.errors import MarsevalError
from marseval.report import figures, run, stats, tables
from marseval.report.options import (
    EARTH_ONLY_MODELS,
    EXCLUDE_KEY,
    PUBLISHED_EARTH,
    PUBLISHED_RUNS,
    ReportOptions,
    published_normalizer,
)

OURS, PUBLISHED = "ours", "published"
OURS_SUFFIX = " (ours)"
SYNTHETIC = "synthetic"
SOURCE_COLUMN = "data_source"
# how the left-out points of each curve are named (one, several): "partition 0.02",
# "partitions 0.01, 0.02", "few-shot k=1, 2"
POINT_NAMES = {"training_size": ("partition {}", "partitions {}"),
               "few_shot": ("few-shot k={}", "few-shot k={}"),
               "earth_observation": ("Earth-observation partition {}",
                                     "Earth-observation partitions {}")}
NOTE_CHARS_PER_INCH, NOTE_LINES = 13, 4  # the note on each figure: 7-point text


def published_paths(reference: Path, task: str) -> list[Path]:
    """The task's published runs tables in `reference` (main runs first); refuses a task the
    paper published no runs of."""
    if task not in PUBLISHED_RUNS:
        raise MarsevalError(f"leaderboard mode: the Mars-Bench paper published no {task} runs "
                            f"(published: {', '.join(PUBLISHED_RUNS)}), so there is nothing to "
                            f"rank ours among; report {task} without --leaderboard")
    paths = [Path(reference) / name for name in PUBLISHED_RUNS[task]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise MarsevalError(f"leaderboard mode: published {task} runs not found: "
                            f"{', '.join(missing)} (--reference / report.reference "
                            f"{reference})")
    return paths


def check_data_sources(paths: Iterable[Path], excluded: Iterable[str] = ()) -> None:
    """Refuse runs tables of ours whose runs are on synthetic data, or whose source is unknown
    (no `data_source` column, or an empty cell), naming the datasets."""
    left_out = set(excluded)
    for path in paths:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        raw.columns = [str(column).strip() for column in raw.columns]
        if SOURCE_COLUMN not in raw.columns:
            raise MarsevalError(
                f"leaderboard mode: runs table {path} has no column {SOURCE_COLUMN!r}, so "
                f"whether its runs are on synthetic data is unknown (it was collected before "
                f"run records kept their dataset's source); train and collect those runs again "
                f"(snakemake --forcerun train) so every record carries it, then report again")
        raw = raw[~raw["dataset"].str.strip().isin(left_out)]
        source = raw[SOURCE_COLUMN].str.strip()
        for value, why in ((SYNTHETIC, "are on synthetic data"),
                           ("", "have no recorded data source")):
            datasets = sorted(set(raw.loc[source == value, "dataset"].str.strip()))
            if datasets:
                raise MarsevalError(
                    f"leaderboard mode: runs of {path} on {', '.join(datasets)} {why}; "
                    f"comparing them with the paper's runs would be meaningless: standardize "
                    f"those datasets from a real source (config key source or "
                    f"dataset_options.<dataset>.source: huggingface or zenodo), train and "
                    f"collect again, or report without --leaderboard")


def distinguish(ours: pd.DataFrame, published: Iterable[str]) -> tuple[pd.DataFrame, dict]:
    """Our runs with each model named like a published one suffixed " (ours)", and the
    renaming {old: new}."""
    taken = set(published)
    renamed = {name: f"{name}{OURS_SUFFIX}" for name in sorted(set(ours["model"]) & taken)}
    return ours.assign(model=ours["model"].replace(renamed)), renamed


@dataclass
class Sides:
    """The compared runs of both sides (a `source` column: ours / published) and what was
    left out, each with its reason."""

    runs: pd.DataFrame
    left_out: list[str]


def compare_datasets(ours: pd.DataFrame, published: pd.DataFrame) -> Sides:
    """Main runs of the datasets that both sides have."""
    mine, theirs = set(ours["dataset"]), set(published["dataset"])
    left_out = ([f"{name}: no published runs" for name in sorted(mine - theirs)]
                + [f"{name}: none of ours" for name in sorted(theirs - mine)])
    both = mine & theirs
    runs = pd.concat([ours[ours["dataset"].isin(both)].assign(source=OURS),
                      published[published["dataset"].isin(both)].assign(source=PUBLISHED)],
                     ignore_index=True)
    return Sides(runs, left_out)


def compare_points(ours: pd.DataFrame, published: pd.DataFrame, x: str, name: str) -> Sides:
    """The runs of one curve at the (dataset, x) points that both sides ran. Left-out points
    are named by x: "partitions 0.01, 0.02: none of ours" where one side lacks x on every
    dataset, "partition 0.1 on mb-a, mb-b: none of ours" where only on some."""
    mine = set(zip(ours["dataset"], ours[x], strict=True))
    theirs = set(zip(published["dataset"], published[x], strict=True))
    one, several = POINT_NAMES[name]
    left_out = []
    for lacking, others, reason in ((mine, theirs, "none of ours"),
                                    (theirs, mine, "no published runs")):
        whole, partly = [], []
        for value in sorted({v for _, v in others - lacking}):
            having = sorted(d for d, v in others if v == value)
            missing = sorted(d for d, v in others - lacking if v == value)
            if missing == having:
                whole.append(_number(value))
            else:
                partly.append(f"{one.format(_number(value))} on {', '.join(missing)}: {reason}")
        if whole:
            left_out.append(f"{(one if len(whole) == 1 else several).format(', '.join(whole))}: "
                            f"{reason}")
        left_out += partly
    both = mine & theirs

    def kept(frame: pd.DataFrame) -> pd.DataFrame:
        keys = pd.Series(list(zip(frame["dataset"], frame[x], strict=True)), index=frame.index)
        return frame[keys.isin(both)]

    runs = pd.concat([kept(ours).assign(source=OURS), kept(published).assign(source=PUBLISHED)],
                     ignore_index=True)
    return Sides(runs, left_out)


def _number(value: Any) -> str:
    return f"{float(value):g}"


def curve_sides(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One side's curve runs, whether or not it has several points: the training-size sweep
    (main runs at fraction 1.0) and the few-shot runs."""
    few_shot = runs[runs["partition"] == run.FEW_SHOT]
    return {"training_size": run.training_size_runs(runs),
            "few_shot": few_shot.astype({"few_shot": int})}


def rank_table(aggregate: pd.DataFrame) -> pd.DataFrame:
    """`aggregate` (sorted best first) with a 1-based `rank` (ties share the better rank)."""
    ranks = aggregate["iqm"].rank(method="min", ascending=False).astype(int)
    return aggregate.assign(rank=ranks)[["rank", "model", "source", "iqm", "ci_low", "ci_high",
                                         "n_datasets"]]


def dataset_ranks(normalized: pd.DataFrame, ours: Iterable[str]) -> pd.DataFrame:
    """Per dataset and model of ours: its rank among all models of the dataset by mean score
    over the seeds (1 = best; ties share the better rank), of how many, its mean score and mean
    normalised score, and the best published model there with its mean normalised score."""
    means = (normalized.groupby(["dataset", "model", "source"], sort=True)[["score", "normalized"]]
             .mean().reset_index())
    rows = []
    for dataset, frame in means.groupby("dataset", sort=True):
        ranks = frame["score"].rank(method="min", ascending=False).astype(int)
        published = frame[frame["source"] == PUBLISHED].sort_values(
            ["score", "model"], ascending=[False, True])
        best = published.iloc[0] if len(published) else None
        for index, row in frame[frame["model"].isin(set(ours))].iterrows():
            rows.append({"dataset": dataset, "model": row["model"], "rank": int(ranks[index]),
                         "n_models": len(frame), "mean_score": row["score"],
                         "mean_normalized": row["normalized"],
                         "best_published": best["model"] if best is not None else "",
                         "best_published_normalized": best["normalized"] if best is not None
                         else np.nan})
    columns = ["dataset", "model", "rank", "n_models", "mean_score", "mean_normalized",
               "best_published", "best_published_normalized"]
    return pd.DataFrame(rows, columns=columns)


def improvement_over_published(normalized: pd.DataFrame, ours: Iterable[str],
                               published: Iterable[str], reps: int, ci: float,
                               seed: int) -> pd.DataFrame:
    """rliable's probability of improvement of each of our models (model_x) over each published
    one (model_y), with its interval: the same numbers as `stats.probability_of_improvement`
    over all models gives for those pairs (each pair starts from the same seed)."""
    parts = []
    for mine in sorted(ours):
        for theirs in sorted(published):
            pair = normalized[normalized["model"].isin([mine, theirs])]
            table = stats.probability_of_improvement(pair, reps, ci, seed)
            parts.append(table[table["model_x"] == mine])
    columns = ["model_x", "model_y", "probability", "ci_low", "ci_high", "n_datasets"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def _with_source(frame: pd.DataFrame, sources: dict[str, str], after: str = "model"
                 ) -> pd.DataFrame:
    position = list(frame.columns).index(after) + 1
    frame = frame.copy()
    frame.insert(position, "source", frame["model"].map(sources))
    return frame


def _save(fig: Figure, stem: Path, left_out: list[str]) -> None:
    """`fig` as PDF and PNG with what its comparison left out in a few lines on top, left
    aligned and no wider than about three quarters of the figure (clear of a legend at the
    right); the rest is in summary.json."""
    if left_out:
        width = int(fig.get_figwidth() * NOTE_CHARS_PER_INCH)
        lines = textwrap.wrap("left out: " + "; ".join(left_out), width)
        if len(lines) > NOTE_LINES:
            rest = " ".join(lines[NOTE_LINES - 1:])
            lines = [*lines[:NOTE_LINES - 1],
                     textwrap.shorten(rest, width, placeholder=" ... (all in summary.json)")]
        fig.suptitle("\n".join(lines), x=0.01, ha="left", fontsize=7, color="0.3")
    figures.save_figure(fig, stem)


def published_earth(task: str, reference: Path, earth_path: Path | None,
                    options: ReportOptions) -> pd.DataFrame | None:
    """The published Earth-observation runs (classification only) with `fraction`, or None."""
    path = Path(earth_path) if earth_path is not None else Path(reference) / PUBLISHED_EARTH
    if task != "classification" or not path.is_file():
        return None
    theirs, _ = options.exclude(stats.read_runs(path, drop_missing=True))
    return theirs.assign(fraction=[1.0 if p == run.MAIN else float(p)
                                   for p in theirs["partition"]])


def _earth(ours: pd.DataFrame, theirs: pd.DataFrame | None,
           renamed: dict[str, str]) -> tuple[pd.DataFrame | None, list[str]]:
    """Figure 4's runs: ours (the Earth-observation models or ViT-L/16 on its datasets, under
    their own names in `ours`) beside the published ones, at the (dataset, fraction) points
    both have."""
    mine = run.our_earth_runs(ours, need_earth_model=False)
    if theirs is None or mine is None:
        return None, []
    mine = mine.assign(model=mine["model"].replace(renamed))
    sides = compare_points(mine, theirs, "fraction", "earth_observation")
    if sides.runs.empty or not (sides.runs["source"] == OURS).any():
        return None, [*sides.left_out, "Earth-observation figure: no point on both sides"]
    return sides.runs, sides.left_out


def run_leaderboard(runs_paths: list[Path], task: str, out: Path, reference: Path,
                    reps: int = 1000, ci: float = 0.95, seed: int = 0,
                    earth_path: Path | None = None,
                    options: ReportOptions | None = None) -> dict[str, Any]:
    """The leaderboard report of our runs tables `runs_paths` among the published runs of
    `task` in `reference`, written into `out`; returns the summary (summary.json)."""
    options = options or ReportOptions()
    reference, out = Path(reference), Path(out)
    published_files = published_paths(reference, task)
    label = run.METRIC_LABELS.get(task, "score")
    ours, excluded = options.exclude(run.load(runs_paths))
    check_data_sources(runs_paths, options.exclude_datasets)
    published, excluded_published = options.exclude(run.load(published_files))
    excluded = sorted(set(excluded) | set(excluded_published))
    normalizer_path = reference / published_normalizer(task)
    normalizer = stats.read_normalizer(normalizer_path)
    earth_published = published_earth(task, reference, earth_path, options)
    own_names = ours
    ours, renamed = distinguish(ours, {*published["model"], *(
        earth_published["model"] if earth_published is not None else ())})

    # Figure 4's backbones stay out of the main statistics, as in the paper (`_earth` below)
    ours_main = ours[~own_names["model"].isin(EARTH_ONLY_MODELS)].reset_index(drop=True)
    main = compare_datasets(ours_main[ours_main["partition"] == run.MAIN],
                            published[published["partition"] == run.MAIN])
    if not (main.runs["source"] == OURS).any():
        raise MarsevalError(
            f"leaderboard mode: no main runs (partition name 'default') of "
            f"{', '.join(map(str, runs_paths))} on a dataset with published {task} runs "
            f"(ours: {', '.join(sorted(set(ours['dataset'])))}; published: "
            f"{', '.join(sorted(set(published['dataset'])))})")
    datasets = sorted(set(main.runs["dataset"]))
    unknown = [name for name in datasets if name not in normalizer]
    if unknown:
        raise MarsevalError(f"leaderboard mode: the published normaliser {normalizer_path} has "
                            f"no [min, max] for dataset(s) {', '.join(unknown)}, which both "
                            f"sides ran; a normaliser fitted here would change the published "
                            f"scores: leave them out ({EXCLUDE_KEY}, --exclude-dataset) or fix "
                            f"the reference folder")
    normalized, dropped = stats.normalize(main.runs, normalizer)
    left_out = [*main.left_out,
                *[f"{name}: max == min in the published normaliser" for name in dropped]]
    if normalized.empty:
        raise MarsevalError(f"leaderboard mode: every compared dataset ({', '.join(datasets)}) "
                            f"has max == min in {normalizer_path}; nothing to rank")
    sources = dict(zip(main.runs["model"], main.runs["source"], strict=True))
    our_models = sorted(m for m, s in sources.items() if s == OURS)
    published_models = sorted(m for m, s in sources.items() if s == PUBLISHED)
    kept = set(normalized["dataset"])  # the compared datasets that can be normalised
    for model in our_models:  # a model of ours run on some datasets only (model_scope)
        lacking = sorted(kept - set(normalized.loc[normalized["model"] == model, "dataset"]))
        if lacking:
            left_out.append(f"{model}: no runs on {', '.join(lacking)} (its aggregate covers "
                            f"{len(kept) - len(lacking)} of {len(kept)} datasets)")
    notes = {"main": [*(f"{name}: {EXCLUDE_KEY}" for name in excluded), *left_out]}

    pooled = (stats.normalize(main.runs, normalizer, keep_constant=True)[0]
              if options.legacy_nan_trim else normalized)
    aggregate = rank_table(_with_source(
        stats.aggregate(pooled, reps, ci, seed, nan_last=options.legacy_nan_trim), sources))
    per_dataset = _with_source(stats.per_dataset(main.runs, "score", reps, ci, seed), sources)
    improvement = improvement_over_published(normalized, our_models, published_models, reps,
                                             ci, seed)
    gap = _with_source(stats.optimality_gap(normalized, reps=reps, ci=ci, seed=seed), sources)
    ranks = dataset_ranks(normalized, our_models)

    curves, spreads, points = {}, {}, {}
    for (name, mine), theirs in zip(curve_sides(ours_main).items(), curve_sides(published).values(),
                                    strict=True):
        x = run.CURVES[name][0]
        mine, theirs = (frame[frame["dataset"].isin(kept)] for frame in (mine, theirs))
        if mine.empty and theirs.empty:
            continue
        sides = compare_points(mine, theirs, x, name)
        left_out += sides.left_out
        notes[name] = [*notes["main"], *sides.left_out]
        table, _ = stats.normalize(sides.runs, normalizer)
        enough = table[x].nunique() > (1 if name == "training_size" else 0)
        if table.empty or not enough or not (table["source"] == OURS).any():
            continue
        curves[name] = _with_source(stats.curve(table, x, "normalized", reps, ci, seed),
                                    sources)
        spreads[name] = stats.spread(table, x)
        points[name] = sorted(float(v) for v in table[x].unique())
    earth, earth_left_out = _earth(own_names, earth_published, renamed)
    left_out += earth_left_out
    notes["earth_observation"] = earth_left_out
    if earth is not None:
        sources.update(dict(zip(earth["model"], earth["source"], strict=True)))

    stats.write_normalizer(out / "normalizer.json", normalizer)
    for frame, name in ((aggregate, "aggregate"), (per_dataset, "per_dataset"),
                        (ranks, "dataset_ranks"), (improvement, "probability_of_improvement"),
                        (gap, "optimality_gap")):
        run._csv(frame, out / f"{name}.csv")

    ours_all = {m for m, s in sources.items() if s == OURS}
    colours = figures.model_colours(sorted(m for m, s in sources.items() if s == PUBLISHED)
                                    + sorted(ours_all))
    order = list(aggregate["model"])
    with atomic_directory(out / "figures") as folder:
        _save(figures.normalized_violins_figure(
            normalized, aggregate, f"normalised {label} (published normaliser)", order=order,
            colours=colours, ours=ours_all), folder / "normalized_violins", notes["main"])
        _save(figures.raw_violins_figure(main.runs, label, order=order, colours=colours,
                                         ours=ours_all), folder / "raw_violins", notes["main"])
        for name in curves:
            x, xlabel = run.CURVES[name]
            if options.figure_style == "paper":
                layout = figures.PAPER_LAYOUT if x == "fraction" else figures.Layout(
                    columns=figures.PAPER_LAYOUT.columns, sharey=True)
                fig = figures.spread_figure(
                    spreads[name], x, xlabel, f"normalised {label} (mean ± 1 std)", log_x=True,
                    order=order, colours=colours, layout=layout, ours=ours_all)
            else:
                fig = figures.curves_figure(curves[name], x, xlabel,
                                            f"IQM of normalised {label}",
                                            log_x=name == "training_size", order=order,
                                            colours=colours, ours=ours_all)
            _save(fig, folder / name, notes[name])
        if earth is not None:
            _save(figures.earth_comparison_figure(earth, label, colours=colours, ours=ours_all),
                  folder / "earth_observation", notes["earth_observation"])

    caption = (f" Ours: {', '.join(our_models)}; published normaliser {normalizer_path.name}."
               + (f" Left out: {'; '.join([*excluded, *left_out])}." if excluded or left_out
                  else ""))
    with atomic_directory(out / "tables") as folder:
        tables.write_table(aggregate, folder / "aggregate",
                           caption=f"{task} leaderboard: rank and aggregated IQM of normalised "
                                   f"{label} over {len(set(normalized['dataset']))} datasets."
                                   f"{caption}")
        tables.write_table(ranks, folder / "dataset_ranks",
                           caption=f"{task} leaderboard: rank of each of our models per dataset "
                                   f"by mean {label} over the seeds.{caption}")
        tables.write_table(improvement, folder / "probability_of_improvement",
                           caption=f"{task} leaderboard: probability of improvement of ours "
                                   f"over each published model.{caption}")
        for name, frame in tables.results_tables(per_dataset, order=order).items():
            tables.write_table(frame, folder / name,
                               caption=f"{task} leaderboard: {name.replace('_', ' ')}.{caption}")
        for name, frame in curves.items():
            tables.write_table(frame, folder / name,
                               caption=f"{task} leaderboard: {name.replace('_', ' ')}, IQM of "
                                       f"normalised {label}.{caption}")

    summary = {"task": task, "mode": "leaderboard", "runs": [str(p) for p in runs_paths],
               "reference": str(reference), "published_runs": [str(p) for p in published_files],
               "normalizer": str(normalizer_path), "ours": our_models,
               "published": published_models, "renamed": renamed,
               "ranks": {row["model"]: int(row["rank"]) for _, row in aggregate.iterrows()
                         if row["source"] == OURS},
               "models": sorted(set(main.runs["model"])),
               "datasets": sorted(set(normalized["dataset"])), "left_out": left_out,
               "dropped_datasets": dropped, "excluded_datasets": excluded,
               "curves": points, "earth_observation": earth is not None,
               "n_runs": len(ours), "n_main_runs": int((main.runs["source"] == OURS).sum()),
               "reps": reps, "ci": ci, "seed": seed,
               "legacy_nan_trim": options.legacy_nan_trim, "figure_style": options.figure_style,
               "curve_normalizer": "published"}
    atomic_write_json(out / "summary.json", summary)
    return summary
