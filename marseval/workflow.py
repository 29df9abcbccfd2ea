"""Helpers the Snakefile calls while it is parsed: pure functions of the config.

They read nothing but the config and the packaged registry (cluster jobs re-parse the
Snakefile, so parsing must stay cheap and must not touch data or the network).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from marseval.registry import RegistryError, get_dataset, load_registry
from marseval.report.options import (
    LEADERBOARD_KEY,
    PUBLISHED_EARTH,
    PUBLISHED_RUNS,
    published_normalizer,
)
from marseval.retrieval.ctx.plan import embed_shard_count, group_ids, synthetic_ctx_options
from marseval.retrieval.index_params import IndexParams

SOURCES = ("synthetic", "huggingface", "zenodo")


def export_job_environment(basedir: str) -> None:
    """Make `python -m marseval` in every job resolve to this checkout.

    The interpreter that runs Snakemake goes first on PATH, unless a rule's conda env is
    activated (that puts the env's own python first again).
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (basedir, os.environ.get("PYTHONPATH")) if p)
    os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable),
                                          os.environ.get("PATH", "")))


class ConfigError(ValueError):
    """A config value the schema cannot catch (it needs the registry)."""


def check_config(config: dict[str, Any]) -> None:
    _check_datasets(config)
    _check_models(config)
    _check_protocol(config)
    _check_leaderboard(config)
    _check_index(config)


def _check_index(config: dict[str, Any]) -> None:
    from marseval.errors import MarsevalError

    try:
        index_params(config)
    except MarsevalError as error:
        raise ConfigError(f"config keys retrieval.index, nlist, nprobe, hnsw_m, ef_search, pq_m,"
                          f" refine, auto_exact_max_mb: {error}") from None


def _check_leaderboard(config: dict[str, Any]) -> None:
    """A leaderboard of runs on synthetic data would rank noise among the paper's models:
    refused before any job (the report itself refuses such runs too, from their records)."""
    if not config["report"].get("leaderboard", False):
        return
    synthetic = sorted(name for task in PAPER_RUNS for name in datasets(config, task)
                       if source_of(config, name) == "synthetic")
    if synthetic:
        raise ConfigError(f"config key {LEADERBOARD_KEY}: {', '.join(synthetic)} come from "
                          "synthetic data (source: synthetic); a leaderboard compares real "
                          "runs with the paper's, so set report.leaderboard: false or a real "
                          "source for them")


def _check_protocol(config: dict[str, Any]) -> None:
    """Options of the probe protocol asked for in the reference one stop the run at start."""
    bench = config["bench"]
    protocol = bench_protocol(config)
    if bench["feature_cache"] and not protocol.feature_cache:
        raise ConfigError(f"config key bench.feature_cache: the {protocol.name!r} protocol trains "
                          "its frozen backbone in train mode with augmentation, so features "
                          "cannot be cached; use bench.protocol: probe, or leave it unset")
    if bench["feature_cache"] and bench_augment(config):
        raise ConfigError("config key bench.feature_cache: augmented images change every epoch, "
                          "so their features cannot be cached; set bench.augment: false")
    if protocol.name == "marsbench" and bench["head"] != "linear":
        raise ConfigError(f"config key bench.head: {bench['head']!r} is a probe-protocol head; "
                          "the Mars-Bench reference trains a linear head (bench.protocol: probe "
                          "allows it)")


def bench_protocol(config: dict[str, Any]):
    """The `bench.protocol` in force (marseval.bench.protocol.Protocol)."""
    from marseval.bench.protocol import get_protocol

    return get_protocol(config["bench"]["protocol"])


def bench_augment(config: dict[str, Any]) -> bool:
    """`bench.augment`, or the protocol's where unset."""
    from marseval.bench.protocol import resolved

    return resolved(bench_protocol(config), augment=config["bench"]["augment"])[0]


def bench_selection(config: dict[str, Any]) -> str:
    """`bench.selection`, or the protocol's where unset."""
    from marseval.bench.protocol import resolved

    return resolved(bench_protocol(config), selection=config["bench"]["selection"])[1]


