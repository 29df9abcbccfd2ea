"""The plan as Markdown (stdout) and JSON (`--json`)."""

from __future__ import annotations

from typing import Any

from marseval.planning.jobs import SHARED, STAGES, TRIAL_BY_TRIAL

MODE_NAMES = {TRIAL_BY_TRIAL: "trial by trial", SHARED: "shared passes"}


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 1 else f"{value:.2f}"


def _wall(hours: float) -> str:
    return f"{hours / 24:,.1f} d" if hours >= 48 else f"{hours:.1f} h"


def _row(label: str, totals: dict[str, Any]) -> str:
    e, u = totals["expected"], totals["upper"]
    return (f"| {label} | {totals['jobs']:,} | {_hours(e['gpu_hours'])} | "
            f"{_hours(u['gpu_hours'])} | {_hours(e['cpu_hours'])} | {_hours(u['cpu_hours'])} | "
            f"{_wall(e['wall_hours'])} | {_wall(u['wall_hours'])} |")


def markdown(result: dict[str, Any]) -> str:
    """Stage table, tune-by-task table and the assumptions."""
    settings = result["settings"]
    summary = result["summary"]
    lines = [f"# Cost plan of {result['config']}", "",
             f"Device: {result['device']['summary']}; {settings['gpus']} GPUs, "
             f"{settings['cores']} cores. Expected: trials stop early as assumed below; "
             "upper: every trial to max_epochs.", "",
             "| stage | jobs | GPU-h expected | GPU-h upper | CPU-h expected | CPU-h upper | "
             "wall expected | wall upper |", "|---|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        for mode, totals in summary["stages"][stage].items():
            label = stage if mode == "all" else f"{stage}, {MODE_NAMES[mode]}"
            if mode == SHARED:
                label += f" (up to {settings['max_heads']} per pass)"
            lines.append(_row(label, totals))
    for mode in (TRIAL_BY_TRIAL, SHARED):
        lines.append(_row(f"**total, {MODE_NAMES[mode]}**", summary["totals"][mode]))
    lines += ["", "Tune stage by task (GPU-hours, expected / upper):", "",
              "| task | trials | trial by trial | shared passes | passes | ratio expected / "
              "upper | a pass shares |", "|---|---|---|---|---|---|---|"]
    for task, modes in summary["tune_by_task"].items():
        alone, shared = modes[TRIAL_BY_TRIAL], modes[SHARED]
        ratio = [alone[b]["gpu_hours"] / max(shared[b]["gpu_hours"], 1e-12)
                 for b in ("expected", "upper")]
        lines.append(
            f"| {task} | {alone['trials']:,} | "
            f"{_hours(alone['expected']['gpu_hours'])} / {_hours(alone['upper']['gpu_hours'])} | "
            f"{_hours(shared['expected']['gpu_hours'])} / {_hours(shared['upper']['gpu_hours'])} "
            f"| {shared['groups']:,} | {ratio[0]:.1f}x / {ratio[1]:.1f}x | "
            f"{result['sharing'][task]} |")
    lines += ["", "Assumptions:", *(f"- {a}" for a in result["assumptions"])]
    return "\n".join(lines) + "\n"
