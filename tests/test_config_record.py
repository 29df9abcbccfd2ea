"""`<results>/config.yaml`: written once per change, atomically, naming what changed."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from marseval.config_record import changed_keys, record_config


def test_changed_keys_are_dotted_paths() -> None:
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": 0}
    new = {"a": 1, "b": {"c": [1, 3], "d": "x", "e": None}, "added": True}
    assert changed_keys(old, new) == ["b.c", "b.e", "gone", "added"]
    assert changed_keys(old, old) == []


def test_record_is_written_once_and_rewritten_on_change(tmp_path: Path) -> None:
    path = tmp_path / "results/config.yaml"
    config = {"results": "results", "bench": {"seeds": [0, 1], "head": "linear"}}
    assert record_config(config, path) == []
    assert yaml.safe_load(path.read_text()) == config
    os.utime(path, (1, 1))  # an old record: an unchanged config must not touch it
    assert record_config(config, path) == []
    assert path.stat().st_mtime == 1
    changed = {**config, "bench": {"seeds": [0], "head": "linear"}}
    assert record_config(changed, path) == ["bench.seeds"]
    assert yaml.safe_load(path.read_text()) == changed
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporaries left
