"""Report statistics: reading runs tables, normalisers, IQM, stratified bootstrap, probability
of improvement, optimality gap, checked by hand, against rliable and against the paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marseval.errors import MarsevalError
from marseval.report import stats

PAPER = Path(__file__).resolve().parents[1] / "resources/reference/marsbench-paper-runs"
# the published sweeps leave a few scores blank (runs that did not finish)
WITH_BLANKS = {"classification_few_shot_filtered.csv": [1044],
               "segmentation_partition_filtered.csv": [12, 1690]}
PAPER_IQM = {"SwinV2-B": 0.8983, "ViT-L/16": 0.8560, "ResNet101": 0.5074,
             "InceptionV3": 0.3904, "SqueezeNet1.1": 0.3593}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def frame_of(matrices: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long runs frame of (runs x tasks) matrices, as rliable takes them."""
    rows = [{"model": model, "dataset": f"task{task}", "seed": run, "score": value,
             "normalized": value}
            for model, matrix in matrices.items()
            for (run, task), value in np.ndenumerate(matrix)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- IQM


def test_iqm_by_hand() -> None:
    assert stats.iqm(np.array([[1, 2], [2, 2], [1, 1], [2, 1]]).ravel()) == 1.5
    # 8 values: the 2 lowest and 2 highest go; the mean would be 16.375
    assert stats.iqm([10, 1, 3, 2, 100, 4, 6, 5]) == pytest.approx(4.5)
    # 7 values: floor(7 / 4) = 1 cut at each end
    assert stats.iqm([0, 1, 2, 3, 4, 5, 1000]) == pytest.approx(3.0)
    rows = stats.iqm(np.array([[10, 1, 3, 2, 100, 4, 6, 5], [1, 1, 1, 1, 2, 2, 2, 2]]), axis=1)
    np.testing.assert_allclose(rows, [4.5, 1.5])


# ----------------------------------------------------------------------------- normalisers


def tiny() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["m1", "m2", "m1", "m2", "m1", "m2"],
        "dataset": ["a", "a", "a", "b", "b", "c"],
        "score": [0.2, 0.6, 1.0, 0.7, 0.7, 0.3],
    })


def test_fit_normalizer_by_hand() -> None:
    frame = tiny()[lambda f: f["dataset"] != "c"]
    normalizer, constant = stats.fit_normalizer(frame)
    assert normalizer == {"a": (0.2, 1.0), "b": (0.7, 0.7)}
    assert constant == ["b"]


def test_normalize_drops_and_lists_constant_datasets() -> None:
    normalizer = {"a": (0.2, 1.0), "b": (0.7, 0.7), "c": (0.1, 0.5), "unused": (1.0, 1.0)}
    normalized, dropped = stats.normalize(tiny(), normalizer)
    assert dropped == ["b"]  # only datasets that are in the runs
    assert list(normalized["dataset"]) == ["a", "a", "a", "c"]
    np.testing.assert_allclose(normalized["normalized"], [0.0, 0.5, 1.0, 0.5])
    assert not normalized["normalized"].isna().any()


def test_normalize_needs_every_dataset() -> None:
    with pytest.raises(MarsevalError, match="dataset\\(s\\) c$"):
        stats.normalize(tiny(), {"a": (0.2, 1.0), "b": (0.0, 1.0)})


