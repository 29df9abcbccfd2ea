"""Job resource requests against hand-computed values, and the job usage table."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from snakemake.utils import validate

from marseval import job_resources
from marseval.job_resources import JobSizer, database_items, train_images
from marseval.job_usage import job_wildcards, usage_table

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
COSTS = {
    "yolo11s": {"forward_gflops": 10.0, "weights_mb": 100.0, "feature_dim": 512},
    "resnet101": {"forward_gflops": 8.0, "weights_mb": 170.0, "feature_dim": 2048},
    "tiny-clip": {"forward_gflops": 80.0, "weights_mb": 1200.0, "feature_dim": 768},
    "vit_l_16": {"forward_gflops": 123.0, "weights_mb": 1160.0, "feature_dim": 1024},
}


@pytest.fixture(autouse=True)
def round_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round model costs, so that every estimate below can be worked out by hand."""
    monkeypatch.setattr(job_resources, "model_costs", lambda: COSTS)


def validated(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, SCHEMA, set_default=True)
    return config


DETECTION = {"datasets": ["mb-conequest_det"], "source": "huggingface",
             "bench": {"models": {"detection": ["yolo11s"]}, "grid": {"max_epochs": [10, 20]},
                       "grid_shards": 1},
             "job_resources": {"gpu_tflops": 1}}


def test_tune_shard_of_a_detector() -> None:
    sizer = JobSizer(validated(DETECTION))
    wildcards = {"dataset": "mb-conequest_det", "model": "yolo11s", "shard": "0"}
    # 2 trials (max_epochs 10 and 20) in one shard, each run to its own max_epochs, in one
    # shared pass (a detector shares the decoded batches only). Registry splits 1158 / 167 /
    # 333, (37 + 6) steps of 32 images. The pass, for its longest trial's 20 epochs: decoding
    # (1158 + 167) images x 2 ms = 2.65 s and the per-batch step 43 x (5 - 1) ms = 0.172 s an
    # epoch. Each trial: (3 x 1158 + 167) x 10 GFLOP at 1 TFLOP/s = 36.41 s and its own step
    # 43 x 1 ms = 0.043 s an epoch, and its test pass 333 x 10 GFLOP = 3.33 s.
    # 20 x 2.822 + (10 + 20) x 36.453 + 2 x 3.33 = 1156.69 s (one at a time: 1184.91 s, the
    # images decoded for each trial); 5 + 2 x 1156.69 / 60 = 43.56 -> 44 minutes.
    assert sizer.work_seconds("tune", wildcards) == pytest.approx(1156.69)
    assert sizer.runtime_minutes("tune", wildcards) == 44
    assert sizer.runtime_minutes("tune", wildcards, attempt=2) == 88
    assert sizer.memory_mb("tune", wildcards) == 4000 + 2 * 100
    assert sizer.memory_mb("tune", wildcards, attempt=2) == 2 * 4200
    capped = JobSizer(validated({**DETECTION, "job_resources": {"gpu_tflops": 1,
                                                                "max_runtime": 60}}))
    assert capped.runtime_minutes("tune", wildcards, attempt=2) == 60
    # two shards: one trial each (round-robin), 10 and 20 epochs
    halves = JobSizer(validated({**DETECTION, "bench": {**DETECTION["bench"], "grid_shards": 2}}))
    assert [halves.work_seconds("tune", {**wildcards, "shard": s}) for s in ("0", "1")] == [
        pytest.approx(10 * 39.275 + 3.33), pytest.approx(20 * 39.275 + 3.33)]


