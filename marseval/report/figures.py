"""Figures of the report: the Mars-Bench paper's Figures 2-7 from the stats module's frames.

Figures are bare `matplotlib.figure.Figure` objects on an Agg canvas, never pyplot ones: no GUI
backend is picked up on a workstation and no global figure registry can leak memory in a long
Snakemake job. Each `<name>_figure` function builds a figure; `<name>` also saves it as PDF and
PNG. Pass one `order` and one `colours` (from `model_colours`) to every call of a report so that
a model keeps its place and colour in all figures; by default models are coloured in sorted-name
order, which already agrees between figures that show the same models. `ours` (leaderboard
reports) names models drawn in a distinct style beside the others: hatched, outlined violins,
dashed lines with square markers, bold legend labels; by default no model is.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from marseval.atomic import atomic_write_bytes
from marseval.errors import MarsevalError
from marseval.report import stats

Colour = tuple[float, float, float]
DPI = 150
PANEL = (3.0, 2.6)  # inches per panel of a grid
SINGLE = (5.0, 3.6)  # inches of a one-panel figure
AGGREGATED = "aggregated"
MAIN = "default"  # Mars-Bench's partition name of the full training set (fraction 1.0)
OURS_HATCH = "////"  # violins of `ours` models
OURS_LINE = {"linestyle": "--", "marker": "s", "linewidth": 2.0}  # lines of `ours` models
# No creation date in the PDF: identical inputs give identical bytes.
_METADATA: dict[str, dict[str, str | None]] = {"pdf": {"CreationDate": None}, "png": {}}


@dataclass(frozen=True)
class Layout:
    """How panels are laid out: at most `columns` per row (None: a near-square grid), a
    shared y axis or not, and x tick labels as percentages (fractions 0.01..1 as 1%..100%)."""

    columns: int | None = None
    sharey: bool = False
    percent: bool = False


# The Mars-Bench scripts' grids: at most 5 panels a row, one y axis (plot_tools.py and
# plot_classification_partition_results.py); fractions shown as percentages.
PAPER_LAYOUT = Layout(columns=5, sharey=True, percent=True)


def model_colours(models: Sequence[str]) -> dict[str, Colour]:
    """A colour per model, assigned in the given order from seaborn's "colorblind" palette.

    Its 10 colours come first; further models get evenly spaced "husl" hues (distinct, though no
    longer colour-blind safe). A repeated name keeps its first colour.
    """
    names = list(dict.fromkeys(models))
    palette = list(sns.color_palette("colorblind"))
    if len(names) > len(palette):
        palette += list(sns.color_palette("husl", len(names) - len(palette)))
    return {name: tuple(palette[i]) for i, name in enumerate(names)}


def model_order(aggregate_or_models: pd.DataFrame | Iterable[str]) -> list[str]:
    """Models by aggregate IQM, best first (ties by name), given an aggregate frame; otherwise
    (model names, or a frame without `iqm`) the sorted names."""
    if isinstance(aggregate_or_models, pd.DataFrame):
        frame = aggregate_or_models
        if "model" not in frame.columns:
            raise MarsevalError("cannot order models: the frame has no 'model' column")
        if "iqm" not in frame.columns:
            return sorted(set(frame["model"]))
        ranked = frame.sort_values(["iqm", "model"], ascending=[False, True], kind="stable")
        return list(dict.fromkeys(ranked["model"]))
    return sorted(set(aggregate_or_models))


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `<stem>.pdf` and `<stem>.png` (dpi 150) atomically, close `fig`, return the paths."""
    stem = Path(stem)
    paths = []
    try:
        for fmt in ("pdf", "png"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight",
                        metadata=_METADATA[fmt])
            # with_name, not with_suffix: stems such as "fraction_0.5" contain dots
            paths.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"),
                                            buffer.getvalue()))
    finally:
        _close(fig)
    return paths


def _close(fig: Figure) -> None:
    # Only figures made through pyplot are registered there; ours are simply dropped.
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


# --- Figure 2: normalised violins ---------------------------------------------------------


