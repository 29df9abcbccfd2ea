# MarsRetrieval: embed (shards, one GPU job each; geo-localization: one per CTX cell group,
# ctx.smk) -> queries (text, image, hybrid) -> ranking -> evaluate (one model on one task)
# -> summary per task. Ranking, by retrieval.index_layout:
#   sharded (default): shard_index (one per shard; none for exact) -> search (queries x
#     shard, top K) -> rankings (merged global top K); paired ranks are scored shard by shard
#   merged: index (FAISS, shards merged in order), searched by evaluate
# Index folders are named by the settings' tag ({tag}), so changed settings build anew.
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
    """Merge a database's embedding shards into one FAISS index (merged layout)."""
    input:
        lambda wildcards: embedding_shards(config, wildcards.dataset, wildcards.model),
    output:
        directory(f"{RESULTS}/retrieval/index/{{dataset}}/{{model}}/{{tag}}"),
    log:
        f"{LOGS}/index/{{dataset}}/{{model}}/{{tag}}.log",
    benchmark:
        f"{BENCHMARKS}/index/{{dataset}}/{{model}}/{{tag}}.tsv"
    conda:
        faiss_env(config)
    threads: JOBS.threads("index")
    resources:
        gpu=JOBS.gpus("index"),
        mem_mb=JOBS.mem_mb("index"),
        runtime=JOBS.runtime("index"),
    params:
        flags=INDEX_FLAGS,
    shell:
        "python -m marseval index --out {output} {params.flags} {input} > {log} 2>&1"


rule shard_index:
    """The FAISS index of one embedding shard (sharded layout; exact needs none)."""
    input:
        f"{RESULTS}/retrieval/embeddings/{{dataset}}/{{model}}/shard{{shard}}",
    output:
        directory(
            f"{RESULTS}/retrieval/shard_index/{{dataset}}/{{model}}/{{tag}}/shard{{shard}}"
        ),
    log:
        f"{LOGS}/shard_index/{{dataset}}/{{model}}/{{tag}}/shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/shard_index/{{dataset}}/{{model}}/{{tag}}/shard{{shard}}.tsv"
    conda:
        faiss_env(config)
    threads: JOBS.threads("shard_index")
    resources:
        gpu=JOBS.gpus("shard_index"),
        mem_mb=JOBS.mem_mb("shard_index"),
        runtime=JOBS.runtime("shard_index"),
    params:
        flags=INDEX_FLAGS,
    shell:
        "python -m marseval shard-index --shard {input} --out {output} {params.flags}"
        " > {log} 2>&1"


rule search:
    """Every query of a task against one embedding shard: its top K (sharded layout)."""
    input:
        unpack(search_inputs(config)),
    output:
        f"{RESULTS}/retrieval/search/{{dataset}}/{{model}}/{{tag}}/shard{{shard}}.npz",
    log:
        f"{LOGS}/search/{{dataset}}/{{model}}/{{tag}}/shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/search/{{dataset}}/{{model}}/{{tag}}/shard{{shard}}.tsv"
    conda:
        faiss_env(config)
    threads: JOBS.threads("search")
    resources:
        gpu=JOBS.gpus("search"),
        mem_mb=JOBS.mem_mb("search"),
        runtime=JOBS.runtime("search"),
    params:
        index=lambda wildcards, input: (
            f"--index {input.index}" if "index" in input.keys() else ""
        ),
        top_k=lambda wildcards: search_top_k(config, wildcards.dataset),
        flags=INDEX_FLAGS,
    shell:
        "python -m marseval search --shard {input.shard} --queries {input.queries}"
        " {params.index} --top-k {params.top_k} {params.flags} --out {output} > {log} 2>&1"


rule rankings:
    """Merge the shards' search results into each query's global top K (sharded layout)."""
    input:
        results=lambda wildcards: search_results(
            config, wildcards.dataset, wildcards.model
        ),
        shards=lambda wildcards: embedding_shards(
            config, wildcards.dataset, wildcards.model
        ),
    output:
        directory(f"{RESULTS}/retrieval/rankings/{{dataset}}/{{model}}/{{tag}}"),
    log:
        f"{LOGS}/rankings/{{dataset}}/{{model}}/{{tag}}.log",
    benchmark:
        f"{BENCHMARKS}/rankings/{{dataset}}/{{model}}/{{tag}}.tsv"
    conda:
        "../../envs/retrieval.yaml"
    threads: JOBS.threads("rankings")
    resources:
        mem_mb=JOBS.mem_mb("rankings"),
        runtime=JOBS.runtime("rankings"),
    params:
        top_k=lambda wildcards: search_top_k(config, wildcards.dataset),
    shell:
        "python -m marseval rankings --top-k {params.top_k} --results {input.results}"
        " --shards {input.shards} --out {output} > {log} 2>&1"


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
    """Score one model on one task from its rankings (or its merged index and queries)."""
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
        sources=lambda wildcards, input: evaluate_source_flags(input),
        flags=EVALUATE_FLAGS,
    shell:
        "python -m marseval evaluate --dataset-dir {input.data} {params.sources}"
        " --model {params.model:q} {params.flags} --out {output} > {log} 2>&1"


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
