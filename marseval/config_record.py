"""`<results>/config.yaml`: the config a run used, after schema defaults, as one YAML file.

Written when the Snakefile is parsed (so a dry run records it too) and only when its content
changes, so its modification time says when the settings last changed. The keys that differ
from the previous record are returned, so the workflow can say that outputs already in the
results folder were made with other settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from marseval.atomic import atomic_write_text

HEADER = ("# The config in effect for this results folder (the config file, --config values and\n"
          "# the schema's defaults), written by the last snakemake invocation that used it.\n")


def config_text(config: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False,
                                   width=100)


def _plain(value: Any) -> Any:
    """Snakemake hands mappings and sequences of its own types: YAML gets dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (added and removed too)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "<root>"]
    found = []
    for key in [*old, *(k for k in new if k not in old)]:
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in old or key not in new:
            found.append(name)
        else:
            found += changed_keys(old[key], new[key], name)
    return found


def record_config(config: dict[str, Any], path: str | os.PathLike) -> list[str]:
    """Write `config` to `path` unless it already holds the same text; return the keys that
    changed against the previous record (empty for a first record or an unchanged one)."""
    path = Path(path)
    text = config_text(config)
    previous = path.read_text() if path.is_file() else None
    if previous == text:
        return []
    atomic_write_text(path, text)
    if previous is None:
        return []
    try:
        old = yaml.safe_load(previous)
    except yaml.YAMLError:
        return ["<unreadable previous record>"]
    return changed_keys(old, yaml.safe_load(text))


def copy_record(record: str | os.PathLike, target: str | os.PathLike,
                log: str | os.PathLike) -> None:
    """Copy the record for the HTML report (atomically) and say so in the job's log."""
    atomic_write_text(target, Path(record).read_text())
    Path(log).write_text(f"copied {record} to {target}\n")