def test_final_run_on_the_feature_cache() -> None:
    config = validated({"datasets": ["mb-domars16k"], "source": "huggingface",
                        "bench": {"models": {"classification": ["resnet101"]},
                                  "grid": {"max_epochs": [50]}, "protocol": "probe"},
                        "job_resources": {"gpu_tflops": 1}})
    sizer = JobSizer(config)
    wildcards = {"dataset": "mb-domars16k", "model": "resnet101", "partition": "fewshot_5",
                 "seed": "0"}
    # 5 shots x 15 classes = 75 images; on the cache only the head runs and no image is
    # decoded: an epoch is (3 x 75 + 1231) x 2 x 2048 x 15 FLOPs = 89.5 MFLOP (0.00009 s)
    # plus (3 + 39) steps of 32 x 5 ms.
    assert train_images(config, "mb-domars16k", "fewshot_5") == 75
    epoch = (3 * 75 + 1231) * 2 * 2048 * 15 / 1e12 + (3 + 39) * 0.005
    test = 1014 * 2 * 2048 * 15 / 1e12
    assert sizer.work_seconds("train", wildcards) == pytest.approx(50 * epoch + test)
    assert sizer.runtime_minutes("train", wildcards) == 10  # 5.35 -> 6 -> min_runtime 10
    assert sizer.runtime_minutes("train", wildcards, attempt=3) == 30
    # weights twice, and the cached features of all 13,550 images: 13550 x 2048 x 4 B
    assert sizer.memory_mb("train", wildcards) == 4446  # 4000 + 340 + 105.86
    assert train_images(config, "mb-domars16k", "fraction_0.10") == 1130


def test_geo_jobs_are_sized_by_ctx_group() -> None:
    config = validated({"datasets": ["mr-geolocalization"], "source": "huggingface",
                        "retrieval": {"models": ["tiny-clip"], "embed_shards": 8,
                                      "tile_delta": 0.2, "max_abs_lat": 80}})
    sizer = JobSizer(config)
    assert database_items(config, "mr-geolocalization") == 3600 * 400
    wildcards = {"dataset": "mr-geolocalization", "model": "tiny-clip", "shard": "3"}
    # a shard is one group of 40 CTX tiles: 16,000 cells x (80 GFLOP / 20 TFLOP/s + 2 ms)
    # = 96 s; 5 + 2 x 1.6 minutes, at least 10
    assert sizer.runtime_minutes("embed", wildcards) == 10
    # 4000 + 2 x 1200 + 16,000 x 768 x 4 B (46.875 MB)
    assert sizer.memory_mb("embed", wildcards) == 6447
    group = {"group": "003-0a1b2c3d"}
    # 40 archives of 2,000 MB (1907.35 MiB) at 20 MiB/s = 3814.7 s: 5 + 2 x 63.58 minutes
    assert sizer.runtime_minutes("ctx_download", group) == 133
    # 16,000 cells x 120 ms on 4 workers = 480 s: 5 + 2 x 8 minutes; 500 MB a worker
    assert sizer.threads("ctx_cells") == 4 and sizer.runtime_minutes("ctx_cells", group) == 21
    assert sizer.memory_mb("ctx_cells", group) == 4000 + 4 * 500
    # sharded layout: a search job holds one group's vectors twice, 2 x 46.875 MB; the merge
    # the ids of the 1.44 M cells, 1.44 M x 200 B (274.66 MB); a merged index the whole
    # database twice, 2 x 1.44 M x 768 x 4 B (8437.5 MB)
    assert sizer.memory_mb("search", wildcards) == 4094
    assert sizer.memory_mb("rankings", wildcards) == 4275
    assert sizer.memory_mb("index", wildcards) == 12438
    # 5,000 queries x 16,000 cells x 768 x 2 FLOPs at 25 GFLOP/s = 4.9 s: the 10-minute floor
    assert sizer.runtime_minutes("search", wildcards) == 10
    regional = validated({"datasets": ["mr-geolocalization"], "retrieval": {
        "tile_delta": 1.0, "ctx": {"region": [-40, -20, 40, 20], "tiles_per_group": 50}}})
    assert database_items(regional, "mr-geolocalization") == 200 * 16


