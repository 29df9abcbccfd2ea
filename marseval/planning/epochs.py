"""Expected epochs under early stopping: one trial, and the longest trial of a shared group.

Upper bound: every trial runs to its `max_epochs` (what job requests assume). Expected: a
trial stops at an epoch drawn uniformly from [lo, hi] around `fraction x max_epochs`:

    lo = max(0, (2 fraction - 1) max_epochs),   hi = min(max_epochs, 2 fraction x max_epochs)

so its mean is exactly `fraction x max_epochs` (fraction 1: every trial runs to the end). A
shared pass lasts as long as its longest trial, and the longest of k trials stops later than a
typical one: its expected length is E[max] of the k stopping epochs, taken as independent
(for k equal trials with fraction <= 1/2: 2 fraction x max_epochs x k / (k + 1)).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np


def stopping_range(max_epochs: float, fraction: float) -> tuple[float, float]:
    """The interval a trial's stopping epoch is drawn from (uniformly)."""
    return (max(0.0, (2 * fraction - 1) * max_epochs),
            min(float(max_epochs), 2 * fraction * max_epochs))


def expected_epochs(max_epochs: float, fraction: float) -> float:
    """Expected epochs of one trial: `fraction` of its `max_epochs`."""
    return fraction * max_epochs


def expected_longest(max_epochs: Sequence[float], fraction: float) -> float:
    """Expected epochs of the longest of independent trials (their `max_epochs` given).

    E[max] = integral over t of 1 - prod_i F_i(t), each F_i the uniform distribution function
    of `stopping_range`; between breakpoints every F_i is 0, 1 or linear, so the product is a
    polynomial, integrated exactly.
    """
    ranges = [stopping_range(m, fraction) for m in max_epochs]
    points = sorted({0.0, *(lo for lo, _ in ranges), *(hi for _, hi in ranges)})
    total = 0.0
    for a, b in pairwise(points):
        poly = np.ones(1)  # prod F_i(a + u (b - a)) as coefficients in u, lowest first
        for lo, hi in ranges:
            if hi <= a:
                continue  # already stopped: F = 1
            if lo >= b:
                poly = np.zeros(1)  # not yet stoppable: F = 0
                break
            width = hi - lo
            poly = np.convolve(poly, [(a - lo) / width, (b - a) / width])
        product = float(np.sum(poly / np.arange(1, len(poly) + 1)))
        total += (b - a) * (1.0 - product)
    return total
