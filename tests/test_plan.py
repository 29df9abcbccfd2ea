"""The cost planner (`python -m marseval plan`): hand-computed estimates of a tiny config,
shared-pass groups with the K split, expected epochs, wall time on N GPUs, the paper config
through the CLI from the repository root, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from marseval.cli import main
from marseval.job_resources import model_cost
from marseval.planning import Options, make_plan
from marseval.planning.epochs import expected_longest
from marseval.planning.groups import shared_part
from marseval.planning.schedule import list_schedule

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0

# Train, validation and test images of the synthetic source (what job_resources counts).
TRAIN, VAL, TEST = 100, 20, 10
RATE = 1e12  # FLOP/s of the test device row
IMAGE_S, STEP_S, HEAD_S, START_S = 0.002, 0.005, 0.001, 60.0


def tiny_config(tmp_path: Path, **bench) -> Path:
    """One binary classification set (mb-frost_cls), ResNet-101, 12 grid trials: 2 learning
    rates x batch sizes 10 and 20 x max_epochs 10, 20 and 30, in 2 shards."""
    config = {
        "results": "results/tiny", "source": "synthetic", "offline": True,
        "datasets": ["mb-frost_cls"],
        "synthetic": {"samples": {"train": TRAIN, "val": VAL, "test": TEST}},
        "bench": {
            "models": {"classification": ["resnet101"], "segmentation": [], "detection": []},
            "protocol": "marsbench", "seeds": [0, 1], "partitions": [0.5], "fewshot": [],
            "grid_shards": 2,
            "grid": {"lr_schedule": ["none"], "lr": [0.001, 0.0001], "weight_decay": [0.05],
                     "batch_size": [10, 20], "optimizer": ["adam"], "max_epochs": [10, 20, 30],
                     "patience": [5], "classification_loss": ["cross_entropy"]},
            **bench},
        "retrieval": {"models": []},
        "job_resources": {"image_overhead_ms": IMAGE_S * 1000, "step_overhead_ms": STEP_S * 1000,
                          "overhead_minutes": START_S / 60},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def device_table(tmp_path: Path) -> Path:
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"devices": {"test": {
        "kind": "assumed", "description": "a 1 TFLOP/s device", "effective_tflops": RATE / 1e12}}}))
    return path


def steps(batch: int) -> int:
    return math.ceil(TRAIN / batch) + math.ceil(VAL / batch)


# The grid in order (lr, batch size, max_epochs), trial i = 6 lr + 3 batch + epochs; shards
# take every other trial: shard 0 (batch, max_epochs) = (10, 10), (10, 30), (20, 20) for each
# lr, shard 1 = (10, 20), (20, 10), (20, 30). A shared pass: one batch size, shortest
# max_epochs first, at most K trials. With K = 2:
#   shard 0: batch 10 [10, 10] [30, 30], batch 20 [20, 20]
#   shard 1: batch 10 [20, 20], batch 20 [10, 10] [30, 30]
SHARDS = {0: [(10, [10, 10]), (10, [30, 30]), (20, [20, 20])],
          1: [(10, [20, 20]), (20, [10, 10]), (20, [30, 30])]}


def test_tiny_config_matches_hand_computed_estimate(tmp_path: Path) -> None:
    """FLOPs x images x epochs / throughput, trial by trial and in shared passes of at most
    K = 2 trials; wall time of the shards on 2 GPUs; final runs."""
    options = Options(gpus=2, cores=4, max_heads=2, expected_epoch_fraction=0.5,
                      head_step_ms=HEAD_S * 1000)
    plan = make_plan(tiny_config(tmp_path), "test", options, device_table(tmp_path))
    stages = plan["summary"]["stages"]
    forward = model_cost("resnet101")["forward_gflops"] * 1e9  # 15.6 GFLOPs
    head = 2 * 2048 * 2  # linear head: 2 x feature_dim x classes
    test_pass = forward * TEST / RATE

    def alone(epochs: float, batch: int) -> float:
        """One trial: per epoch a training pass (3 forwards) and a validation pass, decoding
        and steps; a test pass at the end."""
        return (epochs * ((3 * forward * TRAIN + forward * VAL) / RATE
                          + (TRAIN + VAL) * IMAGE_S + STEP_S * steps(batch)) + test_pass)

    def by_trial_shard(index: int, fraction: float = 1.0) -> float:
        return sum(alone(fraction * e, b) for b, group in SHARDS[index] for e in group) + START_S

    tune = stages["tune"]
    by_trial = tune["trial_by_trial"]
    assert by_trial["jobs"] == 2 and by_trial["trials"] == 12
    assert by_trial["upper"]["gpu_hours"] == pytest.approx(
        (by_trial_shard(0) + by_trial_shard(1)) / HOUR)
    # 2 GPUs: each shard on its own; the longer (shard 0: more steps) is the wall time
    assert by_trial_shard(0) > by_trial_shard(1)
    assert by_trial["upper"]["wall_hours"] == pytest.approx(by_trial_shard(0) / HOUR)
    assert by_trial["expected"]["gpu_hours"] == pytest.approx(
        (by_trial_shard(0, 0.5) + by_trial_shard(1, 0.5)) / HOUR)

    # shared: the backbone (and decoding, and the per-batch step) once per batch for the
    # pass's longest trial; each trial its head, its head step and its test pass
    def group(batch: int, length: float, epochs: list[float]) -> float:
        trunk = forward - head
        return (length * ((3 * trunk * TRAIN + trunk * VAL) / RATE + (TRAIN + VAL) * IMAGE_S
                          + (STEP_S - HEAD_S) * steps(batch))
                + sum(e * ((3 * head * TRAIN + head * VAL) / RATE + HEAD_S * steps(batch))
                      + test_pass for e in epochs))

    shared = tune["shared"]
    assert shared["jobs"] == 2 and shared["groups"] == 6 and shared["trials"] == 12
    upper = [sum(group(b, max(g), g) for b, g in SHARDS[i]) + START_S for i in (0, 1)]
    assert shared["upper"]["gpu_hours"] == pytest.approx(sum(upper) / HOUR)
    assert shared["upper"]["wall_hours"] == pytest.approx(max(upper) / HOUR)
    assert shared["upper"]["gpu_hours"] < 0.75 * by_trial["upper"]["gpu_hours"]
    expected = sum(group(b, expected_longest(g, 0.5), [0.5 * e for e in g])
                   for i in (0, 1) for b, g in SHARDS[i]) + 2 * START_S
    assert shared["expected"]["gpu_hours"] == pytest.approx(expected / HOUR)

    # final runs: 2 seeds x (default, fraction 0.50), one job each; the grid's 30 epochs at
    # batch 10; fraction 0.50 trains on 50 images
    train = stages["train"]["all"]
    assert train["jobs"] == 4
    half = (30 * ((3 * forward * 50 + forward * VAL) / RATE + (50 + VAL) * IMAGE_S
                  + STEP_S * (5 + 2)) + test_pass)
    assert train["upper"]["gpu_hours"] == pytest.approx(
        2 * (alone(30, 10) + half + 2 * START_S) / HOUR)
    assert stages["features"]["all"]["jobs"] == 0  # the reference protocol caches nothing
    assert plan["summary"]["totals"]["shared"]["upper"]["gpu_hours"] == pytest.approx(
        sum(upper) / HOUR + train["upper"]["gpu_hours"])


def test_feature_cache_plans_features_once_and_head_only_trials(tmp_path: Path) -> None:
    """Probe protocol: one features job over every image; trials train a head on the cached
    features (nothing decoded), and a shared pass shares only its per-batch step."""
    options = Options(gpus=1, head_step_ms=HEAD_S * 1000)  # K: shared_pass_trials, 32
    plan = make_plan(tiny_config(tmp_path, protocol="probe"), "test", options,
                     device_table(tmp_path))
    stages = plan["summary"]["stages"]
    forward = model_cost("resnet101")["forward_gflops"] * 1e9
    features = (TRAIN + VAL + TEST) * (forward / RATE + IMAGE_S) + START_S
    assert stages["features"]["all"]["jobs"] == 1
    assert stages["features"]["all"]["upper"]["gpu_hours"] == pytest.approx(features / HOUR)
    head = 2 * 2048 * 2
    flops = {e: e * (3 * head * TRAIN + head * VAL) / RATE + head * TEST / RATE
             for e in (10, 20, 30)}
    tune = stages["tune"]
    alone = sum(flops[e] + e * STEP_S * steps(b) for i in (0, 1) for b, g in SHARDS[i]
                for e in g)
    assert tune["trial_by_trial"]["upper"]["gpu_hours"] == pytest.approx(
        (alone + 2 * START_S) / HOUR)
    # K = 32: one pass per batch size and shard, e.g. shard 0 batch 10 = [10, 30, 10, 30]
    passes = [(10, [10, 30, 10, 30]), (20, [20, 20]), (10, [20, 20]), (20, [10, 30, 10, 30])]
    shared = sum(max(g) * (STEP_S - HEAD_S) * steps(b)
                 + sum(flops[e] + e * HEAD_S * steps(b) for e in g) for b, g in passes)
    assert tune["shared"]["groups"] == 4
    assert tune["shared"]["upper"]["gpu_hours"] == pytest.approx((shared + 2 * START_S) / HOUR)
    assert plan["sharing"]["classification"].startswith("feature batches")


def test_segmentation_trials_pay_their_decoder_and_a_group_of_one_costs_a_trial(
        tmp_path: Path) -> None:
    """The decoder's share of forward FLOPs: measured (the table's `models`) where present;
    otherwise the whole network, as if nothing were shared."""
    from marseval.planning.config import load_config
    from marseval.planning.sizing import PlanSizer
    from marseval.planning.throughput import load_table

    path = tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["datasets"] = ["mb-crater_binary_seg"]
    config["bench"]["models"] = {"classification": [], "segmentation": ["unet:resnet18"],
                                 "detection": []}
    config["bench"]["grid"]["segmentation_loss"] = ["dice"]
    path.write_text(yaml.safe_dump(config))
    table = json.loads(device_table(tmp_path).read_text())
    cost = model_cost("unet:resnet18")
    forward = cost["forward_gflops"] * 1e9
    for measured, share in ((None, 1.0), ({"gflops": 8.0, "decoder_gflops": 2.0}, 0.25)):
        table["models"] = {"unet:resnet18": measured} if measured else {}
        (tmp_path / "throughput.json").write_text(json.dumps(table))
        loaded = load_table(tmp_path / "throughput.json")
        sizer = PlanSizer(load_config(path), loaded.device("test"), loaded, HEAD_S * 1000)
        slug = "unet-resnet18"
        decoder = sizer.trainable_flops("mb-crater_binary_seg", sizer.model_cost(slug))[0]
        assert decoder == pytest.approx(share * forward)
        alone = sizer.runs_seconds("tune", "mb-crater_binary_seg", slug, [(7, 10)])
        assert sizer.slug_group_seconds("mb-crater_binary_seg", slug, "trunk", 10, 7, [7]) == (
            pytest.approx(alone))
        # two more trials of 3 epochs: their decoder, head steps and test pass only
        more = 2 * (3 * ((3 * decoder * TRAIN + decoder * VAL) / RATE + HEAD_S * steps(10))
                    + forward * TEST / RATE)
        assert sizer.slug_group_seconds("mb-crater_binary_seg", slug, "trunk", 10, 7,
                                   [7, 3, 3]) == pytest.approx(alone + more)
        # detection-like passes share the decoded batches only: every trial runs whole
        whole = 2 * (sizer.runs_seconds("tune", "mb-crater_binary_seg", slug, [(3, 10)])
                     - 3 * ((TRAIN + VAL) * IMAGE_S + (STEP_S - HEAD_S) * steps(10)))
        assert sizer.slug_group_seconds("mb-crater_binary_seg", slug, "data", 10, 7,
                                   [7, 3, 3]) == pytest.approx(alone + whole)


def test_what_a_shared_pass_shares() -> None:
    assert shared_part("classification", "feature_extraction", cached=False) == "trunk"
    assert shared_part("segmentation", "feature_extraction", cached=False) == "trunk"
    assert shared_part("detection", "feature_extraction", cached=False) == "data"
    assert shared_part("segmentation", "transfer_learning", cached=False) == "data"
    assert shared_part("classification", "feature_extraction", cached=True) == "cache"


def test_expected_epochs_of_a_group_is_its_longest_trial() -> None:
    assert expected_longest([20], 0.25) == pytest.approx(5)  # one trial: fraction x max
    # k equal trials, stopping uniform on [0, 2 f M]: 2 f M k / (k + 1)
    assert expected_longest([200] * 64, 0.25) == pytest.approx(100 * 64 / 65)
    # U[0, 20] and U[0, 10]: 10 - 1000/600 + 10 - 300/40 (by hand)
    assert expected_longest([20, 10], 0.5) == pytest.approx(10 - 1000 / 600 + 2.5)
    assert expected_longest([50, 100], 1.0) == pytest.approx(100)  # no early stopping


def test_list_scheduling_on_n_gpus() -> None:
    assert list_schedule([5, 4, 3, 3, 3], 2) == 10  # longest first: 5+3 | 4+3+3 (optimum 9)
    assert list_schedule([5, 4, 3, 3, 3], 1) == 18
    assert list_schedule([7, 1], 8) == 7


def test_paper_config_plans_through_the_cli_with_cheaper_shared_passes(tmp_path: Path) -> None:
    """`python -m marseval plan` from the repository root: the paper config (the default),
    the assumed A100 row, 8 GPUs."""
    out = tmp_path / "plan.json"
    result = subprocess.run([sys.executable, "-m", "marseval", "plan", "--json", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| tune, shared passes (up to 32 per pass) |" in result.stdout
    plan = json.loads(out.read_text())
    assert plan["config"] == "config/config.yaml" and plan["device"]["name"] == "a100"
    tune = plan["summary"]["stages"]["tune"]
    # 92 paper pairs + the Earth-observation backbones on Figure 4's 4 datasets
    # (bench.model_scope), 8 grid shards each: what the workflow's DAG plans
    assert tune["trial_by_trial"]["jobs"] == tune["shared"]["jobs"] == (92 + 3 * 4) * 8
    for bound in ("expected", "upper"):
        assert (tune["shared"][bound]["gpu_hours"]
                < tune["trial_by_trial"][bound]["gpu_hours"] / 4)
    by_task = plan["summary"]["tune_by_task"]
    for task in ("classification", "segmentation", "detection"):
        alone, shared = by_task[task]["trial_by_trial"], by_task[task]["shared"]
        assert shared["upper"]["gpu_hours"] < alone["upper"]["gpu_hours"]
    # detection shares decoding only: far less saved than where the backbone is shared
    ratio = {task: by_task[task]["trial_by_trial"]["upper"]["gpu_hours"]
             / by_task[task]["shared"]["upper"]["gpu_hours"] for task in by_task}
    assert ratio["detection"] < 2 < ratio["segmentation"] < ratio["classification"]
    assert set(plan["summary"]["stages"]) == {"features", "tune", "train", "embed", "queries",
                                              "index", "shard_index", "search", "rankings",
                                              "evaluate"}


def test_bad_input_names_the_key_file_or_row(tmp_path: Path, capsys) -> None:
    table = str(device_table(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": ["mb-frost_cls"], "sourse": "zenodo"}))
    assert main(["plan", "--config", str(bad), "--throughput", table, "--device", "test"]) == 1
    error = capsys.readouterr().err
    assert str(bad) in error and "'sourse' was unexpected" in error

    bad.write_text(yaml.safe_dump({"datasets": ["mb-frost_cls"], "bench": {"grid_shards": "x"}}))
    assert main(["plan", "--config", str(bad), "--throughput", table, "--device", "test"]) == 1
    assert "config key bench.grid_shards: 'x' is not of type 'integer'" in capsys.readouterr().err

    bad.write_text(yaml.safe_dump({"datasets": ["mb-frosty_cls"]}))
    assert main(["plan", "--config", str(bad), "--throughput", table, "--device", "test"]) == 1
    assert "config key datasets: 'mb-frosty_cls'" in capsys.readouterr().err

    good = str(tiny_config(tmp_path))
    assert main(["plan", "--config", good, "--throughput", table, "--device", "tpu"]) == 1
    error = capsys.readouterr().err
    assert "--device 'tpu'" in error and table in error and "rows: test" in error

    missing = str(tmp_path / "nowhere.yaml")
    assert main(["plan", "--config", missing, "--throughput", table, "--device", "test"]) == 1
    assert f"config {missing}: cannot be read" in capsys.readouterr().err
