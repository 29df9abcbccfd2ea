"""Statistics of the report, as Mars-Bench computes them (after rliable, Agarwal et al. 2021).

Runs tables in the Mars-Bench schema (ours or the published ones) are read into one frame with
`model, dataset, seed, partition, few_shot, score`. Scores are min-max normalised per dataset
over all runs of all models; a dataset whose runs all score the same (max == min) cannot be
normalised and is dropped from aggregates and listed, never turned into NaN. Point estimates
are interquartile means (IQM, the 25 % trimmed mean); intervals are percentile intervals of a
stratified bootstrap: the runs of each stratum (a dataset; for one dataset, its seeds) are
resampled with replacement to their own number, so every repetition keeps every dataset.

The bootstrap is vectorised: all indices of all repetitions are drawn at once and the
statistic is applied to a (reps, runs) matrix with `axis=1`. Every model (and every pair of
models) starts from the same `seed`, so its interval depends only on its own runs, not on
which other models are in the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from marseval.atomic import atomic_write_json
from marseval.errors import MarsevalError

REQUIRED = ("model", "dataset", "test metric")
DEFAULT_PARTITION = "default"
FEW_SHOT_PARTITION = "few_shot"
RUN_COLUMNS = ["model", "dataset", "seed", "partition", "few_shot", "score"]
AGGREGATED = "aggregated"  # the dataset name of aggregate rows, as Mars-Bench labels them

Normalizer = dict[str, tuple[float, float]]
# statistic(matrix, axis=1) -> one value per row (scipy/numpy reductions qualify)
Statistic = Callable[..., np.ndarray]


# ----------------------------------------------------------------------------- runs tables


def read_runs(path: Path, drop_missing: bool = False) -> pd.DataFrame:
    """A runs table in the Mars-Bench schema (any column order) as
    `model, dataset, seed, partition, few_shot, score` (+ `training_type` when present).

    `model`, `dataset` and `test metric` are required. Without a `seed` column seeds are <NA>.
    Without a `partition name` column the partition is "few_shot" for rows with a `few_shot`
    k and "default" otherwise. Numeric partition names are written in their shortest form, so
    0.5, "0.50" and "0.5" are all "0.5"; "1.0" and "1.00" become "1", which stays distinct
    from "default" (the published sweeps repeat the main runs as partition 1.0). `few_shot`
    is the integer k or <NA> (nullable Int64).

    An empty or NaN score is an error unless `drop_missing` is true, when those rows (runs
    the published tables leave blank) are dropped; text that is not a number always is.
    """
    path = Path(path)
    raw = _read_csv(path)
    for column in REQUIRED:
        if column not in raw.columns:
            raise MarsevalError(f"runs table {path}: no column {column!r} "
                                f"(required: {', '.join(REQUIRED)})")
    if raw.empty:
        raise MarsevalError(f"runs table {path}: no runs (only a header)")
    # line numbers of the file, for messages: the header is line 1
    raw.index = pd.RangeIndex(2, len(raw) + 2)
    score = _scores(raw["test metric"], path, drop_missing)
    raw, score = raw.loc[score.index], score
    if raw.empty:
        raise MarsevalError(f"runs table {path}: every 'test metric' is empty")
    few_shot = _few_shot(raw, path)
    frame = pd.DataFrame({
        "model": _names(raw["model"], path, "model"),
        "dataset": _names(raw["dataset"], path, "dataset"),
        "seed": _integers(raw["seed"], path, "seed", allow_empty=False)
        if "seed" in raw.columns else pd.array([pd.NA] * len(raw), dtype="Int64"),
        "partition": _partitions(raw, few_shot, path),
        "few_shot": few_shot,
        "score": score,
    })
    if "training_type" in raw.columns:
        frame["training_type"] = raw["training_type"].str.strip()
    return frame.reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    # every cell as text: scores are parsed with float() (correctly rounded, so fitted
    # normalisers equal the published ones bit for bit) and bad cells can be named
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise MarsevalError(f"runs table {path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise MarsevalError(f"runs table {path}: empty file (no header, no runs)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MarsevalError(f"runs table {path}: cannot read it as CSV: {exc}") from None
    raw.columns = [str(column).strip() for column in raw.columns]
    return raw


def _lines(index: pd.Index) -> str:
    shown = ", ".join(str(line) for line in index[:5])
    return shown + (f" and {len(index) - 5} more" if len(index) > 5 else "")


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _scores(column: pd.Series, path: Path, drop_missing: bool) -> pd.Series:
    text = column.str.strip()
    parsed = [math.nan if cell == "" else _parse_float(cell) for cell in text]
    bad = pd.Series([number is None for number in parsed], index=column.index)
    if bad.any():
        first = bad.idxmax()
        raise MarsevalError(f"runs table {path}: column 'test metric' is not a number on line "
                            f"{first} ({text[first]!r}); lines {_lines(bad[bad].index)}")
    values = pd.Series(parsed, index=column.index, dtype=float)
    missing = values.isna()
    if missing.any() and not drop_missing:
        raise MarsevalError(f"runs table {path}: column 'test metric' is empty or NaN on "
                            f"line(s) {_lines(missing[missing].index)}")
    infinite = np.isinf(values)
    if infinite.any():
        raise MarsevalError(f"runs table {path}: column 'test metric' is infinite on "
                            f"line(s) {_lines(infinite[infinite].index)}")
    return values[~missing]


def _names(column: pd.Series, path: Path, name: str) -> pd.Series:
    text = column.str.strip()
    empty = text.eq("")
    if empty.any():
        raise MarsevalError(f"runs table {path}: column {name!r} is empty on line(s) "
                            f"{_lines(empty[empty].index)}")
    return text


def _parse_int(text: str) -> int | None:
    # "5" and "5.0" are both 5; anything else (text, 5.5) is not an integer
    number = _parse_float(text)
    if number is None or not math.isfinite(number) or number != int(number):
        return None
    return int(number)


def _integers(column: pd.Series, path: Path, name: str, allow_empty: bool) -> pd.Series:
    text = column.str.strip()
    parsed = text.map(_parse_int)
    bad = parsed.isna() & (text.ne("") | (not allow_empty))
    if bad.any():
        first = bad.idxmax()
        raise MarsevalError(f"runs table {path}: column {name!r} is not an integer on line "
                            f"{first} ({text[first]!r}); lines {_lines(bad[bad].index)}")
    return pd.Series(pd.array(parsed.tolist(), dtype="Int64"), index=column.index)


def _few_shot(raw: pd.DataFrame, path: Path) -> pd.Series:
    if "few_shot" not in raw.columns:
        return pd.Series(pd.array([pd.NA] * len(raw), dtype="Int64"), index=raw.index)
    return _integers(raw["few_shot"], path, "few_shot", allow_empty=True)


def partition_name(value: object) -> str:
    """Mars-Bench's partition name of a cell: numbers in their shortest positional form
    (0.5, "0.50" -> "0.5"; "1.00" -> "1"), anything else as stripped text."""
    text = str(value).strip()
    number = _parse_float(text)
    if number is None or not math.isfinite(number):
        return text
    return np.format_float_positional(number, trim="-")


def _partitions(raw: pd.DataFrame, few_shot: pd.Series, path: Path) -> pd.Series:
    if "partition name" not in raw.columns:
        return pd.Series(np.where(few_shot.notna(), FEW_SHOT_PARTITION, DEFAULT_PARTITION),
                         index=raw.index)
    names = _names(raw["partition name"], path, "partition name").map(partition_name)
    if "few_shot" in raw.columns:
        # our runs tables: a k exactly on the few-shot rows, or the table is inconsistent
        mismatch = few_shot.notna() != names.eq(FEW_SHOT_PARTITION)
        if mismatch.any():
            raise MarsevalError(f"runs table {path}: columns 'few_shot' and 'partition name' "
                                f"disagree (a k needs partition 'few_shot' and vice versa) "
                                f"on line(s) {_lines(mismatch[mismatch].index)}")
    return names


# ----------------------------------------------------------------------------- normalisers


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise MarsevalError(f"{what}: the runs have no column {column!r}")


def _finite(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    values = frame[column].to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        datasets = sorted(set(frame.loc[bad, "dataset"])) if "dataset" in frame else []
        raise MarsevalError(f"{what}: column {column!r} has {int(bad.sum())} missing or "
                            f"non-finite values (datasets: {', '.join(datasets)})")
    return values


def fit_normalizer(frame: pd.DataFrame) -> tuple[Normalizer, list[str]]:
    """Per dataset (min, max) of `score` over all rows given (all models), and the datasets
    whose max == min (sorted): those cannot be normalised and aggregates drop them."""
    _require(frame, ["dataset", "score"], "fit_normalizer")
    if frame.empty:
        raise MarsevalError("fit_normalizer: no runs to fit a normaliser on")
    _finite(frame, "score", "fit_normalizer")
    bounds = frame.groupby("dataset", sort=True)["score"].agg(["min", "max"])
    normalizer = {str(name): (float(row["min"]), float(row["max"]))
                  for name, row in bounds.iterrows()}
    return normalizer, _constant(normalizer)


def _constant(normalizer: Mapping[str, tuple[float, float]]) -> list[str]:
    return sorted(name for name, (low, high) in normalizer.items() if high == low)


def write_normalizer(path: Path, normalizer: Mapping[str, tuple[float, float]]) -> None:
    """JSON `{dataset: [min, max]}`, written atomically (floats round-trip exactly)."""
    atomic_write_json(path, {name: [float(low), float(high)]
                             for name, (low, high) in normalizer.items()})


def read_normalizer(path: Path) -> Normalizer:
    """A normaliser JSON `{dataset: [min, max]}` (ours, or fixed constants such as the
    published ones)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MarsevalError(f"normaliser {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MarsevalError(f"normaliser {path}: cannot read it as JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise MarsevalError(f"normaliser {path}: expected a non-empty object "
                            f"{{dataset: [min, max]}}")
    return {str(name): _bounds(path, name, value) for name, value in data.items()}


def _bounds(path: Path, name: str, value: object) -> tuple[float, float]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
          and all(math.isfinite(v) for v in value))
    if not ok:
        raise MarsevalError(f"normaliser {path}: key {name!r} must be [min, max] (two finite "
                            f"numbers), got {value!r}")
    low, high = float(value[0]), float(value[1])
    if high < low:
        raise MarsevalError(f"normaliser {path}: key {name!r} has max {high} below min {low}")
    return low, high