def _check_models(config: dict[str, Any]) -> None:
    """A misspelled model stops the run at start, not at its first job."""
    from marseval.registry.model_names import model_name_problem

    named = [(f"bench.models.{task}", task, name) for task in BENCH_TASKS
             for name in config["bench"]["models"][task]]
    named += [("retrieval.models", "retrieval", name) for name in config["retrieval"]["models"]]
    for key, task, name in named:
        problem = model_name_problem(task, name)
        if problem:
            raise ConfigError(f"config key {key}: {problem}")
    from marseval.retrieval.mllm.registry import check_embedders

    problems = check_embedders(config["retrieval"]["models"], config["retrieval"]["remote_code"])
    if problems:
        raise ConfigError("config key retrieval.models: " + "; ".join(problems))
    for model, scope in config["bench"].get("model_scope", {}).items():
        task = next((t for t in BENCH_TASKS if model in config["bench"]["models"][t]), None)
        if task is None:
            raise ConfigError(f"config key bench.model_scope: {model!r} is not in bench.models")
        stray = [d for d in scope["datasets"] if d not in datasets(config, task)]
        if stray:
            raise ConfigError(f"config key bench.model_scope.{model}: {', '.join(stray)} not "
                              f"among the configured {task} datasets")


def _check_datasets(config: dict[str, Any]) -> None:
    for key in ("datasets", "dataset_options"):
        for name in config[key]:
            try:
                get_dataset(name)
            except RegistryError:
                known = ", ".join(sorted(load_registry()))
                raise ConfigError(f"config key {key}: {name!r} is not in the dataset registry; "
                                  f"known datasets: {known}") from None


def dataset_options(config: dict[str, Any], name: str) -> dict[str, Any]:
    return config["dataset_options"].get(name) or {}


def datasets(config: dict[str, Any], task: str | None = None) -> list[str]:
    """Configured dataset names, optionally only those of one task, in config order."""
    return [n for n in config["datasets"] if task is None or get_dataset(n).task == task]


def source_of(config: dict[str, Any], name: str) -> str:
    return dataset_options(config, name).get("source", config["source"])


def raw_dir(config: dict[str, Any], name: str) -> str:
    return f"{config['resources']}/raw/{source_of(config, name)}/{name}"


def download_options(config: dict[str, Any], name: str) -> str:
    """JSON handed to `python -m marseval download --options`."""
    options = dataset_options(config, name)
    synthetic = config["synthetic"]
    merged = {
        "seed": synthetic["seed"],
        "image_size": synthetic["image_size"],
        "samples": synthetic["samples"],
        "retrieval": synthetic["retrieval"],
        "layout": options.get("layout", synthetic["layout"]),
        "retries": config["download"]["retries"],
        "image_workers": config["download"]["image_workers"],
        "zenodo_api": config["download"]["zenodo_api"],
    }
    for key in ("huggingface", "revision", "zenodo_record"):
        if key in options:
            merged[key] = options[key]
    if get_dataset(name).subtask == "geolocalization":  # the fake CTX tiles of this run
        merged["retrieval"] = {**synthetic["retrieval"], "ctx": synthetic_ctx_options(config)}
    if get_dataset(name).subtask == "paired":
        # only where images are fetched by URL: a changed param reruns a download
        merged["image_timeout"] = config["download"]["image_timeout"]
        merged["image_retries"] = config["download"]["image_retries"]
    return json.dumps(merged, sort_keys=True)


def detection_format_flag(config: dict[str, Any], name: str) -> str:
    fmt = dataset_options(config, name).get("detection_format")
    return f"--detection-format {fmt}" if fmt else ""


def retrieval_standardize_flags(config: dict[str, Any], name: str) -> str:
    """Flags of `python -m marseval standardize` for MarsRetrieval datasets: pair-image
    preprocessing (download.pair_*) and longitude wrapping; none for the others."""
    subtask = get_dataset(name).subtask
    if subtask == "paired":
        return (f"--pair-image-size {config['download']['pair_image_size']} "
                f"--pair-resize-mode {config['download']['pair_resize_mode']}")
    if subtask == "geolocalization" and dataset_options(config, name).get("wrap_longitudes"):
        return "--wrap-longitudes"
    return ""


def model_slug(name: str) -> str:
    """A model name as a path component: `timm:resnet10t` -> `timm-resnet10t`."""
    return name.replace(":", "-").replace("/", "--").replace("@", "_")


BENCH_TASKS = ("classification", "segmentation", "detection")


