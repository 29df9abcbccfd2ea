"""Dry-run time and job counts of the full paper reproduction (config/config.yaml).

`snakemake -n --cores 64 --resources gpu=8`, typed in a fresh copy of the repository (what a
user does: no --configfile, so the paper config), plans all 20 Mars-Bench datasets with the
paper's models, the full grid in shards, 7 seeds, the training-size partitions and few-shot,
and the three MarsRetrieval tasks (nothing exists yet, so every job is planned). The median
wall time of `--repeats` dry runs is recorded with the job count per rule of the last one, and
what the plan asks a scheduler for, per rule (first attempt, marseval/job_resources.py): the
sum of requested runtime (hours), GPU-hours, the largest runtime and memory request.

Run: python benchmarks/paper_dag.py [--repeats 3]
Writes benchmarks/results/paper_dag.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import repo_copy  # noqa: E402
from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from test_workflow import job_counts, pairs, planned_jobs  # noqa: E402


def requests(output: str, rules: list[str]) -> dict[str, dict[str, float]]:
    """Per rule: requested hours, GPU-hours, largest runtime (minutes) and mem_mb."""
    found = {}
    for rule in rules:
        asked = [pairs(job["resources"]) for job in planned_jobs(output, rule)]
        if not asked or "runtime" not in asked[0]:
            continue  # local rules and `all` ask for nothing
        minutes = [int(a["runtime"]) for a in asked]
        gpus = [int(a.get("gpu", 0)) for a in asked]
        found[rule] = {"hours": round(sum(minutes) / 60, 1),
                       "gpu_hours": round(sum(m * g for m, g in zip(minutes, gpus,
                                                                    strict=True)) / 60, 1),
                       "max_runtime_min": max(minutes),
                       "max_mem_mb": max(int(a["mem_mb"]) for a in asked)}
    return found


def dry_run(workdir: Path) -> tuple[float, dict[str, int], dict[str, dict[str, float]]]:
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    checkout = repo_copy(workdir)
    start = time.perf_counter()
    result = subprocess.run([snakemake, "-n", "--cores", "64", "--resources", "gpu=8"],
                            cwd=checkout, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    counts = job_counts(output)
    return seconds, counts, requests(output, [r for r in counts if r != "total"])


def main() -> None:
    import snakemake

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times, counts, asked = [], {}, {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as workdir:
            seconds, counts, asked = dry_run(Path(workdir))
        times.append(seconds)
    write_results(REPO / "benchmarks/results/paper_dag.json", {
        "machine": machine(snakemake=snakemake.__version__),
        "repeats": args.repeats, "seconds": times, "median_seconds": statistics.median(times),
        "jobs": counts, "requests": asked})
    print(f"dry run: median {statistics.median(times):.1f} s of {args.repeats} "
          f"({', '.join(f'{t:.1f}' for t in times)})\n\n"
          "| rule | jobs | requested hours | GPU-hours | largest runtime (min) | largest mem_mb |"
          "\n|---|---|---|---|---|---|")
    for rule, n in counts.items():
        r = asked.get(rule, {})
        print(f"| {rule} | {n:,} | {r.get('hours', '')} | {r.get('gpu_hours', '')} | "
              f"{r.get('max_runtime_min', '')} | {r.get('max_mem_mb', '')} |")


if __name__ == "__main__":
    main()
