# Mars-Bench training: feature cache, grid search in shards, selection, final runs, collection.
# One set of rules for classification, segmentation and detection; the dataset's task picks
# the experiment (marseval.bench.experiment.open_experiment). Features: classification only.

RUN_DIR = f"{RESULTS}/runs/{{dataset}}/{{model}}/{{partition}}"
# bench.batch_seeds: one job trains every seed of a (dataset, model, partition); otherwise
# one job per seed. The log and benchmark of a job are named after what it trains.
if config["bench"]["batch_seeds"]:
    TRAIN_OUTPUT = [f"{RUN_DIR}/seed{seed}.json" for seed in config["bench"]["seeds"]]
    TRAIN_JOB = "seeds"
else:
    TRAIN_OUTPUT = f"{RUN_DIR}/seed{{seed}}.json"
    TRAIN_JOB = "seed{seed}"


rule features:
    """Cache a frozen backbone's pooled features of every image (probe protocol)."""
    input:
        data=f"{RESULTS}/data/{{dataset}}",
    output:
        directory(f"{RESULTS}/features/{{dataset}}/{{model}}"),
    log:
        f"{LOGS}/features/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOBS.threads("features")
    resources:
        gpu=JOBS.gpus("features"),
        mem_mb=JOBS.mem_mb("features"),
        runtime=JOBS.runtime("features"),
    params:
        model=lambda wildcards: CLASSIFICATION_MODELS[wildcards.model],
        batch_size=config["bench"]["feature_batch_size"],
        flags=FEATURE_FLAGS,
    shell:
        "python -m marseval features --dataset-dir {input.data} --model {params.model:q}"
        " --out {output} --batch-size {params.batch_size} {params.flags} > {log} 2>&1"


rule tune:
    """Train and validate one shard of the hyperparameter grid of a (dataset, model) pair."""
    input:
        unpack(tune_inputs),
    output:
        f"{RESULTS}/tune/{{dataset}}/{{model}}/shard{{shard}}.parquet",
    log:
        f"{LOGS}/tune/{{dataset}}/{{model}}/shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/tune/{{dataset}}/{{model}}/shard{{shard}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOBS.threads("tune")
    resources:
        gpu=JOBS.gpus("tune"),
        mem_mb=JOBS.mem_mb("tune"),
        runtime=JOBS.runtime("tune"),
    params:
        model=lambda wildcards: BENCH_MODELS[wildcards.model],
        grid=lambda wildcards: json.dumps(task_grid(config, task_of(wildcards.dataset))),
        shards=config["bench"]["grid_shards"],
        seed=config["bench"]["tune_seed"],
        shared=config["bench"]["shared_pass_trials"],
        features=lambda wildcards, input: (
            f"--features {input.features}" if "features" in input.keys() else ""
        ),
        flags=lambda wildcards: setup_flags(config, task_of(wildcards.dataset)),
    shell:
        "python -m marseval tune --dataset-dir {input.data} --model {params.model:q}"
        " {params.features} --grid {params.grid:q} --shard {wildcards.shard}"
        " --shards {params.shards} --seed {params.seed}"
        " --shared-pass-trials {params.shared} {params.flags} --out {output}"
        " > {log} 2>&1"


rule select:
    """Pick the grid trial with the lowest validation loss (ties: fewest epochs)."""
    input:
        expand(
            f"{RESULTS}/tune/{{{{dataset}}}}/{{{{model}}}}/shard{{shard}}.parquet",
            shard=range(config["bench"]["grid_shards"]),
        ),
    output:
        f"{RESULTS}/tune/{{dataset}}/{{model}}/best.json",
    log:
        f"{LOGS}/select/{{dataset}}/{{model}}.log",
    localrule: True
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m marseval select --out {output} {input} > {log} 2>&1"


rule train:
    """Retrain the selected setting on a partition and test it, once per seed."""
    input:
        unpack(tune_inputs),
        best=f"{RESULTS}/tune/{{dataset}}/{{model}}/best.json",
    output:
        TRAIN_OUTPUT,
    log:
        f"{LOGS}/train/{{dataset}}/{{model}}/{{partition}}/{TRAIN_JOB}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{dataset}}/{{model}}/{{partition}}/{TRAIN_JOB}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOBS.threads("train")
    resources:
        gpu=JOBS.gpus("train"),
        mem_mb=JOBS.mem_mb("train"),
        runtime=JOBS.runtime("train"),
    params:
        model=lambda wildcards: BENCH_MODELS[wildcards.model],
        features=lambda wildcards, input: (
            f"--features {input.features}" if "features" in input.keys() else ""
        ),
        seeds=lambda wildcards: wildcards.get("seed") or csv(config["bench"]["seeds"]),
        flags=lambda wildcards: setup_flags(config, task_of(wildcards.dataset)),
    shell:
        "python -m marseval train --dataset-dir {input.data} --model {params.model:q}"
        " {params.features} --best {input.best} --partition {wildcards.partition}"
        " --seeds {params.seeds} {params.flags} --out {output} > {log} 2>&1"


rule collect:
    """Gather a task's final-run records into the Mars-Bench runs table."""
    input:
        lambda wildcards: run_records(config, wildcards.task),
    output:
        report(
            f"{RESULTS}/tables/{{task}}_runs.csv",
            caption="../report/runs.rst",
            category="Mars-Bench runs",
            labels={"task": "{task}", "table": "runs"},
        ),
    log:
        f"{LOGS}/collect/{{task}}.log",
    localrule: True
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m marseval collect --out {output} {input} > {log} 2>&1"
