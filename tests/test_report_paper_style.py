"""Reporting like the paper (report.exclude_datasets, legacy_nan_trim, figure_style,
curve_normalizer): the published aggregates, the reference's refitted curve normalisers and
per-dataset statistics, and the paper-style figures' structure, each against an independent
oracle or the numbers Mars-Bench published."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from marseval import cli
from marseval.errors import MarsevalError
from marseval.report import figures, paper_style, run, stats
from marseval.report.options import ReportOptions, option_flags

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "resources/reference/marsbench-paper-runs"
MAIN_RUNS = PAPER / "classification_filtered.csv"
CLS_RUNS = [MAIN_RUNS, PAPER / "classification_partition_filtered.csv",
            PAPER / "classification_few_shot_filtered.csv"]
CTX = "mb-change_cls_ctx"  # all 35 published runs score 0.7111: max == min
# Aggregated IQM of normalised F1 (docs: marsbench-protocol.md 4.3). The published figure's
# (ctx kept as NaN, trimmed as +inf by an older SciPy) and the paper text's (ctx left out).
LEGACY_IQM = {"SwinV2-B": 0.9142, "ViT-L/16": 0.8845, "ResNet101": 0.5623,
              "InceptionV3": 0.4418, "SqueezeNet1.1": 0.4078}
TEXT_IQM = {"SwinV2-B": 0.8983, "ViT-L/16": 0.8560, "ResNet101": 0.5074,
            "InceptionV3": 0.3904, "SqueezeNet1.1": 0.3593}
# Mars-Bench at d1b1a9b0 (benchmark/data/*_output/): the partition script's normaliser
# (refitted over the whole partition table) and rows of its partition_stats.csv files.
PARTITION_NORMALIZER = {"mb-atmospheric_dust_cls_edr": (0.7107309103012085, 0.9583191871643066),
                        CTX: (0.0666666701436042, 1.0)}
PUBLISHED_SPREAD = [  # curve, dataset, model, x, mean, std of normalised F1
    ("training_size", "mb-atmospheric_dust_cls_edr", "InceptionV3", 0.01,
     0.9243794746440248, 0.010399654985866378),
    ("few_shot", "mb-atmospheric_dust_cls_edr", "InceptionV3", 1,
     0.1859448049007177, 0.11965358630341646),
    ("earth_observation", "mb-atmospheric_dust_cls_edr", "CROMA_ViT-L/16", 0.01,
     0.11827718019379499, 0.18748392987031112)]


# ----------------------------------------------------------------------------- the oracle


def oracle_iqm(keep_ctx: bool) -> dict[str, float]:
    """Per model: the published normaliser applied by hand, NaN (0 / 0) replaced by +inf,
    sorted, floor(n / 4) cut from each end, the rest averaged."""
    runs = pd.read_csv(MAIN_RUNS)
    if not keep_ctx:
        runs = runs[runs["dataset"] != CTX]
    bounds = json.loads((PAPER / "classification_normalizer.json").read_text())
    low = runs["dataset"].map(lambda d: bounds[d][0]).to_numpy()
    high = runs["dataset"].map(lambda d: bounds[d][1]).to_numpy()
    with np.errstate(invalid="ignore"):
        normalised = (runs["test metric"].to_numpy() - low) / (high - low)
    result = {}
    for model in runs["model"].unique():
        values = np.sort(np.where(np.isnan(normalised), np.inf,
                                  normalised)[(runs["model"] == model).to_numpy()])
        cut = len(values) // 4
        result[model] = float(values[cut:len(values) - cut].mean())
    return result


def test_the_oracle_gives_the_published_numbers() -> None:
    assert {m: round(v, 4) for m, v in oracle_iqm(keep_ctx=True).items()} == LEGACY_IQM
    assert {m: round(v, 4) for m, v in oracle_iqm(keep_ctx=False).items()} == TEXT_IQM


def test_iqm_nan_last_by_hand() -> None:
    # NaN sorts last: [1, 2, 3, inf] loses 1 and inf
    assert stats.iqm_nan_last([1.0, np.nan, 2.0, 3.0]) == pytest.approx(2.5)
    assert np.isnan(stats.iqm_nan_last([np.nan, np.nan, 1.0, 2.0]))  # one left in the middle
    assert stats.iqm_nan_last([10, 1, 3, 2, 100, 4, 6, 5]) == stats.iqm([10, 1, 3, 2, 100, 4,
                                                                          6, 5])
    rows = stats.iqm_nan_last(np.array([[1.0, np.nan, 2.0, 3.0], [1, 1, 2, 2]]), axis=1)
    np.testing.assert_allclose(rows, [2.5, 1.5])


def test_legacy_nan_trim_reproduces_the_published_figure() -> None:
    runs = stats.read_runs(MAIN_RUNS)
    normaliser = stats.read_normalizer(PAPER / "classification_normalizer.json")
    pooled, constant = stats.normalize(runs, normaliser, keep_constant=True)
    assert constant == [CTX] and pooled["normalized"].isna().sum() == 35
    with pytest.raises(MarsevalError, match="non-finite"):  # only nan_last accepts NaN
        stats.aggregate(pooled, reps=10)
    table = stats.aggregate(pooled, reps=50, nan_last=True).set_index("model")
    expected = oracle_iqm(keep_ctx=True)
    for model, value in expected.items():
        assert table.loc[model, "iqm"] == pytest.approx(value, abs=1e-12)
        assert round(table.loc[model, "iqm"], 4) == LEGACY_IQM[model]
        assert table.loc[model, "ci_low"] < value < table.loc[model, "ci_high"]
    assert set(table["n_datasets"]) == {9}


def test_bootstrap_samples_are_the_intervals_samples() -> None:
    groups = [np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.4])]
    samples = stats.bootstrap_samples(groups, stats.iqm, reps=200, seed=3)
    _, low, high = stats.stratified_bootstrap(groups, stats.iqm, reps=200, seed=3)
    assert (low, high) == tuple(np.percentile(samples, [2.5, 97.5]))


# ----------------------------------------------------------------------------- whole reports


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published classification runs reported as config/config.yaml asks."""
    out = tmp_path_factory.mktemp("paper") / "classification"
    options = ReportOptions(exclude_datasets=(CTX,), figure_style="paper",
                            curve_normalizer="refit")
    run.run_report(CLS_RUNS, "classification", out, reps=20, earth_path=PAPER / "earth_data.csv",
                   options=options)
    return out


