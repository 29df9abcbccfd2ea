"""Embedding shard folders: written, read, checked, and concatenated for a merged index.

A shard folder (written as a whole through `atomic_directory`):
    shard.json          {n, dim, dtype, extras}
    embeddings.npy      (n, dim) L2-normalised rows, float32 or float16
    ids.parquet         one row per embedding: a unique string column `id` plus metadata
    <name>.npy          optional per-row extras (e.g. `text_embeddings` of paired data)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marseval.atomic import atomic_directory, atomic_write_json
from marseval.errors import MarsevalError

DISK_DTYPES = ("float32", "float16")
RESERVED = {"embeddings", "ids", "shard", "index"}
# float16 keeps ~3 significant digits, so a re-read float16 row's norm can be off by ~1e-3
NORM_TOLERANCE = {"float32": 1e-3, "float64": 1e-3, "float16": 5e-3}


class IndexMismatchError(MarsevalError):
    """Embeddings that do not fit together: different dims, duplicate ids, wrong query dim."""



def _check_embeddings(embeddings: np.ndarray, where: str) -> None:
    if embeddings.ndim != 2:
        raise MarsevalError(f"{where}: embeddings must be 2-D (rows, dim), got shape "
                            f"{embeddings.shape}")
    if embeddings.shape[1] < 1:
        raise MarsevalError(f"{where}: embeddings have dimension 0")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise MarsevalError(f"{where}: embeddings must be floating point, got {embeddings.dtype}")
    if not np.isfinite(embeddings).all():
        bad = int(np.flatnonzero(~np.isfinite(embeddings).all(axis=1))[0])
        raise MarsevalError(f"{where}: embeddings contain NaN or inf (first in row {bad})")
    tolerance = NORM_TOLERANCE.get(str(embeddings.dtype), 1e-3)
    norms = np.linalg.norm(embeddings.astype(np.float32), axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > tolerance)
    if off.size:
        raise MarsevalError(
            f"{where}: {off.size} of {len(norms)} rows are not L2-normalised (row {off[0]} "
            f"has norm {norms[off[0]]:.6f}; tolerance {tolerance})")


def _check_ids(ids: pd.DataFrame, rows: int, where: str) -> pd.DataFrame:
    if not isinstance(ids, pd.DataFrame) or "id" not in ids.columns:
        raise MarsevalError(f"{where}: ids must be a DataFrame with a column 'id'")
    if len(ids) != rows:
        raise MarsevalError(f"{where}: {len(ids)} ids for {rows} embedding rows")
    not_str = ~ids["id"].map(lambda value: isinstance(value, str))
    if not_str.any():
        raise MarsevalError(f"{where}: ids must be strings; row {int(np.flatnonzero(not_str)[0])}"
                            f" holds {ids['id'][not_str].iloc[0]!r}")
    duplicated = ids["id"].duplicated()
    if duplicated.any():
        raise IndexMismatchError(f"{where}: duplicate id {ids['id'][duplicated].iloc[0]!r}")
    return ids.reset_index(drop=True).astype({"id": str})


def _check_extras(extra: dict[str, np.ndarray], rows: int, where: str) -> None:
    for name, values in extra.items():
        if not name.isidentifier() or name in RESERVED:
            raise MarsevalError(f"{where}: extra name {name!r} is not allowed (use an identifier "
                                f"other than {sorted(RESERVED)})")
        if values.ndim < 1 or len(values) != rows:
            raise MarsevalError(f"{where}: extra {name!r} has shape {values.shape}, expected "
                                f"{rows} rows")


def write_shard(
    out_dir: Path,
    embeddings: np.ndarray,
    ids: pd.DataFrame,
    *,
    dtype: str = "float32",
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Validate one shard of embeddings and write it as the folder `out_dir` (atomically)."""
    out_dir = Path(out_dir)
    where = f"shard {out_dir}"
    if dtype not in DISK_DTYPES:
        raise MarsevalError(f"{where}: dtype must be one of {DISK_DTYPES}, got {dtype!r}")
    embeddings = np.asarray(embeddings)
    _check_embeddings(embeddings, where)
    ids = _check_ids(ids, len(embeddings), where)
    extra = {name: np.asarray(values) for name, values in (extra or {}).items()}
    _check_extras(extra, len(embeddings), where)
    with atomic_directory(out_dir) as tmp:
        np.save(tmp / "embeddings.npy", embeddings.astype(dtype, copy=False))
        ids.to_parquet(tmp / "ids.parquet", index=False)
        for name, values in extra.items():
            np.save(tmp / f"{name}.npy", values)
        atomic_write_json(tmp / "shard.json", {
            "n": len(embeddings), "dim": int(embeddings.shape[1]), "dtype": dtype,
            "extras": sorted(extra)})
    return out_dir


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MarsevalError(f"{path} is missing (not a finished shard or index folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MarsevalError(f"{path} is not valid JSON: {error}") from error


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise MarsevalError(f"{path} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise MarsevalError(f"{path} cannot be read as a .npy array: {error}") from error


def read_ids(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MarsevalError(f"{path} is missing")
    return pd.read_parquet(path)


def read_shard(shard_dir: Path) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]]:
    """The float32 embeddings, ids and extras of a shard folder written by `write_shard`."""
    shard_dir = Path(shard_dir)
    meta = read_json(shard_dir / "shard.json")
    embeddings = load_npy(shard_dir / "embeddings.npy")
    expected = (meta.get("n"), meta.get("dim"))
    if embeddings.ndim != 2 or embeddings.shape != expected:
        raise MarsevalError(f"{shard_dir / 'embeddings.npy'} has shape {embeddings.shape}; "
                            f"shard.json says {expected}")
    ids = read_ids(shard_dir / "ids.parquet")
    if "id" not in ids.columns or len(ids) != len(embeddings):
        raise MarsevalError(f"{shard_dir / 'ids.parquet'} has {len(ids)} rows (columns "
                            f"{list(ids.columns)}); expected {len(embeddings)} with a column 'id'")
    extras = {}
    for name in meta.get("extras", []):
        extras[name] = load_npy(shard_dir / f"{name}.npy")
        if len(extras[name]) != len(embeddings):
            raise MarsevalError(f"{shard_dir / f'{name}.npy'} has {len(extras[name])} rows; "
                                f"expected {len(embeddings)}")
    return embeddings.astype(np.float32, copy=False), ids.astype({"id": str}), extras


# ---------------------------------------------------------------- merging


def check_same(name: str, values: dict[Path, Any], what: str) -> None:
    """Every folder's `name` equals the first one's, else an error naming both."""
    first_path, first = next(iter(values.items()))
    for path, value in values.items():
        if value != first:
            raise IndexMismatchError(f"{what} {path} has {name} {value!r} but {first_path} has "
                                     f"{first!r}")


def concatenate_ids(parts: list[tuple[Path, pd.DataFrame]]) -> pd.DataFrame:
    """The shards' ids in order; an id in two shards is an error naming both."""
    ids = pd.concat([part for _, part in parts], ignore_index=True)
    duplicated = ids["id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        sample = ids["id"].iloc[row]
        owner = np.repeat(np.arange(len(parts)), [len(part) for _, part in parts])
        first = owner[int(np.flatnonzero(ids["id"].to_numpy() == sample)[0])]
        raise IndexMismatchError(f"id {sample!r} is in shard {parts[first][0]} and in shard "
                                 f"{parts[owner[row]][0]}")
    return ids


def merge_shards(
    shard_dirs: list[Path],
) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray], list[dict[str, Any]]]:
    """Concatenate shards in the given order, checking that they belong together."""
    if not shard_dirs:
        raise MarsevalError("build_index: no shards given")
    parts = [(Path(d), *read_shard(d)) for d in shard_dirs]
    check_same("dtype", {p[0]: read_json(p[0] / "shard.json")["dtype"] for p in parts}, "shard")
    first_dir, first, first_ids, first_extras = parts[0]
    for shard_dir, embeddings, ids, extras in parts:
        if embeddings.shape[1] != first.shape[1]:
            raise IndexMismatchError(
                f"shard {shard_dir} holds {embeddings.shape[1]}-d embeddings but shard "
                f"{first_dir} holds {first.shape[1]}-d (embeddings of a different model?)")
        if list(ids.columns) != list(first_ids.columns):
            raise IndexMismatchError(f"shard {shard_dir} has id columns {list(ids.columns)} but "
                                     f"shard {first_dir} has {list(first_ids.columns)}")
        if sorted(extras) != sorted(first_extras):
            raise IndexMismatchError(f"shard {shard_dir} has extras {sorted(extras)} but shard "
                                     f"{first_dir} has {sorted(first_extras)}")
    ids = concatenate_ids([(p[0], p[2]) for p in parts])
    embeddings = np.ascontiguousarray(np.concatenate([p[1] for p in parts]), dtype=np.float32)
    extras = {}
    for name in first_extras:
        try:
            extras[name] = np.concatenate([p[3][name] for p in parts])
        except ValueError as error:
            shapes = {str(p[0]): p[3][name].shape for p in parts}
            raise IndexMismatchError(f"extra {name!r} has incompatible shapes across shards: "
                                     f"{shapes}") from error
    shards = [{"path": str(p[0]), "n": len(p[1])} for p in parts]
    return embeddings, ids, extras, shards
