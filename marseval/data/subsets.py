"""Named training subsets: training-set fractions and few-shot draws.

Upstream partition files are used where the source ships them. Otherwise a fraction f takes
the first floor(f x N) ids of one seeded permutation of the training ids, so smaller fractions
are nested in larger ones; few-shot k takes the first k ids of each class in that order.
Validation and test never change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from marseval.data.records import fewshot_key, fraction_key


def make_subsets(
    train_ids: Sequence[str],
    classes_of: Mapping[str, Sequence[int]] | None,
    fractions: Sequence[float],
    fewshot: Sequence[int],
    seed: int,
    upstream: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Subsets by name and the names skipped with the reason.

    `classes_of` maps a training id to its class indices (one for single-label, several for
    multi-label); None means the task has no few-shot subsets (segmentation, detection).
    """
    upstream = upstream or {}
    ids = sorted(train_ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    subsets: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}

    for fraction in sorted(fractions):
        key = fraction_key(fraction)
        if key in upstream and fraction < 1:
            subsets[key] = sorted(upstream[key])
            continue
        count = len(ids) if math.isclose(fraction, 1.0) else math.floor(fraction * len(ids))
        if count == 0:
            skipped[key] = f"floor({fraction} x {len(ids)} training samples) = 0"
            continue
        subsets[key] = sorted(order[:count])

    for k in sorted(fewshot):
        key = fewshot_key(k)
        if classes_of is None:
            skipped[key] = "few-shot subsets are defined for classification only"
            continue
        if key in upstream:
            subsets[key] = sorted(upstream[key])
            continue
        taken: dict[int, int] = {}
        chosen = []
        for sample_id in order:
            labels = classes_of[sample_id]
            # multi-label: an image counts towards every class it shows
            if any(taken.get(c, 0) < k for c in labels):
                chosen.append(sample_id)
                for c in labels:
                    taken[c] = taken.get(c, 0) + 1
        if not chosen:
            skipped[key] = "no labelled training samples"
            continue
        subsets[key] = sorted(chosen)
    return subsets, skipped
