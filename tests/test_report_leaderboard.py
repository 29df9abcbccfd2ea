"""Leaderboard mode of the report (issue 18): our runs among the published Mars-Bench runs under
the paper's fixed normaliser. Our runs are made here with scores chosen so that their
normalised values are known by hand; the published ones are the shipped reference files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import repo_copy, snakemake

from marseval import cli
from marseval.bench.collect import collect
from marseval.errors import MarsevalError
from marseval.report import figures, leaderboard, run, stats
from marseval.workflow import ConfigError, report_flags, report_published

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "resources/reference/marsbench-paper-runs"
NORMALIZER = json.loads((PAPER / "classification_normalizer.json").read_text())
CTX = "mb-change_cls_ctx"  # max == min in the published normaliser
DATASETS = sorted(d for d, (low, high) in NORMALIZER.items() if high > low)  # the 8 compared
SEEDS = (0, 1, 10, 42, 123, 1000, 1234)
# resources/reference/README.md: the paper's aggregated IQMs over the 8 datasets
PUBLISHED_IQM = {"SwinV2-B": 0.8983, "ViT-L/16": 0.8560, "ResNet101": 0.5074,
                 "InceptionV3": 0.3904, "SqueezeNet1.1": 0.3593}
# ours: constant normalised scores (so the IQM is that constant): one above every published
# run (1.2 > 1, kept), one between ViT-L/16 and ResNet101, one named like a published model
OURS = {"BestNet": 1.2, "MyNet": 0.6, "ViT-L/16": 0.3}
REPS = 50


def score(dataset: str, normalized: float) -> float:
    """The raw score whose normalised value under the published normaliser is `normalized`."""
    low, high = NORMALIZER[dataset]
    return low + normalized * (high - low)


def rows(model: str, dataset: str, normalized: float, partition: str = "default",
         few_shot: str = "", source: str = "huggingface") -> list[dict]:
    return [{"model": model, "dataset": dataset, "test metric": score(dataset, normalized),
             "training_type": "feature_extraction", "seed": seed, "partition name": partition,
             "few_shot": few_shot, "metric": "f1", "data_source": source} for seed in SEEDS]


def our_runs(path: Path, extra: list[dict] | None = None) -> Path:
    """Main runs of OURS on the 8 datasets (and ctx, and a dataset the paper has no runs of);
    MyNet's training-size sweep (0.1, 0.5 and 0.75, which the paper did not run) on two
    datasets and a few-shot k=5 on one; our ViT-L/16 at 0.1 and 0.5 on mb-frost_cls."""
    table = []
    for model, value in OURS.items():
        for dataset in DATASETS:
            table += rows(model, dataset, value)
        table += [dict(row, **{"test metric": NORMALIZER[CTX][0]})
                  for row in rows(model, CTX, 0.0)]
    table += [dict(row, dataset="mb-mydata", **{"test metric": 0.5})
              for row in rows("MyNet", DATASETS[0], 0.0)]
    for dataset in ("mb-frost_cls", "mb-surface_cls"):
        for fraction in ("0.1", "0.5", "0.75"):
            table += rows("MyNet", dataset, 0.4, partition=fraction)
    table += rows("MyNet", "mb-frost_cls", 0.2, partition="few_shot", few_shot="5")
    for fraction in ("0.1", "0.5"):
        table += rows("ViT-L/16", "mb-frost_cls", 0.1, partition=fraction)
    pd.DataFrame(table + (extra or [])).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("leaderboard")
    runs = our_runs(folder / "classification_runs.csv")
    summary = leaderboard.run_leaderboard([runs], "classification", folder / "out", PAPER,
                                          reps=REPS)
    return folder / "out", summary


def test_published_models_keep_their_published_iqm_and_ours_are_ranked(board) -> None:
    out, summary = board
    aggregate = pd.read_csv(out / "aggregate.csv").set_index("model")
    published = aggregate[aggregate["source"] == "published"]
    assert published["iqm"].round(4).to_dict() == PUBLISHED_IQM
    assert (aggregate["n_datasets"] == 8).all()
    # ours by their own normalised scores; 1.2 is kept, not clipped; a clashing name is marked
    ours = aggregate[aggregate["source"] == "ours"]["iqm"]
    assert ours.to_dict() == pytest.approx({"BestNet": 1.2, "MyNet": 0.6,
                                            "ViT-L/16 (ours)": 0.3}, abs=1e-9)
    assert list(aggregate.index) == ["BestNet", "SwinV2-B", "ViT-L/16", "MyNet", "ResNet101",
                                     "InceptionV3", "SqueezeNet1.1", "ViT-L/16 (ours)"]
    assert aggregate["rank"].tolist() == list(range(1, 9))
    assert summary["ranks"] == {"BestNet": 1, "MyNet": 4, "ViT-L/16 (ours)": 8}
    assert summary["renamed"] == {"ViT-L/16": "ViT-L/16 (ours)"}
    # the published normaliser, unchanged by our runs
    assert json.loads((out / "normalizer.json").read_text()) == NORMALIZER
    assert summary["datasets"] == DATASETS and summary["dropped_datasets"] == [CTX]
    # the published interval of each model does not depend on which models are beside it
    alone = stats.aggregate(stats.normalize(
        stats.read_runs(PAPER / "classification_filtered.csv"), NORMALIZER)[0], reps=REPS)
    assert (published.loc[alone["model"], ["ci_low", "ci_high"]].to_numpy()
            == alone[["ci_low", "ci_high"]].to_numpy()).all()
    caption = (out / "tables/aggregate.tex").read_text()
    assert "mb-mydata: no published runs" in caption and "BestNet" in caption


def test_dataset_ranks_by_hand(board) -> None:
    out, _ = board
    ranks = pd.read_csv(out / "dataset_ranks.csv")
    published = pd.read_csv(PAPER / "classification_filtered.csv")
    means = published.groupby(["dataset", "model"])["test metric"].mean()
    assert set(ranks["dataset"]) == set(DATASETS) and (ranks["n_models"] == 8).all()
    for dataset in DATASETS:
        theirs = means[dataset]
        mine = ranks[ranks["dataset"] == dataset].set_index("model")
        above = int((theirs > score(dataset, 0.6)).sum())  # published models above MyNet
        assert mine.loc["MyNet", "rank"] == 2 + above  # BestNet is first everywhere
        assert mine.loc["BestNet", "rank"] == 1
        assert mine.loc["MyNet", "mean_normalized"] == pytest.approx(0.6)
        assert mine.loc["BestNet", "best_published"] == theirs.idxmax()
        low, high = NORMALIZER[dataset]
        assert mine.loc["BestNet", "best_published_normalized"] == pytest.approx(
            (theirs.max() - low) / (high - low))


def test_probability_of_improvement_of_ours_over_each_published_model(board) -> None:
    out, _ = board
    table = pd.read_csv(out / "probability_of_improvement.csv")
    assert set(table["model_x"]) == {"BestNet", "MyNet", "ViT-L/16 (ours)"}
    assert set(table["model_y"]) == set(PUBLISHED_IQM) and len(table) == 15
    best = table[table["model_x"] == "BestNet"]
    assert (best[["probability", "ci_low", "ci_high"]] == 1.0).all().all()  # beats every run
    # MyNet (0.6 everywhere) over SwinV2-B: per dataset the share of its runs below 0.6
    runs = pd.read_csv(PAPER / "classification_filtered.csv")
    swin = runs[runs["model"] == "SwinV2-B"]
    shares = [float(np.mean(swin.loc[swin["dataset"] == d, "test metric"] < score(d, 0.6)))
              for d in DATASETS]
    row = table[(table["model_x"] == "MyNet") & (table["model_y"] == "SwinV2-B")].iloc[0]
    assert row["probability"] == pytest.approx(np.mean(shares))
    assert row["ci_low"] <= row["probability"] <= row["ci_high"] and row["n_datasets"] == 8


def test_only_datasets_and_partitions_on_both_sides_are_compared(board) -> None:
    out, summary = board
    left_out = summary["left_out"]
    assert "mb-mydata: no published runs" in left_out
    assert f"{CTX}: max == min in the published normaliser" in left_out
    assert "partition 0.75: no published runs" in left_out
    assert "partitions 0.01, 0.02, 0.05, 0.2, 0.25: none of ours" in left_out
    assert "few-shot k=1, 2, 10, 15, 20: none of ours" in left_out
    others = [d for d in DATASETS if d not in ("mb-frost_cls", "mb-surface_cls")]
    assert f"partition 0.1 on {', '.join(others)}: none of ours" in left_out
    assert summary["curves"] == {"training_size": [0.1, 0.5, 1.0], "few_shot": [5.0]}
    curve = pd.read_csv(out / "tables/training_size.csv")
    swin = curve[curve["model"] == "SwinV2-B"].set_index("fraction")["n_datasets"]
    assert swin.to_dict() == {0.1: 2, 0.5: 2, 1.0: 8}
    assert curve.loc[(curve["model"] == "MyNet") & (curve["fraction"] == 0.1),
                     "iqm"].item() == pytest.approx(0.4)
    # the Earth-observation figure at the points ours ran: mb-frost_cls at 0.1, 0.5, 1.0
    assert summary["earth_observation"] is True
    assert "Earth-observation partitions 0.01, 0.02, 0.05, 0.2, 0.25: none of ours" in left_out
    # unit: datasets of one side only are listed, never compared
    ours = pd.DataFrame({"model": "A", "dataset": ["mb-a", "mb-b"]})
    theirs = pd.DataFrame({"model": "P", "dataset": ["mb-b", "mb-c"]})
    sides = leaderboard.compare_datasets(ours, theirs)
    assert set(sides.runs["dataset"]) == {"mb-b"}
    assert sides.left_out == ["mb-a: no published runs", "mb-c: none of ours"]


def test_figures_draw_ours_in_their_own_style(board) -> None:
    out, _ = board
    for name in ("normalized_violins", "raw_violins", "training_size", "few_shot",
                 "earth_observation"):
        for suffix in ("pdf", "png"):
            assert (out / f"figures/{name}.{suffix}").stat().st_size > 1000, name
    frame = pd.DataFrame({"model": ["A"] * 4 + ["B"] * 4, "dataset": "mb-x",
                          "normalized": [0.1, 0.2, 0.3, 0.4, 0.9, 1.1, 1.0, 1.2]})
    fig = figures.normalized_violins_figure(frame, None, "n", ours={"B"})
    hatched = [c for ax in fig.axes for c in ax.collections if c.get_hatch()]
    assert len(hatched) == 2  # B's violin in the dataset panel and in the aggregated one
    bold = [t.get_text() for t in fig.legends[0].get_texts() if t.get_fontweight() == "bold"]
    assert bold == ["B"]
    plain = figures.normalized_violins_figure(frame, None, "n")
    assert not [c for ax in plain.axes for c in ax.collections if c.get_hatch()]
    curve = pd.DataFrame({"model": ["A", "A", "B", "B"], "fraction": [0.1, 1.0, 0.1, 1.0],
                          "iqm": 0.5, "ci_low": 0.4, "ci_high": 0.6})
    fig = figures.curves_figure(curve, "fraction", "x", "y", ours={"B"})
    styles = {line.get_color(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    colours = figures.model_colours(["A", "B"])
    assert styles == {colours["A"]: "-", colours["B"]: "--"}


def test_synthetic_runs_and_unknown_sources_are_refused(tmp_path: Path) -> None:
    runs = our_runs(tmp_path / "runs.csv", rows("MyNet", "mb-frost_cls", 0.5, partition="0.2",
                                                source="synthetic"))
    with pytest.raises(MarsevalError, match=r"on mb-frost_cls are on synthetic data"):
        leaderboard.run_leaderboard([runs], "classification", tmp_path / "out", PAPER)
    # a table collected before runs recorded their source: its column is missing
    old = tmp_path / "old.csv"
    pd.read_csv(runs).drop(columns="data_source").to_csv(old, index=False)
    with pytest.raises(MarsevalError, match=r"has no column 'data_source'.*train and collect"):
        leaderboard.run_leaderboard([old], "classification", tmp_path / "out", PAPER)
    blank = tmp_path / "blank.csv"
    pd.read_csv(runs).assign(data_source="").to_csv(blank, index=False)
    with pytest.raises(MarsevalError, match=r"have no recorded data source"):
        leaderboard.run_leaderboard([blank], "classification", tmp_path / "out", PAPER)
    assert not (tmp_path / "out").exists()


def test_a_task_without_published_runs_is_refused(tmp_path: Path) -> None:
    runs = our_runs(tmp_path / "runs.csv")
    with pytest.raises(MarsevalError, match=r"the Mars-Bench paper published no detection runs"):
        leaderboard.run_leaderboard([runs], "detection", tmp_path / "out", PAPER)


def test_a_dataset_missing_from_the_published_normaliser_is_refused(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    shutil.copytree(PAPER, reference)
    bounds = {k: v for k, v in NORMALIZER.items() if k != "mb-frost_cls"}
    (reference / "classification_normalizer.json").write_text(json.dumps(bounds))
    runs = our_runs(tmp_path / "runs.csv")
    with pytest.raises(MarsevalError, match=r"normaliser .*classification_normalizer.json has "
                                            r"no \[min, max\] for dataset\(s\) mb-frost_cls"):
        leaderboard.run_leaderboard([runs], "classification", tmp_path / "out", reference)


def test_the_cli_writes_a_leaderboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    table = rows("MyNet", "mb-frost_cls", 1.5) + rows("MyNet", "mb-surface_cls", 1.5)
    runs = tmp_path / "runs.csv"
    pd.DataFrame(table).to_csv(runs, index=False)
    monkeypatch.chdir(REPO)  # --reference defaults to resources/reference/marsbench-paper-runs
    out = tmp_path / "out"
    argv = ["report", "--runs", str(runs), "--task", "classification", "--out", str(out),
            "--reps", "20", "--leaderboard", "--exclude-dataset", CTX]
    assert cli.main(argv) == 0
    assert "MyNet #1 of 6 models on 2 datasets" in capsys.readouterr().out
    for name in ("aggregate.csv", "per_dataset.csv", "dataset_ranks.csv", "normalizer.json",
                 "probability_of_improvement.csv", "summary.json", "figures/normalized_violins.png",
                 "tables/aggregate.md", "tables/dataset_ranks.tex"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["excluded_datasets"] == [CTX] and summary["mode"] == "leaderboard"
    assert cli.main([*argv, "--normalizer", str(PAPER / "classification_normalizer.json")]) == 1
    assert "exclude each other" in capsys.readouterr().err


def test_normal_mode_draws_the_earth_comparison_from_our_runs(tmp_path: Path) -> None:
    table = []
    for model, datasets in (("SatMAE_ViT-L/16", ("mb-frost_cls", "mb-surface_cls")),
                            ("ViT-L/16", ("mb-frost_cls",))):
        for dataset in datasets:
            for partition, value in (("default", 0.8), ("0.1", 0.4), ("0.5", 0.6)):
                table += rows(model, dataset, value + (0.1 if model == "ViT-L/16" else 0),
                              partition=partition)
    runs = tmp_path / "runs.csv"
    pd.DataFrame(table).to_csv(runs, index=False)
    summary = run.run_report([runs], "classification", tmp_path / "out", reps=20)
    assert (tmp_path / "out/figures/earth_observation.png").stat().st_size > 1000
    # Figure 4's backbone stays out of the main statistics (the paper's earth_data.csv is a
    # table of its own): only ViT-L/16 is aggregated and normalised, on its one dataset
    assert summary["models"] == ["ViT-L/16"] and summary["datasets"] == ["mb-frost_cls"]
    assert summary["earth_observation_only"] == ["SatMAE_ViT-L/16"]
    # ViT-L/16 alone is no Earth-observation comparison: the report is as before
    only = tmp_path / "vit.csv"
    pd.DataFrame([r for r in table if r["model"] == "ViT-L/16"]).to_csv(only, index=False)
    assert run.our_earth_runs(stats.read_runs(only)) is None
    assert len(run.our_earth_runs(stats.read_runs(only), need_earth_model=False)) == 21
    # leaderboard mode: ours beside the published Earth-observation runs
    summary = leaderboard.run_leaderboard([runs], "classification", tmp_path / "board", PAPER,
                                          reps=20)
    assert summary["earth_observation"] is True
    # the main leaderboard ranks ViT-L/16 only; SatMAE is in the Earth-observation figure
    assert summary["ours"] == ["ViT-L/16 (ours)"]
    aggregate = pd.read_csv(tmp_path / "board/aggregate.csv").set_index("model")
    assert aggregate.loc["ViT-L/16 (ours)", "n_datasets"] == 1
    assert "SatMAE_ViT-L/16 (ours)" not in aggregate.index
    assert (tmp_path / "board/figures/earth_observation.png").stat().st_size > 1000


def test_collect_carries_each_runs_data_source(tmp_path: Path) -> None:
    def record(name: str, **extra) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({
            "dataset": "mb-frost_cls", "task": "classification", "model": "resnet101",
            "model_display": "ResNet101", "partition": "default", "seed": 0,
            "training_type": "feature_extraction", "n_train": 10, "best_epoch": 2,
            "epochs_run": 5, "device": "cpu", **extra,
            "test": {"metric": "f1_positive_class", "primary": 0.5}}))
        return path

    table = collect([record("new", data_source="huggingface"), record("old")])
    assert table["data_source"].tolist() == ["huggingface", ""]


def test_the_workflow_passes_leaderboard_to_the_report_of_our_runs(
        tmp_path: Path, workflow_env: dict[str, str]) -> None:
    config = {"results": "results", "report": {
        "reps": 1000, "ci": 0.95, "seed": 0, "normalizer": None, "leaderboard": True,
        "reference": "resources/reference/marsbench-paper-runs"}}
    flags = report_flags(config, "report", "classification")
    assert flags.endswith("--leaderboard --reference resources/reference/marsbench-paper-runs")
    assert "--leaderboard" not in report_flags(config, "paper_figures", "classification")
    assert "--leaderboard" not in report_flags(config, "report", "detection")
    assert report_published(config, "report", "segmentation") == [
        f"resources/reference/marsbench-paper-runs/{name}" for name in (
            "segmentation_filtered.csv", "segmentation_partition_filtered.csv",
            "segmentation_normalizer.json")]
    off = {**config, "report": {**config["report"], "leaderboard": False}}
    assert report_published(off, "report", "classification") == []
    assert report_flags(off, "report", "classification") == "--reps 1000 --ci 0.95 --seed 0"
    clash = {**config, "report": {**config["report"], "normalizer": "mine.json"}}
    with pytest.raises(ConfigError, match="report.leaderboard and report.normalizer"):
        report_flags(clash, "report", "classification")
    # the planned report job of a checkout with report.leaderboard: true
    checkout = repo_copy(tmp_path)
    target = "results/report/classification/aggregate.csv"
    # the embedded default's synthetic data: refused while the Snakefile is parsed
    (checkout / "leaderboard.yaml").write_text(yaml.safe_dump({"report": {"leaderboard": True}}))
    result = snakemake([target, "-n", "--configfile", "config/embedded.yaml",
                        "leaderboard.yaml"], workflow_env, cwd=checkout)
    assert result.returncode != 0
    refusal = result.stdout + result.stderr
    assert "config key report.leaderboard" in refusal and "mb-domars16k" in refusal
    # the same datasets from a real source plan a leaderboard report
    (checkout / "leaderboard.yaml").write_text(yaml.safe_dump(
        {"report": {"leaderboard": True}, "source": "huggingface"}))
    result = snakemake([target, "-n", "-p", "--configfile", "config/embedded.yaml",
                        "leaderboard.yaml"], workflow_env, cwd=checkout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    (command,) = re.findall(r"^Shell command: (python -m marseval report .*)$", output, re.M)
    assert "--leaderboard --reference resources/reference/marsbench-paper-runs" in command
    assert "classification_normalizer.json" in output  # an input: a change reruns the report
