"""Classification trials and runs end to end on small synthetic sets (CPU, random init)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from marseval.bench import tune as tune_module
from marseval.bench.classification.experiment import ClassificationExperiment as Experiment
from marseval.bench.classification.features import cache_features
from marseval.bench.experiment import Setup
from marseval.bench.grid import expand
from marseval.bench.runs import train_runs
from marseval.bench.selection import select_best
from marseval.bench.training import HParams
from marseval.bench.tune import run_shard
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.registry import get_dataset

MODEL = "timm:resnet10t"


def standardized(root: Path, name: str, samples: dict[str, int], size: int = 32) -> Path:
    spec = get_dataset(name)
    write_zenodo(generate_benchmark(spec, seed=0, size=size, samples=samples), spec,
                 root / f"raw-{name}")
    standardize(root / f"raw-{name}", root / name, name, "synthetic", [0.5, 1.0], [2])
    return root / name


@pytest.fixture(scope="module")
def domars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domars")
    data = standardized(root, "mb-domars16k", {"train": 150, "val": 45, "test": 60})
    cache_features(data, MODEL, root / "features", pretrained=False, batch_size=64)
    return data, root / "features"


HP = HParams(lr=0.01, weight_decay=0.05, batch_size=16, optimizer="adamw", lr_schedule="none",
             max_epochs=15, patience=5, loss="cross_entropy")


def test_a_small_synthetic_set_is_learned_well_above_chance(domars: tuple[Path, Path]) -> None:
    data, features = domars
    experiment = Experiment(Setup(data, MODEL, features, pretrained=False,
                                  head="batchnorm_linear"))
    model, _ = experiment.fit(HP, seed=0)
    scores = experiment.score(model, experiment.split("test"))
    # 15 balanced classes: chance is about 1/15 = 0.067 weighted F1
    assert scores["metric"] == "f1_weighted"
    assert scores["primary"] > 0.3, scores
    assert scores["accuracy"] > 0.3


def test_cached_heads_match_online_frozen_backbone(domars: tuple[Path, Path]) -> None:
    data, features = domars
    head = "linear"  # the paper's head
    # one epoch: the online path runs the 224-px backbone on every image of every epoch
    hp = HParams(**{**HP.__dict__, "max_epochs": 1, "patience": 10})
    scores = {}
    for mode, cache in (("cache", features), ("online", None)):
        experiment = Experiment(Setup(data, MODEL, cache, pretrained=False, head=head))
        assert experiment.cached == (cache is not None)
        model, result = experiment.fit(hp, seed=3)
        scores[mode] = (experiment.score(model, experiment.split("test"))["primary"],
                        result.best_val_loss)
    # the two paths differ only by the float16 rounding of cached features
    assert abs(scores["cache"][0] - scores["online"][0]) <= 0.01, scores
    assert scores["cache"][1] == pytest.approx(scores["online"][1], abs=1e-2)


def test_a_resumed_shard_skips_recorded_trials(domars: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data, features = domars
    grid = {"lr_schedule": ["none"], "lr": [0.01, 0.001, 0.0001], "weight_decay": [0.05],
            "batch_size": [32], "optimizer": ["adamw"], "max_epochs": [2], "patience": [2],
            "classification_loss": ["cross_entropy"]}
    trials = expand(grid, "classification", "multiclass")
    setup = Setup(data, MODEL, features, pretrained=False)
    out = tmp_path / "shard0.parquet"
    original = Experiment.fit_group

    def killed_after_two(self, hps, seed, on_finish=None, **kwargs):
        recorded = []

        def record(index, result):
            if len(recorded) == 2:
                raise KeyboardInterrupt  # the job is killed as its third trial stops
            recorded.append(index)
            on_finish(index, result)

        return original(self, hps, seed, on_finish=record, **kwargs)

    monkeypatch.setattr(Experiment, "fit_group", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_shard(setup, trials, out, max_trials=3)  # the three trials share one pass
    assert not out.exists()
    assert len(pd.read_parquet(tune_module.progress_path(out))) == 2

    calls: list[list[float]] = []

    def recording(self, hps, seed, **kwargs):
        calls.append([hp.lr for hp in hps])
        return original(self, hps, seed, **kwargs)

    monkeypatch.setattr(Experiment, "fit_group", recording)
    frame = run_shard(setup, trials, out, max_trials=3)
    assert calls == [[0.0001]]  # only the unrecorded trial runs
    assert list(frame["trial_id"]) == [t["trial_id"] for t in trials]
    assert not tune_module.progress_path(out).exists()
    # one trial at a time gives the same records as the resumed shared pass
    alone = run_shard(setup, trials, tmp_path / "alone.parquet", max_trials=1)
    assert calls[1:] == [[0.01], [0.001], [0.0001]]
    pd.testing.assert_frame_equal(frame.drop(columns="seconds"), alone.drop(columns="seconds"))
    best = select_best([out], tmp_path / "best.json")
    assert best["trials"] == 3


def test_the_same_seed_gives_an_identical_run_record(domars: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    data, features = domars
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"hyperparameters": {**HP.__dict__, "max_epochs": 3}}))
    setup = Setup(data, MODEL, features, pretrained=False)
    outs = [tmp_path / "a" / "seed7.json", tmp_path / "b" / "seed7.json",
            tmp_path / "c" / "seed8.json"]
    for out in outs:
        out.parent.mkdir()
    first = train_runs(setup, best, "fraction_0.50", [7], [outs[0]])[0]
    again, other = train_runs(setup, best, "fraction_0.50", [7, 8], outs[1:])
    for record in (first, again, other):
        record.pop("timing")
    assert first == again
    assert other["seed"] == 8 and other["test"] != first["test"] or \
        other["best_val_loss"] != first["best_val_loss"]
    assert first["n_train"] == 75 and first["subset"] == "fraction:0.50"
    assert json.loads(outs[0].read_text())["test"] == first["test"]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_binary_single_output_and_multilabel_runs(tmp_path: Path) -> None:
    for name, loss in (("mb-frost_cls", "bce"), ("mb-surface_multi_label_cls", "bce")):
        data = standardized(tmp_path, name, {"train": 24, "val": 8, "test": 8})
        experiment = Experiment(Setup(data, MODEL, None, pretrained=False))
        hp = HParams(**{**HP.__dict__, "loss": loss, "max_epochs": 2})
        model, _ = experiment.fit(hp, seed=0)
        scores = experiment.score(model, experiment.split("test"))
        expected = "f1_positive_class" if name == "mb-frost_cls" else "f1_weighted"
        assert scores["metric"] == expected
        assert 0.0 <= scores["primary"] <= 1.0
