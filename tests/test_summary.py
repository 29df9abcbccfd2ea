from __future__ import annotations

import json
from pathlib import Path

import pytest

from marseval.data.summary import subset_order, summarize
from marseval.errors import MarsevalError


def test_subsets_sort_numerically() -> None:
    keys = ["fewshot:10", "fraction:0.10", "fewshot:2", "fraction:0.02"]
    assert sorted(keys, key=subset_order) == ["fraction:0.02", "fraction:0.10", "fewshot:2",
                                              "fewshot:10"]


def test_summary_lists_counts_and_mismatches(tmp_path: Path) -> None:
    meta = {"name": "mb-frost_cls", "task": "classification", "subtask": "binary",
            "source": "huggingface", "layout": "huggingface", "classes": ["a", "b"],
            "bands": 1, "image_size": [250, 250], "splits": {"train": 5, "val": 2, "test": 3},
            "expected_splits": {"train": 6, "val": 2, "test": 3},
            "split_mismatch": {"train": {"expected": 6, "found": 5}},
            "subsets": {"fraction:1.00": 5}, "skipped_subsets": {"fraction:0.01": "= 0"}}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    row = summarize([tmp_path / "d"]).iloc[0]
    assert (row.train, row.val, row.test, row.classes) == (5, 2, 3, 2)
    assert row.image_size == "250x250"
    assert row.registry_counts == 'differ: {"train": {"expected": 6, "found": 5}}'
    assert row.skipped_subsets == "fraction:0.01"


def test_summary_names_a_missing_meta_file(tmp_path: Path) -> None:
    with pytest.raises(MarsevalError, match="meta.json"):
        summarize([tmp_path / "nothing"])