def test_normalizer_round_trip_and_errors(tmp_path: Path) -> None:
    normalizer = {"a": (0.1 + 0.2, 0.9509064555168152), "b": (0.7, 0.7)}
    stats.write_normalizer(tmp_path / "n.json", normalizer)
    assert stats.read_normalizer(tmp_path / "n.json") == normalizer
    bad = write(tmp_path / "bad.json", json.dumps({"a": [0.0, 1.0], "b": [1.0]}))
    with pytest.raises(MarsevalError, match=f"{bad}.*key 'b'"):
        stats.read_normalizer(bad)
    upside_down = write(tmp_path / "upside.json", json.dumps({"a": [1.0, 0.0]}))
    with pytest.raises(MarsevalError, match=f"{upside_down}.*key 'a'.*below"):
        stats.read_normalizer(upside_down)
    with pytest.raises(MarsevalError, match="missing.json: no such file"):
        stats.read_normalizer(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- bootstrap


def test_stratified_bootstrap_basics() -> None:
    groups = [np.array([0.1, 0.4, 0.5]), np.array([0.9, 0.95, 0.7, 0.8])]
    first = stats.stratified_bootstrap(groups, stats.iqm, reps=500, seed=3)
    assert first == stats.stratified_bootstrap(groups, stats.iqm, reps=500, seed=3)
    point, low, high = first
    assert point == stats.iqm(np.concatenate(groups))
    assert low <= point <= high
    # one run per stratum: every resample is the original
    assert stats.stratified_bootstrap([[0.25], [0.75]], np.mean, reps=50) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        stats.stratified_bootstrap([[0.3], []], np.mean)


def test_stratified_bootstrap_keeps_strata() -> None:
    # a stratum resampled within itself keeps its size: the pooled mean of a stratum of 0s
    # and a stratum of 1s of the same size is always exactly one half
    groups = [np.zeros(5), np.ones(5)]
    assert stats.stratified_bootstrap(groups, np.mean, reps=200) == (0.5, 0.5, 0.5)


def rliable_shim(monkeypatch: pytest.MonkeyPatch):
    """rliable 1.2 passes `random_state=` to arch, which arch 8 renamed `seed` (it would be
    taken for a data keyword and rejected); translate it."""
    import arch.bootstrap.base as arch_base

    for cls in (arch_base.IIDBootstrap, arch_base.IndependentSamplesBootstrap):
        original = cls.__init__

        def init(self, *args, random_state=None, _original=original, **kwargs):
            kwargs.setdefault("seed", random_state)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
    from rliable import library, metrics

    return library, metrics


def random_matrices(seed: int, models: int = 3, runs: int = 7, tasks: int = 5,
                    decimals: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    matrices = {f"model{m}": rng.beta(2 + m, 2, size=(runs, tasks)) for m in range(models)}
    if decimals is not None:  # coarse scores: many ties
        matrices = {name: matrix.round(decimals) for name, matrix in matrices.items()}
    return matrices


def test_aggregate_iqm_interval_matches_rliable(monkeypatch: pytest.MonkeyPatch) -> None:
    library, metrics = rliable_shim(monkeypatch)
    matrices = random_matrices(11)
    np.random.seed(0)  # rliable draws from numpy's global generator
    points, intervals = library.get_interval_estimates(
        matrices, lambda scores: np.array([metrics.aggregate_iqm(scores)]), reps=5000)
    ours = stats.aggregate(frame_of(matrices), reps=5000, seed=1).set_index("model")
    for model in matrices:
        assert ours.loc[model, "iqm"] == pytest.approx(points[model][0], abs=1e-12)
        assert ours.loc[model, "ci_low"] == pytest.approx(intervals[model][0, 0], abs=0.01)
        assert ours.loc[model, "ci_high"] == pytest.approx(intervals[model][1, 0], abs=0.01)
        assert ours.loc[model, "n_datasets"] == 5


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_optimality_gap_matches_rliable(monkeypatch: pytest.MonkeyPatch, gamma: float) -> None:
    library, metrics = rliable_shim(monkeypatch)
    matrices = random_matrices(12)
    np.random.seed(0)
    points, intervals = library.get_interval_estimates(
        matrices, lambda s: np.array([metrics.aggregate_optimality_gap(s, gamma)]), reps=5000)
    ours = stats.optimality_gap(frame_of(matrices), gamma, reps=5000, seed=2).set_index("model")
    for model in matrices:
        assert ours.loc[model, "gap"] == pytest.approx(points[model][0], abs=1e-9)
        assert ours.loc[model, "ci_low"] == pytest.approx(intervals[model][0, 0], abs=0.02)
        assert ours.loc[model, "ci_high"] == pytest.approx(intervals[model][1, 0], abs=0.02)


@pytest.mark.parametrize("decimals", [None, 1])
def test_probability_of_improvement_matches_rliable(monkeypatch: pytest.MonkeyPatch,
                                                    decimals: int | None) -> None:
    library, metrics = rliable_shim(monkeypatch)
    matrices = random_matrices(13, decimals=decimals)
    ours = stats.probability_of_improvement(frame_of(matrices), reps=2000, seed=4)
    ours = ours.set_index(["model_x", "model_y"])
    assert len(ours) == 6 and (ours["n_datasets"] == 5).all()
    for (x, y), row in ours.iterrows():
        expected = metrics.probability_of_improvement(matrices[x], matrices[y])
        assert row["probability"] == pytest.approx(expected, abs=1e-9)
    if decimals is not None:
        return
    # intervals: rliable's bootstrap is slow (a Python loop of Mann-Whitney tests), one pair
    np.random.seed(0)
    _, intervals = library.get_interval_estimates(
        {"pair": [matrices["model0"], matrices["model1"]]},
        lambda x, y: np.array([metrics.probability_of_improvement(x, y)]), reps=2000)
    row = ours.loc[("model0", "model1")]
    assert row["ci_low"] == pytest.approx(intervals["pair"][0, 0], abs=0.02)
    assert row["ci_high"] == pytest.approx(intervals["pair"][1, 0], abs=0.02)


def test_probability_of_improvement_by_hand() -> None:
    frame = pd.DataFrame({"model": ["x"] * 4 + ["y"] * 4,
                          "dataset": ["a", "a", "b", "b"] * 2,
                          "normalized": [0.9, 0.5, 0.2, 0.2, 0.5, 0.1, 0.2, 0.3]})
    table = stats.probability_of_improvement(frame, reps=200).set_index(["model_x", "model_y"])
    # a: x {0.9, 0.5} over y {0.5, 0.1}: 1 + 1 + 0.5 + 1 of 4; b: x {0.2, 0.2} over
    # y {0.2, 0.3}: 0.5 + 0 + 0.5 + 0 of 4; mean of 0.875 and 0.25
    assert table.loc[("x", "y"), "probability"] == pytest.approx(0.5625)
    assert table.loc[("y", "x"), "probability"] == pytest.approx(0.4375)
    assert table.loc[("y", "x"), "ci_low"] == pytest.approx(1 - table.loc[("x", "y"), "ci_high"])
    same = stats.probability_of_improvement(
        frame.assign(model=["x"] * 4 + ["z"] * 4, normalized=list(frame["normalized"][:4]) * 2))
    assert (same["probability"] == 0.5).all()


# ----------------------------------------------------------------------------- tables


def test_per_dataset_and_curve_columns() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"model": np.repeat(["m1", "m2"], 12),
                          "dataset": np.tile(np.repeat(["b", "a"], 6), 2),
                          "few_shot": np.tile([1, 1, 1, 5, 5, 5], 4),
                          "score": rng.uniform(size=24)})
    frame["normalized"] = frame["score"]
    table = stats.per_dataset(frame, reps=100)
    assert list(table.columns) == ["model", "dataset", "iqm", "ci_low", "ci_high", "mean",
                                   "std", "n_runs"]
    assert list(zip(table["dataset"], table["model"], strict=True)) == [
        ("a", "m1"), ("a", "m2"), ("b", "m1"), ("b", "m2")]
    first = frame[(frame["model"] == "m1") & (frame["dataset"] == "a")]["score"]
    assert table.loc[0, "std"] == pytest.approx(first.std(ddof=1))
    assert table.loc[0, "iqm"] == pytest.approx(stats.iqm(first))
    assert (table["n_runs"] == 6).all()
    points = stats.curve(frame, "few_shot", reps=100)
    assert list(points.columns) == ["model", "few_shot", "iqm", "ci_low", "ci_high",
                                    "n_datasets"]
    assert list(zip(points["model"], points["few_shot"], strict=True)) == [
        ("m1", 1), ("m1", 5), ("m2", 1), ("m2", 5)]
    assert (points["n_datasets"] == 2).all()
    chosen = frame[(frame["model"] == "m2") & (frame["few_shot"] == 5)]["normalized"]
    assert points.loc[3, "iqm"] == pytest.approx(stats.iqm(chosen))


