"""Grid expansion, shards, selection and the runs table: pure bookkeeping, hand-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from marseval.bench.collect import SCHEMA, collect
from marseval.bench.grid import expand, shard, trial_id
from marseval.bench.runs import partition_subset
from marseval.bench.selection import select_best
from marseval.errors import MarsevalError

REPO = Path(__file__).resolve().parents[1]


def paper_grid() -> dict:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())["bench"]["grid"]


@pytest.mark.parametrize(("subtask", "count"), [("binary", 1296), ("multiclass", 648),
                                                ("multilabel", 648)])
def test_paper_grid_sizes(subtask: str, count: int) -> None:
    # 648 points; binary sets also try BCE with one output
    trials = expand(paper_grid(), "classification", subtask)
    assert len(trials) == count
    assert len({t["trial_id"] for t in trials}) == count
    if subtask == "multilabel":
        assert {t["loss"] for t in trials} == {"bce"}


def test_trial_ids_depend_on_values_not_order() -> None:
    a = {"lr": 0.001, "optimizer": "adam"}
    assert trial_id(a) == trial_id({"optimizer": "adam", "lr": 0.001})
    assert trial_id(a) != trial_id({"lr": 0.0001, "optimizer": "adam"})


def test_shards_partition_the_grid() -> None:
    trials = expand(paper_grid(), "classification", "multiclass")
    shards = [shard(trials, i, 8) for i in range(8)]
    assert sorted(len(s) for s in shards) == [81] * 8
    assert sorted(t["trial_id"] for s in shards for t in s) == sorted(
        t["trial_id"] for t in trials)
    with pytest.raises(ValueError, match="shard 8"):
        shard(trials, 8, 8)


def _shard_file(path: Path, rows: list[dict]) -> Path:
    base = {"lr": 0.001, "weight_decay": 0.05, "batch_size": 16, "optimizer": "adamw",
            "lr_schedule": "none", "max_epochs": 5, "patience": 2, "loss": "cross_entropy",
            "epochs_run": 5, "seconds": 1.0}
    pd.DataFrame([{**base, **r} for r in rows]).to_parquet(path)
    return path


def test_select_lowest_loss_then_fewest_epochs(tmp_path: Path) -> None:
    a = _shard_file(tmp_path / "a.parquet", [
        {"trial_id": "t1", "best_val_loss": 0.50, "best_epoch": 3},
        {"trial_id": "t2", "best_val_loss": 0.40, "best_epoch": 9, "lr": 0.01}])
    b = _shard_file(tmp_path / "b.parquet", [
        {"trial_id": "t3", "best_val_loss": 0.40, "best_epoch": 4, "lr": 0.0001},
        {"trial_id": "t4", "best_val_loss": float("nan"), "best_epoch": 1}])
    best = select_best([a, b], tmp_path / "best.json")
    assert best["trial_id"] == "t3"
    assert best["hyperparameters"]["lr"] == 0.0001 and best["trials"] == 4
    assert json.loads((tmp_path / "best.json").read_text()) == best


def test_select_fails_without_a_finite_loss(tmp_path: Path) -> None:
    a = _shard_file(tmp_path / "a.parquet", [
        {"trial_id": "t1", "best_val_loss": float("inf"), "best_epoch": 1}])
    with pytest.raises(MarsevalError, match="finite"):
        select_best([a], tmp_path / "best.json")
    assert not (tmp_path / "best.json").exists()


def test_partition_names() -> None:
    assert partition_subset("default") == "fraction:1.00"
    assert partition_subset("fraction_0.25") == "fraction:0.25"
    assert partition_subset("fewshot_5") == "fewshot:5"
    with pytest.raises(MarsevalError, match="unknown partition"):
        partition_subset("half")


def test_runs_table_has_the_mars_bench_schema(tmp_path: Path) -> None:
    def record(partition: str, seed: int, f1: float) -> Path:
        path = tmp_path / f"{partition}-{seed}.json"
        path.write_text(json.dumps({
            "dataset": "mb-frost_cls", "task": "classification", "model": "resnet101",
            "model_display": "ResNet101",
            "partition": partition, "seed": seed, "training_type": "feature_extraction",
            "n_train": 10, "best_epoch": 2, "epochs_run": 5, "device": "cpu",
            "test": {"metric": "f1_positive_class", "primary": f1, "f1": f1,
                     "accuracy": 0.9, "macro_f1": 0.8}}))
        return path

    table = collect([record("fewshot_5", 0, 0.5), record("default", 1, 0.75),
                     record("fraction_0.10", 0, 0.25)])
    assert list(table.columns[:6]) == SCHEMA
    by_partition = table.set_index("partition name")
    assert by_partition.loc["default", "test metric"] == 0.75
    assert by_partition.loc["0.1", "test metric"] == 0.25
    assert by_partition.loc["few_shot", "few_shot"] == "5"
    assert set(table["model"]) == {"ResNet101"}


def test_a_run_record_without_a_key_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps({"dataset": "mb-frost_cls", "partition": "default",
                                "test": {"metric": "f1_positive_class", "primary": 0.5}}))
    with pytest.raises(MarsevalError, match=r"seed0.json lacks the key 'model_display'"):
        collect([path])
