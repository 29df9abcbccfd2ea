# Reporting: normalise per dataset, IQM with stratified-bootstrap intervals, probability of
# improvement, optimality gap, the paper's figures and tables (python -m marseval report).
# {kind} is "report" for this workflow's runs tables and "paper_figures" for the published
# per-seed runs under report.reference, which redraws the paper without training anything.
from marseval.report.options import option_flags
from marseval.workflow import report_published

# report.* options of the paper's reporting; a bad one stops the workflow here, naming its key
REPORT_OPTION_FLAGS = option_flags(config)


rule report:
    """Normalise a runs table, aggregate with IQM and bootstrap intervals, draw the figures."""
    input:
        runs=lambda wildcards: report_runs(config, wildcards.kind, wildcards.task),
        # report.leaderboard: the published runs and normaliser our runs are ranked among
        published=lambda wildcards: report_published(
            config, wildcards.kind, wildcards.task
        ),
    output:
        per_dataset=report(
            f"{RESULTS}/{{kind}}/{{task}}/per_dataset.csv",
            caption="../report/per_dataset.rst",
            category=report_category,
            subcategory="{task}",
            labels={"table": "IQM per dataset"},
        ),
        aggregate=report(
            f"{RESULTS}/{{kind}}/{{task}}/aggregate.csv",
            caption="../report/aggregate.rst",
            category=report_category,
            subcategory="{task}",
            labels={"table": "aggregate IQM"},
        ),
        normalizer=f"{RESULTS}/{{kind}}/{{task}}/normalizer.json",
        figures=report(
            directory(f"{RESULTS}/{{kind}}/{{task}}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category=report_category,
            subcategory="{task}",
            labels={"figure": "{name}"},
        ),
        tables=report(
            directory(f"{RESULTS}/{{kind}}/{{task}}/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category=report_category,
            subcategory="{task}",
            labels={"table": "{name}"},
        ),
    log:
        f"{LOGS}/{{kind}}/{{task}}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        out=lambda wildcards, output: os.path.dirname(output.aggregate),
        flags=lambda wildcards: report_flags(config, wildcards.kind, wildcards.task)
        + f" {REPORT_OPTION_FLAGS}",
    shell:
        "python -m marseval report --runs {input.runs} --task {wildcards.task}"
        " --out {params.out} {params.flags} > {log} 2>&1"


rule paper_figures:
    """Redraw the paper's figures and tables from the published per-seed runs."""
    input:
        [f"{RESULTS}/paper_figures/{task}/aggregate.csv" for task in PAPER_TASKS],
    localrule: True


rule run_config:
    """Copy the config record (written when the workflow is parsed) into the HTML report."""
    input:
        RUN_CONFIG,
    output:
        report(
            f"{RESULTS}/tables/config.yaml",
            caption="../report/config.rst",
            category="Configuration",
            labels={"file": "config.yaml"},
        ),
    log:
        f"{LOGS}/run_config.log",
    localrule: True
    run:
        copy_record(input[0], output[0], log[0])


rule job_usage:
    """Runtime and memory of every benchmarked job (Snakemake's benchmark files), one table."""
    input:
        targets=ALL_TARGETS,
        config=RUN_CONFIG,
    output:
        report(
            f"{RESULTS}/tables/job_usage.csv",
            caption="../report/job_usage.rst",
            category="Configuration",
            labels={"file": "job_usage.csv"},
        ),
    log:
        f"{LOGS}/job_usage.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        benchmarks=BENCHMARKS,
    shell:
        "python -m marseval job-usage --benchmarks {params.benchmarks}"
        " --config {input.config} --out {output} > {log} 2>&1"