# ----------------------------------------------------------------------------- the paper


def test_paper_classification_normalizer_and_aggregate() -> None:
    runs = stats.read_runs(PAPER / "classification_filtered.csv")
    normalizer, constant = stats.fit_normalizer(runs)
    assert normalizer == stats.read_normalizer(PAPER / "classification_normalizer.json")
    assert constant == ["mb-change_cls_ctx"]
    normalized, dropped = stats.normalize(runs, normalizer)
    assert dropped == ["mb-change_cls_ctx"]
    table = stats.aggregate(normalized)
    assert list(table["model"]) == list(PAPER_IQM)  # sorted best first
    for model, value in PAPER_IQM.items():
        row = table[table["model"] == model].iloc[0]
        assert row["iqm"] == pytest.approx(value, abs=5e-5)
        assert row["ci_low"] < row["iqm"] < row["ci_high"]
        assert row["n_datasets"] == 8


def test_paper_segmentation_normalizer() -> None:
    """The published segmentation normaliser was fitted on the partition-1.0 rows of the
    training-size sweep: the same 224 runs as segmentation_filtered.csv, but 75 of their
    scores are written there with one significant digit fewer. So it equals a fit on those
    rows bit for bit, and a fit on the main table to within 1e-16."""
    published = stats.read_normalizer(PAPER / "segmentation_normalizer.json")
    main = stats.read_runs(PAPER / "segmentation_filtered.csv")
    fitted, constant = stats.fit_normalizer(main)
    assert constant == [] and sorted(fitted) == sorted(published)
    gaps = [abs(a - b) for name in published
            for a, b in zip(fitted[name], published[name], strict=True)]
    assert 0 < max(gaps) <= 1e-16

    sweep = stats.read_runs(PAPER / "segmentation_partition_filtered.csv", drop_missing=True)
    full = sweep[sweep["partition"] == "1"]
    assert stats.fit_normalizer(full)[0] == published
    key = ["model", "dataset", "seed"]
    same = main.merge(full, on=key, suffixes=("_main", "_sweep"), validate="one_to_one")
    assert len(same) == len(main) == 224
    assert (same["score_main"] - same["score_sweep"]).abs().max() <= 1e-16


