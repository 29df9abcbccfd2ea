"""The Mars-Bench paper's violin figure in its own style (report.figure_style: paper).

After the reference's `benchmark/plot_tools.py::plot_per_dataset` as its
`plot_classification_results.py` calls it: one panel per dataset, at most 5 a row, the
"aggregated" panel first on a light blue (#cff6fc) ground; in each, seaborn violins of every
model's bootstrap IQMs of normalised scores (`stats.bootstrap_distributions`), hue = model,
widths proportional to the number of samples (density_norm="count"), a box inside, no outline;
one y axis with two decimals; one legend. The curves of the paper style are
`figures.spread_figure` with `figures.PAPER_LAYOUT`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from marseval.errors import MarsevalError
from marseval.report import figures
from marseval.report.stats import AGGREGATED

AGGREGATED_FACE = "#cff6fc"


def panels(distributions: pd.DataFrame) -> list[str]:
    """Panel order: "aggregated" first (when present), then the datasets sorted."""
    names = set(distributions["dataset"])
    return ([AGGREGATED] if AGGREGATED in names else []) + sorted(names - {AGGREGATED})


def bootstrap_violins_figure(distributions: pd.DataFrame, metric_label: str, *,
                             order: Sequence[str] | None = None,
                             colours: Mapping[str, figures.Colour] | None = None) -> Figure:
    """Mars-Bench's Figure 2 as its scripts draw it, from `stats.bootstrap_distributions`'s
    frame (`model, dataset, iqm`). Models in `order` (default: sorted names)."""
    figures._require(distributions, ("model", "dataset", "iqm"), "bootstrap distributions")
    data = distributions.dropna(subset=["iqm"])
    if data.empty:
        raise MarsevalError("bootstrap distributions: no IQM to plot")
    order, colours = figures._style(data["model"], order, colours)
    names = panels(data)
    fig, axes = figures._panel_grid(len(names), sharey=True,
                                    columns=figures.PAPER_LAYOUT.columns)
    for ax, name in zip(axes, names, strict=True):
        sns.violinplot(data=data[data["dataset"] == name], x="dataset", y="iqm", hue="model",
                       hue_order=order, palette=dict(colours), linewidth=0.5, saturation=1,
                       density_norm="count", inner="box", legend=False, ax=ax)
        for collection in ax.collections:  # plot_tools.remove_violin_outline
            collection.set_edgecolor("none")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.tick_params(axis="x", labelbottom=False, length=0)
        ax.grid(axis="y", alpha=0.5)
        ax.set(xlabel="", ylabel="")
        if name == AGGREGATED:
            ax.set_facecolor(AGGREGATED_FACE)
            ax.set_title(AGGREGATED, fontweight="bold")
        else:
            ax.set_title(figures._title(name))
    fig.supylabel(f"bootstrap IQM of {metric_label}")
    figures._legend(fig, order, colours)
    return fig


def bootstrap_violins(distributions: pd.DataFrame, stem: Path, metric_label: str, *,
                      order: Sequence[str] | None = None,
                      colours: Mapping[str, figures.Colour] | None = None) -> list[Path]:
    """`bootstrap_violins_figure` saved as `<stem>.pdf` and `<stem>.png`."""
    fig = bootstrap_violins_figure(distributions, metric_label, order=order, colours=colours)
    return figures.save_figure(fig, stem)