def normalize(frame: pd.DataFrame, normalizer: Mapping[str, tuple[float, float]],
              keep_constant: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The runs with `normalized` = (score - min) / (max - min) of their dataset.

    Rows of datasets whose normaliser has max == min are removed and those datasets returned
    (sorted); with `keep_constant` they stay, normalised to NaN (Mars-Bench's 0 / 0, which
    only `aggregate(..., nan_last=True)` accepts). Every dataset of the runs must be in the
    normaliser: fixed constants (GEO-Bench style) that miss one would silently change what
    the aggregate means.
    """
    _require(frame, ["dataset", "score"], "normalize")
    present = sorted(set(frame["dataset"]))
    missing = [name for name in present if name not in normalizer]
    if missing:
        raise MarsevalError(f"normalize: the normaliser has no [min, max] for dataset(s) "
                            f"{', '.join(missing)}")
    constant = [name for name in _constant(normalizer) if name in present]
    kept = frame if keep_constant else frame[~frame["dataset"].isin(constant)]
    kept = kept.reset_index(drop=True)
    scores = _finite(kept, "score", "normalize")
    low = kept["dataset"].map(lambda name: normalizer[name][0]).to_numpy(dtype=float)
    high = kept["dataset"].map(lambda name: normalizer[name][1]).to_numpy(dtype=float)
    span = high - low
    normalized = np.divide(scores - low, span, out=np.full(len(kept), np.nan), where=span > 0)
    return kept.assign(normalized=normalized), constant


# ----------------------------------------------------------------------------- estimators


def iqm(values: np.ndarray | Sequence[float], axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle half (scipy's 25 % trimmed mean, which cuts
    floor(n / 4) values at each end, as rliable's `aggregate_iqm` does)."""
    result = scipy.stats.trim_mean(np.asarray(values, dtype=float), 0.25, axis=axis)
    return float(result) if axis is None else result


def iqm_nan_last(values: np.ndarray | Sequence[float],
                 axis: int | None = None) -> float | np.ndarray:
    """The IQM as the published Mars-Bench aggregate computed it: older SciPy's trim_mean
    partitioned with `np.partition`, which sorts NaN last, so NaN (a dataset with max == min)
    counted as +infinity and was cut with the top quarter. NaN where one is left in the middle
    half. Equal to `iqm` on finite values."""
    array = np.asarray(values, dtype=float)
    result = scipy.stats.trim_mean(np.where(np.isnan(array), np.inf, array), 0.25, axis=axis)
    result = np.where(np.isinf(result), np.nan, result)
    return float(result) if axis is None else result


def _check_bootstrap(reps: int, ci: float) -> None:
    if int(reps) != reps or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci!r}")


