"""Seconds of work per job, on a device of the throughput table: job_resources' work model.

`PlanSizer` is `marseval.job_resources.JobSizer` (forward FLOPs per image, a training pass =
3 forward passes, a validation pass per epoch, a test pass per run, `image_overhead_ms` per
decoded image, `step_overhead_ms` per batch), with the FLOP/s of each model on the chosen
device instead of one `gpu_tflops` for all. It adds the cost of a shared pass: what
its trials share (decoded batches, and the frozen backbone or encoder where it is shared) once
per batch, for as many epochs as the group's longest trial; each trial pays the rest (its
head or decoder, or its whole network), its share of the step overhead and its own test pass
(a trial is tested with the backbone state of its own stopping point). A group of one trial
costs exactly what `JobSizer` gives that trial alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marseval.job_resources import BENCH_RULES, ENCODER_RULES, JobSizer
from marseval.planning.throughput import Device, ThroughputTable

MODEL_RULES = (*BENCH_RULES, *ENCODER_RULES)


class PlanSizer(JobSizer):
    """Work seconds of every job of one config on one device."""

    def __init__(self, config: dict[str, Any], device: Device, table: ThroughputTable,
                 head_step_ms: float = 1.0) -> None:
        super().__init__(config)
        self.device = device
        self.table = table
        self.head_step_ms = head_step_ms  # JobSizer's group_seconds reads it

    def _throughput(self, rule: str, cost: dict[str, Any] | None = None) -> float:
        """The device's FLOP/s on the job's model for jobs that run a model on a GPU; CPU jobs
        and the index searches keep job_resources' rates."""
        if cost is not None and rule in MODEL_RULES and self.gpus(rule):
            return self.device.flops_per_s(cost["model"])
        return super()._throughput(rule, cost)

    def model_cost(self, slug: str) -> dict[str, Any]:
        """Measured costs of a configured model (its slug), with its name under `model`."""
        return self._cost({"model": slug})

    def shard_runs(self, dataset: str, index: int) -> list[tuple[int, int]]:
        """(max_epochs, batch size) of every trial of a grid shard."""
        return self._shard_runs_of(dataset, index)

    def final_runs(self, dataset: str, runs: int) -> list[tuple[int, int]]:
        """(epochs, batch size) of a train job's runs: the grid's most and smallest."""
        return self._final_runs(dataset, runs)

    def runs_seconds(self, rule: str, dataset: str, slug: str,
                     runs: Sequence[tuple[float, int]], partition: str | None = None) -> float:
        """Runs one after another, each `(epochs, batch size)`: JobSizer's own sum."""
        return self._training_seconds(rule, dataset, list(runs), partition,
                                      self.model_cost(slug))

    def decoder_fraction(self, cost: dict[str, Any]) -> float | None:
        return self.table.decoder_fraction(cost["model"])

    def slug_group_seconds(self, dataset: str, slug: str, part: str, batch: int,
                           group_epochs: float, trial_epochs: Sequence[float]) -> float:
        """`group_seconds` of a configured model (its slug) sharing `part`."""
        return self.group_seconds(dataset, self.model_cost(slug), batch, group_epochs,
                                  trial_epochs, part)
