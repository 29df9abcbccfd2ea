"""Seconds per grid trial, by protocol: the probe's heads on the feature cache, the same
eval-mode backbone run online, and the Mars-Bench reference protocol (train-mode frozen
backbone, augmentation, last epoch; `bench.protocol: marsbench`), which cannot use a cache.

A synthetic 15-class set of 5,000 images (4,000 train, 500 val, 500 test) and a ResNet-50
backbone (random init: weights cannot be downloaded here; the compute is the same) at its
224-px input. Every mode trains the same linear head with the same seed for the same number
of epochs (early stopping off) and is measured in one run, each in a subprocess of its own so
peak memory is per mode.

Run: python benchmarks/feature_cache.py [--images 5000] [--epochs 2] [--model resnet50]
  [--out results/feature_cache.json]
Writes the JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

MODES = ("cache", "online", "marsbench")


def make_dataset(root: Path, images: int) -> Path:
    from marseval.data.standardize import standardize
    from marseval.data.synthetic.generate import generate_benchmark
    from marseval.data.synthetic.writers import write_zenodo
    from marseval.registry import get_dataset

    spec = get_dataset("mb-domars16k")
    counts = {"train": images * 8 // 10, "val": images // 10, "test": images // 10}
    write_zenodo(generate_benchmark(spec, seed=0, size=64, samples=counts), spec, root / "raw")
    standardize(root / "raw", root / "data", spec.name, "synthetic", [1.0], [])
    return root / "data"


def mode_setup(mode: str, data: Path, model: str, features: Path | None):
    """cache/online: the probe protocol with and without the cache; marsbench: the reference."""
    from marseval.bench.experiment import Setup

    if mode == "marsbench":
        return Setup(data, model, pretrained=False, protocol="marsbench", augment=True,
                     selection="last")
    return Setup(data, model, features_dir=features, pretrained=False, protocol="probe")


def run_mode(mode: str, data: Path, work: Path, epochs: int, model_name: str) -> dict:
    """One mode in this process: (extract +) fit one trial + score; peak RSS at the end."""
    import torch

    from marseval.bench.classification.experiment import ClassificationExperiment as Experiment
    from marseval.bench.classification.features import cache_features
    from marseval.bench.training import HParams

    torch.set_num_threads(os.cpu_count() or 1)
    result: dict = {"mode": mode}
    features = None
    if mode == "cache":
        features = work / "features"
        start = time.perf_counter()
        cache_features(data, model_name, features, pretrained=False, batch_size=64,
                       device="cpu")
        result["extract_seconds"] = time.perf_counter() - start
    experiment = Experiment(mode_setup(mode, data, model_name, features))
    hp = HParams(lr=0.001, weight_decay=0.05, batch_size=64, optimizer="adamw",
                 lr_schedule="none", max_epochs=epochs, patience=10**6, loss="cross_entropy")
    start = time.perf_counter()
    model, fit = experiment.fit(hp, seed=0)
    result["trial_seconds"] = time.perf_counter() - start
    result["epochs"] = fit.epochs_run
    start = time.perf_counter()
    result["test_f1"] = experiment.score(model, experiment.split("test"))["primary"]
    result["test_seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results/feature_cache.json")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process
        print(json.dumps(run_mode(args.mode, args.data, args.work, args.epochs, args.model)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        data = make_dataset(work, args.images)
        prepare = time.perf_counter() - start
        modes = {}
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--data", str(data), "--work",
                 str(work), "--epochs", str(args.epochs), "--model", args.model],
                capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"mode {mode} failed:\n{out.stderr[-3000:]}")
            modes[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    cache, online, reference = modes["cache"], modes["online"], modes["marsbench"]
    results = {
        "images": args.images, "model": args.model, "input_px": 224,
        "epochs_per_trial": args.epochs, "dataset_seconds": prepare, "cache": cache,
        "online": online, "marsbench": reference,
        "trial_speedup": online["trial_seconds"] / cache["trial_seconds"],
        # what fidelity costs: a reference-protocol trial against a probe trial on the cache,
        # and against the same eval-mode backbone online (train mode + augmentation alone)
        "marsbench_vs_probe_trial": reference["trial_seconds"] / cache["trial_seconds"],
        "marsbench_vs_online_trial": reference["trial_seconds"] / online["trial_seconds"],
        # the cache is paid once per (dataset, model); a grid of 648 trials shares it
        "speedup_648_trials": 648 * online["trial_seconds"]
        / (cache["extract_seconds"] + 648 * cache["trial_seconds"]),
        "f1_difference": abs(online["test_f1"] - cache["test_f1"]),
        "machine": machine(),
    }
    write_results(args.out, results)
    print("| measurement | probe, cache | probe, online | marsbench |\n|---|---|---|---|")
    print(f"| feature extraction (once per dataset and model) | "
          f"{cache['extract_seconds']:.1f} s | - | - |")
    print(f"| one grid trial ({args.epochs} epochs, {args.images * 8 // 10} train images) | "
          f"{cache['trial_seconds']:.2f} s | {online['trial_seconds']:.1f} s | "
          f"{reference['trial_seconds']:.1f} s |")
    print(f"| test F1 | {cache['test_f1']:.4f} | {online['test_f1']:.4f} | "
          f"{reference['test_f1']:.4f} |")
    print(f"| peak RSS | {cache['peak_rss_mib']:.0f} MiB | {online['peak_rss_mib']:.0f} MiB | "
          f"{reference['peak_rss_mib']:.0f} MiB |")
    print(f"\nreference protocol per trial: {results['marsbench_vs_probe_trial']:.0f}x a probe "
          f"trial on the cache, {results['marsbench_vs_online_trial']:.2f}x the same backbone "
          "online in eval mode")
    print(f"\nper-trial speed-up: {results['trial_speedup']:.0f}x; over a 648-trial grid "
          f"including extraction: {results['speedup_648_trials']:.0f}x; "
          f"F1 difference {results['f1_difference']:.4f}")


if __name__ == "__main__":
    main()
