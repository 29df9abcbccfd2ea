"""Wall time of a stage's jobs on a number of slots (GPUs, or CPU job slots)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def list_schedule(durations: Sequence[float], slots: int) -> float:
    """Makespan of longest-processing-time-first list scheduling: jobs sorted longest first,
    each started on the slot that frees first (within 4/3 of the optimum; Graham 1969)."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    if not durations:
        return 0.0
    free = [0.0] * min(slots, len(durations))
    for duration in sorted(durations, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def lower_bound(durations: Sequence[float], slots: int) -> float:
    """No schedule is shorter than the total over the slots or the longest job."""
    return max(sum(durations) / slots, max(durations, default=0.0))
