# Data layer: raw download (or synthetic generation), then the standardized dataset folder.


rule download:
    """Fetch one dataset's raw files (Hugging Face, Zenodo) or generate them (synthetic)."""
    output:
        directory(f"{RESOURCES}/raw/{{source}}/{{dataset}}"),
    log:
        f"{LOGS}/download/{{source}}/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    threads: JOBS.threads("download")
    resources:
        downloads=1,
        mem_mb=JOBS.mem_mb("download"),
        runtime=JOBS.runtime("download"),
    params:
        options=lambda wildcards: download_options(config, wildcards.dataset),
        offline="--offline" if config["offline"] else "",
    shell:
        "python -m marseval download --dataset {wildcards.dataset}"
        " --source {wildcards.source} --out {output} --options {params.options:q}"
        " {params.offline} > {log} 2>&1"


rule standardize:
    """Validate raw files and write the standardized dataset folder with its subsets."""
    input:
        lambda wildcards: raw_dir(config, wildcards.dataset),
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{LOGS}/standardize/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    threads: JOBS.threads("standardize")
    resources:
        mem_mb=JOBS.mem_mb("standardize"),
        runtime=JOBS.runtime("standardize"),
    params:
        source=lambda wildcards: source_of(config, wildcards.dataset),
        fractions=csv(config["subsets"]["fractions"]),
        fewshot=csv(config["subsets"]["fewshot"]),
        seed=config["subsets"]["seed"],
        detection_format=lambda wildcards: detection_format_flag(
            config, wildcards.dataset
        ),
        retrieval=lambda wildcards: retrieval_standardize_flags(
            config, wildcards.dataset
        ),
    shell:
        "python -m marseval standardize --dataset {wildcards.dataset} --raw {input}"
        " --out {output} --source {params.source} --fractions {params.fractions}"
        " --fewshot {params.fewshot} --seed {params.seed} {params.detection_format}"
        " {params.retrieval} > {log} 2>&1"


rule data_summary:
    """One table of every standardized dataset: task, classes, split counts."""
    input:
        STANDARDIZED,
    output:
        report(
            f"{RESULTS}/tables/datasets.csv",
            caption="../report/datasets.rst",
            category="Data",
        ),
    log:
        f"{LOGS}/data_summary.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m marseval summarize-data --out {output} {input} > {log} 2>&1"
