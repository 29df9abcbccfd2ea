# Mars-Bench training: feature cache, grid search in shards, selection, final runs, collection.
# One set of rules for classification, segmentation and detection; the dataset's task picks
# the experiment (marseval.bench.experiment.open_experiment). Features: classification only.


rule features:
    input:
        data=f"{RESULTS}/data/{{dataset}}",
    output:
        directory(f"{RESULTS}/features/{{dataset}}/{{model}}"),
    log:
        f"{LOGS}/features/{{dataset}}/{{model}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        model=lambda wildcards: CLASSIFICATION_MODELS[wildcards.model],
        batch_size=config["bench"]["feature_batch_size"],
        flags=FEATURE_FLAGS,
    shell:
        "python -m marseval features --dataset-dir {input.data} --model {params.model:q}"
        " --out {output} --batch-size {params.batch_size} {params.flags} > {log} 2>&1"


rule tune:
    input:
        unpack(tune_inputs),
    output:
        f"{RESULTS}/tune/{{dataset}}/{{model}}/shard{{shard}}.parquet",
    log:
        f"{LOGS}/tune/{{dataset}}/{{model}}/shard{{shard}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        model=lambda wildcards: BENCH_MODELS[wildcards.model],
        grid=lambda wildcards: json.dumps(task_grid(config, task_of(wildcards.dataset))),
        shards=config["bench"]["grid_shards"],
        seed=config["bench"]["tune_seed"],
        features=lambda wildcards, input: (
            f"--features {input.features}" if "features" in input.keys() else ""
        ),
        flags=lambda wildcards: setup_flags(config, task_of(wildcards.dataset)),
    shell:
        "python -m marseval tune --dataset-dir {input.data} --model {params.model:q}"
        " {params.features} --grid {params.grid:q} --shard {wildcards.shard}"
        " --shards {params.shards} --seed {params.seed} {params.flags} --out {output}"
        " > {log} 2>&1"


rule select:
    input:
        expand(
            f"{RESULTS}/tune/{{{{dataset}}}}/{{{{model}}}}/shard{{shard}}.parquet",
            shard=range(config["bench"]["grid_shards"]),
        ),
    output:
        f"{RESULTS}/tune/{{dataset}}/{{model}}/best.json",
    log:
        f"{LOGS}/select/{{dataset}}/{{model}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m marseval select --out {output} {input} > {log} 2>&1"


if config["bench"]["batch_seeds"]:

    rule train:
        input:
            unpack(tune_inputs),
            best=f"{RESULTS}/tune/{{dataset}}/{{model}}/best.json",
        output:
            expand(
                f"{RESULTS}/runs/{{{{dataset}}}}/{{{{model}}}}/{{{{partition}}}}/seed{{seed}}.json",
                seed=config["bench"]["seeds"],
            ),
        log:
            f"{LOGS}/train/{{dataset}}/{{model}}/{{partition}}/seeds.log",
        conda:
            "../../envs/torch.yaml"
        threads: 1
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=240,
        params:
            model=lambda wildcards: BENCH_MODELS[wildcards.model],
            features=lambda wildcards, input: (
                f"--features {input.features}" if "features" in input.keys() else ""
            ),
            seeds=csv(config["bench"]["seeds"]),
            flags=lambda wildcards: setup_flags(config, task_of(wildcards.dataset)),
        shell:
            "python -m marseval train --dataset-dir {input.data} --model {params.model:q}"
            " {params.features} --best {input.best} --partition {wildcards.partition}"
            " --seeds {params.seeds} {params.flags} --out {output} > {log} 2>&1"

else:

    rule train:
        input:
            unpack(tune_inputs),
            best=f"{RESULTS}/tune/{{dataset}}/{{model}}/best.json",
        output:
            f"{RESULTS}/runs/{{dataset}}/{{model}}/{{partition}}/seed{{seed}}.json",
        log:
            f"{LOGS}/train/{{dataset}}/{{model}}/{{partition}}/seed{{seed}}.log",
        conda:
            "../../envs/torch.yaml"
        threads: 1
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=240,
        params:
            model=lambda wildcards: BENCH_MODELS[wildcards.model],
            features=lambda wildcards, input: (
                f"--features {input.features}" if "features" in input.keys() else ""
            ),
            flags=lambda wildcards: setup_flags(config, task_of(wildcards.dataset)),
        shell:
            "python -m marseval train --dataset-dir {input.data} --model {params.model:q}"
            " {params.features} --best {input.best} --partition {wildcards.partition}"
            " --seeds {wildcards.seed} {params.flags} --out {output} > {log} 2>&1"


rule collect:
    input:
        lambda wildcards: run_records(config, wildcards.task),
    output:
        report(
            f"{RESULTS}/tables/{{task}}_runs.csv",
            caption="../report/runs.rst",
            category="Mars-Bench",
            subcategory="{task}",
        ),
    log:
        f"{LOGS}/collect/{{task}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m marseval collect --out {output} {input} > {log} 2>&1"
