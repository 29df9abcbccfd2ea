# MarsRetrieval: embed (shards, one GPU job each; geo-localization: one per CTX cell group,
# ctx.smk) -> index (FAISS, shards merged in order) -> queries (text, image, hybrid)
# -> evaluate (one model on one task) -> summary per task.
# The task of a dataset is its registry subtask: paired, landform or geolocalization.


rule embed:
    """Embed one shard of a retrieval database (images, tiles or captions)."""
    input:
        unpack(embed_inputs(config)),
    output:
        directory(
            f"{RESULTS}/retrieval/embeddings/{{dataset}}/{{model}}/shard{{shard}}"
        ),
    log:
        f"{LOGS}/embed/{{dataset}}/{{model}}/shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/embed/{{dataset}}/{{model}}/shard{{shard}}.tsv"
    conda:
        "../../envs/retrieval.yaml"
    threads: JOBS.threads("embed")
    resources:
        gpu=JOBS.gpus("embed"),
        mem_mb=JOBS.mem_mb("embed"),
        runtime=JOBS.runtime("embed"),
    params:
        model=lambda wildcards: RETRIEVAL_MODELS[wildcards.model],
        shards=lambda wildcards, input: embed_shard_flags(config, wildcards, input),
        flags=EMBED_FLAGS,
    shell:
        "python -m marseval embed --dataset-dir {input.data} --model {params.model:q}"
        " {params.shards} {params.flags} --out {output} > {log} 2>&1"


rule index:
    """Merge a database's embedding shards into one FAISS index."""
    input:
        lambda wildcards: embedding_shards(config, wildcards.dataset, wildcards.model),
    output:
        directory(f"{RESULTS}/retrieval/index/{{dataset}}/{{model}}"),
    log:
        f"{LOGS}/index/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/index/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/retrieval.yaml"
    threads: JOBS.threads("index")
    resources:
        gpu=JOBS.gpus("index"),
        mem_mb=JOBS.mem_mb("index"),
        runtime=JOBS.runtime("index"),
    params:
        flags=INDEX_FLAGS,
    shell:
        "python -m marseval index --out {output} {params.flags} {input} > {log} 2>&1"


rule queries:
    """Embed the text, image and hybrid queries of a retrieval task."""
    input:
        data=f"{RESULTS}/data/{{dataset}}",
    output:
        f"{RESULTS}/retrieval/queries/{{dataset}}/{{model}}.npz",
    log:
        f"{LOGS}/queries/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/queries/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/retrieval.yaml"
    threads: JOBS.threads("queries")
    resources:
        gpu=JOBS.gpus("queries"),
        mem_mb=JOBS.mem_mb("queries"),
        runtime=JOBS.runtime("queries"),
    params:
        model=lambda wildcards: RETRIEVAL_MODELS[wildcards.model],
        flags=QUERIES_FLAGS,
    shell:
        "python -m marseval queries --dataset-dir {input.data} --model {params.model:q}"
        " {params.flags} --out {output} > {log} 2>&1"


rule evaluate:
    """Search the index with a task's queries and score the rankings."""
    input:
        unpack(evaluate_inputs(config)),
    output:
        directory(f"{RESULTS}/retrieval/eval/{{dataset}}/{{model}}"),
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/retrieval.yaml"
    threads: JOBS.threads("evaluate")
    resources:
        gpu=JOBS.gpus("evaluate"),
        mem_mb=JOBS.mem_mb("evaluate"),
        runtime=JOBS.runtime("evaluate"),
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
    """Summarise a retrieval task over models: tables and Mars maps."""
    input:
        lambda wildcards: retrieval_evaluations(config, wildcards.rtask),
    output:
        report(
            directory(f"{RESULTS}/retrieval/report/{{rtask}}"),
            patterns=["{name}.csv", "figures/{figure}.png"],
            caption="../report/retrieval.rst",
            category="MarsRetrieval",
            subcategory="{rtask}",
            labels=retrieval_report_labels,
        ),
    log:
        f"{LOGS}/retrieval_report/{{rtask}}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m marseval retrieval-report --out {output} {input} > {log} 2>&1"
