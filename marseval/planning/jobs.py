"""Every job a config plans, per stage, with its expected and upper-bound seconds.

The jobs are the workflow's (marseval/workflow.py, workflow/rules/*.smk): `features` per
classification pair where the feature cache is used, `tune` per grid shard, `train` per
(pair, partition) and seed (or all seeds, `bench.batch_seeds`), `embed` per database shard,
`queries` per non-paired task and model, `index` and `evaluate` per task and model. The tune
stage is planned twice: trial by trial (`bench.shared_pass_trials: 1`, every trial alone) and
in shared passes (each shard's trials in groups, as the tune job runs them:
`marseval.planning.groups`). Every job also pays `job_resources.overhead_minutes` of start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marseval.planning.epochs import expected_epochs, expected_longest
from marseval.planning.groups import shared_part
from marseval.planning.sizing import PlanSizer
from marseval.retrieval.ctx.plan import embed_shard_count
from marseval.workflow import (
    bench_models,
    bench_tasks,
    datasets,
    model_partitions,
    retrieval_datasets,
    retrieval_models,
    retrieval_stages,
    uses_feature_cache,
)

RETRIEVAL_STAGES = ("embed", "queries", "index", "shard_index", "search", "rankings",
                    "evaluate")
STAGES = ("features", "tune", "train", *RETRIEVAL_STAGES)
SHARD_STAGES = ("embed", "shard_index", "search")  # one job per embedding shard
TRIAL_BY_TRIAL, SHARED = "trial_by_trial", "shared"


@dataclass(frozen=True)
class Job:
    """One job: its seconds if trials stop early as assumed (expected) and at max_epochs."""

    stage: str
    name: str
    task: str
    expected_s: float
    upper_s: float
    gpus: int
    threads: int
    trials: int = 0  # tune jobs: grid trials the job trains
    groups: int = 0  # tune jobs in shared passes: the passes it runs


@dataclass(frozen=True)
class Options:
    """What the plan assumes beyond the config (the command's options)."""

    gpus: int = 8
    cores: int = 64
    max_heads: int | None = None  # None: the config's bench.shared_pass_trials
    expected_epoch_fraction: float = 0.25
    head_step_ms: float = 1.0


class JobPlanner:
    """The jobs of one config, sized by a `PlanSizer`."""

    def __init__(self, sizer: PlanSizer, options: Options) -> None:
        self.sizer = sizer
        self.config = sizer.config
        self.options = options
        self.overhead = sizer.options["overhead_minutes"] * 60

    def _job(self, stage: str, name: str, task: str, expected: float, upper: float,
             **extra: Any) -> Job:
        return Job(stage, name, task, expected + self.overhead, upper + self.overhead,
                   self.sizer.gpus(stage), self.sizer.threads(stage), **extra)

    def pairs(self) -> list[tuple[str, str, str]]:
        """(task, dataset, model slug) of every Mars-Bench pair, in config order; a model of
        `bench.model_scope` on its datasets only."""
        return [(task, dataset, slug) for task in bench_tasks(self.config)
                for dataset in datasets(self.config, task)
                for slug, model in bench_models(self.config, task).items()
                if model_partitions(self.config, task, model, dataset)]

    def partitions(self, task: str, dataset: str, slug: str) -> list[str]:
        """The final-run partitions of one pair (`bench.model_scope` may leave some out)."""
        model = bench_models(self.config, task)[slug]
        return model_partitions(self.config, task, model, dataset)

    def shared_part(self, task: str) -> str:
        """What a shared pass of the task's trials shares (marseval.planning.groups)."""
        return shared_part(task, self.config["bench"]["training_type"],
                           uses_feature_cache(self.config, task))

    # ------------------------------------------------------------------ bench stages

    def features(self) -> list[Job]:
        jobs = []
        for task, dataset, slug in self.pairs():
            if uses_feature_cache(self.config, task):
                seconds = self.sizer.work_seconds("features", {"dataset": dataset, "model": slug})
                jobs.append(self._job("features", f"{dataset}/{slug}", task, seconds, seconds))
        return jobs

    def tune_trial_by_trial(self) -> list[Job]:
        """The grid shards with every trial alone (`bench.shared_pass_trials: 1`), one after
        another."""
        fraction = self.options.expected_epoch_fraction
        jobs = []
        for task, dataset, slug in self.pairs():
            for index in range(self.config["bench"]["grid_shards"]):
                runs = self.sizer.shard_runs(dataset, index)
                upper = self.sizer.runs_seconds("tune", dataset, slug, runs)
                expected = self.sizer.runs_seconds(
                    "tune", dataset, slug, [(expected_epochs(m, fraction), b) for m, b in runs])
                jobs.append(self._job("tune", f"{dataset}/{slug}/shard{index}", task, expected,
                                      upper, trials=len(runs)))
        return jobs

    def max_trials(self) -> int:
        """Trials per shared pass: `--max-heads`, or the config's bench.shared_pass_trials."""
        return self.options.max_heads or self.config["bench"]["shared_pass_trials"]

    def tune_shared(self) -> list[Job]:
        """The grid shards as the tune jobs run them in shared passes: each shard's trials
        in groups (`marseval.planning.groups`), one group after another."""
        fraction = self.options.expected_epoch_fraction
        jobs = []
        for task, dataset, slug in self.pairs():
            part = self.shared_part(task)
            for index in range(self.config["bench"]["grid_shards"]):
                groups = self.sizer.shard_groups(dataset, index, self.max_trials())
                upper = expected = 0.0
                for batch, epochs in groups:
                    upper += self.sizer.slug_group_seconds(dataset, slug, part, batch,
                                                           max(epochs), epochs)
                    expected += self.sizer.slug_group_seconds(
                        dataset, slug, part, batch, expected_longest(epochs, fraction),
                        [expected_epochs(m, fraction) for m in epochs])
                jobs.append(self._job("tune", f"{dataset}/{slug}/shard{index}", task, expected,
                                      upper, trials=sum(len(e) for _, e in groups),
                                      groups=len(groups)))
        return jobs

    def train(self) -> list[Job]:
        """Final runs: the grid's most epochs and smallest batch (job_resources' bound)."""
        bench = self.config["bench"]
        fraction = self.options.expected_epoch_fraction
        seed_jobs = [None] if bench["batch_seeds"] else bench["seeds"]
        jobs = []
        for task, dataset, slug in self.pairs():
            for partition in self.partitions(task, dataset, slug):
                for seed in seed_jobs:
                    wildcards = {"dataset": dataset, "model": slug, "partition": partition}
                    if seed is not None:
                        wildcards["seed"] = str(seed)
                    upper = self.sizer.work_seconds("train", wildcards)
                    runs = self.sizer.final_runs(dataset, 1 if seed is not None
                                                 else len(bench["seeds"]))
                    expected = self.sizer.runs_seconds(
                        "train", dataset, slug,
                        [(expected_epochs(e, fraction), b) for e, b in runs], partition)
                    name = f"{dataset}/{slug}/{partition}/" + (
                        "seeds" if seed is None else f"seed{seed}")
                    jobs.append(self._job("train", name, task, expected, upper))
        return jobs

    # ------------------------------------------------------------------ retrieval stages

    def retrieval(self, stage: str) -> list[Job]:
        if not self.config["retrieval"]["models"]:
            return []
        jobs = []
        for task, dataset in retrieval_datasets(self.config).items():
            if stage not in retrieval_stages(self.config, task):
                continue
            per_shard = stage in SHARD_STAGES
            shards = embed_shard_count(self.config, dataset) if per_shard else 1
            for slug in retrieval_models(self.config):
                for index in range(shards):
                    seconds = self.sizer.work_seconds(
                        stage, {"dataset": dataset, "model": slug, "shard": str(index)})
                    name = f"{dataset}/{slug}" + (f"/shard{index}" if per_shard else "")
                    jobs.append(self._job(stage, name, "retrieval", seconds, seconds))
        return jobs

    # ------------------------------------------------------------------ all

    def plan(self) -> dict[str, dict[str, list[Job]]]:
        """Stage -> mode -> jobs; only the tune stage has two modes."""
        found: dict[str, dict[str, list[Job]]] = {
            "features": {"all": self.features()},
            "tune": {TRIAL_BY_TRIAL: self.tune_trial_by_trial(), SHARED: self.tune_shared()},
            "train": {"all": self.train()},
        }
        for stage in RETRIEVAL_STAGES:
            found[stage] = {"all": self.retrieval(stage)}
        return found
