"""Seconds for the stratified bootstrap of the aggregate IQM: marseval against rliable.

The whole published classification table (5 models x 8 datasets x 7 seeds once the constant
mb-change_cls_ctx is dropped), normalised with its fitted normaliser, 1,000 repetitions,
95 % percentile intervals. Ours is `marseval.report.stats.aggregate` (all indices drawn at
once, one trimmed mean over a (reps, runs) matrix); rliable's is
`get_interval_estimates(score_dict, lambda s: np.array([metrics.aggregate_iqm(s)]), reps)`
on (seeds x datasets) matrices, which loops over repetitions in Python. Both are timed in one
run, medians of `--repeats` calls each.

Run: python benchmarks/bootstrap.py [--repeats 5] [--reps 1000]
Writes benchmarks/results/bootstrap.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

from marseval.report import stats  # noqa: E402

PAPER = REPO / "resources/reference/marsbench-paper-runs/classification_filtered.csv"


def rliable_on_arch8() -> None:
    """rliable 1.2 passes `random_state=` to arch, which arch 8 calls `seed` (and otherwise
    takes for a data keyword and rejects); translate it before rliable builds a bootstrap."""
    import arch.bootstrap.base as arch_base

    for cls in (arch_base.IIDBootstrap, arch_base.IndependentSamplesBootstrap):
        original = cls.__init__

        def init(self, *args, random_state=None, _original=original, **kwargs):
            kwargs.setdefault("seed", random_state)
            _original(self, *args, **kwargs)

        cls.__init__ = init


def score_matrices(normalized) -> dict[str, np.ndarray]:
    """rliable's input: per model a (seeds x datasets) matrix of normalised scores."""
    wide = normalized.pivot_table(index=["model", "seed"], columns="dataset",
                                  values="normalized")
    if wide.isna().any().any():
        raise SystemExit("the table is not complete (a model lacks a seed on a dataset)")
    return {model: wide.loc[model].to_numpy() for model in wide.index.get_level_values(0)
            .unique()}


def timed(call: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=PAPER)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bootstrap.json")
    args = parser.parse_args()

    rliable_on_arch8()
    from rliable import library, metrics

    runs = stats.read_runs(args.runs)
    normalizer, _ = stats.fit_normalizer(runs)
    normalized, dropped = stats.normalize(runs, normalizer)
    matrices = score_matrices(normalized)

    ours_s, ours = timed(lambda: stats.aggregate(normalized, reps=args.reps), args.repeats)
    np.random.seed(0)  # rliable draws from numpy's global generator
    theirs_s, theirs = timed(lambda: library.get_interval_estimates(
        matrices, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=args.reps),
        args.repeats)

    points, intervals = theirs
    models = {}
    for row in ours.itertuples():
        models[row.model] = {
            "ours": {"iqm": row.iqm, "ci_low": row.ci_low, "ci_high": row.ci_high},
            "rliable": {"iqm": float(points[row.model][0]),
                        "ci_low": float(intervals[row.model][0, 0]),
                        "ci_high": float(intervals[row.model][1, 0])},
        }
    result = {
        "runs": str(args.runs),
        "shape": {"models": len(matrices), "datasets": normalized["dataset"].nunique(),
                  "seeds": int(normalized["seed"].nunique()), "dropped": dropped},
        "reps": args.reps, "repeats": args.repeats,
        "ours_s": statistics.median(ours_s), "ours_runs_s": ours_s,
        "rliable_s": statistics.median(theirs_s), "rliable_runs_s": theirs_s,
        "speedup": statistics.median(theirs_s) / statistics.median(ours_s),
        "models": models,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(numpy=np.__version__),
    }
    write_results(args.out, result)

    print(f"{args.reps} repetitions, median of {args.repeats}: ours {result['ours_s']:.4f} s, "
          f"rliable {result['rliable_s']:.3f} s ({result['speedup']:.0f} times faster)\n")
    print("| model | IQM | ours 95 % CI | rliable 95 % CI |")
    print("|---|---|---|---|")
    for model, both in models.items():
        o, r = both["ours"], both["rliable"]
        print(f"| {model} | {o['iqm']:.4f} | [{o['ci_low']:.4f}, {o['ci_high']:.4f}] | "
              f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}] |")


if __name__ == "__main__":
    main()
