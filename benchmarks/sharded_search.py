"""Time and peak memory of the retrieval ranking jobs, as the workflow runs them, per layout.

Issue 19, items 1 and 5: what one job of each ranking rule costs on a database of `--n`
vectors of `--dim` dimensions split into S shards (`--shards`), with the geo-localization
workload (3 query modes x 5 landforms = 15 queries, top `--top-k`) and the landform workload
(`--classes` text queries ranking every row):
- sharded layout: `search` of one shard (exact: no shard index), then `rankings` (the merge);
  `shard-index` where `--approximate` names a kind (e.g. ivfpq, the `auto` rule's choice for
  shards above its memory budget), with its recall@10 against exact;
- merged layout (S = 1 only): `index` (every shard merged into one index) and the search of
  it that `evaluate --index` runs.
Each job is `python -m marseval <command>` in its own process; wall seconds and peak resident
memory (wait4's ru_maxrss) per process. Shards are written once per S from the same rows
(clustered unit vectors: a Gaussian mixture, as in ann_clustered.py, cheaper to draw).

Run: nice python benchmarks/sharded_search.py [--n 1000000] [--dim 512] [--shards 1 4 16]
Writes benchmarks/results/sharded_search.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

from marseval.retrieval.queries import write_queries  # noqa: E402
from marseval.retrieval.shards import write_shard  # noqa: E402

MODES = ("text", "image", "hybrid")
LANDFORMS = 5


def clustered_rows(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random centres (float32), drawn in blocks."""
    rng = np.random.default_rng(12345)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    rows = np.empty((n, dim), np.float32)
    draw = np.random.default_rng(seed)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[draw.integers(0, clusters, stop - start)]
        block += 0.8 * draw.standard_normal(block.shape, dtype=np.float32)
        rows[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return rows


# `python -m marseval ARGS` that prints its own peak resident memory (VmHWM) on exit: the
# kernel's ru_maxrss of a child counts the pages it shared with this (large) parent at fork,
# while VmHWM belongs to the process image that exec started
REPORTING_MAIN = (
    "import atexit, runpy, sys\n"
    "def report():\n"
    "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "    sys.stderr.write('\\n' + hwm)\n"
    "atexit.register(report)\n"
    "sys.argv[0] = 'marseval'\n"
    "runpy.run_module('marseval', run_name='__main__', alter_sys=True)\n"
)


def run_job(argv: list[str], threads: int) -> dict[str, float]:
    """One `python -m marseval` process: wall seconds and peak RSS (MB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", REPORTING_MAIN, *argv], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"marseval {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    peak_kb = int(done.stderr.rsplit("VmHWM:", 1)[1].split()[0])
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}


def write_database(rows: np.ndarray, shards: int, folder: Path) -> list[Path]:
    bounds = np.linspace(0, len(rows), shards + 1).astype(int)
    paths = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        ids = pd.DataFrame({"id": [f"t{j:08d}" for j in range(a, b)],
                            "lon_min": np.zeros(b - a), "lat_min": np.zeros(b - a)})
        paths.append(write_shard(folder / f"shard{i}", rows[a:b], ids))
    return paths


def bench_layouts(args: argparse.Namespace, rows: np.ndarray, work: Path) -> list[dict]:
    queries = {}
    rng = np.random.default_rng(7)
    for name, count in (("geo", LANDFORMS), ("landform", args.classes)):
        picked = rows[rng.choice(len(rows), count, replace=False)]
        modes = MODES if name == "geo" else ("text",)
        queries[name] = write_queries(work / f"{name}.npz", {m: picked for m in modes},
                                      [f"c{i}" for i in range(count)])
    found = []
    for shards in args.shards:
        folder = work / f"S{shards}"
        paths = write_database(rows, shards, folder)
        for workload, top_k in (("geo", str(args.top_k)), ("landform", "all")):
            if workload == "landform" and shards not in args.landform_shards:
                continue
            searches = []
            for i, shard in enumerate(paths):
                out = folder / f"{workload}{i}.npz"
                searches.append(run_job(["search", "--shard", str(shard), "--queries",
                                         str(queries[workload]), "--top-k", top_k,
                                         "--use-gpu", "no", "--out", str(out)], args.threads))
            merge = run_job(["rankings", "--top-k", top_k, "--out",
                             str(folder / f"{workload}_rankings"), "--results",
                             *[str(folder / f"{workload}{i}.npz") for i in range(shards)],
                             "--shards", *map(str, paths)], args.threads)
            found.append(summary("sharded", workload, shards, "search", searches))
            found.append(summary("sharded", workload, shards, "rankings", [merge]))
        if args.approximate and shards in args.approximate_at:
            built = []
            for i, shard in enumerate(paths[: args.approximate_shards]):
                out = folder / f"index{i}"
                built.append(run_job(["shard-index", "--shard", str(shard), "--kind",
                                      args.approximate, "--use-gpu", "no", "--out", str(out)],
                                     args.threads))
                built[-1]["recall_at_10"] = _recall(out)
            found.append(summary("sharded", args.approximate, shards, "shard_index", built))
        if shards == 1 and args.merged:
            index = run_job(["index", "--kind", "exact", "--use-gpu", "no", "--out",
                             str(folder / "merged"), *map(str, paths)], args.threads)
            found.append(summary("merged", "build", 1, "index", [index]))
        shutil.rmtree(folder)
    return found


def _recall(index_dir: Path) -> float:
    import json

    return json.loads((index_dir / "index.json").read_text())["recall_at_10_vs_exact"]


def summary(layout: str, workload: str, shards: int, job: str,
            runs: list[dict[str, float]]) -> dict[str, Any]:
    """Jobs of one kind: the median and the largest of their seconds and peak memory."""
    seconds = [r["seconds"] for r in runs]
    rss = [r["peak_rss_mb"] for r in runs]
    found = {"layout": layout, "workload": workload, "shards": shards, "job": job,
             "jobs_timed": len(runs), "median_s": float(np.median(seconds)),
             "max_s": max(seconds), "sum_s": round(sum(seconds), 2),
             "median_rss_mb": float(np.median(rss)), "max_rss_mb": max(rss)}
    if "recall_at_10" in runs[0]:
        found["min_recall_at_10"] = min(r["recall_at_10"] for r in runs)
    return found


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| layout | workload | S | job | jobs timed | median s | max s | median MB | "
             "max MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        extra = f" (recall@10 >= {r['min_recall_at_10']:.3f})" if "min_recall_at_10" in r else ""
        lines.append(f"| {r['layout']} | {r['workload']} | {r['shards']} | {r['job']}{extra} | "
                     f"{r['jobs_timed']} | {r['median_s']:.1f} | {r['max_s']:.1f} | "
                     f"{r['median_rss_mb']:,.0f} | {r['max_rss_mb']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--landform-shards", type=int, nargs="*", default=[16],
                        help="S at which the landform workload (K = every row) also runs")
    parser.add_argument("--top-k", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per job")
    parser.add_argument("--approximate", default="ivfpq",
                        help="a shard index kind to build too ('' for none)")
    parser.add_argument("--approximate-shards", type=int, default=2,
                        help="shards whose approximate index is built and timed")
    parser.add_argument("--approximate-at", type=int, nargs="*", default=[16],
                        help="S at which approximate shard indexes are built")
    parser.add_argument("--no-merged", dest="merged", action="store_false")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results/sharded_search.json")
    args = parser.parse_args()
    rows = clustered_rows(args.n, args.dim, args.clusters, 0)
    with tempfile.TemporaryDirectory(prefix="sharded-search-") as tmp:
        found = bench_layouts(args, rows, Path(tmp))
    write_results(args.out, {"machine": machine(), "args": {k: str(v) if isinstance(v, Path)
                                                            else v for k, v in vars(args).items()},
                             "database_mb": round(rows.nbytes / 2**20, 1), "rows": found})
    print(table(found))


if __name__ == "__main__":
    main()