def bench_models(config: dict[str, Any], task: str | None = None) -> dict[str, str]:
    """Slug -> model name for one task's configured models, or all tasks' together."""
    tasks = BENCH_TASKS if task is None else (task,)
    return {model_slug(m): m for t in tasks for m in config["bench"]["models"][t]}


def task_of(dataset: str) -> str:
    return get_dataset(dataset).task


def uses_feature_cache(config: dict[str, Any], task: str = "classification") -> bool:
    """A frozen eval-mode backbone without augmentation sees each image once: cache its
    features, where the protocol allows it (probe) and `bench.feature_cache` is not false.

    Classification only: a segmentation decoder reads multi-scale encoder maps, too large to
    cache, and detectors train parts of their trunk-adjacent necks."""
    bench = config["bench"]
    return (task == "classification" and bench["training_type"] == "feature_extraction"
            and bench_protocol(config).feature_cache and bench["feature_cache"] is not False
            and not bench_augment(config))


def task_grid(config: dict[str, Any], task: str) -> dict[str, Any]:
    """The grid of a task: `bench.grid` with the task's `bench.grid_overrides` applied."""
    return {**config["bench"]["grid"], **config["bench"]["grid_overrides"].get(task, {})}


def partitions(config: dict[str, Any], task: str) -> list[str]:
    """Final-run partitions: the full set, training-size fractions, few-shot (classification)."""
    names = ["default"] + [f"fraction_{f:.2f}" for f in config["bench"]["partitions"]]
    if task == "classification":
        names += [f"fewshot_{k}" for k in config["bench"]["fewshot"]]
    return names


def bench_inputs(config: dict[str, Any]):
    """Input function of tune and train: the dataset, and its feature cache where one is used."""
    results = config["results"]

    def inputs(wildcards) -> dict[str, str]:
        found = {"data": f"{results}/data/{wildcards.dataset}"}
        if uses_feature_cache(config, task_of(wildcards.dataset)):
            found["features"] = f"{results}/features/{wildcards.dataset}/{wildcards.model}"
        return found

    return inputs


def feature_flags(config: dict[str, Any]) -> str:
    bench = config["bench"]
    flags = [f"--device {bench['device']}"]
    if not bench["pretrained"] or bench["training_type"] == "scratch":
        flags.append("--no-pretrained")
    if config["offline"]:
        flags.append("--offline")
    return " ".join(flags)


def bench_tasks(config: dict[str, Any]) -> list[str]:
    """The Mars-Bench tasks that have both models and datasets configured."""
    return [task for task in BENCH_TASKS
            if config["bench"]["models"][task] and datasets(config, task)]


def bench_targets(config: dict[str, Any]) -> list[str]:
    """The runs table of every configured task."""
    return [f"{config['results']}/tables/{task}_runs.csv" for task in bench_tasks(config)]


def model_partitions(config: dict[str, Any], task: str, model: str,
                     dataset: str) -> list[str]:
    """The final-run partitions of one (dataset, model): `partitions`, or for a model of
    `bench.model_scope` none outside its datasets and few-shot ones only where it asks."""
    scope = config["bench"].get("model_scope", {}).get(model)
    if scope is None:
        return partitions(config, task)
    if dataset not in scope["datasets"]:
        return []
    return [p for p in partitions(config, task)
            if scope.get("fewshot", False) or not p.startswith("fewshot_")]


def run_records(config: dict[str, Any], task: str) -> list[str]:
    """Every final-run record of a task: dataset x model x partition x seed (a model of
    `bench.model_scope` on its datasets only)."""
    return [
        f"{config['results']}/runs/{dataset}/{slug}/{partition}/seed{seed}.json"
        for dataset in datasets(config, task)
        for slug, model in bench_models(config, task).items()
        for partition in model_partitions(config, task, model, dataset)
        for seed in config["bench"]["seeds"]
    ]


