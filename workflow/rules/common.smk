# Shared names: config checks, folders and the dataset lists every stage builds on.
import json
import os

from snakemake.logging import logger

from marseval.config_record import copy_record, record_config
from marseval.fetch import set_offline
from marseval.job_resources import JobSizer
from marseval.workflow import (
    NEXT_STAGES,
    PAPER_RUNS,
    report_category,
    report_flags,
    report_runs,
    retrieval_report_labels,
    report_targets,
    bench_inputs,
    bench_models,
    bench_targets,
    feature_flags,
    run_records,
    setup_flags,
    task_grid,
    task_of,
    check_config,
    csv,
    datasets,
    detection_format_flag,
    download_options,
    raw_dir,
    source_of,
    embed_flags,
    evaluate_flags,
    evaluate_inputs,
    evaluate_source_flags,
    faiss_env,
    search_inputs,
    search_results,
    search_top_k,
    index_flags,
    queries_flags,
    retrieval_evaluations,
    retrieval_models,
    retrieval_targets,
    retrieval_standardize_flags,
    embed_inputs,
    embed_shard_flags,
    embedding_shards,
)
from marseval.retrieval.ctx.plan import (
    ctx_archive_inputs,
    ctx_archives,
    ctx_source,
    group_tiles,
)

check_config(config)
set_offline(config["offline"])
# ultralytics writes its settings file on import: keep it with the resources, not in ~/.config
os.environ.setdefault(
    "YOLO_CONFIG_DIR", os.path.abspath(f"{config['resources']}/ultralytics")
)

RESULTS = config["results"]
RESOURCES = config["resources"]
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
RUN_CONFIG = f"{RESULTS}/config.yaml"
JOBS = JobSizer(config)

# The config in effect, recorded by the invocation that plans the jobs (dry runs too), not
# by cluster jobs that re-parse this file.
if workflow.is_main_process:
    changed = record_config(config, RUN_CONFIG)
    if changed:
        logger.warning(
            f"The config differs from the one last used with {RESULTS}/ in: "
            f"{', '.join(changed)}. Outputs already there were made with the old settings "
            "(rerun-triggers: mtime); use --forcerun RULE to redo a stage, or another results folder."
        )
DATASETS = datasets(config)
STANDARDIZED = expand(f"{RESULTS}/data/{{dataset}}", dataset=DATASETS)
CLASSIFICATION_MODELS = bench_models(config, "classification")
BENCH_MODELS = bench_models(config)
FEATURE_FLAGS = feature_flags(config)
BENCH_TABLES = bench_targets(config)
REPORTS = report_targets(config)
PAPER_TASKS = list(PAPER_RUNS)
tune_inputs = bench_inputs(config)
RETRIEVAL_MODELS = retrieval_models(config)
RETRIEVAL_SUMMARIES = retrieval_targets(config)
EMBED_FLAGS = embed_flags(config)
INDEX_FLAGS = index_flags(config)
QUERIES_FLAGS = queries_flags(config)
EVALUATE_FLAGS = evaluate_flags(config)
# The CTX chain: raw tile groups are kept unless retrieval.ctx.keep_raw is false (the paper
# mosaic is 8 TB of GeoTIFFs: then each group goes once its cells are cut)
CTX_SOURCE = ctx_source(config)
CTX_RAW = f"{RESOURCES}/ctx/{CTX_SOURCE}"
CTX_ARCHIVES = ctx_archives(config)
CTX_ARCHIVE_INPUTS = ctx_archive_inputs(config)
CTX_GROUP_OUTPUT = directory(f"{CTX_RAW}/group{{group}}")
if not config["retrieval"]["ctx"]["keep_raw"]:
    CTX_GROUP_OUTPUT = temp(CTX_GROUP_OUTPUT)
# What `all` builds besides the config record and the job usage table (which follows them).
ALL_TARGETS = [
    *STANDARDIZED,
    f"{RESULTS}/tables/datasets.csv",
    *BENCH_TABLES,
    *REPORTS,
    *RETRIEVAL_SUMMARIES,
]


wildcard_constraints:
    dataset=r"(mb|mr)-[a-z0-9_]+",
    source=r"synthetic|huggingface|zenodo",
    model=r"[A-Za-z0-9_.\-]+",
    shard=r"\d+",
    group=r"\d{3}-[0-9a-f]{8}",
    tag=r"exact|(ivf|hnsw|ivfpq|auto)-[0-9a-f]{8}",
    seed=r"\d+",
    partition=r"default|fraction_[0-9.]+|fewshot_[0-9]+",
    task=r"classification|segmentation|detection",
    rtask=r"paired|landform|geolocalization",
    kind=r"report|paper_figures",
