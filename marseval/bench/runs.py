"""Final runs: the selected hyperparameters retrained on one partition with one seed.

The run record holds the test metrics of the best-validation checkpoint, the hyperparameters,
timings (under "timing", the only part that differs between identical reruns), the device
and the library versions.
"""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from marseval import __version__
from marseval.atomic import atomic_write_json
from marseval.bench.experiment import Setup, open_experiment
from marseval.bench.tune import load_best
from marseval.errors import MarsevalError

DEFAULT_PARTITION = "default"  # the full training set, Mars-Bench's "partition name"


def partition_subset(partition: str) -> str:
    """Our subset key for a partition name: default, fraction_0.25, fewshot_5."""
    if partition == DEFAULT_PARTITION:
        return "fraction:1.00"
    kind, _, value = partition.partition("_")
    if kind == "fraction":
        return f"fraction:{float(value):.2f}"
    if kind == "fewshot":
        return f"fewshot:{int(value)}"
    raise MarsevalError(f"unknown partition {partition!r} (default, fraction_<f>, fewshot_<k>)")


def versions() -> dict[str, str]:
    found = {"marseval": __version__, "python": platform.python_version(),
             "torch": torch.__version__, "torchvision": metadata.version("torchvision")}
    # the metric and model libraries this job imported (an import here would cost seconds:
    # torchmetrics scores classification only)
    for module, key in (("torchmetrics", "torchmetrics"), ("timm", "timm"),
                        ("segmentation_models_pytorch", "smp"),
                        ("ultralytics", "ultralytics"), ("pycocotools", "pycocotools")):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, "__version__"):
            found[key] = loaded.__version__
    return found


def train_runs(setup: Setup, best: Path, partition: str, seeds: list[int],
               outs: list[Path]) -> list[dict[str, Any]]:
    """One run per seed, all on one partition; the data and model load once."""
    if len(seeds) != len(outs):
        raise MarsevalError(f"{len(seeds)} seeds but {len(outs)} output files")
    hp = load_best(best)
    subset = partition_subset(partition)
    experiment = open_experiment(setup)
    if subset not in experiment.subsets:
        raise MarsevalError(f"{setup.dataset_dir}: no training subset {subset} (see its "
                            "meta.json skipped_subsets)")
    train, val, test = (experiment.split("train", subset), experiment.split("val"),
                        experiment.split("test"))
    # the reference tests in batches of the training batch size, and its F1 decides per batch
    # whether logits get a sigmoid (docs/fidelity.md, row 11); the probe keeps each task's own
    scoring = {"batch_size": hp.batch_size} if setup.rules.metrics == "torchmetrics" else {}
    records = []
    for seed, out in zip(seeds, outs, strict=True):
        checkpoint = out.with_name(f".{out.stem}.ckpt")
        start = time.perf_counter()
        model, result = experiment.fit(hp, seed, train=train, val=val, checkpoint=checkpoint,
                                       progress=f"{partition} seed {seed}")
        fitted = time.perf_counter()
        record = {
            "dataset": experiment.meta["name"],
            "model": setup.model,
            "model_display": experiment.display_name,
            "task": experiment.meta["task"],
            # where the data came from (synthetic, huggingface, zenodo): leaderboard reports
            # refuse synthetic runs
            "data_source": experiment.meta.get("source"),
            "subtask": experiment.subtask,
            "partition": partition,
            "subset": subset,
            "n_train": len(train.ids),
            "seed": seed,
            "training_type": setup.training_type,
            "protocol": setup.rules.record(),
            "feature_cache": experiment.cached,
            "augment": setup.augment,
            "head": setup.head if experiment.task == "classification" else None,
            "input_size": getattr(experiment, "input_size", None),
            "selection": setup.selection,
            "hyperparameters": hp.__dict__,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_loss": result.best_val_loss,
            "test": experiment.score(model, test, **scoring),
            "device": experiment.device,
            "versions": versions(),
            "timing": {"fit_seconds": fitted - start,
                       "test_seconds": time.perf_counter() - fitted},
        }
        atomic_write_json(out, record)
        checkpoint.unlink(missing_ok=True)
        records.append(record)
    return records
