"""What each job asks the scheduler for: runtime, memory, threads and GPUs, from the work it does.

Pure functions of the config, the dataset registry and the measured model costs
(`marseval/registry/model_costs.yaml`, written by `benchmarks/model_costs.py`); the Snakefile
calls them while it is parsed, so they read no data. The estimate of a job is

    runtime = overhead + safety x work / throughput        (minutes, x attempt)
    mem_mb  = base + model weights x 2 + arrays held in memory   (x attempt)

where the work is counted in forward FLOPs of the model per image (training steps count three
forward passes: forward and backward), every trial runs to its `max_epochs` (early stopping
makes that an upper bound), a grid shard runs its trials in shared passes as the tune job does
(`marseval.bench.grid.shared_groups`: the frozen backbone or encoder, image decoding and the
per-batch step once per batch for the pass's longest trial, each trial its own head or
decoder), and throughput is `job_resources.gpu_tflops` for jobs that get a GPU and
`job_resources.cpu_gflops` otherwise. Grid shards and final runs resume from their progress
files and checkpoints, so a job that hits its limit loses little: the retry (`attempt` 2)
asks for twice as much and carries on. docs/resources.md gives the numbers behind the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import yaml

from marseval.bench.grid import expand, shard, shared_groups, shared_part
from marseval.registry import get_dataset
from marseval.retrieval.ctx.catalog import cells_per_tile, ctx_tiles
from marseval.retrieval.ctx.plan import embed_shard_count, group_cells, run_groups
from marseval.workflow import (
    bench_models,
    retrieval_models,
    sharded_layout,
    source_of,
    task_grid,
    task_of,
    uses_feature_cache,
)

# Items of the MarsRetrieval databases, which the dataset registry does not count:
# Mars-VL-Pairs has 2,287 rows (its dataset card); Mars-Landforms is "1K-10K" images (its card:
# the upper end is taken). The geo-localization database is the tile grid (computed).
RETRIEVAL_ITEMS = {"paired": 2287, "landform": 10000}
# One Murray Lab CTX V01 archive: a 47,420 x 47,420 8-bit GeoTIFF of 2,254,080,140 bytes,
# zipped to about 2 GB (3,960 archives take about 8 TB: github.com/delhoume/bigmars)
CTX_ARCHIVE_MB = 2000 * 1e6 / 2**20
CELL_WORKER_MB = 500
# A model missing from model_costs.yaml (a user's own) is sized as this measured one.
DEFAULT_MODEL = "vit_l_16"
BENCH_RULES = ("features", "tune", "train")
ENCODER_RULES = ("embed", "queries")
FAISS_RULES = ("index", "shard_index", "search")  # faiss on the GPU with index_gpu: yes
ID_ROW_BYTES = 200  # a row of ids.parquet in pandas: id string and tile bounds
QUERY_ROWS = 5000  # an upper bound on the queries of a retrieval task (paired: its pairs)
MB = 2**20
# per trial and batch of a shared pass: its own optimizer step (assumed; the rest of
# `step_overhead_ms` is the pass's, once per batch)
HEAD_STEP_MS = 1.0


@cache
def model_costs() -> dict[str, dict[str, Any]]:
    text = resources.files("marseval.registry").joinpath("model_costs.yaml").read_text()
    return yaml.safe_load(text)["models"]


def model_cost(name: str) -> dict[str, Any]:
    costs = model_costs()
    found = embedder_cost(name) if name.startswith("mllm:") else costs.get(name, {})
    return {**costs[DEFAULT_MODEL], **{k: v for k, v in found.items() if v is not None}}


def embedder_cost(name: str) -> dict[str, Any]:
    """A multimodal-LLM embedder's cost from its registry entry (published sizes, not
    measured: no weights can be downloaded where model_costs.yaml is written): 2 FLOPs per
    parameter and image token, weights in the GPU dtype."""
    from marseval.retrieval.mllm.registry import get_embedder

    spec = get_embedder(name)
    extra = spec.extra
    params = extra["params_b"] * 1e9
    bytes_per = 4 if spec.cuda_dtype == "float32" else 2
    return {"task": "retrieval", "forward_gflops": 2 * params * extra["image_tokens"] / 1e9,
            "weights_mb": params * bytes_per / MB, "feature_dim": extra["embedding_dim"]}


def split_sizes(config: dict[str, Any], dataset: str) -> dict[str, int]:
    """Images per split: the synthetic generator's counts, or the registry's (paper Table 1);
    an unknown count is taken as the largest known one of the dataset."""
    spec = get_dataset(dataset)
    if source_of(config, dataset) == "synthetic":
        return dict(config["synthetic"]["samples"])
    known = [n for n in spec.splits.values() if n]
    fallback = max(known, default=10000)
    return {split: spec.splits.get(split) or fallback for split in ("train", "val", "test")}


def database_items(config: dict[str, Any], dataset: str) -> int:
    """Items a retrieval database holds: pairs, gallery images or mosaic tiles."""
    subtask = get_dataset(dataset).subtask
    options = config["retrieval"]
    if subtask == "geolocalization":  # the cells of the run's CTX tiles
        tiles = ctx_tiles(options["max_abs_lat"], options["ctx"]["region"])
        return len(tiles) * cells_per_tile(options["tile_delta"])
    if source_of(config, dataset) == "synthetic":
        synthetic = config["synthetic"]["retrieval"]
        if subtask == "paired":
            return synthetic["pairs"]
        classes = get_dataset(dataset).classes
        return synthetic["landform_images_per_class"] * (len(classes) if classes else 10)
    return RETRIEVAL_ITEMS[subtask]


def train_images(config: dict[str, Any], dataset: str, partition: str) -> int:
    """Training images of a final-run partition: all, a fraction, or k per class."""
    train = split_sizes(config, dataset)["train"]
    if partition.startswith("fraction_"):
        return max(1, math.floor(float(partition.removeprefix("fraction_")) * train))
    if partition.startswith("fewshot_"):
        classes = get_dataset(dataset).num_classes or 2
        return min(train, int(partition.removeprefix("fewshot_")) * classes)
    return train


class JobSizer:
    """Resource requests of every rule, as Snakemake resource callables of one config."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.options = config["job_resources"]
        self.models = {**bench_models(config), **retrieval_models(config)}
        # the Snakefile asks per job (8,000 in the paper): each shard's trials expand once
        self._shard_trials: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.head_step_ms = HEAD_STEP_MS

    # ------------------------------------------------------------------ scheduler callables

    def runtime(self, rule: str) -> Callable[..., int]:
        def runtime(wildcards, attempt: int = 1) -> int:
            return self.runtime_minutes(rule, dict(wildcards.items()), attempt)

        return runtime

    def mem_mb(self, rule: str) -> Callable[..., int]:
        def mem_mb(wildcards, attempt: int = 1) -> int:
            return self.memory_mb(rule, dict(wildcards.items()), attempt)

        return mem_mb

    def gpus(self, rule: str) -> int:
        """1 for jobs that run a network on a GPU; none where the config pins the CPU."""
        if rule in BENCH_RULES:
            return int(self.config["bench"]["device"] != "cpu")
        if rule in ENCODER_RULES:
            return int(self.config["retrieval"]["device"] != "cpu")
        if rule in FAISS_RULES:  # "auto" uses a GPU only where the job happens to see one
            return int(self.config["retrieval"]["index_gpu"] == "yes")
        return 0

    def threads(self, rule: str) -> int:
        """Training jobs: the process plus its data-loader workers; jobs that decode and
        embed images in-process (features, embed, queries) and index searches: 2."""
        if rule in ("tune", "train"):
            return 1 + self.config["bench"]["num_workers"]
        if rule == "ctx_cells":
            return self.config["retrieval"]["ctx"]["cut_workers"]
        return 1 if rule in ("download", "standardize", "ctx_download") else 2

    # ------------------------------------------------------------------ estimates

    def runtime_minutes(self, rule: str, wildcards: dict[str, str], attempt: int = 1) -> int:
        seconds = self.work_seconds(rule, wildcards)
        minutes = self.options["overhead_minutes"] + self.options["safety"] * seconds / 60
        minutes = max(self.options["min_runtime"], math.ceil(minutes)) * attempt
        cap = self.options["max_runtime"]
        return min(minutes, cap) if cap else minutes

    def memory_mb(self, rule: str, wildcards: dict[str, str], attempt: int = 1) -> int:
        return math.ceil(self.options["base_mem_mb"] + self.held_mb(rule, wildcards)) * attempt

    def _throughput(self, rule: str, cost: dict[str, Any] | None = None) -> float:
        """Sustained FLOP/s of the job's device; `cost` (the model's) lets a subclass rate
        models apart (marseval.planning: measured images/s per model and device)."""
        if self.gpus(rule):
            return self.options["gpu_tflops"] * 1e12
        return self.options["cpu_gflops"] * 1e9

    def _cost(self, wildcards: dict[str, str]) -> dict[str, Any]:
        name = self.models.get(wildcards.get("model", ""), "")
        return {**model_cost(name), "model": name}

    def _final_runs(self, dataset: str, runs: int) -> list[tuple[int, int]]:
        """(epochs, batch size) of a job's final runs: the selected trial is known only
        after tuning, so the grid's most epochs and smallest batch (most steps)."""
        grid = task_grid(self.config, task_of(dataset))
        return [(max(grid["max_epochs"]), min(grid["batch_size"]))] * runs

    def _shard_trials_of(self, dataset: str, index: int) -> list[dict[str, Any]]:
        """The trials of one grid shard (the tune job's)."""
        key = (dataset, index)
        if key not in self._shard_trials:
            spec = get_dataset(dataset)
            trials = expand(task_grid(self.config, spec.task), spec.task, spec.subtask)
            self._shard_trials[key] = shard(trials, index, self.config["bench"]["grid_shards"])
        return self._shard_trials[key]

    def _shard_runs_of(self, dataset: str, index: int) -> list[tuple[int, int]]:
        """(max_epochs, batch size) of every trial of one grid shard."""
        return [(t["max_epochs"], t["batch_size"]) for t in self._shard_trials_of(dataset, index)]

    def shard_groups(self, dataset: str, index: int, max_trials: int | None = None
                     ) -> list[tuple[int, list[int]]]:
        """(batch size, max_epochs of its trials) of each shared pass of a grid shard, at
        most `max_trials` (default: the config's bench.shared_pass_trials) a pass."""
        groups = shared_groups(self._shard_trials_of(dataset, index),
                               max_trials or self.config["bench"]["shared_pass_trials"])
        return [(group[0]["batch_size"], [t["max_epochs"] for t in group]) for group in groups]

    def shared_part(self, dataset: str) -> str:
        """What a shared pass of the dataset's trials shares (marseval.bench.grid)."""
        task = task_of(dataset)
        return shared_part(task, self.config["bench"]["training_type"],
                           uses_feature_cache(self.config, task))

    def decoder_fraction(self, cost: dict[str, Any]) -> float | None:
        """Measured share of a segmenter's forward FLOPs outside its encoder, from the
        throughput table (`benchmarks/throughput.py`); None where it has no measurement."""
        from marseval.planning.throughput import measured_decoder_fraction

        return measured_decoder_fraction(cost.get("model", ""))

    def trainable_flops(self, dataset: str, cost: dict[str, Any]) -> tuple[float, str]:
        """Forward FLOPs per image of what each trial trains, and how they were obtained."""
        if task_of(dataset) == "classification":
            classes = get_dataset(dataset).num_classes or 2
            return 2.0 * cost["feature_dim"] * classes, "linear head: 2 x feature_dim x classes"
        forward = cost["forward_gflops"] * 1e9
        fraction = self.decoder_fraction(cost)
        if fraction is not None:
            return fraction * forward, "decoder: whole network minus encoder, measured FLOPs"
        # unmeasured: count the whole network for every trial, as if nothing were shared (a
        # decoder's FLOPs are no fixed share of its parameters: it runs at high resolution)
        return forward, "decoder unmeasured: the whole network, nothing shared"

    def group_seconds(self, dataset: str, cost: dict[str, Any], batch: int,
                      group_epochs: float, trial_epochs: Sequence[float],
                      part: str | None = None) -> float:
        """One shared pass: what its trials share (`part`, by default the config's
        `shared_part`) for `group_epochs`, each trial's own work for its epochs, each trial's
        test pass. A pass of one trial costs what that trial costs alone."""
        sizes = split_sizes(self.config, dataset)
        train, val = sizes["train"], sizes["val"]
        speed = self._throughput("tune", cost)
        flops = (self._pass_flops(dataset, train, cost, training=True)
                 + self._pass_flops(dataset, val, cost))  # one epoch of the whole network
        trunk = 0.0
        if (part or self.shared_part(dataset)) == "trunk":
            forward = cost["forward_gflops"] * 1e9
            trunk = (forward - self.trainable_flops(dataset, cost)[0]) / forward
        decoding = 0.0 if self._cached(dataset) else self.options["image_overhead_ms"] / 1000
        steps = math.ceil(train / batch) + math.ceil(val / batch)
        per_head = self.head_step_ms / 1000
        per_batch = max(0.0, self.options["step_overhead_ms"] / 1000 - per_head)
        shared_epoch = trunk * flops / speed + (train + val) * decoding + per_batch * steps
        own_epoch = (1 - trunk) * flops / speed + per_head * steps
        test = self._pass_flops(dataset, sizes["test"], cost) / speed
        return group_epochs * shared_epoch + sum(e * own_epoch + test for e in trial_epochs)

    def _pass_flops(self, dataset: str, images: int, cost: dict[str, Any],
                    training: bool = False) -> float:
        """FLOPs of one pass over `images`: a training pass costs three forward passes
        (forward and backward). On the feature cache only the linear head runs:
        2 x dim x classes FLOPs per image forward."""
        factor = 3 if training else 1
        if self._cached(dataset):
            classes = get_dataset(dataset).num_classes or 2
            return factor * images * 2.0 * cost["feature_dim"] * classes
        return factor * images * cost["forward_gflops"] * 1e9

    def work_seconds(self, rule: str, wildcards: dict[str, str]) -> float:
        """Seconds of compute a job needs at the configured throughput (before safety)."""
        dataset = wildcards.get("dataset")
        cost = self._cost(wildcards)
        if rule in ("download", "standardize"):
            return self._data_seconds(dataset)
        if rule == "ctx_download":  # the largest group's archives, at io_mb_per_s
            tiles = max(len(group) for group in run_groups(self.config))
            return tiles * CTX_ARCHIVE_MB / self.options["io_mb_per_s"]
        if rule == "ctx_cells":  # the cells of the largest group, spread over the workers
            return (group_cells(self.config) * self.options["cell_ms"] / 1000
                    / self.threads("ctx_cells"))
        if rule == "features":
            return self._forward_seconds(rule, sum(split_sizes(self.config, dataset).values()),
                                         cost)
        if rule == "tune":  # the shard's shared passes, each trial to its own max_epochs
            return sum(self.group_seconds(dataset, cost, batch, max(epochs), epochs)
                       for batch, epochs in self.shard_groups(dataset, int(wildcards["shard"])))
        if rule == "train":  # one run per seed of the job, on the partition's images
            runs = self._final_runs(dataset, 1 if "seed" in wildcards
                                    else len(self.config["bench"]["seeds"]))
            return self._training_seconds(rule, dataset, runs, wildcards["partition"], cost)
        if rule == "embed":
            return self._forward_seconds(rule, self._shard_items(dataset), cost)
        if rule in ("index", "evaluate", "shard_index", "search"):
            # exact inner products of every query with the database, or with one shard
            # (an approximate shard index's build is within the same order: README "Index")
            items = self._searched_items(rule, dataset)
            return 2.0 * QUERY_ROWS * items * cost["feature_dim"] / self._throughput(rule, cost)
        return 0.0  # queries, rankings and aggregation: minutes at most

    def _searched_items(self, rule: str, dataset: str) -> float:
        """Database rows a ranking job scores: one shard's in the sharded layout (evaluate
        there reads merged results, but scores paired ranks over every shard)."""
        if rule in ("shard_index", "search"):
            return self._shard_items(dataset)
        if rule == "evaluate" and sharded_layout(self.config) \
                and get_dataset(dataset).subtask != "paired":
            return 0.0
        return database_items(self.config, dataset)

    def _forward_seconds(self, rule: str, items: float, cost: dict[str, Any]) -> float:
        """One forward pass of the model over `items` images, decoding included."""
        return items * (cost["forward_gflops"] * 1e9 / self._throughput(rule, cost)
                        + self.options["image_overhead_ms"] / 1000)

    def _shard_items(self, dataset: str) -> float:
        if get_dataset(dataset).subtask == "geolocalization":
            return group_cells(self.config)
        return database_items(self.config, dataset) / embed_shard_count(self.config, dataset)

    def _training_seconds(self, rule: str, dataset: str, runs: list[tuple[int, int]],
                          partition: str | None, cost: dict[str, Any]) -> float:
        """Runs of (epochs, batch size): per epoch a training and a validation pass, image
        decoding (none on the feature cache) and a fixed cost per optimizer or eval step;
        a test pass at the end of each run."""
        sizes = split_sizes(self.config, dataset)
        train = sizes["train"] if partition is None else train_images(
            self.config, dataset, partition)
        speed = self._throughput(rule, cost)
        compute = (self._pass_flops(dataset, train, cost, training=True)
                   + self._pass_flops(dataset, sizes["val"], cost)) / speed
        if not self._cached(dataset):
            compute += (train + sizes["val"]) * self.options["image_overhead_ms"] / 1000
        test = self._pass_flops(dataset, sizes["test"], cost) / speed
        step = self.options["step_overhead_ms"] / 1000
        return sum(epochs * (compute + step * (math.ceil(train / batch)
                                               + math.ceil(sizes["val"] / batch))) + test
                   for epochs, batch in runs)

    def _data_seconds(self, dataset: str) -> float:
        """Reading, checking and writing every image once at `io_mb_per_s`."""
        spec = get_dataset(dataset)
        if spec.task == "retrieval":
            items = database_items(self.config, dataset)
            if spec.subtask == "geolocalization":
                items = 0  # queries and ground truth: the cells are ctx_cells jobs
            pixels = 512 * 512 * 3
        else:
            items = sum(split_sizes(self.config, dataset).values())
            height, width = spec.image_size or (1024, 1024)
            pixels = height * width * (spec.bands or 3)
        return items * pixels / (self.options["io_mb_per_s"] * MB)

    def held_mb(self, rule: str, wildcards: dict[str, str]) -> float:
        """Host memory a job holds beyond the base: weights, cached arrays, loader workers."""
        dataset = wildcards.get("dataset")
        cost = self._cost(wildcards)
        weights = 2 * cost["weights_mb"]
        workers = self.options["worker_mem_mb"] * self.config["bench"]["num_workers"]
        if rule in ("tune", "train"):  # weights, and the feature cache where one is read
            held = self.held_mb("features", wildcards) if self._cached(dataset) else weights
            return held + workers
        if rule == "features":  # the cache of every image, written at the end
            images = sum(split_sizes(self.config, dataset).values())
            return weights + images * cost["feature_dim"] * 4 / MB
        if rule == "ctx_cells":  # per worker: one tile's PNG cells and GDAL's block cache
            return self.threads(rule) * CELL_WORKER_MB
        if rule == "embed":
            return weights + self._shard_items(dataset) * cost["feature_dim"] * 4 / MB
        if rule in ("index", "shard_index", "search"):
            # the float32 vectors (the merged matrix, or one shard's) and an index of them
            return 2 * self._searched_items(rule, dataset) * cost["feature_dim"] * 4 / MB
        if rule == "evaluate" and sharded_layout(self.config):
            # merged results, ids, and for paired one query block x one shard (float64)
            return 8 * self._shard_items(dataset) * cost["feature_dim"] / MB \
                + database_items(self.config, dataset) * ID_ROW_BYTES / MB
        if rule == "evaluate":  # the merged float32 matrix and the index built from it
            return 2 * database_items(self.config, dataset) * cost["feature_dim"] * 4 / MB
        if rule == "rankings":  # the ids of the database, and (queries x K) results
            return database_items(self.config, dataset) * ID_ROW_BYTES / MB
        if rule == "queries":
            return weights
        return 0.0

    def _cached(self, dataset: str) -> bool:
        return uses_feature_cache(self.config, task_of(dataset))