def setup_flags(config: dict[str, Any], task: str) -> str:
    """The command-line flags of marseval.bench.experiment.Setup shared by tune and train."""
    bench = config["bench"]
    flags = [f"--protocol {bench['protocol']}", f"--training-type {bench['training_type']}",
             f"--device {bench['device']}", f"--selection {bench_selection(config)}",
             f"--num-workers {bench['num_workers']}"]
    if task == "classification":
        flags.append(f"--head {bench['head']}")
    else:
        size = bench["input_size"].get(task)
        if size is not None:
            flags.append(f"--input-size {size}")
    if task == "segmentation":
        flags.append(f"--score-resolution {bench['score_resolution']}")
    if task == "detection" and bench["drop_empty_images"]:
        flags.append("--drop-empty")
    if not bench["pretrained"]:
        flags.append("--no-pretrained")
    flags.append("--augment" if bench_augment(config) else "--no-augment")
    if config["offline"]:
        flags.append("--offline")
    return " ".join(flags)


# The tasks with published per-seed runs, and their files under report.reference.
PAPER_RUNS = PUBLISHED_RUNS
PAPER_EARTH = PUBLISHED_EARTH  # the Earth-observation comparison (classification)


REPORT_CATEGORIES = {"report": "Mars-Bench results",
                     "paper_figures": "Mars-Bench paper (published runs)"}


def report_category(wildcards) -> str:
    """HTML report category of a report job: a readable name, not the `{kind}` wildcard."""
    return REPORT_CATEGORIES[wildcards.kind]


def retrieval_report_labels(wildcards) -> dict[str, str]:
    """Summary tables by name, maps by model and query mode (the pattern's wildcards)."""
    named = dict(wildcards.items())
    if "figure" in named:
        return {"figure": named["figure"]}
    return {"table": named["name"]}


def report_targets(config: dict[str, Any]) -> list[str]:
    """The report of every task that has a runs table."""
    return [f"{config['results']}/report/{task}/aggregate.csv" for task in bench_tasks(config)]


def report_runs(config: dict[str, Any], kind: str, task: str) -> list[str]:
    """Input of the report rule: our runs table, or the published ones (paper_figures)."""
    if kind == "report":
        return [f"{config['results']}/tables/{task}_runs.csv"]
    if task not in PAPER_RUNS:
        raise ValueError(f"no published runs of {task}; paper_figures covers {list(PAPER_RUNS)}")
    return [f"{config['report']['reference']}/{name}" for name in PAPER_RUNS[task]]


def leaderboard(config: dict[str, Any], kind: str, task: str) -> bool:
    """Whether the report of our runs of `task` is a leaderboard (report.leaderboard): our runs
    beside the published ones under the paper's normaliser. Only tasks the paper published runs
    of (not detection, whose report stays a normal one)."""
    options = config["report"]
    if not options.get("leaderboard", False) or kind != "report":
        return False
    if options["normalizer"]:
        raise ConfigError(f"config keys {LEADERBOARD_KEY} and report.normalizer exclude each "
                          f"other: the leaderboard normalises with the paper's "
                          f"{options['reference']}/<task>_normalizer.json; set "
                          f"report.normalizer: null")
    return task in PAPER_RUNS


def report_published(config: dict[str, Any], kind: str, task: str) -> list[str]:
    """Published files a leaderboard report reads (inputs, so that it reruns when they change):
    the task's runs tables, its normaliser, the Earth-observation runs; none otherwise."""
    if not leaderboard(config, kind, task):
        return []
    names = [*PAPER_RUNS[task], published_normalizer(task)]
    if task == "classification":
        names.append(PAPER_EARTH)
    return [f"{config['report']['reference']}/{name}" for name in names]


def report_flags(config: dict[str, Any], kind: str, task: str) -> str:
    options = config["report"]
    flags = [f"--reps {options['reps']}", f"--ci {options['ci']}", f"--seed {options['seed']}"]
    if options["normalizer"] and kind == "report":
        flags.append(f"--normalizer {options['normalizer']}")
    if kind == "paper_figures" and task == "classification":
        flags.append(f"--earth {options['reference']}/{PAPER_EARTH}")
    if leaderboard(config, kind, task):
        flags += ["--leaderboard", f"--reference {options['reference']}"]
    return " ".join(flags)


RETRIEVAL_TASKS = ("paired", "landform", "geolocalization")


def retrieval_datasets(config: dict[str, Any]) -> dict[str, str]:
    """Retrieval task -> its configured dataset (the registry subtask names the task)."""
    wanted = config["retrieval"]["tasks"]
    found = {get_dataset(n).subtask: n for n in datasets(config, "retrieval")}
    return {task: found[task] for task in RETRIEVAL_TASKS if task in found and task in wanted}


