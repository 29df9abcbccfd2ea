"""Data-stage timings: the embedded default end to end, and standardize throughput.

Run: python benchmarks/data_stage.py [--repeats 3] [--images 5000]
Writes benchmarks/results/data_stage.json and prints a Markdown table. Medians over repeats,
all measured in one run (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import resource
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

from marseval.data.standardize import standardize  # noqa: E402
from marseval.data.synthetic.generate import generate_benchmark  # noqa: E402
from marseval.data.synthetic.writers import write_huggingface, write_zenodo  # noqa: E402
from marseval.registry import get_dataset  # noqa: E402

FRACTIONS = [0.01, 0.02, 0.05, 0.10, 0.20, 0.25, 0.50, 1.00]
FEWSHOT = [1, 2, 5, 10, 15, 20]


def embedded_default_seconds() -> float:
    """Wall time of `snakemake --cores 2` on the embedded default, from nothing."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s",
                        str(REPO / "Snakefile"), "-d", work, "--configfile",
                        str(REPO / "config/embedded.yaml"), "--cores", "2", "-q"],
                       check=True, env=env, capture_output=True)
        return time.perf_counter() - start


def standardize_seconds(images: int, layout: str, work: Path) -> tuple[float, float]:
    """(generate+write seconds, standardize seconds) for a 64 px 15-class set."""
    spec = get_dataset("mb-domars16k")
    counts = {"train": images * 8 // 10, "val": images // 10, "test": images // 10}
    start = time.perf_counter()
    raw = generate_benchmark(spec, seed=0, size=64, samples=counts)
    raw_dir = work / f"raw-{layout}"
    (write_huggingface if layout == "huggingface" else write_zenodo)(raw, spec, raw_dir)
    written = time.perf_counter()
    standardize(raw_dir, work / f"std-{layout}", spec.name, "synthetic", FRACTIONS, FEWSHOT)
    done = time.perf_counter()
    shutil.rmtree(raw_dir)
    shutil.rmtree(work / f"std-{layout}")
    return written - start, done - written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()

    stage = [embedded_default_seconds() for _ in range(args.repeats)]
    results = {"embedded_default_data_stage_s": statistics.median(stage),
               "embedded_default_runs_s": stage}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("zenodo", "huggingface"):
            runs = [standardize_seconds(args.images, layout, Path(tmp))
                    for _ in range(args.repeats)]
            std = statistics.median(r[1] for r in runs)
            results[layout] = {
                "images": args.images,
                "generate_write_s": statistics.median(r[0] for r in runs),
                "standardize_s": std,
                "standardize_images_per_s": args.images / std,
            }
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["machine"] = machine()
    write_results(REPO / "benchmarks/results/data_stage.json", results)
    print("| measurement | median |\n|---|---|")
    print(f"| embedded default, download + standardize of 11 datasets, 2 cores | "
          f"{results['embedded_default_data_stage_s']:.1f} s |")
    for layout in ("zenodo", "huggingface"):
        r = results[layout]
        print(f"| standardize {r['images']} images, {layout} layout | {r['standardize_s']:.1f} s "
              f"({r['standardize_images_per_s']:.0f} images/s) |")
    print(f"| peak RSS of the benchmark process | {results['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
