# marseval: Mars-Bench and MarsRetrieval, end to end.
# Default run: the embedded synthetic config (config/config.yaml); see README.md.
import os
import sys

from snakemake.utils import min_version, validate


min_version("9.0")

# `python -m marseval` must resolve to this checkout in every job, with the interpreter that
# runs Snakemake unless a conda env (activated later, so first on PATH) provides its own.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)
os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ["PATH"]))


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/retrieval.smk"


rule all:
    default_target: True
    input:
        standardized=STANDARDIZED,


onsuccess:
    print(NEXT_STAGES.format(results=RESULTS))
