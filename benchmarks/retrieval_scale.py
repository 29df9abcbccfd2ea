"""The paper-scale plan of the retrieval stages: memory, disk and time per stage (issue 19, 5).

For the paper config (config/config.yaml: 16 models, the 1.44 M cells of 3,600 CTX tiles in 90
groups, one embedding shard and one search job per group) and for a tiling `--finer` times
finer (the same 90 groups, `--finer` times the cells each), geo-localization only (the
landform and paired databases are 10,000 and 2,287 rows):
- embed: the planner's estimate (marseval.job_resources: the model's forward FLOPs at the
  configured GPU throughput, `job_resources.gpu_tflops`), per group and model; memory as the
  planner requests it;
- search and rankings: fitted to `benchmarks/results/sharded_search.json` (jobs run as
  processes on this machine, one thread): a search job's seconds and peak memory as a constant
  plus a term in the bytes of its shard (rows x dim x 4), a rankings job's as a constant plus
  a term in the database rows (its ids) and the shard results it reads;
- disk: float32 embeddings, the search results (15 queries x min(K, rows) x 12 B per shard),
  the rankings (15 x K x 12 B plus the ids).
The largest model (E5-V, 4,096-d) sizes the per-job memory; totals sum over the 16 models.

Run: python benchmarks/retrieval_scale.py [--finer 10]
Writes benchmarks/results/retrieval_scale.json and prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import write_results  # noqa: E402  (benchmarks/ is on sys.path)

from marseval.job_resources import JobSizer, model_cost  # noqa: E402
from marseval.retrieval.ctx.plan import group_cells, group_ids  # noqa: E402
from marseval.workflow import retrieval_models  # noqa: E402

GEO_QUERIES = 15  # 5 landforms x text, image, hybrid
RESULT_BYTES = 12  # a float32 score and an int64 position
ID_ROW_BYTES = 200  # a cell's id and bounds in pandas (job_resources.ID_ROW_BYTES)
MB = 2**20


def paper_config() -> dict[str, Any]:
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"), set_default=True)
    return config


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def measured_costs(path: Path) -> dict[str, Any]:
    """Search and rankings job costs as functions of shard bytes, fitted to the benchmark."""
    record = json.loads(path.read_text())
    n, dim = record["args"]["n"], record["args"]["dim"]
    rows = [r for r in record["rows"] if r["layout"] == "sharded" and r["workload"] == "geo"]
    search = [r for r in rows if r["job"] == "search"]
    merge = [r for r in rows if r["job"] == "rankings"]
    shard_mb = [n / r["shards"] * dim * 4 / MB for r in search]
    return {
        "source": path.name, "n": n, "dim": dim,
        "top_k": record["args"]["top_k"],
        "search_seconds": fit(shard_mb, [r["median_s"] for r in search]),
        "search_rss_mb": fit(shard_mb, [r["max_rss_mb"] for r in search]),
        "rankings_seconds": fit([r["shards"] for r in merge], [r["median_s"] for r in merge]),
        "rankings_rss_mb": fit([r["shards"] for r in merge], [r["max_rss_mb"] for r in merge]),
    }


def plan(config: dict[str, Any], costs: dict[str, Any], finer: int) -> dict[str, Any]:
    groups = len(group_ids(config))
    cells = group_cells(config) * finer
    top_k = config["retrieval"]["top_k"]
    models = retrieval_models(config)
    dims = {slug: model_cost(name)["feature_dim"] for slug, name in models.items()}
    widest = max(dims.values())
    sizer = JobSizer(config)
    embed_h = sum(sizer.work_seconds("embed", {"dataset": "mr-geolocalization", "model": slug,
                                                "shard": "0"}) for slug in models) * finer
    embed_mb = max(sizer.memory_mb("embed", {"dataset": "mr-geolocalization", "model": slug,
                                             "shard": "0"}) for slug in models)
    a, b = costs["search_seconds"]
    search_s = {slug: a + b * cells * d * 4 / MB for slug, d in dims.items()}
    ra, rb = costs["search_rss_mb"]
    returned = min(top_k, cells)
    merge_a, merge_b = costs["rankings_seconds"]
    merge_ra, _ = costs["rankings_rss_mb"]
    rows = groups * cells
    return {
        "finer": finer, "groups": groups, "cells": rows, "cells_per_group": cells,
        "models": len(models), "widest_dim": widest,
        "stages": {
            "embed": {"jobs": groups * len(models), "gpu_hours": embed_h * groups / 3600,
                      "job_mem_mb": embed_mb,
                      "disk_gb": rows * sum(dims.values()) * 4 / 1e9},
            "search": {"jobs": groups * len(models),
                       "cpu_hours": groups * sum(search_s.values()) / 3600,
                       "job_seconds_widest": search_s[max(dims, key=dims.get)],
                       "job_mem_mb": ra + rb * cells * widest * 4 / MB,
                       "disk_gb": len(models) * groups * GEO_QUERIES * returned
                       * RESULT_BYTES / 1e9},
            "rankings": {"jobs": len(models),
                         "cpu_hours": len(models) * (merge_a + merge_b * groups) / 3600,
                         "job_mem_mb": merge_ra + rows * ID_ROW_BYTES / MB
                         + groups * GEO_QUERIES * returned * RESULT_BYTES / MB,
                         "disk_gb": len(models) * (GEO_QUERIES * top_k * RESULT_BYTES
                                                   + rows * 40) / 1e9},
            "merged index (one job, for comparison)": {
                "jobs": len(models), "job_mem_mb": 2 * rows * widest * 4 / MB,
                "disk_gb": 2 * rows * sum(dims.values()) * 4 / 1e9},
        },
    }


def table(plans: list[dict[str, Any]]) -> str:
    lines = ["| tiling | stage | jobs | memory a job (largest model) | time | disk |",
             "|---|---|---|---|---|---|"]
    for p in plans:
        name = f"{p['cells'] / 1e6:.2f} M cells ({p['finer']}x)"
        for stage, s in p["stages"].items():
            if "gpu_hours" in s:
                time = f"{s['gpu_hours']:,.0f} GPU-h (planner)"
            elif "cpu_hours" in s:
                time = f"{s['cpu_hours']:,.2f} CPU-h"
                if "job_seconds_widest" in s:
                    time += f" ({s['job_seconds_widest']:.1f} s a job, 4,096-d)"
            else:
                time = "-"
            lines.append(f"| {name} | {stage} | {s['jobs']:,} | {s['job_mem_mb'] / 1024:,.2f} GB"
                         f" | {time} | {s['disk_gb']:,.1f} GB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finer", type=int, default=10)
    parser.add_argument("--costs", type=Path,
                        default=REPO / "benchmarks/results/sharded_search.json")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results/retrieval_scale.json")
    args = parser.parse_args()
    config, costs = paper_config(), measured_costs(args.costs)
    plans = [plan(config, costs, 1), plan(config, costs, args.finer)]
    write_results(args.out, {"costs": costs, "plans": plans})
    print(table(plans))


if __name__ == "__main__":
    main()
