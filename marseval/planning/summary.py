"""Per-stage totals of a plan: GPU-hours, CPU-hours and wall time on the given GPUs and cores.

GPU-hours: a job's seconds x its GPUs. CPU-hours: a job's seconds x its threads (the cores it
holds, GPU jobs included). Wall time: longest-first list scheduling of the stage's GPU jobs on
`gpus` GPUs and of its CPU jobs on `cores // threads` slots; stages run one after another
(the total is their sum), which ignores the overlap Snakemake finds between pairs at
different stages. The lower bound max(total / slots, longest job) is given beside it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from marseval.planning.jobs import SHARED, STAGES, TRIAL_BY_TRIAL, Job, Options
from marseval.planning.schedule import list_schedule, lower_bound

HOUR = 3600.0
BOUNDS = ("expected", "upper")
MODES = (TRIAL_BY_TRIAL, SHARED)


def _seconds(job: Job, bound: str) -> float:
    return job.expected_s if bound == "expected" else job.upper_s


def _wall(jobs: list[Job], bound: str, options: Options) -> tuple[float, float]:
    """(list-scheduled, lower-bound) seconds of the stage's jobs."""
    gpu = [_seconds(j, bound) for j in jobs if j.gpus]
    cpu = [_seconds(j, bound) for j in jobs if not j.gpus]
    slots = max(1, options.cores // max((j.threads for j in jobs if not j.gpus), default=1))
    return (max(list_schedule(gpu, options.gpus), list_schedule(cpu, slots)),
            max(lower_bound(gpu, options.gpus), lower_bound(cpu, slots)))


def stage_totals(jobs: list[Job], options: Options) -> dict[str, Any]:
    """Jobs, trials, GPU-hours, CPU-hours, wall hours and the longest job of one stage."""
    totals: dict[str, Any] = {"jobs": len(jobs)}
    if any(j.trials for j in jobs):
        totals["trials"] = sum(j.trials for j in jobs)
        totals["groups"] = sum(j.groups for j in jobs)
    for bound in BOUNDS:
        wall, least = _wall(jobs, bound, options)
        totals[bound] = {
            "gpu_hours": sum(_seconds(j, bound) * j.gpus for j in jobs) / HOUR,
            "cpu_hours": sum(_seconds(j, bound) * j.threads for j in jobs) / HOUR,
            "wall_hours": wall / HOUR,
            "wall_lower_bound_hours": least / HOUR,
            "longest_job_hours": max((_seconds(j, bound) for j in jobs), default=0.0) / HOUR}
    return totals


def mode_jobs(plan: dict[str, dict[str, list[Job]]], stage: str, mode: str) -> list[Job]:
    return plan[stage].get(mode, plan[stage].get("all", []))


def summarise(plan: dict[str, dict[str, list[Job]]], options: Options) -> dict[str, Any]:
    """Totals per stage (per mode for tune), per task for tune, and per mode overall."""
    stages = {stage: {mode: stage_totals(jobs, options) for mode, jobs in plan[stage].items()}
              for stage in STAGES}
    totals = {}
    for mode in MODES:
        parts = [stages[s].get(mode, stages[s].get("all")) for s in STAGES]
        totals[mode] = {"jobs": sum(p["jobs"] for p in parts)}
        for bound in BOUNDS:
            totals[mode][bound] = {key: sum(p[bound][key] for p in parts)
                                   for key in ("gpu_hours", "cpu_hours", "wall_hours")}
    by_task: dict[str, dict[str, Any]] = defaultdict(dict)
    for mode in MODES:
        grouped: dict[str, list[Job]] = defaultdict(list)
        for job in plan["tune"][mode]:
            grouped[job.task].append(job)
        for task, jobs in grouped.items():
            by_task[task][mode] = stage_totals(jobs, options)
    return {"stages": stages, "tune_by_task": dict(by_task), "totals": totals}
