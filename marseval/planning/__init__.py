"""`python -m marseval plan`: GPU-hours, CPU-hours and wall time of a config, per stage,
before anything is submitted.

- `config`: the config file validated as the workflow validates it;
- `throughput`: the device table (`marseval/registry/throughput.json`): FLOP/s per model;
- `sizing`: job_resources' work model on that device, plus shared-pass groups;
- `epochs`: expected epochs under early stopping (one trial, the longest of a group);
- `groups`: which trials share a backbone pass (issue 15);
- `jobs`: every job of the plan, per stage; `schedule`: wall time on N slots;
- `summary`: totals per stage; `report`: Markdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marseval.atomic import atomic_write_json
from marseval.planning.config import load_config
from marseval.planning.epochs import expected_longest
from marseval.planning.groups import describe
from marseval.planning.jobs import JobPlanner, Options
from marseval.planning.report import markdown
from marseval.planning.sizing import PlanSizer
from marseval.planning.summary import summarise
from marseval.planning.throughput import TABLE, load_table
from marseval.workflow import bench_tasks

__all__ = ["Options", "make_plan", "markdown", "write_json"]


def make_plan(config_path: Path, device: str, options: Options,
              table_path: Path = TABLE) -> dict[str, Any]:
    """The plan of `config_path` on `options.gpus` GPUs of row `device` of the table."""
    config = load_config(config_path)
    table = load_table(table_path)
    row = table.device(device)
    sizer = PlanSizer(config, row, table, options.head_step_ms)
    planner = JobPlanner(sizer, options)
    plan = planner.plan()
    sharing = {task: describe(task, planner.shared_part(task)) for task in bench_tasks(config)}
    return {"config": str(config_path), "throughput_table": str(table_path),
            "device": {"name": row.name, "kind": row.kind, "summary": row.summary(),
                       "effective_tflops": row.effective_tflops,
                       "measured_models": sorted(row.rates)},
            "settings": {"gpus": options.gpus, "cores": options.cores,
                         "max_heads": planner.max_trials(),
                         "expected_epoch_fraction": options.expected_epoch_fraction,
                         "head_step_ms": options.head_step_ms,
                         "protocol": config["bench"]["protocol"],
                         "training_type": config["bench"]["training_type"]},
            "sharing": sharing,
            "assumptions": assumptions(config, options, row.summary(), planner.max_trials()),
            "summary": summarise(plan, options)}


def assumptions(config: dict[str, Any], options: Options, device: str, k: int) -> list[str]:
    jobs = config["job_resources"]
    f = options.expected_epoch_fraction
    return [
        "work model of marseval/job_resources.py: forward FLOPs per image "
        "(marseval/registry/model_costs.yaml) / the device's FLOP/s; a training pass counts 3 "
        "forward passes, the frozen part too (an upper bound: a frozen backbone needs no "
        "backward), plus a validation pass per epoch and a test pass per run; "
        f"{jobs['image_overhead_ms']:g} ms per decoded image and pass, "
        f"{jobs['step_overhead_ms']:g} ms per batch, {jobs['overhead_minutes']:g} min start-up "
        f"per job; no safety factor (job requests multiply by {jobs['safety']:g})",
        f"device {device}",
        f"expected epochs: {f:g} x max_epochs per trial (stopping epoch uniform around it; "
        "early stopping on validation loss, min_delta 0.01, the grid's patience); a shared "
        f"group lasts as long as its longest trial, E[max] of independent trials "
        f"({expected_longest([200] * k, f):.0f} of 200 epochs for {k} trials); upper bound: "
        "every trial to max_epochs; final runs: the grid's largest max_epochs and smallest "
        "batch (job_resources)",
        f"shared passes as the tune jobs run them: a shard's trials of one batch size, "
        f"shortest max_epochs first, at most {k} per pass (bench.shared_pass_trials or "
        "--max-heads), passes one after another; a pass decodes each batch once and, for "
        "frozen-backbone classification online and segmentation, runs the frozen backbone "
        "(encoder) once; each trial pays its "
        "own head (2 x feature_dim x classes FLOPs) or decoder (its measured share of forward "
        "FLOPs; unmeasured: the whole network), "
        f"{options.head_step_ms:g} ms of the per-batch step overhead and its own test "
        "pass; detection shares the decoded batches only (trunk and heads entangled); on the "
        "feature cache (probe) trials are head-only already; trial by trial: every trial alone",
        f"wall time: longest-first list scheduling of each stage's jobs on {options.gpus} GPUs "
        f"(CPU jobs on {options.cores} cores / their threads), stages one after another; "
        "download, standardize and the local rules are not counted",
    ]


def write_json(result: dict[str, Any], path: Path) -> Path:
    """The plan as JSON, written atomically."""
    return atomic_write_json(path, result)