def test_excluded_dataset_is_left_out_and_said(paper_report: Path) -> None:
    aggregate = pd.read_csv(paper_report / "aggregate.csv").set_index("model")
    expected = oracle_iqm(keep_ctx=False)
    assert aggregate["iqm"].to_dict() == pytest.approx(expected, abs=1e-12)
    assert aggregate["iqm"].round(4).to_dict() == TEXT_IQM
    assert set(aggregate["n_datasets"]) == {8}
    summary = json.loads((paper_report / "summary.json").read_text())
    assert summary["excluded_datasets"] == [CTX] and summary["dropped_datasets"] == []
    assert CTX not in summary["datasets"] and len(summary["datasets"]) == 8
    assert summary["figure_style"] == "paper" and summary["curve_normalizer"] == "refit"
    assert CTX not in json.loads((paper_report / "normalizer.json").read_text())
    for table in ("per_dataset.csv", "tables/training_size.csv", "tables/few_shot.csv"):
        assert CTX not in (paper_report / table).read_text()
    assert f"left out: {CTX}".replace("_", r"\_") in (
        paper_report / "tables/aggregate.tex").read_text()


def test_paper_report_writes_every_figure_and_the_reference_statistics(
        paper_report: Path) -> None:
    names = ("normalized_violins", "raw_violins", "training_size", "few_shot",
             "earth_observation")
    assert sorted(p.name for p in (paper_report / "figures").iterdir()) == sorted(
        f"{n}.{s}" for n in names for s in ("pdf", "png"))
    for curve, dataset, model, x, mean, std in PUBLISHED_SPREAD:
        frame = pd.read_csv(paper_report / f"tables/{curve}_per_dataset.csv")
        column = "few_shot" if curve == "few_shot" else "fraction"
        row = frame[(frame["dataset"] == dataset) & (frame["model"] == model)
                    & (frame[column] == x)].iloc[0]
        assert (row["mean"], row["std"], row["n_runs"]) == (
            pytest.approx(mean, abs=1e-15), pytest.approx(std, abs=1e-15), 7)


