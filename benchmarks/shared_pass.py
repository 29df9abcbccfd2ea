"""A classification grid of one (dataset, model) pair in the reference protocol, trial by trial
against shared passes (issue 15): the same records, and what the shared pass saves.

The grid: 48 trials of one batch size (lr x optimizer x schedule x patience), each up to
`--epochs` epochs, on a small synthetic binary set (mb-frost_cls), a random-init backbone run
online in the reference protocol (train-mode frozen backbone, augmentation, last epoch tested),
seed 0. Each mode is one `run_shard` call in a subprocess of its own, so wall time and peak
memory (max RSS) are per mode: `--shared-pass-trials 1` (one trial at a time) and 48 (one
pass). The records of the two must be equal (all but `seconds`).

Run: python benchmarks/shared_pass.py [--train 64] [--epochs 2] [--model timm:resnet10t]
  [--out results/shared_pass_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

GRID = {"lr_schedule": ["none", "cosine", "plateau", "step"], "lr": [1e-2, 1e-3, 1e-4],
        "weight_decay": [0.05], "batch_size": [16], "optimizer": ["adam", "adamw"],
        "patience": [5, 10], "classification_loss": ["bce"]}


def make_dataset(root: Path, train: int) -> Path:
    from marseval.data.standardize import standardize
    from marseval.data.synthetic.generate import generate_benchmark
    from marseval.data.synthetic.writers import write_zenodo
    from marseval.registry import get_dataset

    spec = get_dataset("mb-frost_cls")
    counts = {"train": train, "val": train // 4, "test": train // 4}
    write_zenodo(generate_benchmark(spec, seed=0, size=64, samples=counts), spec, root / "raw")
    standardize(root / "raw", root / "data", spec.name, "synthetic", [1.0], [])
    return root / "data"


def run_mode(data: Path, out: Path, model: str, epochs: int, shared: int) -> dict:
    """One shard in this process; its wall time and peak RSS."""
    from marseval.bench.experiment import Setup
    from marseval.bench.grid import expand
    from marseval.bench.tune import run_shard

    trials = expand({**GRID, "max_epochs": [epochs]}, "classification", "binary")
    setup = Setup(data, model, pretrained=False, protocol="marsbench", augment=True,
                  selection="last")
    started = time.perf_counter()
    frame = run_shard(setup, trials, out, seed=0, max_trials=shared)
    seconds = time.perf_counter() - started
    return {"trials": len(frame), "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="timm:resnet10t")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results/shared_pass_cpu.json")
    parser.add_argument("--mode", type=int, help=argparse.SUPPRESS)  # a child: one mode
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(run_mode(args.data, args.shard, args.model, args.epochs, args.mode)))
        return

    import pandas as pd
    import torch

    with tempfile.TemporaryDirectory() as work:
        data = make_dataset(Path(work), args.train)
        modes, frames = {}, {}
        for shared in (1, 48):
            shard = Path(work) / f"shard-{shared}.parquet"
            child = subprocess.run(
                [sys.executable, __file__, "--mode", str(shared), "--data", str(data),
                 "--shard", str(shard), "--model", args.model, "--epochs", str(args.epochs)],
                capture_output=True, text=True, check=True)
            modes[shared] = json.loads(child.stdout.strip().splitlines()[-1])
            frames[shared] = pd.read_parquet(shard).drop(columns="seconds")
        equal = frames[1].equals(frames[48])
    alone, shared = modes[1], modes[48]
    results = {
        "machine": machine(torch=torch.__version__), "model": args.model,
        "train_images": args.train, "epochs": args.epochs, "grid": GRID,
        "trial_by_trial": alone, "shared_pass": shared, "records_equal": equal,
        "speedup": alone["seconds"] / shared["seconds"],
        "memory_ratio": shared["peak_rss_mb"] / alone["peak_rss_mb"],
    }
    write_results(args.out, results)
    print(f"| mode | trials | wall s | peak RSS MB |\n|---|---|---|---|\n"
          f"| trial by trial | {alone['trials']} | {alone['seconds']:.1f} | "
          f"{alone['peak_rss_mb']:.0f} |\n| one shared pass | {shared['trials']} | "
          f"{shared['seconds']:.1f} | {shared['peak_rss_mb']:.0f} |\n\n"
          f"speed-up {results['speedup']:.1f}x, records equal: {equal}")


if __name__ == "__main__":
    main()
