"""Figures and tables of the report, drawn from the Mars-Bench paper's published runs.

The frames the stats module would hand over are built here by hand (min/max normalisation,
trimmed-mean IQM, a small percentile bootstrap), so these tests do not depend on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean

from marseval.errors import MarsevalError
from marseval.report import figures, tables

REPO = Path(__file__).resolve().parents[1]
REF = REPO / "resources/reference/marsbench-paper-runs"
RENAME = {"test metric": "score", "partition name": "partition"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DROPPED = "mb-change_cls_ctx"  # all 35 runs score 0.7111: max == min


def _read(name: str) -> pd.DataFrame:
    # partition names as written ("default", "0.01"), as the stats module gives them
    frame = pd.read_csv(REF / name, dtype={"partition name": str}).rename(columns=RENAME)
    if "few_shot" in frame.columns:
        frame["partition"] = "few_shot"
    frame["few_shot"] = frame.get("few_shot", pd.Series(pd.NA, index=frame.index))
    return frame.astype({"few_shot": "Int64"})


def _normalize(runs: pd.DataFrame, main: pd.DataFrame) -> pd.DataFrame:
    bounds = main.groupby("dataset")["score"].agg(["min", "max"])
    bounds = bounds[bounds["max"] > bounds["min"]]
    low = runs["dataset"].map(bounds["min"])
    high = runs["dataset"].map(bounds["max"])
    return runs.assign(normalized=(runs["score"] - low) / (high - low))


def _iqm(values: pd.Series) -> pd.Series:
    """IQM with a 95% percentile-bootstrap interval (100 resamples: enough for a plot)."""
    values = values.to_numpy(float)
    rng = np.random.default_rng(0)
    boot = [trim_mean(rng.choice(values, len(values)), 0.25) for _ in range(100)]
    return pd.Series({"iqm": trim_mean(values, 0.25), "ci_low": np.quantile(boot, 0.025),
                      "ci_high": np.quantile(boot, 0.975)})


def _curve(runs: pd.DataFrame, x: str) -> pd.DataFrame:
    scored = runs.dropna(subset=["normalized"])
    curve = scored.groupby(["model", x])["normalized"].apply(_iqm).unstack().reset_index()
    counts = scored.groupby(["model", x])["dataset"].nunique().rename("n_datasets")
    return curve.merge(counts.reset_index(), on=["model", x])


@pytest.fixture(scope="module")
def main() -> pd.DataFrame:
    runs = _read("classification_filtered.csv")
    return _normalize(runs, runs)


@pytest.fixture(scope="module")
def aggregate(main: pd.DataFrame) -> pd.DataFrame:
    scored = main.dropna(subset=["normalized"])
    frame = scored.groupby("model")["normalized"].apply(_iqm).unstack().reset_index()
    return frame.assign(n_datasets=scored["dataset"].nunique())


@pytest.fixture(scope="module")
def per_dataset(main: pd.DataFrame) -> pd.DataFrame:
    groups = main.groupby(["model", "dataset"])["score"]
    frame = groups.apply(_iqm).unstack().reset_index()
    stats = groups.agg(["mean", "std", "size"]).rename(columns={"size": "n_runs"})
    return frame.merge(stats.reset_index(), on=["model", "dataset"])


@pytest.fixture(scope="module")
def training_curve(main: pd.DataFrame) -> pd.DataFrame:
    sweep = pd.concat([main.drop(columns="normalized"),
                       _read("classification_partition_filtered.csv")], ignore_index=True)
    sweep["fraction"] = [1.0 if p == "default" else float(p) for p in sweep["partition"]]
    return _curve(_normalize(sweep, main), "fraction")


@pytest.fixture(scope="module")
def few_shot_curve(main: pd.DataFrame) -> pd.DataFrame:
    return _curve(_normalize(_read("classification_few_shot_filtered.csv"), main), "few_shot")


@pytest.fixture(scope="module")
def earth() -> pd.DataFrame:
    return _read("earth_data.csv")


def _check_outputs(paths: list[Path], stem: Path, suffixes: tuple[str, ...],
                   min_size: int = 1000) -> None:
    assert paths == [stem.with_name(f"{stem.name}.{suffix}") for suffix in suffixes]
    for path in paths:
        assert path.stat().st_size > min_size, path


def _nothing_temporary(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or
                p.name.endswith(".tmp")]


# --- figures ---------------------------------------------------------------------------------


def test_every_figure_writes_a_pdf_and_a_png(tmp_path: Path, main: pd.DataFrame,
                                             aggregate: pd.DataFrame,
                                             training_curve: pd.DataFrame,
                                             few_shot_curve: pd.DataFrame,
                                             earth: pd.DataFrame) -> None:
    out = tmp_path / "figures"
    colours = figures.model_colours(figures.model_order(aggregate))
    written = {
        "normalized_violins": figures.normalized_violins(
            main, aggregate, out / "normalized_violins", "normalised F1", colours=colours),
        "raw_violins": figures.raw_violins(main, out / "raw_violins", "F1", colours=colours),
        "training_size": figures.curves(training_curve, "fraction", out / "training_size",
                                        "fraction of the training set", "IQM", log_x=True,
                                        colours=colours),
        "few_shot": figures.curves(few_shot_curve, "few_shot", out / "few_shot",
                                   "samples per class", "IQM", colours=colours),
        # a dot in the stem must not be taken for a suffix
        "earth_v1.0": figures.earth_comparison(earth, out / "earth_v1.0"),
    }
    for name, paths in written.items():
        _check_outputs(paths, out / name, ("pdf", "png"))
        pdf, png = (p.read_bytes() for p in paths)
        assert pdf.startswith(b"%PDF") and png.startswith(PNG_MAGIC)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.{suffix}" for name in written for suffix in ("pdf", "png"))
    _nothing_temporary(out)


def test_normalized_violins_have_a_panel_per_kept_dataset_and_the_aggregate(
        main: pd.DataFrame, aggregate: pd.DataFrame) -> None:
    fig = figures.normalized_violins_figure(main, aggregate, "normalised F1")
    titles = [ax.get_title() for ax in fig.axes]
    kept = sorted(d.removeprefix("mb-") for d in main["dataset"].unique() if d != DROPPED)
    assert titles == [*kept, "aggregated"]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    # best aggregate IQM first (the paper: SwinV2-B 0.8983 ... SqueezeNet1.1 0.3593)
    assert legend[:5] == ["SwinV2-B", "ViT-L/16", "ResNet101", "InceptionV3", "SqueezeNet1.1"]


def test_curves_draw_each_model_in_its_colour(training_curve: pd.DataFrame) -> None:
    colours = figures.model_colours(["ViT-L/16", "SwinV2-B", "ResNet101", "InceptionV3",
                                     "SqueezeNet1.1"])
    fig = figures.curves_figure(training_curve, "fraction", "fraction", "IQM", log_x=True,
                                colours=colours)
    (ax,) = fig.axes
    assert [tuple(line.get_color()) for line in ax.get_lines()] == [
        colours[m] for m in sorted(colours)]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "0.01", "0.02", "0.05", "0.1", "0.2", "", "0.5", "1"]  # 0.25 too close to 0.2


def test_earth_comparison_has_a_panel_per_dataset(earth: pd.DataFrame) -> None:
    fig = figures.earth_comparison_figure(earth)
    assert [ax.get_title() for ax in fig.axes] == sorted(
        d.removeprefix("mb-") for d in earth["dataset"].unique())
    # the mean line of a model at fraction 1.0 is the mean of its runs there
    runs = earth[(earth["dataset"] == "mb-frost_cls") & (earth["partition"].astype(float) == 1)]
    colours = figures.model_colours(sorted(earth["model"].unique()))
    line = next(line for line in fig.axes[2].get_lines()
                if tuple(line.get_color()) == colours["ViT-L/16"])
    expected = runs.loc[runs["model"] == "ViT-L/16", "score"].mean()
    assert line.get_ydata()[-1] == pytest.approx(expected)


def test_figures_are_byte_for_byte_reproducible(tmp_path: Path, main: pd.DataFrame) -> None:
    few = main[main["dataset"].isin(["mb-frost_cls", "mb-domars16k"])]
    first = figures.raw_violins(few, tmp_path / "a", "F1")
    second = figures.raw_violins(few, tmp_path / "b", "F1")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_model_colours_are_stable_and_distinct() -> None:
    models = ["SwinV2-B", "ViT-L/16", "ResNet101", "InceptionV3", "SqueezeNet1.1"]
    assert figures.model_colours(models) == figures.model_colours(models)
    assert len(set(figures.model_colours(models).values())) == len(models)
    many = [f"model{i}" for i in range(14)]  # beyond the 10 colour-blind colours
    assert len(set(figures.model_colours(many).values())) == 14


def test_model_order(aggregate: pd.DataFrame) -> None:
    assert figures.model_order(aggregate)[0] == "SwinV2-B"
    assert figures.model_order(["b", "a", "b"]) == ["a", "b"]


def test_bad_frames_are_reported(main: pd.DataFrame, training_curve: pd.DataFrame) -> None:
    with pytest.raises(MarsevalError, match="normalized"):
        figures.normalized_violins_figure(main.drop(columns="normalized"), None, "x")
    mixed = pd.concat([main, main.assign(partition="0.5")])
    with pytest.raises(MarsevalError, match="partition"):
        figures.raw_violins_figure(mixed, "F1")
    with pytest.raises(MarsevalError, match="no rows"):
        figures.raw_violins_figure(main.iloc[:0], "F1")
    with pytest.raises(MarsevalError, match="positive"):
        figures.curves_figure(training_curve.assign(fraction=0.0).drop_duplicates("model"),
                              "fraction", "x", "y", log_x=True)
    with pytest.raises(MarsevalError, match="no colour"):
        figures.curves_figure(training_curve, "fraction", "x", "y", colours={"a": (0, 0, 0)})


# --- tables ----------------------------------------------------------------------------------


def test_results_tables_in_three_formats(tmp_path: Path, per_dataset: pd.DataFrame) -> None:
    # one model without runs on one dataset
    summary = per_dataset[~((per_dataset["model"] == "ResNet101") &
                            (per_dataset["dataset"] == "mb-frost_cls"))]
    made = tables.results_tables(summary)
    assert list(made) == ["per_dataset_mean_std", "per_dataset_iqm"]
    for name, table in made.items():
        assert table.shape == (9, 5) and table.index.name == "dataset"
        stem = tmp_path / name
        paths = tables.write_table(table, stem, caption="classification: F1 per dataset")
        _check_outputs(paths, stem, ("csv", "md", "tex"), min_size=500)
        back = pd.read_csv(paths[0], index_col="dataset", keep_default_na=False)
        assert back.to_numpy().tolist() == table.to_numpy().tolist()
        assert list(back.columns) == list(table.columns)
        assert table.loc["mb-frost_cls", "ResNet101"] == tables.MISSING
        markdown = paths[1].read_text()
        assert markdown.splitlines()[0].split("|")[1].strip() == "dataset"
        latex = paths[2].read_text()
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            assert latex.count(rule) == 1
        assert r"\caption{classification: F1 per dataset}" in latex
        assert r"mb-surface\_cls" in latex and "±" not in latex
        assert (r"$\pm$" in latex) == (name == "per_dataset_mean_std")
        # the best model of each of the 8 datasets where models differ; no winner where all tie
        assert latex.count(r"\bfseries") == len(table.attrs["bold_cells"]) >= 8
        assert not any(dataset == DROPPED for dataset, _ in table.attrs["bold_cells"])
    _nothing_temporary(tmp_path)
    assert "±" in (tmp_path / "per_dataset_mean_std.md").read_text()
    cell = made["per_dataset_iqm"].loc["mb-domars16k", "SwinV2-B"]
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", cell)


def test_best_cells_compare_what_is_shown(per_dataset: pd.DataFrame) -> None:
    best = tables.best_cells(per_dataset, "mean")
    assert best.loc["mb-domars16k"].tolist() == [False, False, False, False, True]
    assert not best.loc[DROPPED].any()
    worst = tables.best_cells(per_dataset, "mean", higher_is_better=False)
    assert worst.loc["mb-domars16k", "InceptionV3"]


def test_a_plain_numeric_table_round_trips(tmp_path: Path, aggregate: pd.DataFrame) -> None:
    paths = tables.write_table(aggregate, tmp_path / "aggregate", caption="50% of x_y & z")
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), aggregate, check_dtype=False)
    assert paths[1].read_text().splitlines()[0].split("|")[1].strip() == "model"
    latex = paths[2].read_text()
    assert r"\caption{50\% of x\_y \& z}" in latex and r"ci\_low" in latex
    assert r"\bfseries" not in latex


def test_an_empty_table_is_still_written(tmp_path: Path) -> None:
    empty = pd.DataFrame(columns=["model", "iqm", "ci_low", "ci_high", "n_datasets"])
    paths = tables.write_table(empty, tmp_path / "aggregate")
    assert paths[0].read_text() == "model,iqm,ci_low,ci_high,n_datasets\n"
    assert r"\toprule" in paths[2].read_text()


def test_duplicate_rows_are_reported(per_dataset: pd.DataFrame) -> None:
    with pytest.raises(MarsevalError, match="several rows"):
        tables.results_table(pd.concat([per_dataset, per_dataset.iloc[:1]]))