def retrieval_models(config: dict[str, Any]) -> dict[str, str]:
    return {model_slug(m): m for m in config["retrieval"]["models"]}


def retrieval_evaluations(config: dict[str, Any], task: str) -> list[str]:
    dataset = retrieval_datasets(config)[task]
    return [f"{config['results']}/retrieval/eval/{dataset}/{slug}"
            for slug in retrieval_models(config)]


def retrieval_targets(config: dict[str, Any]) -> list[str]:
    """The summary folder of every retrieval task that has a dataset and models."""
    if not config["retrieval"]["models"]:
        return []
    return [f"{config['results']}/retrieval/report/{task}" for task in retrieval_datasets(config)]


def index_params(config: dict[str, Any]) -> IndexParams:
    return IndexParams.from_config(config)


def sharded_layout(config: dict[str, Any]) -> bool:
    return config["retrieval"]["index_layout"] == "sharded"


def retrieval_folder(config: dict[str, Any], stage: str, dataset: str, model: str) -> str:
    """A stage's folder of one database and model; index stages are named by the settings'
    tag, so changed settings build new indexes instead of reusing the old ones."""
    return (f"{config['results']}/retrieval/{stage}/{dataset}/{model}/"
            f"{index_params(config).tag()}")


def shard_indexed(config: dict[str, Any]) -> bool:
    """Whether each shard gets a shard_index job: exact search scans the shard itself."""
    return index_params(config).kind != "exact"


def evaluate_inputs(config: dict[str, Any]):
    """Input function of evaluate: the dataset and what the layout ranks with: the merged
    index and queries; sharded: the merged search results, or for paired the shards."""
    results = config["results"]

    def inputs(wildcards) -> dict[str, Any]:
        dataset, model = wildcards.dataset, wildcards.model
        found: dict[str, Any] = {"data": f"{results}/data/{dataset}"}
        paired = get_dataset(dataset).subtask == "paired"
        if not sharded_layout(config):
            found["index"] = retrieval_folder(config, "index", dataset, model)
            if not paired:
                found["queries"] = f"{results}/retrieval/queries/{dataset}/{model}.npz"
        elif paired:
            found["shards"] = embedding_shards(config, dataset, model)
        else:
            found["rankings"] = retrieval_folder(config, "rankings", dataset, model)
        return found

    return inputs


def evaluate_source_flags(input) -> str:
    """The evaluate command's database flags, from the inputs `evaluate_inputs` chose."""
    keys = set(input.keys())
    if "rankings" in keys:
        return f"--rankings {input.rankings}"
    if "shards" in keys:
        return "--shards " + " ".join(input.shards)
    flags = f"--index {input.index}"
    return flags + (f" --queries {input.queries}" if "queries" in keys else "")


def retrieval_stages(config: dict[str, Any], task: str) -> tuple[str, ...]:
    """The stages (rules) a retrieval task runs per model under the config's layout: paired
    retrieval needs no queries (its captions) and, sharded, no search either."""
    if not sharded_layout(config):
        return ("embed", "index", "evaluate") if task == "paired" else \
            ("embed", "queries", "index", "evaluate")
    if task == "paired":
        return ("embed", "evaluate")
    indexed = ("shard_index",) if shard_indexed(config) else ()
    return ("embed", "queries", *indexed, "search", "rankings", "evaluate")


def search_inputs(config: dict[str, Any]):
    """Input function of search: the shard, its queries, and its index unless exact."""
    results = config["results"]

    def inputs(wildcards) -> dict[str, str]:
        dataset, model = wildcards.dataset, wildcards.model
        shard = f"shard{wildcards.shard}"
        found = {"shard": f"{results}/retrieval/embeddings/{dataset}/{model}/{shard}",
                 "queries": f"{results}/retrieval/queries/{dataset}/{model}.npz"}
        if shard_indexed(config):
            found["index"] = f"{retrieval_folder(config, 'shard_index', dataset, model)}/{shard}"
        return found

    return inputs


def search_results(config: dict[str, Any], dataset: str, model: str) -> list[str]:
    """The search result of every shard of a database, in shard order."""
    folder = retrieval_folder(config, "search", dataset, model)
    return [f"{folder}/shard{i}.npz" for i in range(embed_shard_count(config, dataset))]


