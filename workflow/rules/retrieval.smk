# MarsRetrieval: embed (shards, one GPU job each) -> index (FAISS, shards merged in order)
# -> queries (text, image, hybrid) -> evaluate (one model on one task) -> summary per task.
# The task of a dataset is its registry subtask: paired, landform or geolocalization.


rule embed:
    input:
        data=f"{RESULTS}/data/{{dataset}}",
    output:
        directory(
            f"{RESULTS}/retrieval/embeddings/{{dataset}}/{{model}}/shard{{shard}}"
        ),
    log:
        f"{LOGS}/embed/{{dataset}}/{{model}}/shard{{shard}}.log",
    conda:
        "../../envs/retrieval.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        model=lambda wildcards: RETRIEVAL_MODELS[wildcards.model],
        shards=config["retrieval"]["embed_shards"],
        flags=EMBED_FLAGS,
    shell:
        "python -m marseval embed --dataset-dir {input.data} --model {params.model:q}"
        " --shard {wildcards.shard} --shards {params.shards} {params.flags} --out {output}"
        " > {log} 2>&1"


rule index:
    input:
        expand(
            f"{RESULTS}/retrieval/embeddings/{{{{dataset}}}}/{{{{model}}}}/shard{{shard}}",
            shard=range(config["retrieval"]["embed_shards"]),
        ),
    output:
        directory(f"{RESULTS}/retrieval/index/{{dataset}}/{{model}}"),
    log:
        f"{LOGS}/index/{{dataset}}/{{model}}.log",
    conda:
        "../../envs/retrieval.yaml"
    threads: 2
    resources:
        mem_mb=32000,
        runtime=120,
    params:
        flags=INDEX_FLAGS,
    shell:
        "python -m marseval index --out {output} {params.flags} {input} > {log} 2>&1"


rule queries:
    input:
        data=f"{RESULTS}/data/{{dataset}}",
    output:
        f"{RESULTS}/retrieval/queries/{{dataset}}/{{model}}.npz",
    log:
        f"{LOGS}/queries/{{dataset}}/{{model}}.log",
    conda:
        "../../envs/retrieval.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        model=lambda wildcards: RETRIEVAL_MODELS[wildcards.model],
        flags=QUERIES_FLAGS,
    shell:
        "python -m marseval queries --dataset-dir {input.data} --model {params.model:q}"
        " {params.flags} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs(config)),
    output:
        directory(f"{RESULTS}/retrieval/eval/{{dataset}}/{{model}}"),
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{model}}.log",
    conda:
        "../../envs/retrieval.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        model=lambda wildcards: RETRIEVAL_MODELS[wildcards.model],
        queries=lambda wildcards, input: (
            f"--queries {input.queries}" if "queries" in input.keys() else ""
        ),
        flags=EVALUATE_FLAGS,
    shell:
        "python -m marseval evaluate --dataset-dir {input.data} --index {input.index}"
        " --model {params.model:q} {params.queries} {params.flags} --out {output}"
        " > {log} 2>&1"


rule retrieval_report:
    input:
        lambda wildcards: retrieval_evaluations(config, wildcards.rtask),
    output:
        report(
            directory(f"{RESULTS}/retrieval/report/{{rtask}}"),
            patterns=["{name}.csv", "figures/{figure}.png"],
            caption="../report/retrieval.rst",
            category="MarsRetrieval",
            subcategory="{rtask}",
        ),
    log:
        f"{LOGS}/retrieval_report/{{rtask}}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m marseval retrieval-report --out {output} {input} > {log} 2>&1"