def normalized_violins_figure(runs: pd.DataFrame, aggregate: pd.DataFrame | None,
                              metric_label: str, *, order: Sequence[str] | None = None,
                              colours: Mapping[str, Colour] | None = None,
                              ours: Collection[str] = ()) -> Figure:
    """Mars-Bench Figure 2: per dataset, a violin of each model's normalised scores with its
    seeds as points; last, an "aggregated" panel pooling all datasets, with each model's IQM and
    interval (`aggregate`'s iqm, ci_low, ci_high) marked. Rows without a normalised score (a
    dataset dropped because max == min) are left out, so such a dataset has no panel.
    `metric_label` is the y label as given. Models run by aggregate IQM unless `order` is given.
    """
    _require(runs, ("model", "dataset", "normalized"), "normalised runs")
    _single_setting(runs, "normalised runs")
    data = runs.dropna(subset=["normalized"])
    if data.empty:
        raise MarsevalError("normalised runs: no normalised scores to plot (every dataset "
                            "dropped?)")
    if order is None and aggregate is not None and not aggregate.empty:
        order = model_order(aggregate)
    order, colours = _style(data["model"], order, colours)
    datasets = sorted(data["dataset"].unique())
    fig, axes = _panel_grid(len(datasets) + 1, sharey=True)
    for ax, dataset in zip(axes, datasets, strict=False):
        _violins(ax, data[data["dataset"] == dataset], "normalized", order, colours, ours=ours)
        ax.set_title(_title(dataset))
    _violins(axes[-1], data, "normalized", order, colours, strip=False, ours=ours)
    axes[-1].set_title(AGGREGATED, fontweight="bold")
    marks: list[ErrorbarContainer] = []
    if aggregate is not None and not aggregate.empty:
        marks.append(_mark_iqm(axes[-1], aggregate, order))
    fig.supylabel(metric_label)
    _legend(fig, order, colours, extra=marks, ours=ours)
    return fig


def normalized_violins(runs: pd.DataFrame, aggregate: pd.DataFrame | None, stem: Path,
                       metric_label: str, *, order: Sequence[str] | None = None,
                       colours: Mapping[str, Colour] | None = None) -> list[Path]:
    """`normalized_violins_figure` saved as `<stem>.pdf` and `<stem>.png`."""
    fig = normalized_violins_figure(runs, aggregate, metric_label, order=order, colours=colours)
    return save_figure(fig, stem)


def _mark_iqm(ax: Axes, aggregate: pd.DataFrame, order: list[str]) -> ErrorbarContainer:
    """Each model's aggregate IQM (white diamond) and interval (bar); returns the legend
    handle."""
    _require(aggregate, ("model", "iqm", "ci_low", "ci_high"), "aggregate")
    if aggregate["model"].duplicated().any():
        raise MarsevalError("aggregate: several rows for one model")
    marks = aggregate.set_index("model").reindex(order)
    known = marks["iqm"].notna().to_numpy()
    x = np.arange(len(order))[known]
    iqm = marks["iqm"].to_numpy(float)[known]
    # clip: rounding can leave the IQM a hair outside its interval; errorbar refuses negatives
    below = np.clip(iqm - marks["ci_low"].to_numpy(float)[known], 0, None)
    above = np.clip(marks["ci_high"].to_numpy(float)[known] - iqm, 0, None)
    return ax.errorbar(x, iqm, yerr=[below, above], fmt="D", color="black",
                       markerfacecolor="white", markersize=5, capsize=4, linewidth=1.2, zorder=5,
                       label="aggregate IQM and interval")


# --- Figures 5-7: raw violins --------------------------------------------------------------


def raw_violins_figure(runs: pd.DataFrame, metric_label: str, *,
                       order: Sequence[str] | None = None,
                       colours: Mapping[str, Colour] | None = None,
                       ours: Collection[str] = ()) -> Figure:
    """Mars-Bench Figures 5-7: per dataset, a violin of each model's raw test metric (`score`)
    with the seeds overlaid as points; each panel has its own y range."""
    _require(runs, ("model", "dataset", "score"), "runs")
    _single_setting(runs, "runs")
    data = runs.dropna(subset=["score"])
    if data.empty:
        raise MarsevalError("runs: no scores to plot")
    order, colours = _style(data["model"], order, colours)
    datasets = sorted(data["dataset"].unique())
    fig, axes = _panel_grid(len(datasets), sharey=False)
    for ax, dataset in zip(axes, datasets, strict=True):
        _violins(ax, data[data["dataset"] == dataset], "score", order, colours, ours=ours)
        ax.set_title(_title(dataset))
    fig.supylabel(metric_label)
    _legend(fig, order, colours, ours=ours)
    return fig


def raw_violins(runs: pd.DataFrame, stem: Path, metric_label: str, *,
                order: Sequence[str] | None = None,
                colours: Mapping[str, Colour] | None = None) -> list[Path]:
    """`raw_violins_figure` saved as `<stem>.pdf` and `<stem>.png`."""
    return save_figure(raw_violins_figure(runs, metric_label, order=order, colours=colours), stem)


