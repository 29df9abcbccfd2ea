# Data layer: raw download (or synthetic generation), then the standardized dataset folder.


rule download:
    output:
        directory(f"{RESOURCES}/raw/{{source}}/{{dataset}}"),
    log:
        f"{LOGS}/download/{{source}}/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        downloads=1,
    params:
        options=lambda wildcards: download_options(config, wildcards.dataset),
        offline="--offline" if config["offline"] else "",
    shell:
        "python -m marseval download --dataset {wildcards.dataset}"
        " --source {wildcards.source} --out {output} --options {params.options:q}"
        " {params.offline} > {log} 2>&1"


rule standardize:
    input:
        lambda wildcards: raw_dir(config, wildcards.dataset),
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{LOGS}/standardize/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        source=lambda wildcards: source_of(config, wildcards.dataset),
        fractions=csv(config["subsets"]["fractions"]),
        fewshot=csv(config["subsets"]["fewshot"]),
        seed=config["subsets"]["seed"],
        detection_format=lambda wildcards: detection_format_flag(
            config, wildcards.dataset
        ),
    shell:
        "python -m marseval standardize --dataset {wildcards.dataset} --raw {input}"
        " --out {output} --source {params.source} --fractions {params.fractions}"
        " --fewshot {params.fewshot} --seed {params.seed} {params.detection_format}"
        " > {log} 2>&1"


rule data_summary:
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
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m marseval summarize-data --out {output} {input} > {log} 2>&1"
