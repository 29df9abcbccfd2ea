# marseval: Mars-Bench and MarsRetrieval, end to end.
# Without --configfile: the paper reproduction (config/config.yaml). The embedded synthetic
# default is config/embedded.yaml (`make run`); see README.md.
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The marseval package beside this Snakefile drives every rule (marseval/workflow.py). Used
# as a module, this is the module's folder, not the folder of the workflow that deploys it.
MARSEVAL_DIR = workflow.current_basedir.get_path_or_uri(secret_free=True)
sys.path.insert(0, MARSEVAL_DIR)
from marseval.workflow import export_job_environment

export_job_environment(MARSEVAL_DIR)


# A config means exactly what its file says: config/config.yaml is read only when no
# --configfile is given, so another file never inherits the paper's (or any) settings.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/ctx.smk"
include: "workflow/rules/retrieval.smk"


rule all:
    """Every configured stage, the config in effect and the job usage table."""
    default_target: True
    input:
        ALL_TARGETS,
        config=f"{RESULTS}/tables/config.yaml",
        job_usage=f"{RESULTS}/tables/job_usage.csv",
    localrule: True


onsuccess:
    print(NEXT_STAGES.format(results=RESULTS))
