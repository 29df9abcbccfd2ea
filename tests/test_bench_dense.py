"""Segmentation and detection experiments end to end on small synthetic sets (CPU, random init)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from marseval.bench.collect import collect
from marseval.bench.detection.data import DetectionDataset, drop_images_without_boxes
from marseval.bench.experiment import Setup, open_experiment
from marseval.bench.grid import expand
from marseval.bench.runs import train_runs
from marseval.bench.segmentation.metrics import SegmentationScorer
from marseval.bench.selection import select_best
from marseval.bench.training import HParams, validation_loss
from marseval.bench.tune import run_shard
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.errors import MarsevalError
from marseval.registry import get_dataset

SEGMENTER = "unet:resnet18"
DETECTOR = "yolo11n"
SAMPLES = {"train": 32, "val": 8, "test": 8}


@pytest.fixture(autouse=True)
def _yolo_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")


def standardized(root: Path, name: str, samples: dict[str, int], size: int = 64) -> Path:
    spec = get_dataset(name)
    write_zenodo(generate_benchmark(spec, seed=0, size=size, samples=samples), spec,
                 root / f"raw-{name}")
    standardize(root / f"raw-{name}", root / name, name, "synthetic", [0.5, 1.0], [])
    return root / name


@pytest.fixture(scope="module")
def craters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standardized(tmp_path_factory.mktemp("seg"), "mb-crater_binary_seg", SAMPLES)


@pytest.fixture(scope="module")
def boulders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standardized(tmp_path_factory.mktemp("det"), "mb-boulder_det", SAMPLES)


def hparams(loss: str, epochs: int, lr: float = 0.01) -> HParams:
    return HParams(lr=lr, weight_decay=0.0, batch_size=8, optimizer="adamw", lr_schedule="none",
                   max_epochs=epochs, patience=epochs, loss=loss)


def test_segmentation_learns_craters_beyond_all_background(craters: Path) -> None:
    experiment = open_experiment(Setup(craters, SEGMENTER, pretrained=False, input_size=64))
    assert experiment.task == "segmentation"
    model, result = experiment.fit(hparams("cross_entropy", 15), seed=0)
    test = experiment.split("test")
    scores = experiment.score(model, test)
    assert scores["metric"] == "iou" and scores["primary"] == scores["iou"]
    assert scores["n_images"] == SAMPLES["test"]
    # the baseline that predicts background everywhere, scored by the same definition
    baseline = SegmentationScorer(2)
    for index in range(len(test.ids)):
        mask = test.images.native_mask(index)
        baseline.update(torch.zeros_like(mask), mask)
    assert scores["iou"] > baseline.compute()["iou"] + 0.05, (scores, result.history[-1])


def test_native_scoring_equals_input_scoring_at_the_native_size(craters: Path) -> None:
    scores = {}
    for resolution in ("input", "native"):
        experiment = open_experiment(Setup(craters, SEGMENTER, pretrained=False, input_size=64,
                                           score_resolution=resolution))
        model, _ = experiment.fit(hparams("cross_entropy", 1), seed=3)
        scores[resolution] = experiment.score(model, experiment.split("test"))
    for key in ("iou", "miou", "dice"):
        assert scores["input"][key] == pytest.approx(scores["native"][key], abs=1e-12)
    smaller = open_experiment(Setup(craters, SEGMENTER, pretrained=False, input_size=32,
                                    score_resolution="native"))
    model, _ = smaller.fit(hparams("cross_entropy", 1), seed=3)
    native = smaller.score(model, smaller.split("test"))
    # scored on the 64-px masks although the model saw 32-px images
    assert native["n_images"] == SAMPLES["test"] and 0.0 <= native["iou"] <= 1.0


def test_segmentation_shard_selection_and_seeded_runs(craters: Path, tmp_path: Path) -> None:
    grid = {"lr_schedule": ["none"], "lr": [0.01, 0.001], "weight_decay": [0.0],
            "batch_size": [8], "optimizer": ["adamw"], "max_epochs": [2], "patience": [2],
            "segmentation_loss": ["cross_entropy", "dice"]}
    trials = expand(grid, "segmentation", "semantic")
    assert len(trials) == 4
    # 32 px: selection and seeding do not depend on the size; a quarter of 64 px's cost
    setup = Setup(craters, SEGMENTER, pretrained=False, input_size=32)
    frame = run_shard(setup, trials, tmp_path / "shard0.parquet")
    assert frame["best_val_loss"].notna().all()
    select_best([tmp_path / "shard0.parquet"], tmp_path / "best.json")
    outs = [tmp_path / "a" / "seed1.json", tmp_path / "b" / "seed1.json"]
    first = train_runs(setup, tmp_path / "best.json", "fraction_0.50", [1], outs[:1])[0]
    again = train_runs(setup, tmp_path / "best.json", "fraction_0.50", [1], outs[1:])[0]
    for record in (first, again):
        record.pop("timing")
    assert first == again
    assert first["n_train"] == SAMPLES["train"] // 2 and first["input_size"] == 32
    assert first["task"] == "segmentation" and first["head"] is None
    table = collect(outs)
    assert list(table.columns[:6]) == ["model", "dataset", "test metric", "training_type",
                                       "seed", "partition name"]
    assert table["metric"].tolist() == ["iou", "iou"]
    assert table["miou"].between(0, 1).all() and table["partition name"].tolist() == ["0.5"] * 2


def test_detection_trains_and_is_scored_on_native_boxes(boulders: Path, tmp_path: Path) -> None:
    setup = Setup(boulders, DETECTOR, pretrained=False, input_size=64)
    experiment = open_experiment(setup)
    assert experiment.task == "detection"
    model, result = experiment.fit(hparams("default", 3, lr=0.002), seed=0)
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in result.history)
    scores = experiment.score(model, experiment.split("test"))
    assert scores["metric"] == "map" and 0.0 <= scores["map"] <= scores["map_50"] <= 1.0
    assert scores["n_images"] == SAMPLES["test"]
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"hyperparameters": hparams("default", 1).__dict__}))
    record = train_runs(setup, best, "default", [0], [tmp_path / "seed0.json"])[0]
    assert record["test"]["metric"] == "map" and record["model_display"]
    assert set(collect([tmp_path / "seed0.json"]).columns) >= {"map_50", "map_75"}
    with pytest.raises(MarsevalError, match="detection loss"):
        experiment.fit(hparams("cross_entropy", 1), seed=0)


def test_the_detection_pipeline_learns_the_boxes_of_a_few_images(boulders: Path) -> None:
    # Overfitting four images through the experiment's own data, loss, predictions and COCO
    # scoring shows the pieces fit together: boxes scaled the right way in and out, labels
    # aligned, predictions scored against the native ground truth.
    from marseval.bench.detection.data import collate_detection
    from marseval.bench.experiment import Split

    # 128 px: the 14 x 9 px synthetic boulders of the 64-px images cover enough anchor
    # points of YOLO's stride-8 grid for its assigner to find positives from the start
    experiment = open_experiment(Setup(boulders, DETECTOR, pretrained=False, input_size=128,
                                       training_type="transfer_learning"))
    rows = experiment.rows("train")
    rows = rows[rows["boxes"].map(len) > 0].head(4)
    images = DetectionDataset(boulders, rows, experiment.input_size)
    few = Split(images.ids, images=images, collate_fn=collate_detection)
    hp = HParams(lr=0.003, weight_decay=0.0, batch_size=4, optimizer="adamw",
                 lr_schedule="none", max_epochs=100, patience=100, loss="default")
    model, _ = experiment.fit(hp, seed=0, train=few, val=few)
    assert experiment.score(model, few)["map_50"] > 0.5


def test_detection_boxes_scale_to_the_input_frame_and_back(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (500, 250)).save(tmp_path / "a.png")
    frame = pd.DataFrame({"sample_id": ["a"], "image": ["a.png"], "width": [500],
                          "height": [250], "boxes": [[[50.0, 50.0, 100.0, 100.0, 0]]]})
    dataset = DetectionDataset(tmp_path, frame, input_size=100)
    image, target = dataset[0]
    assert image.shape == (3, 100, 100)
    # x scales by 100/500, y by 100/250
    assert target["boxes"].tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert target["labels"].tolist() == [0]
    assert dataset.scale(0) == (0.2, 0.4)


def test_images_without_boxes_can_be_dropped() -> None:
    frame = pd.DataFrame({"sample_id": ["a", "b", "c"],
                          "boxes": [[[0, 0, 1, 1, 0]], [], [[2, 2, 3, 3, 0]]]})
    assert drop_images_without_boxes(frame)["sample_id"].tolist() == ["a", "c"]
    with pytest.raises(MarsevalError, match="no image"):
        drop_images_without_boxes(frame.iloc[[1]])


def test_per_batch_validation_loss_equals_the_loss_of_the_whole_split() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(23, 4), torch.randint(0, 3, (23,))
    batches = [(x[i:i + 5], y[i:i + 5]) for i in range(0, 23, 5)]  # the last one is short
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(net, batch):
        return net(batch[0]), batch[1]

    with torch.no_grad():
        expected = float(loss_fn(model(x), y))
    assert validation_loss(model, step, batches, loss_fn) == pytest.approx(expected, rel=1e-6)


def test_a_dataset_of_another_task_is_refused(craters: Path) -> None:
    from marseval.bench.detection.experiment import DetectionExperiment

    with pytest.raises(MarsevalError, match="segmentation dataset, not detection"):
        DetectionExperiment(Setup(craters, DETECTOR, pretrained=False))
