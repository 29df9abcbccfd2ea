# Shared names: config checks, folders and the dataset lists every stage builds on.
import json
import os

from marseval.fetch import set_offline
from marseval.workflow import (
    NEXT_STAGES,
    PAPER_RUNS,
    report_flags,
    report_runs,
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
DATASETS = datasets(config)
STANDARDIZED = expand(f"{RESULTS}/data/{{dataset}}", dataset=DATASETS)
CLASSIFICATION_MODELS = bench_models(config, "classification")
BENCH_MODELS = bench_models(config)
FEATURE_FLAGS = feature_flags(config)
BENCH_TABLES = bench_targets(config)
REPORTS = report_targets(config)
PAPER_TASKS = list(PAPER_RUNS)
tune_inputs = bench_inputs(config)


wildcard_constraints:
    dataset=r"(mb|mr)-[a-z0-9_]+",
    source=r"synthetic|huggingface|zenodo",
    model=r"[A-Za-z0-9_.\-]+",
    shard=r"\d+",
    seed=r"\d+",
    partition=r"default|fraction_[0-9.]+|fewshot_[0-9]+",
    task=r"classification|segmentation|detection",
    kind=r"report|paper_figures",
