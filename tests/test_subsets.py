"""Training subsets: fractions (nested, floor of f x N), few-shot draws, upstream partitions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marseval.data.standardize import standardize
from marseval.data.subsets import make_subsets
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.registry import get_dataset

IDS = [f"s{i:02d}" for i in range(10)]
FRACTIONS = [0.05, 0.1, 0.25, 0.5, 1.0]

# 3 classes, single label: class 0 has 4 samples, class 1 has 4, class 2 only 1
SINGLE = {
    "a0": [0], "a1": [0], "a2": [0], "a3": [0],
    "b0": [1], "b1": [1], "b2": [1], "b3": [1],
    "c0": [2],
}  # fmt: skip

# multi-label: class 3 appears once, class 2 twice, classes 0 and 1 often
MULTI = {
    "m0": [0, 1], "m1": [0], "m2": [1], "m3": [0, 2], "m4": [1, 2],
    "m5": [0, 1], "m6": [3], "m7": [0], "m8": [1], "m9": [0, 1],
}  # fmt: skip


def class_counts(chosen: list[str], classes_of: dict[str, list[int]]) -> Counter:
    return Counter(c for sample_id in chosen for c in classes_of[sample_id])


# ------------------------------------------------------------------------------ fractions
def test_fraction_sizes_are_floored_and_tiny_fractions_skipped() -> None:
    subsets, skipped = make_subsets(IDS, None, FRACTIONS, [], seed=0)
    assert list(skipped) == ["fraction:0.05"]
    assert "= 0" in skipped["fraction:0.05"]
    assert skipped["fraction:0.05"] == "floor(0.05 x 10 training samples) = 0"
    assert {key: len(ids) for key, ids in subsets.items()} == {
        "fraction:0.10": 1,
        "fraction:0.25": 2,
        "fraction:0.50": 5,
        "fraction:1.00": 10,
    }
    assert subsets["fraction:1.00"] == IDS


def test_fractions_are_nested_sorted_prefixes_of_one_permutation() -> None:
    subsets, _ = make_subsets(IDS, None, FRACTIONS, [], seed=0)
    small, quarter, half, full = (
        subsets[k] for k in ("fraction:0.10", "fraction:0.25", "fraction:0.50", "fraction:1.00")
    )
    assert set(small) < set(quarter) < set(half) < set(full)
    for ids in subsets.values():
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
    # the documented rule: the first floor(f x N) ids of one seeded permutation of sorted ids
    order = [IDS[i] for i in np.random.default_rng(0).permutation(len(IDS))]
    assert small == sorted(order[:1])
    assert quarter == sorted(order[:2])
    assert half == sorted(order[:5])


def test_input_order_does_not_matter() -> None:
    forward, _ = make_subsets(IDS, None, FRACTIONS, [], seed=0)
    backward, _ = make_subsets(list(reversed(IDS)), None, FRACTIONS, [], seed=0)
    assert forward == backward


def test_same_seed_same_subsets_other_seed_other_subsets() -> None:
    classes_of = {i: [int(i[1:]) % 2] for i in IDS}
    first, _ = make_subsets(IDS, classes_of, FRACTIONS, [1], seed=0)
    again, _ = make_subsets(IDS, classes_of, FRACTIONS, [1], seed=0)
    other, _ = make_subsets(IDS, classes_of, FRACTIONS, [1], seed=1)
    assert first == again
    assert first["fraction:0.50"] != other["fraction:0.50"]
    assert len(other["fraction:0.50"]) == 5
    assert other["fraction:1.00"] == IDS


# ------------------------------------------------------------------------------- few-shot
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fewshot_single_label_takes_k_per_class(seed: int) -> None:
    subsets, skipped = make_subsets(list(SINGLE), SINGLE, [], [1, 2], seed=seed)
    assert skipped == {}
    one, two = subsets["fewshot:1"], subsets["fewshot:2"]
    assert class_counts(one, SINGLE) == Counter({0: 1, 1: 1, 2: 1})
    # class 2 has a single sample: all of it is taken
    assert class_counts(two, SINGLE) == Counter({0: 2, 1: 2, 2: 1})
    assert len(one) == 3 and len(two) == 5
    assert "c0" in one and "c0" in two
    assert one == sorted(one) and two == sorted(two)


def test_fewshot_k_above_every_class_takes_everything() -> None:
    subsets, _ = make_subsets(list(SINGLE), SINGLE, [], [5], seed=0)
    assert subsets["fewshot:5"] == sorted(SINGLE)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_fewshot_multilabel_covers_every_class(seed: int, k: int) -> None:
    subsets, skipped = make_subsets(list(MULTI), MULTI, [], [k], seed=seed)
    assert skipped == {}
    chosen = subsets[f"fewshot:{k}"]
    available = class_counts(list(MULTI), MULTI)
    assert available == Counter({0: 6, 1: 6, 2: 2, 3: 1})
    covered = class_counts(chosen, MULTI)
    for cls, count in available.items():
        assert covered[cls] >= min(k, count), (cls, chosen)
    assert "m6" in chosen  # the only image of class 3
    assert set(chosen) <= set(MULTI)
    assert chosen == sorted(chosen)


def test_fewshot_skipped_without_classes() -> None:
    subsets, skipped = make_subsets(IDS, None, [0.5], [1, 5, 10], seed=0)
    assert set(skipped) == {"fewshot:1", "fewshot:5", "fewshot:10"}
    for reason in skipped.values():
        assert "classification" in reason
    assert list(subsets) == ["fraction:0.50"]


# ------------------------------------------------------------------------------- upstream
def test_upstream_subsets_used_verbatim() -> None:
    upstream = {
        "fraction:0.50": ["s09", "s01", "s03"],  # not floor(0.5 x 10) = 5: still taken as is
        "fewshot:1": ["s05", "s02"],
        "fraction:1.00": ["s00"],  # never taken: 1.0 is the whole training set
    }
    classes_of = {i: [int(i[1:]) % 3] for i in IDS}
    subsets, skipped = make_subsets(IDS, classes_of, FRACTIONS, [1, 2], seed=0, upstream=upstream)
    assert skipped == {"fraction:0.05": "floor(0.05 x 10 training samples) = 0"}
    assert subsets["fraction:0.50"] == ["s01", "s03", "s09"]
    assert subsets["fewshot:1"] == ["s02", "s05"]
    assert subsets["fraction:1.00"] == IDS
    # keys upstream does not ship are computed as usual
    computed, _ = make_subsets(IDS, classes_of, FRACTIONS, [1, 2], seed=0)
    assert subsets["fraction:0.25"] == computed["fraction:0.25"]
    assert subsets["fraction:0.10"] == computed["fraction:0.10"]
    assert subsets["fewshot:2"] == computed["fewshot:2"]
    assert class_counts(subsets["fewshot:2"], classes_of) == Counter({0: 2, 1: 2, 2: 2})


# -------------------------------------------------------------- through standardize
def test_standardize_writes_consistent_subsets(tmp_path: Path) -> None:
    spec = get_dataset("mb-domars16k")
    raw = generate_benchmark(spec, seed=0, size=32, samples={"train": 20, "val": 6, "test": 6})
    write_zenodo(raw, spec, tmp_path / "raw")
    out = tmp_path / "std" / spec.name
    meta = standardize(
        tmp_path / "raw", out, spec.name, "synthetic", [0.01, 0.05, 0.25, 0.5, 1.0], [1, 5]
    )

    subsets = json.loads((out / "subsets.json").read_text())
    written = json.loads((out / "meta.json").read_text())
    assert written == json.loads(json.dumps(meta))
    sizes = {key: len(ids) for key, ids in subsets.items()}
    assert sizes == written["subsets"]
    assert set(sizes) == {
        "fraction:0.05", "fraction:0.25", "fraction:0.50", "fraction:1.00",
        "fewshot:1", "fewshot:5",
    }  # fmt: skip
    assert list(written["skipped_subsets"]) == ["fraction:0.01"]
    assert "= 0" in written["skipped_subsets"]["fraction:0.01"]
    assert sizes["fraction:0.05"] == 1
    assert sizes["fraction:0.25"] == 5
    assert sizes["fraction:1.00"] == 20
    assert written["upstream_subsets"] == ["fewshot:5", "fraction:0.50"]

    samples = pd.read_parquet(out / "samples.parquet")
    assert samples["split"].value_counts().to_dict() == {"train": 20, "val": 6, "test": 6}
    train = set(samples.loc[samples["split"] == "train", "sample_id"])
    held_out = set(samples.loc[samples["split"] != "train", "sample_id"])
    assert len(held_out) == 12
    for key, ids in subsets.items():
        assert ids == sorted(ids), key
        assert set(ids) <= train, key
        assert not set(ids) & held_out, key
    assert set(subsets["fraction:1.00"]) == train

    # the upstream partitions the generator shipped are used, not recomputed
    assert subsets["fraction:0.50"] == sorted(raw.subsets["fraction:0.50"])
    assert subsets["fewshot:5"] == sorted(raw.subsets["fewshot:5"])
    assert len(subsets["fraction:0.50"]) == 10

    labels = dict(zip(samples["sample_id"], samples["label"], strict=True))
    one_shot = Counter(labels[i] for i in subsets["fewshot:1"])
    train_classes = {labels[i] for i in train}
    assert one_shot == Counter(dict.fromkeys(train_classes, 1))
