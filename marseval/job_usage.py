"""The job usage table: what every benchmarked job used beside what it asked for.

Snakemake writes one `benchmark:` TSV per heavy job under `<results>/benchmarks/<rule>/...`
(wall seconds, peak resident memory in MB, CPU time). The requests are recomputed from the
recorded config with `marseval.job_resources`, so the table shows how tight the estimates are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from marseval.atomic import atomic_write_text
from marseval.errors import MarsevalError
from marseval.job_resources import JobSizer

COLUMNS = ["rule", "dataset", "model", "job", "seconds", "max_rss_mb", "cpu_time",
           "requested_runtime_min", "requested_mem_mb", "runtime_used", "mem_used"]


def job_wildcards(relative: Path) -> tuple[str, dict[str, str]]:
    """`tune/mb-frost_cls/timm-resnet10t/shard0.tsv` -> ("tune", {dataset, model, shard});
    `ctx_cells/group003-1a2b3c4d.tsv` (no dataset or model) -> ("ctx_cells", {group})."""
    rule, *parts = relative.with_suffix("").parts
    if len(parts) == 1 and (match := re.fullmatch(r"group(\d{3}-[0-9a-f]{8})", parts[0])):
        return rule, {"dataset": "", "model": "", "group": match[1]}
    dataset, *rest = parts
    wildcards = {"dataset": dataset, "model": rest[0]}
    for part in rest[1:]:
        if match := re.fullmatch(r"shard(\d+)", part):
            wildcards["shard"] = match[1]
        elif match := re.fullmatch(r"seed(\d+)", part):
            wildcards["seed"] = match[1]
        elif part != "seeds":
            wildcards["partition"] = part
    return rule, wildcards


def usage_table(benchmarks: Path, config: dict[str, Any]) -> pd.DataFrame:
    sizer = JobSizer(config)
    rows = []
    for path in sorted(benchmarks.glob("**/*.tsv")):
        rule, wildcards = job_wildcards(path.relative_to(benchmarks))
        try:
            measured = pd.read_csv(path, sep="\t").iloc[-1]  # the last repeat
        except (pd.errors.ParserError, pd.errors.EmptyDataError, IndexError) as exc:
            raise MarsevalError(f"{path}: not a Snakemake benchmark file ({exc})") from None
        runtime = sizer.runtime_minutes(rule, wildcards)
        memory = sizer.memory_mb(rule, wildcards)
        seconds = float(measured["s"])
        rss = pd.to_numeric(measured.get("max_rss"), errors="coerce")
        job = "/".join(v for k, v in wildcards.items() if k not in ("dataset", "model"))
        rows.append({"rule": rule, "dataset": wildcards["dataset"], "model": wildcards["model"],
                     "job": job, "seconds": round(seconds, 2), "max_rss_mb": rss,
                     "cpu_time": measured.get("cpu_time"),
                     "requested_runtime_min": runtime, "requested_mem_mb": memory,
                     "runtime_used": round(seconds / 60 / runtime, 4),
                     "mem_used": round(rss / memory, 4) if pd.notna(rss) else None})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_usage_table(benchmarks: Path, config_path: Path, out: os.PathLike) -> pd.DataFrame:
    try:
        config = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MarsevalError(f"{config_path}: cannot read the recorded config ({exc})") from None
    table = usage_table(Path(benchmarks), config)
    atomic_write_text(out, table.to_csv(index=False))
    return table
