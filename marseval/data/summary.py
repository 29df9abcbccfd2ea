"""One table of every standardized dataset, for the report and for a quick look."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from marseval.atomic import atomic_write_text
from marseval.errors import MarsevalError

COLUMNS = ["dataset", "task", "subtask", "source", "layout", "classes", "bands", "image_size",
           "train", "val", "test", "registry_counts", "subsets", "skipped_subsets"]


def subset_order(key: str) -> tuple[str, float]:
    """fraction:0.01 < fraction:0.10 < fewshot:2 < fewshot:10 (numeric, not lexical)."""
    kind, value = key.split(":")
    return (kind != "fraction", float(value))


def summarize(folders: list[Path]) -> pd.DataFrame:
    rows = []
    for folder in folders:
        path = folder / "meta.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MarsevalError(f"cannot read {path}: {exc}") from None
        splits = meta.get("splits", {})
        expected = meta.get("expected_splits") or {}
        rows.append({
            "dataset": meta["name"],
            "task": meta["task"],
            "subtask": meta["subtask"],
            "source": meta["source"],
            "layout": meta.get("layout", ""),
            "classes": len(meta.get("classes") or []),
            "bands": meta.get("bands", ""),
            "image_size": "x".join(str(v) for v in meta.get("image_size") or []),
            "train": splits.get("train", 0),
            "val": splits.get("val", 0),
            "test": splits.get("test", 0),
            # registry counts apply to real data; a mismatch is listed, never hidden
            "registry_counts": ("differ: " + json.dumps(meta["split_mismatch"])
                                if meta.get("split_mismatch") else
                                "/".join(str(expected.get(s)) for s in ("train", "val", "test"))
                                if expected else ""),
            "subsets": len(meta.get("subsets") or {}),
            "skipped_subsets": ", ".join(sorted(meta.get("skipped_subsets") or {},
                                                key=subset_order)),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def write_summary(folders: list[Path], out: Path) -> pd.DataFrame:
    table = summarize(folders)
    atomic_write_text(out, table.to_csv(index=False))
    return table