def test_gpus_and_threads_follow_the_config() -> None:
    config = validated({"datasets": ["mb-frost_cls"], "bench": {"num_workers": 3},
                        "retrieval": {"index_gpu": "yes"}})
    sizer = JobSizer(config)
    assert [sizer.gpus(r) for r in ("features", "tune", "train", "embed", "index",
                                     "evaluate", "download")] == [1, 1, 1, 1, 1, 0, 0]
    assert [sizer.threads(r) for r in ("tune", "train", "features", "embed", "download")] == [
        4, 4, 2, 2, 1]
    cpu = JobSizer(validated({"datasets": ["mb-frost_cls"], "bench": {"device": "cpu"},
                              "retrieval": {"device": "cpu", "index_gpu": "auto"}}))
    assert [cpu.gpus(r) for r in ("tune", "embed", "queries", "index")] == [0, 0, 0, 0]


def test_database_sizes_of_real_and_synthetic_sources() -> None:
    real = validated({"datasets": ["mr-vl_pairs"], "source": "huggingface"})
    assert database_items(real, "mr-vl_pairs") == 2287  # the dataset card's row count
    synthetic = validated({"datasets": ["mr-vl_pairs"], "synthetic": {"retrieval": {"pairs": 9}}})
    assert database_items(synthetic, "mr-vl_pairs") == 9


def test_an_unknown_model_is_sized_as_a_large_vit() -> None:
    sizer = JobSizer(validated(DETECTION))
    wildcards = {"dataset": "mb-conequest_det", "model": "someone-elses", "shard": "0"}
    assert sizer.memory_mb("tune", wildcards) == 4000 + 2 * 1160


BENCHMARK_TSV = ("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load"
                 "\tcpu_time\n120.0\t0:02:00\t2100.0\t3000.0\t2000.0\t2050.0\t1.0\t2.0\t90.0"
                 "\t110.0\n")


def test_job_usage_puts_use_beside_request(tmp_path: Path) -> None:
    tsv = tmp_path / "tune/mb-conequest_det/yolo11s/shard0.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text(BENCHMARK_TSV)
    table = usage_table(tmp_path, validated(DETECTION))
    row = table.iloc[0].to_dict()
    assert row["rule"] == "tune" and row["job"] == "0" and row["seconds"] == 120.0
    assert row["requested_runtime_min"] == 44 and row["requested_mem_mb"] == 4200
    assert row["runtime_used"] == round(2 / 44, 4) and row["mem_used"] == 0.5


def test_job_wildcards_from_benchmark_paths() -> None:
    assert job_wildcards(Path("train/mb-frost_cls/resnet101/fraction_0.10/seed42.tsv")) == (
        "train", {"dataset": "mb-frost_cls", "model": "resnet101", "partition": "fraction_0.10",
                  "seed": "42"})
    assert job_wildcards(Path("train/mb-frost_cls/resnet101/default/seeds.tsv")) == (
        "train", {"dataset": "mb-frost_cls", "model": "resnet101", "partition": "default"})
    assert job_wildcards(Path("index/mr-landforms/tiny-clip.tsv")) == (
        "index", {"dataset": "mr-landforms", "model": "tiny-clip"})
    assert job_wildcards(Path("ctx_cells/group012-0a1b2c3d.tsv")) == (
        "ctx_cells", {"dataset": "", "model": "", "group": "012-0a1b2c3d"})


def test_a_broken_benchmark_file_names_itself(tmp_path: Path) -> None:
    from marseval.errors import MarsevalError

    tsv = tmp_path / "index/mr-landforms/tiny-clip.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("")
    with pytest.raises(MarsevalError, match="tiny-clip.tsv: not a Snakemake benchmark file"):
        usage_table(tmp_path, validated(DETECTION))


def test_multimodal_llm_embedders_are_sized_from_their_published_sizes() -> None:
    from marseval.job_resources import model_cost

    e5v = model_cost("mllm:e5-v")
    # by hand: 2 x 8.4e9 parameters x 2,880 image tokens; float16 weights 8.4e9 x 2 B
    assert e5v["forward_gflops"] == pytest.approx(48384)
    assert e5v["weights_mb"] == pytest.approx(8.4e9 * 2 / 2**20)
    assert e5v["feature_dim"] == 4096
    assert model_cost("mllm:bge-vl-large")["forward_gflops"] == pytest.approx(2 * 0.43 * 257)
