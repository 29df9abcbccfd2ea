"""Shared passes (issue 15): trials run together on one frozen-trunk pass give the records they
give alone (a group of one), on the CPU.

Tolerance: none. Each trial's head sees the same trunk features, computed once per batch in
both cases, and its own arithmetic does not depend on the other trials, so the records are
compared exactly (`==` on floats).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from marseval.bench.experiment import Setup, open_experiment
from marseval.bench.shared_pass import GroupTrial, RngStream, fit_group
from marseval.bench.training import HParams, seed_everything
from marseval.errors import MarsevalError

# six trials of one group: one batch size, everything else varies
GRID = [
    dict(lr=1e-2, optimizer="adamw", lr_schedule="none", patience=2, max_epochs=4),
    dict(lr=1e-3, optimizer="sgd", lr_schedule="cosine", patience=1, max_epochs=3),
    dict(lr=5e-2, optimizer="adam", lr_schedule="step", patience=3, max_epochs=2),
    dict(lr=1e-2, optimizer="sgd", lr_schedule="plateau", patience=1, max_epochs=4),
    dict(lr=1e-4, optimizer="adamw", lr_schedule="cosine", patience=5, max_epochs=3),
    dict(lr=2e-2, optimizer="adam", lr_schedule="none", patience=1, max_epochs=1),
]


def grid(losses: list[str], batch_size: int = 4) -> list[HParams]:
    return [HParams(weight_decay=0.0, batch_size=batch_size, loss=losses[i % len(losses)],
                    **point) for i, point in enumerate(GRID)]


def record(result) -> dict:
    return {"history": result.history, "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run, "best_val_loss": result.best_val_loss}


# ------------------------------------------------------------------ the loop, with dropout


class Trunk(nn.Module):
    """A frozen trunk that draws random numbers in train mode and moves BatchNorm statistics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)
        self.layers = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.3))
        self.layers.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Model(nn.Module):
    def __init__(self, trunk: Trunk) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 3))  # draws in train mode