def test_legacy_report_gives_the_published_figures_aggregate(tmp_path: Path) -> None:
    summary = run.run_report([MAIN_RUNS], "classification", tmp_path, reps=20,
                             options=ReportOptions(legacy_nan_trim=True))
    aggregate = pd.read_csv(tmp_path / "aggregate.csv").set_index("model")
    assert aggregate["iqm"].to_dict() == pytest.approx(oracle_iqm(keep_ctx=True), abs=1e-12)
    assert summary["dropped_datasets"] == [CTX] and summary["legacy_nan_trim"] is True
    assert summary["excluded_datasets"] == []


def test_refit_curve_normaliser_is_the_partition_scripts() -> None:
    runs = run.load(CLS_RUNS)
    main_normaliser, _ = stats.fit_normalizer(runs[runs["partition"] == "default"])
    sweep = run.curve_runs(runs)["training_size"]
    refitted, constant = stats.fit_normalizer(sweep)
    for name, bounds in PARTITION_NORMALIZER.items():
        assert refitted[name] == pytest.approx(bounds, abs=1e-16)
    assert constant == []  # ctx varies across partitions
    refit = run.make_curves(runs, None, main_normaliser, ReportOptions(curve_normalizer="refit"),
                            reps=10, ci=0.95, seed=0)
    main = run.make_curves(runs, None, main_normaliser, ReportOptions(), reps=10, ci=0.95, seed=0)
    _, dataset, model, x, mean, _ = PUBLISHED_SPREAD[0]
    raw = sweep[(sweep["dataset"] == dataset) & (sweep["model"] == model)
                & (sweep["fraction"] == x)]["score"].mean()
    low, high = main_normaliser[dataset]
    for curves, expected in ((refit, mean), (main, (raw - low) / (high - low))):
        frame = curves.spread["training_size"]
        value = frame[(frame["dataset"] == dataset) & (frame["model"] == model)
                      & (frame["fraction"] == x)]["mean"].item()
        assert value == pytest.approx(expected, abs=1e-12)
    assert not np.isclose((raw - low) / (high - low), mean)


# ----------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def distributions() -> pd.DataFrame:
    runs = stats.read_runs(MAIN_RUNS)
    pooled, _ = stats.normalize(runs, stats.fit_normalizer(runs)[0], keep_constant=True)
    return stats.bootstrap_distributions(pooled, reps=30, nan_last=True)


def test_bootstrap_distributions_are_the_aggregates_samples(distributions: pd.DataFrame
                                                            ) -> None:
    assert CTX not in set(distributions["dataset"])  # NaN: no distribution of its own
    assert (distributions.groupby(["model", "dataset"]).size() == 30).all()
    runs = stats.read_runs(MAIN_RUNS)
    pooled, _ = stats.normalize(runs, stats.fit_normalizer(runs)[0], keep_constant=True)
    table = stats.aggregate(pooled, reps=30, nan_last=True).set_index("model")
    swin = distributions[(distributions["model"] == "SwinV2-B")
                         & (distributions["dataset"] == "aggregated")]["iqm"]
    assert np.percentile(swin, 2.5) == pytest.approx(table.loc["SwinV2-B", "ci_low"])


def test_paper_violins_put_the_aggregate_first(distributions: pd.DataFrame) -> None:
    order = list(LEGACY_IQM)
    fig = paper_style.bootstrap_violins_figure(distributions, "normalised F1", order=order)
    titles = [ax.get_title() for ax in fig.axes]
    datasets = sorted(d.removeprefix("mb-") for d in distributions["dataset"].unique()
                      if d != "aggregated")
    assert titles == ["aggregated", *datasets]  # 1 + 8 panels, no empty ones
    rows = [ax.get_subplotspec().rowspan.start for ax in fig.axes]
    assert rows == [0] * 5 + [1] * 4  # at most 5 a row
    assert fig.axes[0].get_facecolor()[:3] == pytest.approx((0xcf / 255, 0xf6 / 255, 0xfc / 255))
    assert all(ax.get_facecolor()[:3] == (1, 1, 1) for ax in fig.axes[1:])
    assert all(ax.get_shared_y_axes().joined(fig.axes[0], ax) for ax in fig.axes)
    # seaborn's violins: one body per model, hue order, no outline
    bodies = fig.axes[0].collections
    assert len(bodies) == len(order) and all(len(b.get_edgecolor()) == 0 for b in bodies)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == order
    assert fig.axes[0].yaxis.get_major_formatter().fmt == "%.2f"