def _violins(ax: Axes, data: pd.DataFrame, value: str, order: list[str],
             colours: Mapping[str, Colour], strip: bool = True,
             ours: Collection[str] = ()) -> None:
    """Violins (cut at the data, equal widths) at fixed positions: a model missing from this
    panel leaves its slot empty, so positions agree across panels."""
    sns.violinplot(data=data, x="model", y=value, hue="model", order=order, hue_order=order,
                   palette=dict(colours), inner=None, cut=0, density_norm="width",
                   linewidth=0.8, legend=False, ax=ax)
    if ours:
        _mark_our_violins(ax, order, ours)
    if strip:
        _strip(ax, data, value, order)
    ax.set(xlabel="", ylabel="")
    # the shared legend names the models, in this left-to-right order
    ax.tick_params(axis="x", labelbottom=False, length=0)
    ax.grid(axis="y", alpha=0.3)


def _mark_our_violins(ax: Axes, order: list[str], ours: Collection[str]) -> None:
    """Hatch and outline in black the violins of `ours`; a violin is found by its position
    (model i of `order` stands at x = i), not by the order seaborn drew them in."""
    for collection in ax.collections:
        paths = collection.get_paths()
        if not paths:
            continue
        centre = int(round(float(np.mean([path.vertices[:, 0].mean() for path in paths]))))
        if 0 <= centre < len(order) and order[centre] in ours:
            collection.set_hatch(OURS_HATCH)
            collection.set_edgecolor("black")
            collection.set_linewidth(1.4)


def _strip(ax: Axes, data: pd.DataFrame, value: str, order: list[str]) -> None:
    """Each run as a jittered point over its violin. Drawn here rather than by
    seaborn.stripplot, whose jitter comes from numpy's global random state: a fixed local
    generator gives identical files for identical runs."""
    rng = np.random.default_rng(0)
    for position, model in enumerate(order):
        scores = data.loc[data["model"] == model, value].to_numpy(float)
        jitter = rng.uniform(-0.2, 0.2, len(scores))
        ax.scatter(position + jitter, scores, s=6, color="0.15", alpha=0.7, linewidths=0,
                   zorder=3)


# --- Figures 3 and 4: curves ---------------------------------------------------------------


def curves_figure(curve_frame: pd.DataFrame, x: str, xlabel: str, ylabel: str,
                  log_x: bool = False, *, order: Sequence[str] | None = None,
                  colours: Mapping[str, Colour] | None = None,
                  layout: Layout = Layout(), ours: Collection[str] = ()) -> Figure:
    """Training-size (Figure 3, `log_x` for fractions 0.01..1) or few-shot curves: a line per
    model through its IQM at each `x`, with the bootstrap interval (ci_low..ci_high) shaded.
    One panel, or one per dataset when the frame has a `dataset` column. An `x` of "default"
    counts as the full training set, 1.0."""
    return _curves(curve_frame, x, xlabel, ylabel, log_x, order, colours, layout,
                   what="curve frame", columns=("iqm", "ci_low", "ci_high"), ours=ours)


def curves(curve_frame: pd.DataFrame, x: str, stem: Path, xlabel: str, ylabel: str,
           log_x: bool = False, *, order: Sequence[str] | None = None,
           colours: Mapping[str, Colour] | None = None) -> list[Path]:
    """`curves_figure` saved as `<stem>.pdf` and `<stem>.png`."""
    fig = curves_figure(curve_frame, x, xlabel, ylabel, log_x, order=order, colours=colours)
    return save_figure(fig, stem)


def spread_figure(spread: pd.DataFrame, x: str, xlabel: str, ylabel: str, log_x: bool = True,
                  *, order: Sequence[str] | None = None,
                  colours: Mapping[str, Colour] | None = None,
                  layout: Layout = Layout(), ours: Collection[str] = ()) -> Figure:
    """Per dataset (a panel each), each model's mean at each `x` with a band of +-1 standard
    deviation, from `stats.spread`'s frame (`dataset, model, <x>, mean, std`); a single run
    (std NaN) has no band. Mars-Bench's Figure 4 and its per-dataset partition and few-shot
    plots (plot_*_results.py), which show no bootstrap despite their captions."""
    _require(spread, ("dataset", "model", x, "mean", "std"), "spread frame")
    std = spread["std"].fillna(0.0)
    band = spread.assign(low=spread["mean"] - std, high=spread["mean"] + std)
    return _curves(band, x, xlabel, ylabel, log_x, order, colours, layout,
                   what="spread frame", columns=("mean", "low", "high"), ours=ours)