def _interval(samples: np.ndarray, ci: float) -> tuple[float, float]:
    # percentile interval, as arch's conf_int(method="percentile") that rliable calls
    tail = 100 * (1 - ci) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _resample(groups: Sequence[np.ndarray], reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, total runs): each stratum resampled with replacement to its own size."""
    return np.hstack([group[rng.integers(0, group.size, size=(reps, group.size))]
                      for group in groups])


def _as_groups(groups: Sequence[np.ndarray | Sequence[float]]) -> list[np.ndarray]:
    arrays = [np.asarray(group, dtype=float).ravel() for group in groups]
    if not arrays or any(array.size == 0 for array in arrays):
        raise ValueError("stratified bootstrap: every stratum needs at least one run")
    return arrays


def stratified_bootstrap(groups: Sequence[np.ndarray], statistic: Statistic = iqm,
                         reps: int = 1000, ci: float = 0.95,
                         seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, ci_low, ci_high) of `statistic` over the pooled runs of `groups`.

    `groups` holds one array of runs per stratum (dataset); `statistic(matrix, axis=1)` gives
    one value per row. Each repetition resamples every stratum to its own size and pools
    them; the interval is the percentile interval at `ci`.
    """
    _check_bootstrap(reps, ci)
    arrays = _as_groups(groups)
    point = float(np.asarray(statistic(np.concatenate(arrays)[np.newaxis, :], axis=1))[0])
    return (point, *_interval(bootstrap_samples(arrays, statistic, reps, seed), ci))