# ----------------------------------------------------------------------------- read_runs


@pytest.mark.parametrize("name", sorted(p.name for p in PAPER.glob("*.csv")))
def test_read_runs_loads_every_reference_table(name: str) -> None:
    path = PAPER / name
    if name in WITH_BLANKS:
        lines = ", ".join(map(str, WITH_BLANKS[name]))
        with pytest.raises(MarsevalError, match=f"{path}: column 'test metric' is empty or NaN "
                                                f"on line\\(s\\) {lines}$"):
            stats.read_runs(path)
    runs = stats.read_runs(path, drop_missing=True)
    raw = pd.read_csv(path)
    assert len(runs) == len(raw) - len(WITH_BLANKS.get(name, []))
    assert list(runs.columns[:6]) == stats.RUN_COLUMNS
    assert runs["score"].dtype == float and runs["score"].notna().all()
    assert str(runs["seed"].dtype) == "Int64" and str(runs["few_shot"].dtype) == "Int64"
    if name == "classification_few_shot_filtered.csv":
        assert set(runs["partition"]) == {"few_shot"}
        assert sorted(runs["few_shot"].unique()) == [1, 2, 5, 10, 15, 20]
    else:
        assert runs["few_shot"].isna().all()
    if "partition" in name or name == "earth_data.csv":
        # "0.1", "0.10" -> "0.1"; "1.0", "1.00" -> "1"
        assert set(runs["partition"]) == {"0.01", "0.02", "0.05", "0.1", "0.2", "0.25", "0.5",
                                          "1"}
    if name.endswith("_filtered.csv") and "partition" not in name and "few_shot" not in name:
        assert set(runs["partition"]) == {"default"}


def test_read_runs_our_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "classification_runs.csv",
                 "model,dataset,test metric,training_type,seed,partition name,few_shot,metric\n"
                 "m,d,0.5,feature_extraction,0,default,,f1\n"
                 "m,d,0.25,feature_extraction,1,0.50,,f1\n"
                 "m,d,0.75,feature_extraction,2,1.00,,f1\n"
                 "m,d,0.125,feature_extraction,3,few_shot,5,f1\n")
    runs = stats.read_runs(path)
    assert list(runs.columns) == stats.RUN_COLUMNS + ["training_type"]
    assert list(runs["partition"]) == ["default", "0.5", "1", "few_shot"]
    assert runs["few_shot"].tolist()[:3] == [pd.NA] * 3 and runs["few_shot"].iloc[3] == 5
    assert list(runs["seed"]) == [0, 1, 2, 3]
    assert list(runs["score"]) == [0.5, 0.25, 0.75, 0.125]
    assert stats.partition_name(0.5) == stats.partition_name(" 0.50") == "0.5"


def test_read_runs_any_column_order_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "test metric,dataset,model\n0.5,d,m\n")
    runs = stats.read_runs(path)
    assert runs.iloc[0]["partition"] == "default" and pd.isna(runs.iloc[0]["seed"])
    assert "training_type" not in runs.columns


@pytest.mark.parametrize(("text", "message"), [
    ("model,dataset,seed\nm,d,0\n", "no column 'test metric'"),
    ("model,test metric\nm,0.5\n", "no column 'dataset'"),
    ("model,dataset,test metric\nm,d,0.5\nm,d,high\n",
     "column 'test metric' is not a number on line 3 \\('high'\\)"),
    ("model,dataset,test metric\nm,d,nan\n", "column 'test metric' is empty or NaN on line"),
    ("model,dataset,test metric\nm,d,inf\n", "column 'test metric' is infinite"),
    ("model,dataset,test metric\n", "no runs"),
    ("", "empty file"),
    ("model,dataset,test metric,seed\nm,d,0.5,x\n", "column 'seed' is not an integer"),
    ("model,dataset,test metric\n,d,0.5\n", "column 'model' is empty on line\\(s\\) 2"),
    ("model,dataset,test metric,partition name,few_shot\nm,d,0.5,default,5\n",
     "columns 'few_shot' and 'partition name' disagree"),
])
def test_read_runs_errors_name_file_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "runs.csv", text)
    with pytest.raises(MarsevalError, match=f"runs table {path}: {message}"):
        stats.read_runs(path)