def earth_comparison_figure(runs: pd.DataFrame, metric_label: str = "test metric", *,
                            order: Sequence[str] | None = None,
                            colours: Mapping[str, Colour] | None = None,
                            ours: Collection[str] = ()) -> Figure:
    """Mars-Bench Figure 4 (Earth-observation models vs ViT-L/16) on the raw metric: per
    dataset, each model's mean score over its runs at each training fraction (log x), with a
    band of +-1 standard deviation (ddof 1) over those runs; a single run has no band. The
    fraction is the `fraction` column when present, else `partition` ("default" = 1.0). Every
    row counts as a run: earth_data.csv repeats seed labels (Prithvi has 14 rows labelled
    seed 42). The paper style normalises it first (`spread_figure` of `stats.spread`)."""
    _require(runs, ("model", "dataset", "score"), "Earth-model runs")
    if "fraction" in runs.columns:
        fraction = _numeric(runs["fraction"], "fraction")
    elif "partition" in runs.columns:
        fraction = _numeric(runs["partition"], "partition")
    else:
        raise MarsevalError("Earth-model runs lack the column fraction (or partition)")
    return spread_figure(stats.spread(runs.assign(fraction=fraction), "fraction", "score"),
                         "fraction", "fraction of the training set",
                         f"{metric_label} (mean ± 1 std)", True, order=order, colours=colours,
                         ours=ours)


def earth_comparison(runs: pd.DataFrame, stem: Path, metric_label: str = "test metric", *,
                     order: Sequence[str] | None = None,
                     colours: Mapping[str, Colour] | None = None) -> list[Path]:
    """`earth_comparison_figure` saved as `<stem>.pdf` and `<stem>.png`."""
    fig = earth_comparison_figure(runs, metric_label, order=order, colours=colours)
    return save_figure(fig, stem)


def _curves(frame: pd.DataFrame, x: str, xlabel: str, ylabel: str, log_x: bool,
            order: Sequence[str] | None, colours: Mapping[str, Colour] | None, layout: Layout,
            *, what: str, columns: tuple[str, str, str], ours: Collection[str] = ()) -> Figure:
    """Lines through `columns[0]` with `columns[1]..columns[2]` shaded, per model and panel."""
    _require(frame, ("model", x, *columns), what)
    frame = frame.assign(**{x: _numeric(frame[x], x)}).dropna(subset=[columns[0]])
    keys = ["model", x] + (["dataset"] if "dataset" in frame.columns else [])
    if frame.duplicated(keys).any():
        raise MarsevalError(f"{what}: several rows for one {' / '.join(keys)}")
    order, colours = _style(frame["model"], order, colours)
    panels = sorted(frame["dataset"].unique()) if "dataset" in frame.columns else [None]
    fig, axes = _panel_grid(len(panels), sharey=layout.sharey,
                            legend_width=_legend_width(order), columns=layout.columns)
    for ax, panel in zip(axes, panels, strict=True):
        sub = frame if panel is None else frame[frame["dataset"] == panel]
        for model in order:
            _line(ax, sub[sub["model"] == model].sort_values(x), x, columns, colours[model],
                  mine=model in ours)
        _x_ticks(ax, sorted(sub[x].unique()), log_x, layout.percent)
        ax.grid(alpha=0.3)
        if panel is not None:
            ax.set_title(_title(panel))
    fig.supxlabel(xlabel)
    fig.supylabel(ylabel)
    _legend(fig, order, colours, lines=True, ours=ours)
    return fig


def _line(ax: Axes, line: pd.DataFrame, x: str, columns: tuple[str, str, str],
          colour: Colour, mine: bool = False) -> None:
    if line.empty:
        return
    centre, low, high = columns
    if mine:  # in front of the others, dashed, square markers, its band hatched
        ax.plot(line[x], line[centre], markersize=4.5, color=colour, zorder=4, **OURS_LINE)
        ax.fill_between(line[x], line[low], line[high], facecolor=colour, alpha=0.2,
                        edgecolor=colour, hatch=OURS_HATCH, linewidth=0, zorder=3)
        return
    ax.plot(line[x], line[centre], marker="o", markersize=3.5, linewidth=1.5, color=colour)
    ax.fill_between(line[x], line[low], line[high], color=colour, alpha=0.2, linewidth=0)