def bootstrap_samples(groups: Sequence[np.ndarray], statistic: Statistic = iqm,
                      reps: int = 1000, seed: int = 0) -> np.ndarray:
    """The `reps` bootstrap values of `statistic` whose percentiles `stratified_bootstrap`
    reports (same seed, same values): each stratum resampled to its own size, pooled."""
    _check_bootstrap(reps, 0.5)
    samples = statistic(_resample(_as_groups(groups), reps, np.random.default_rng(seed)), axis=1)
    return np.asarray(samples, dtype=float)


def _strata(runs: pd.DataFrame, value: str) -> list[np.ndarray]:
    """One array of `value` per dataset, in dataset order (the bootstrap's strata)."""
    return [group[value].to_numpy(dtype=float)
            for _, group in runs.groupby("dataset", sort=True)]


def per_dataset(frame: pd.DataFrame, value: str = "score", reps: int = 1000,
                ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model and dataset: IQM over the seeds with a bootstrap interval over the seeds,
    mean, std (ddof=1; NaN for a single run) and the number of runs. Sorted by dataset, model.
    """
    what = "per_dataset"
    _require(frame, ["model", "dataset", value], what)
    _finite(frame, value, what)
    rows = []
    for (dataset, model), runs in frame.groupby(["dataset", "model"], sort=True):
        values = runs[value].to_numpy(dtype=float)
        point, low, high = stratified_bootstrap([values], iqm, reps, ci, seed)
        rows.append({"model": model, "dataset": dataset, "iqm": point, "ci_low": low,
                     "ci_high": high, "mean": float(values.mean()),
                     "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
                     "n_runs": int(values.size)})
    columns = ["model", "dataset", "iqm", "ci_low", "ci_high", "mean", "std", "n_runs"]
    return pd.DataFrame(rows, columns=columns)


def _per_model(frame: pd.DataFrame, statistic: Statistic, name: str, reps: int, ci: float,
               seed: int, what: str, allow_nan: bool = False) -> pd.DataFrame:
    """Per model: `statistic` of its pooled normalised runs, datasets as strata."""
    _require(frame, ["model", "dataset", "normalized"], what)
    _finite(frame if not allow_nan else frame.dropna(subset=["normalized"]), "normalized", what)
    rows = []
    for model, runs in frame.groupby("model", sort=True):
        groups = _strata(runs, "normalized")
        point, low, high = stratified_bootstrap(groups, statistic, reps, ci, seed)
        rows.append({"model": model, name: point, "ci_low": low, "ci_high": high,
                     "n_datasets": len(groups)})
    return pd.DataFrame(rows, columns=["model", name, "ci_low", "ci_high", "n_datasets"])


def aggregate(frame_normalized: pd.DataFrame, reps: int = 1000, ci: float = 0.95,
              seed: int = 0, nan_last: bool = False) -> pd.DataFrame:
    """Per model: IQM over the pooled normalised scores of all its datasets with a stratified
    bootstrap interval (datasets as strata). Sorted by IQM, best first.

    `nan_last` reproduces the published aggregate: NaN scores (datasets with max == min, kept
    by `normalize(..., keep_constant=True)`) are pooled and trimmed as +infinity
    (`iqm_nan_last`)."""
    statistic = iqm_nan_last if nan_last else iqm
    table = _per_model(frame_normalized, statistic, "iqm", reps, ci, seed, "aggregate",
                       allow_nan=nan_last)
    return table.sort_values(["iqm", "model"], ascending=[False, True],
                             ignore_index=True)


def optimality_gap(frame_normalized: pd.DataFrame, gamma: float = 1.0, reps: int = 1000,
                   ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model: rliable's optimality gap, gamma - mean(min(normalised score, gamma)) over
    the pooled runs (by how much it falls short of gamma; lower is better), with a stratified
    bootstrap interval. Sorted by gap, best first."""

    def gap(matrix: np.ndarray, axis: int | None = None) -> np.ndarray:
        return gamma - np.mean(np.minimum(matrix, gamma), axis=axis)

    table = _per_model(frame_normalized, gap, "gap", reps, ci, seed, "optimality_gap")
    return table.sort_values(["gap", "model"], ignore_index=True)


def _task_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) on one task, ties counting one half: the Mann-Whitney U of X over Y divided by
    n_x n_y, as rliable computes it."""
    statistic = scipy.stats.mannwhitneyu(x, y, alternative="greater").statistic
    return float(statistic) / (x.size * y.size)


def _improvement(xs: list[np.ndarray], ys: list[np.ndarray], reps: int, ci: float,
                 seed: int) -> tuple[float, float, float]:
    """Average over tasks of P(X > Y), with a bootstrap that resamples the runs of X and of Y
    independently within each task (rliable's StratifiedIndependentBootstrap)."""
    point = float(np.mean([_task_improvement(x, y) for x, y in zip(xs, ys, strict=True)]))
    rng = np.random.default_rng(seed)
    samples = np.zeros(reps)
    for x, y in zip(xs, ys, strict=True):
        # U's kernel for every pair of runs; a resample's U is the mean over its index pairs
        kernel = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        ix = rng.integers(0, x.size, size=(reps, x.size))
        iy = rng.integers(0, y.size, size=(reps, y.size))
        samples += kernel[ix[:, :, None], iy[:, None, :]].mean(axis=(1, 2))
    return (point, *_interval(samples / len(xs), ci))


def probability_of_improvement(frame_normalized: pd.DataFrame, reps: int = 1000,
                               ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """For every ordered pair of models: rliable's average probability of improvement of
    `model_x` over `model_y` (the mean over their common datasets of P(X > Y), ties one
    half) with a stratified-bootstrap interval, and the number of datasets it averages.

    Each unordered pair is bootstrapped once, so the reverse row is exactly its complement.
    """
    what = "probability_of_improvement"
    _require(frame_normalized, ["model", "dataset", "normalized"], what)
    _finite(frame_normalized, "normalized", what)
    _check_bootstrap(reps, ci)
    runs = {model: {dataset: group["normalized"].to_numpy(dtype=float)
                    for dataset, group in by_model.groupby("dataset", sort=True)}
            for model, by_model in frame_normalized.groupby("model", sort=True)}
    models = sorted(runs)
    rows = []
    for i, first in enumerate(models):
        for second in models[i + 1:]:
            common = sorted(set(runs[first]) & set(runs[second]))
            if not common:
                raise MarsevalError(f"{what}: models {first!r} and {second!r} have no "
                                    f"dataset in common")
            p, low, high = _improvement([runs[first][d] for d in common],
                                        [runs[second][d] for d in common], reps, ci, seed)
            rows.append((first, second, p, low, high, len(common)))
            rows.append((second, first, 1 - p, 1 - high, 1 - low, len(common)))
    columns = ["model_x", "model_y", "probability", "ci_low", "ci_high", "n_datasets"]
    return pd.DataFrame(rows, columns=columns).sort_values(["model_x", "model_y"],
                                                           ignore_index=True)


def curve(frame: pd.DataFrame, x: str, value: str = "normalized", reps: int = 1000,
          ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Training-size and few-shot curves: per model and value of column `x` (a training
    fraction, the few-shot k), the IQM over the pooled `value` of all datasets with a
    stratified bootstrap interval. Rows where `x` is missing are not on the curve.
    Columns `model, <x>, iqm, ci_low, ci_high, n_datasets`, sorted by model, then `x`."""
    what = f"curve over {x!r}"
    columns = ["model", x, "iqm", "ci_low", "ci_high", "n_datasets"]
    if len(set(columns)) < len(columns):
        raise ValueError(f"curve: column {x!r} clashes with an output column")
    _require(frame, ["model", "dataset", x, value], what)
    points = frame[frame[x].notna()]
    _finite(points, value, what)
    rows = []
    for (model, point_x), runs in points.groupby(["model", x], sort=True):
        groups = _strata(runs, value)
        point, low, high = stratified_bootstrap(groups, iqm, reps, ci, seed)
        rows.append({"model": model, x: point_x, "iqm": point, "ci_low": low,
                     "ci_high": high, "n_datasets": len(groups)})
    return pd.DataFrame(rows, columns=columns)


def spread(frame: pd.DataFrame, x: str, value: str = "normalized") -> pd.DataFrame:
    """Mars-Bench's per-dataset curve points (partition_stats.csv): per dataset, model and
    value of column `x`, the mean, standard deviation (ddof=1; NaN for one run) and number of
    the runs' `value`. Columns `dataset, model, <x>, mean, std, n_runs`, sorted that way."""
    what = f"spread over {x!r}"
    _require(frame, ["model", "dataset", x, value], what)
    points = frame[frame[x].notna()]
    _finite(points, value, what)
    table = (points.groupby(["dataset", "model", x], sort=True)[value]
             .agg(mean="mean", std="std", n_runs="size").reset_index())
    return table.astype({"n_runs": int})


def bootstrap_distributions(frame_normalized: pd.DataFrame, reps: int = 1000, seed: int = 0,
                            nan_last: bool = False) -> pd.DataFrame:
    """The bootstrap IQMs that Mars-Bench's violins show (plot_tools.bootstrap_iqm and
    bootstrap_iqm_aggregate): per model, `reps` aggregate IQMs of its stratified resamples,
    dataset "aggregated" (`aggregate`'s samples: same seed), then per model and dataset
    `reps` IQMs of its resampled runs. Columns `model, dataset, iqm`.

    With `nan_last` the aggregate trims NaN as `aggregate(..., nan_last=True)` does; a dataset
    whose scores are NaN has no distribution of its own and is left out."""
    what = "bootstrap_distributions"
    _require(frame_normalized, ["model", "dataset", "normalized"], what)
    scored = frame_normalized.dropna(subset=["normalized"])
    _finite(frame_normalized if not nan_last else scored, "normalized", what)
    aggregate_statistic = iqm_nan_last if nan_last else iqm
    parts = []
    for model, runs in frame_normalized.groupby("model", sort=True):
        samples = bootstrap_samples(_strata(runs, "normalized"), aggregate_statistic, reps, seed)
        parts.append(pd.DataFrame({"model": model, "dataset": AGGREGATED, "iqm": samples}))
    for (model, dataset), runs in scored.groupby(["model", "dataset"], sort=True):
        samples = bootstrap_samples([runs["normalized"].to_numpy(dtype=float)], iqm, reps, seed)
        parts.append(pd.DataFrame({"model": model, "dataset": dataset, "iqm": samples}))
    return pd.concat(parts, ignore_index=True)