def test_paper_curves_are_per_dataset_on_a_percent_log_axis() -> None:
    runs = run.load(CLS_RUNS)
    curves = run.make_curves(runs, None, {}, ReportOptions(curve_normalizer="refit"), reps=5,
                             ci=0.95, seed=0)
    frame = curves.spread["training_size"]
    fig = figures.spread_figure(frame, "fraction", "fraction", "normalised F1",
                                layout=figures.PAPER_LAYOUT)
    assert [ax.get_title() for ax in fig.axes] == sorted(
        d.removeprefix("mb-") for d in frame["dataset"].unique())
    assert len(fig.axes) == 9
    assert [ax.get_subplotspec().rowspan.start for ax in fig.axes] == [0] * 5 + [1] * 4
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "1%", "2%", "5%", "10%", "20%", "", "50%", "100%"]
    # the line of a model is its mean over seeds; the band its mean +- std
    colours = figures.model_colours(sorted(frame["model"].unique()))
    line = next(line for line in fig.axes[0].get_lines()
                if tuple(line.get_color()) == colours["InceptionV3"])
    assert line.get_ydata()[0] == pytest.approx(PUBLISHED_SPREAD[0][4])


def test_left_out_note_tops_every_figure(tmp_path: Path, distributions: pd.DataFrame) -> None:
    drawing = run.Drawing("F1", figures.model_colours(list(LEGACY_IQM)),
                          run._left_out_note([CTX]))
    fig = paper_style.bootstrap_violins_figure(distributions, "normalised F1")
    paths = drawing.save(fig, tmp_path / "violins")
    assert fig.get_suptitle() == "left out (report.exclude_datasets): change_cls_ctx"
    assert [p.name for p in paths] == ["violins.pdf", "violins.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["violins.pdf", "violins.png"]


# ----------------------------------------------------------------------------- bad input


def test_unknown_excluded_dataset_names_the_key(tmp_path: Path, capsys) -> None:
    with pytest.raises(MarsevalError, match=r"report\.exclude_datasets .*'mb-frost'.* not a "
                                            r"known dataset; known datasets: mb-atmos"):
        ReportOptions(exclude_datasets=("mb-frost",))
    code = cli.main(["report", "--runs", str(MAIN_RUNS), "--task", "classification", "--out",
                     str(tmp_path / "out"), "--exclude-dataset", "mb-frost"])
    err = capsys.readouterr().err
    assert code == 1 and "report.exclude_datasets" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_config_keys_reach_the_report_rule() -> None:
    schema = str(REPO / "workflow/schemas/config.schema.yaml")
    configs = {}
    for name in ("config.yaml", "embedded.yaml"):
        configs[name] = yaml.safe_load((REPO / "config" / name).read_text())
        validate(configs[name], schema, set_default=True)
    assert option_flags(configs["config.yaml"]) == (
        f"--exclude-dataset {CTX} --figure-style paper --curve-normalizer refit")
    assert option_flags(configs["embedded.yaml"]) == (
        "--figure-style default --curve-normalizer main")
    bad = dict(configs["embedded.yaml"], report={**configs["embedded.yaml"]["report"],
                                                 "exclude_datasets": ["mb-nope"]})
    with pytest.raises(MarsevalError, match=r"config key report\.exclude_datasets"):
        option_flags(bad)
    from snakemake.exceptions import WorkflowError

    wrong = dict(configs["embedded.yaml"], report={"figure_style": "journal"})
    with pytest.raises(WorkflowError, match="'journal' is not one of"):
        validate(wrong, schema, set_default=True)