def _x_ticks(ax: Axes, values: list[float], log_x: bool, percent: bool = False) -> None:
    """Ticks at the sampled x values only (fractions, shots), labelled as written (or as
    percentages); on a log axis a value closer than 0.15 decades to the last labelled one
    (0.25 after 0.2) keeps its tick but no label, so labels never overlap."""
    labels = [f"{v:.0%}" if percent else f"{v:g}" for v in values]
    if log_x:
        if min(values) <= 0:
            raise MarsevalError(f"a log x axis needs positive values, got {min(values):g}")
        ax.set_xscale("log")
        last = -math.inf
        for i, value in enumerate(values):
            if math.log10(value) - last < 0.15:
                labels[i] = ""
            else:
                last = math.log10(value)
    ax.set_xticks(values, labels)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelsize=8)


# --- shared helpers --------------------------------------------------------------------------


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MarsevalError(f"{what} lack the column(s) {', '.join(missing)}")
    if frame.empty:
        raise MarsevalError(f"{what}: no rows to plot")


def _single_setting(runs: pd.DataFrame, what: str) -> None:
    """Violins compare models in one setting; mixed partitions would pool unlike runs."""
    for column in ("partition", "few_shot"):
        if column in runs.columns and runs[column].nunique(dropna=False) > 1:
            values = ", ".join(sorted(map(str, runs[column].unique())))
            raise MarsevalError(f"{what} mix several {column} values ({values}); pass the runs "
                                f"of one setting")


def _numeric(values: pd.Series, name: str) -> pd.Series:
    as_text = values.astype("string")
    numbers = pd.to_numeric(as_text.mask(as_text == MAIN, "1.0"), errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise MarsevalError(f"column {name} has non-numeric values: "
                            f"{', '.join(sorted(set(map(str, values[bad]))))}")
    return numbers.astype(float)


def _style(models: Iterable[str], order: Sequence[str] | None,
           colours: Mapping[str, Colour] | None) -> tuple[list[str], Mapping[str, Colour]]:
    """The models of this figure in plotting order, and their colours."""
    present = set(models)
    ranked = [m for m in dict.fromkeys(order) if m in present] if order is not None else []
    # models the given order lacks still appear, after it, rather than vanish silently
    ranked += sorted(present - set(ranked))
    colours = colours if colours is not None else model_colours(sorted(present))
    uncoloured = [m for m in ranked if m not in colours]
    if uncoloured:
        raise MarsevalError(f"no colour given for model(s) {', '.join(uncoloured)}")
    return ranked, colours


def _panel_grid(n: int, sharey: bool, legend_width: float = 0.0,
                columns: int | None = None) -> tuple[Figure, list[Axes]]:
    """A grid of `n` panels, wider by `legend_width` inches for a legend at the right: at most
    `columns` a row, or near-square (3 x 3 for Figure 2's 8 datasets + aggregate)."""
    ncols = math.ceil(math.sqrt(n)) if columns is None else min(columns, n)
    nrows = math.ceil(n / ncols)
    width, height = SINGLE if n == 1 else (PANEL[0] * ncols, PANEL[1] * nrows)
    fig = Figure(figsize=(width + legend_width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _legend(fig: Figure, order: list[str], colours: Mapping[str, Colour],
            lines: bool = False, extra: Sequence[ErrorbarContainer] = (),
            ours: Collection[str] = ()) -> None:
    """One legend for all panels, in plotting order: lines at the right, violin colours below
    (left to right as the violins stand); `ours` in their own style, labels in bold."""
    if lines:
        handles = [Line2D([], [], color=colours[m], markersize=4, label=m, **OURS_LINE)
                   if m in ours else
                   Line2D([], [], color=colours[m], marker="o", markersize=4, label=m)
                   for m in order]
        legend = fig.legend(handles=handles, loc="outside right upper", frameon=False,
                            fontsize=9)
    else:
        handles = [Patch(facecolor=colours[m], edgecolor="black", hatch=OURS_HATCH, label=m)
                   if m in ours else Patch(facecolor=colours[m], edgecolor="0.25", label=m)
                   for m in order]
        handles += extra
        legend = fig.legend(handles=handles, loc="outside lower center",
                            ncols=min(len(handles), 6), frameon=False, fontsize=9)
    for text in legend.get_texts():
        if text.get_text() in ours:
            text.set_fontweight("bold")


def _legend_width(order: list[str]) -> float:
    # about 0.07 inch per character of the longest name at fontsize 9, plus the line sample
    return 0.6 + 0.07 * max(map(len, order))


def _title(dataset: str) -> str:
    return dataset.removeprefix("mb-")
