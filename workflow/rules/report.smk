# Reporting: normalise per dataset, IQM with stratified-bootstrap intervals, probability of
# improvement, optimality gap, the paper's figures and tables (python -m marseval report).
# {kind} is "report" for this workflow's runs tables and "paper_figures" for the published
# per-seed runs under report.reference, which redraws the paper without training anything.


rule report:
    input:
        runs=lambda wildcards: report_runs(config, wildcards.kind, wildcards.task),
    output:
        per_dataset=report(
            f"{RESULTS}/{{kind}}/{{task}}/per_dataset.csv",
            caption="../report/per_dataset.rst",
            category="{kind}",
            subcategory="{task}",
        ),
        aggregate=report(
            f"{RESULTS}/{{kind}}/{{task}}/aggregate.csv",
            caption="../report/aggregate.rst",
            category="{kind}",
            subcategory="{task}",
        ),
        normalizer=f"{RESULTS}/{{kind}}/{{task}}/normalizer.json",
        figures=report(
            directory(f"{RESULTS}/{{kind}}/{{task}}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="{kind}",
            subcategory="{task}",
        ),
        tables=report(
            directory(f"{RESULTS}/{{kind}}/{{task}}/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="{kind}",
            subcategory="{task}",
        ),
    log:
        f"{LOGS}/{{kind}}/{{task}}.log",
    conda:
        "../../envs/report.yaml"
    params:
        out=lambda wildcards, output: os.path.dirname(output.aggregate),
        flags=lambda wildcards: report_flags(config, wildcards.kind, wildcards.task),
    shell:
        "python -m marseval report --runs {input.runs} --task {wildcards.task}"
        " --out {params.out} {params.flags} > {log} 2>&1"


rule paper_figures:
    input:
        [f"{RESULTS}/paper_figures/{task}/aggregate.csv" for task in PAPER_TASKS],
    localrule: True