def search_top_k(config: dict[str, Any], dataset: str) -> str:
    """How deep a search goes: landform retrieval ranks the whole database."""
    if get_dataset(dataset).subtask == "landform":
        return "all"
    return str(config["retrieval"]["top_k"])


def embedding_shards(config: dict[str, Any], dataset: str, model: str) -> list[str]:
    """The embedding shard folders of one database and model, in database order."""
    return [f"{config['results']}/retrieval/embeddings/{dataset}/{model}/shard{i}"
            for i in range(embed_shard_count(config, dataset))]


def embed_inputs(config: dict[str, Any]):
    """Input function of embed: the dataset, and for geo-localization the shard's cell group."""
    results = config["results"]

    def inputs(wildcards) -> dict[str, str]:
        found = {"data": f"{results}/data/{wildcards.dataset}"}
        if get_dataset(wildcards.dataset).subtask == "geolocalization":
            group = group_ids(config)[int(wildcards.shard)]
            found["cells"] = f"{results}/retrieval/cells/group{group}"
        return found

    return inputs


def embed_shard_flags(config: dict[str, Any], wildcards, input) -> str:
    """A cell group is the whole database of its shard; other shards split the samples."""
    if get_dataset(wildcards.dataset).subtask == "geolocalization":
        return f"--shard 0 --shards 1 --cells {input.cells}"
    return f"--shard {wildcards.shard} --shards {config['retrieval']['embed_shards']}"


def _encoder_job_flags(config: dict[str, Any]) -> list[str]:
    """Flags of every job that runs an embedding model (embed, queries)."""
    options = config["retrieval"]
    flags = [f"--batch-size {options['embed_batch_size']}", f"--device {options['device']}"]
    return flags + (["--offline"] if config["offline"] else [])


def embed_flags(config: dict[str, Any]) -> str:
    return " ".join([f"--dtype {config['retrieval']['embed_dtype']}",
                     f"--caption-key {config['retrieval']['caption_key']}",
                     f"--bad-images {config['retrieval']['bad_images']}",
                     *_encoder_job_flags(config)])


def faiss_env(config: dict[str, Any]) -> str:
    """The conda env of the FAISS rules (relative to workflow/rules/): the GPU build of faiss
    where retrieval.index_gpu asks for the GPU, else the retrieval env's faiss-cpu."""
    if config["retrieval"]["index_gpu"] == "no":
        return "../../envs/retrieval.yaml"
    return "../../envs/gpu/faiss.yaml"


def index_flags(config: dict[str, Any]) -> str:
    """The index settings and GPU choice of the index, shard_index and search commands."""
    return f"{index_params(config).flags()} --use-gpu {config['retrieval']['index_gpu']}"


def queries_flags(config: dict[str, Any]) -> str:
    """Flags of the queries job: the prompt style, and per-class prompts as one quoted JSON."""
    import shlex

    options = config["retrieval"]
    flags = [f"--prompts {options.get('prompts', 'templates')}"]
    if options.get("landform_prompts"):
        spec = json.dumps(options["landform_prompts"], sort_keys=True)
        flags.append(f"--landform-prompts {shlex.quote(spec)}")
    return " ".join(flags + _encoder_job_flags(config))


def evaluate_flags(config: dict[str, Any]) -> str:
    options = config["retrieval"]
    flags = [f"--radius-deg {options['radius_deg']}", f"--top-k {options['top_k']}",
             f"--k-step {options['k_step']}", f"--location {options['location']}"]
    if options["radius_km"]:
        flags.append(f"--radius-km {options['radius_km']}")
    return " ".join(flags)


def csv(values: list[Any]) -> str:
    return ",".join(str(v) for v in values)


NEXT_STAGES = """\
Done: every configured dataset is standardized under {results}/data/; the Mars-Bench runs
(grid search, selection, 7 seeds, partitions; few-shot for classification) are collected in
{results}/tables/<task>_runs.csv and reported (normalised IQM, bootstrap intervals, figures,
tables) in {results}/report/<task>/; MarsRetrieval (embedding shards, a FAISS index, text,
image and hybrid queries) is summarised per task in {results}/retrieval/report/<task>/.
`snakemake paper_figures` redraws the paper's figures from the published runs;
`snakemake --report report.html` gathers everything in one page."""
