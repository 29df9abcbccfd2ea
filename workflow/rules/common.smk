# Shared names: config checks, folders and the dataset lists every stage builds on.
from marseval.fetch import set_offline
from marseval.workflow import (
    NEXT_STAGES,
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

RESULTS = config["results"]
RESOURCES = config["resources"]
LOGS = f"{RESULTS}/logs"
DATASETS = datasets(config)
STANDARDIZED = expand(f"{RESULTS}/data/{{dataset}}", dataset=DATASETS)


wildcard_constraints:
    dataset=r"(mb|mr)-[a-z0-9_]+",
    source=r"synthetic|huggingface|zenodo",
