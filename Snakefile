# marseval: Mars-Bench and MarsRetrieval, end to end.
# Default run: the embedded synthetic config (config/config.yaml); see README.md.
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The package in this checkout drives every rule (see marseval/workflow.py).
sys.path.insert(0, workflow.basedir)
from marseval.workflow import export_job_environment

export_job_environment(workflow.basedir)


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/retrieval.smk"


rule all:
    default_target: True
    input:
        standardized=STANDARDIZED,
        data_summary=f"{RESULTS}/tables/datasets.csv",
        bench=BENCH_TABLES,
        reports=REPORTS,
        retrieval=RETRIEVAL_SUMMARIES,


onsuccess:
    print(NEXT_STAGES.format(results=RESULTS))
