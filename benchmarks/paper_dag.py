"""Dry-run time and job counts of the full paper reproduction (config/paper.yaml).

`snakemake -n --configfile config/paper.yaml` plans all 20 Mars-Bench datasets with the
paper's models, the full grid in shards, 7 seeds, the training-size partitions and few-shot,
and the three MarsRetrieval tasks, in an empty working directory (nothing exists yet, so
every job is planned). The median wall time of `--repeats` dry runs is recorded with the
job count per rule of the last one.

Run: python benchmarks/paper_dag.py [--repeats 3]
Writes benchmarks/results/paper_dag.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)


def dry_run(workdir: Path) -> tuple[float, dict[str, int]]:
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    start = time.perf_counter()
    result = subprocess.run([snakemake, "-n", "-s", str(REPO / "Snakefile"), "--configfile",
                             str(REPO / "config/paper.yaml"), "-d", str(workdir)],
                            capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    table = (result.stdout + result.stderr).split("Job stats:")[1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    return seconds, counts


def main() -> None:
    import snakemake

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times, counts = [], {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as workdir:
            seconds, counts = dry_run(Path(workdir))
        times.append(seconds)
    write_results(REPO / "benchmarks/results/paper_dag.json", {
        "machine": machine(snakemake=snakemake.__version__),
        "repeats": args.repeats, "seconds": times, "median_seconds": statistics.median(times),
        "jobs": counts})
    print(f"dry run: median {statistics.median(times):.1f} s of {args.repeats} "
          f"({', '.join(f'{t:.1f}' for t in times)})\n\n| rule | jobs |\n|---|---|")
    for rule, n in counts.items():
        print(f"| {rule} | {n:,} |")


if __name__ == "__main__":
    main()