def _data(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(24, 5, generator=g) * 2 + 1, torch.randint(0, 3, (24,), generator=g)
    return [(x[i:i + 4], y[i:i + 4]) for i in range(0, 24, 4)]


def _noisy_batches(epoch: int):
    # augmentation-like draws from the global generator while batches are made
    for x, y in _data():
        yield x + 0.1 * torch.randn_like(x), y


def _fit(hps: list[HParams], trunk: Trunk) -> tuple[list, list[Model]]:
    trials, models = [], []
    for hp in hps:
        seed_everything(7)
        model = Model(trunk)
        for layer in model.head:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()  # from the seeded generator, as a lone fit
        models.append(model)
        trials.append(GroupTrial(model, hp, nn.functional.cross_entropy, RngStream.capture()))
    results = fit_group(trials, lambda batch: (trunk(batch[0]), batch[1]),
                        lambda model, features: model.head(features), _noisy_batches, _data,
                        seed=7, selection="last", frozen="train")
    return results, models


def test_each_trial_of_a_shared_pass_equals_the_trial_alone_with_random_draws() -> None:
    hps = grid(["cross_entropy"])
    alone = [_fit([hp], Trunk())[0][0] for hp in hps]
    shared, models = _fit(hps, Trunk())
    for hp, one, many in zip(hps, alone, shared, strict=True):
        assert record(many) == record(one), hp
        # the selected state: this trial's head and the trunk's statistics when it stopped
        assert set(many.best_state) == set(one.best_state)
        for key, value in one.best_state.items():
            assert torch.equal(many.best_state[key], value), (hp, key)
    # trials stopped at different epochs, so they kept different trunk statistics
    means = {tuple(r.best_state["trunk.layers.1.running_mean"].tolist()) for r in shared}
    assert len(means) > 1
    assert sorted({r.epochs_run for r in shared}) == [1, 2, 3, 4]


def test_without_private_streams_the_trials_would_not_match() -> None:
    """The oracle above can fail: two trials drawing head dropout from one shared generator
    (no streams) give other results than each alone."""
    hps = grid(["cross_entropy"])[:2]
    alone = _fit([hps[0]], Trunk())[0][0]
    torch.manual_seed(0)
    stream = RngStream.capture()
    trunk = Trunk()
    trials = []
    for hp in hps:
        seed_everything(7)
        model = Model(trunk)
        for layer in model.head:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        trials.append(GroupTrial(model, hp, nn.functional.cross_entropy, stream))  # one stream
    shared = fit_group(trials, lambda batch: (trunk(batch[0]), batch[1]),
                       lambda model, features: model.head(features), _noisy_batches, _data,
                       seed=7, selection="last", frozen="train")
    assert record(shared[0]) != record(alone)


# ------------------------------------------------------------------ experiments


def _check_experiment(experiment, hps: list[HParams]) -> None:
    train, val, test = (experiment.split("train"), experiment.split("val"),
                        experiment.split("test"))
    alone = []
    for hp in hps:
        [(model, result)] = experiment.fit_group([hp], seed=3, train=train, val=val)
        alone.append((record(result), experiment.score(model, test)))
    shared = experiment.fit_group(hps, seed=3, train=train, val=val)
    for hp, (one, one_scores), (model, many) in zip(hps, alone, shared, strict=True):
        assert record(many) == one, hp
        # the models share the trunk: score each with its own selected state
        model.load_state_dict(many.best_state, strict=False)
        assert experiment.score(model, test) == one_scores, hp


def test_classification_in_the_reference_protocol(tmp_path: Path) -> None:
    from test_bench_classify import standardized

    data = standardized(tmp_path, "mb-frost_cls", {"train": 12, "val": 4, "test": 4})
    # the reference protocol: train-mode frozen backbone (BatchNorm statistics move),
    # augmentation, last epoch tested
    experiment = open_experiment(Setup(data, "timm:resnet10t", pretrained=False,
                                       protocol="marsbench", augment=True, selection="last"))
    _check_experiment(experiment, grid(["bce", "cross_entropy"]))


def test_segmentation_shares_the_frozen_encoder(tmp_path: Path) -> None:
    from test_bench_dense import standardized

    data = standardized(tmp_path, "mb-crater_binary_seg", {"train": 8, "val": 4, "test": 4},
                        size=32)
    experiment = open_experiment(Setup(data, "unet:resnet18", pretrained=False, input_size=32,
                                       protocol="marsbench", augment=True, selection="last"))
    hps = grid(["cross_entropy", "generalized_dice_square", "combined"])
    models = [experiment.build_model(hp, 0) for hp in hps[:2]]
    trunk, head = experiment.share_trunk(models)
    assert models[0].encoder is models[1].encoder  # one encoder pass for all
    _check_experiment(experiment, hps)


def test_trials_with_different_batch_sizes_are_refused(tmp_path: Path) -> None:
    from test_bench_classify import standardized

    data = standardized(tmp_path, "mb-frost_cls", {"train": 4, "val": 2, "test": 2})
    experiment = open_experiment(Setup(data, "timm:resnet10t", pretrained=False))
    hps = grid(["bce"])[:1] + grid(["bce"], batch_size=8)[1:2]
    with pytest.raises(MarsevalError, match="batch_size"):
        experiment.fit_group(hps, seed=0)


def test_a_shard_groups_its_trials_by_batch_size_up_to_the_bound() -> None:
    from marseval.bench.grid import shared_groups

    sizes, epochs = [16, 32, 16, 16, 32, 64, 16], [200, 50, 50, 100, 50, 50, 50]
    trials = [{"trial_id": i, "batch_size": size, "max_epochs": epochs[i]}
              for i, size in enumerate(sizes)]
    groups = shared_groups(trials, 3)
    # by batch size (in order of first appearance after sorting), shortest trials first
    assert [[t["trial_id"] for t in g] for g in groups] == [[1, 4], [2, 6, 3], [0], [5]]
    assert [len(g) for g in shared_groups(trials, 1)] == [1] * 7
    with pytest.raises(MarsevalError, match="bench.shared_pass_trials"):
        shared_groups(trials, 0)


def test_a_pass_out_of_gpu_memory_is_split_and_keeps_what_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA cannot run here: a fit_group that fails like a GPU out of memory for more than two
    trials (after recording its first) stands in for it."""
    from test_bench_classify import standardized

    from marseval.bench import tune
    from marseval.bench.experiment import Experiment
    from marseval.bench.grid import expand

    data = standardized(tmp_path, "mb-frost_cls", {"train": 4, "val": 2, "test": 2})
    setup = Setup(data, "timm:resnet10t", pretrained=False)
    grid = {"lr_schedule": ["none"], "lr": [0.1, 0.01, 0.001, 0.0001, 0.2], "batch_size": [4],
            "weight_decay": [0.0], "optimizer": ["sgd"], "max_epochs": [1], "patience": [1],
            "classification_loss": ["bce"]}
    trials = expand(grid, "classification", "binary")
    original, passes = Experiment.fit_group, []

    def small_gpu(self, hps, seed, on_finish=None, **kwargs):
        passes.append([hp.lr for hp in hps])
        if len(hps) > 2:
            original(self, hps[:1], seed, on_finish=on_finish, **kwargs)  # one finished
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, hps, seed, on_finish=on_finish, **kwargs)

    monkeypatch.setattr(Experiment, "fit_group", small_gpu)
    frame = tune.run_shard(setup, trials, tmp_path / "shard.parquet", max_trials=5)
    # 5 -> the first recorded, the other 4 in two passes of 2
    assert passes == [[0.1, 0.01, 0.001, 0.0001, 0.2], [0.01, 0.001], [0.0001, 0.2]]
    assert sorted(frame["lr"]) == sorted(grid["lr"])


def test_detection_shares_the_batches_and_each_detector_trains_on_its_own_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_bench_dense import standardized

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    data = standardized(tmp_path, "mb-boulder_det", {"train": 4, "val": 2, "test": 2}, size=64)
    experiment = open_experiment(Setup(data, "yolo11n", pretrained=False, input_size=64,
                                       protocol="marsbench", augment=True, selection="last"))
    hps = [HParams(weight_decay=0.0, batch_size=2, loss="default", **point)
           for point in GRID[:3]]
    hps = [HParams(**{**hp.__dict__, "max_epochs": min(hp.max_epochs, 2)}) for hp in hps]
    _check_experiment(experiment, hps)
