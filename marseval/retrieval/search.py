"""Sharded search: each (queries x shard) search returns its top K, a merge gives the global one.

The `sharded` layout (workflow: shard_index -> search -> rankings -> evaluate) never holds the
whole database: a search job holds one shard, the merge only (queries x K) results and the
ids. With exact shard indexes the merged top K is exactly that of one exact index over the
whole database, ties included, as both are ordered by `order_results` (score, then the lower
global position, i.e. database order) and each shard returns its own top K in that order.

A search result file (`search_shard`, .npz): for each query mode `<mode>_scores` (Q, k) and
`<mode>_positions` (Q, k, rows of the shard), and `modes`, `classes`, `n`, `dim`, `dtype`, `k`
(the shard's: min(top K, n)), `kind`, the shard index's `recall_at_10_vs_exact` (1 for
exact) and the `devices` the searches ran on.

A rankings folder (`merge_rankings`, `write_rankings`):
    rankings.json   modes, classes, k, ntotal, dim, kinds, min_recall_at_10_vs_exact,
                    shards [{path, n, offset, kind, recall_at_10_vs_exact}]
    <mode>_scores.npy, <mode>_positions.npy   (Q, k), positions are rows of ids.parquet
    ids.parquet     the shards' ids in shard order
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marseval.atomic import atomic_directory, atomic_write_json, atomic_writer
from marseval.errors import MarsevalError
from marseval.retrieval.index import SearchIndex, order_results
from marseval.retrieval.index_params import IndexParams
from marseval.retrieval.queries import read_queries
from marseval.retrieval.shards import (
    IndexMismatchError,
    check_same,
    concatenate_ids,
    read_ids,
    read_json,
)

Results = dict[str, tuple[np.ndarray, np.ndarray]]  # mode -> (scores, positions)


@dataclass
class Rankings:
    """The global top K of every query of every mode over one database."""

    results: Results
    classes: list[str]
    ids: pd.DataFrame
    dim: int
    k: int
    info: dict[str, Any]

    @property
    def ntotal(self) -> int:
        return len(self.ids)


def depth(top_k: int | None, n: int) -> int:
    """How many results a top-K search of n rows returns (None: all of them)."""
    return n if top_k is None else min(top_k, n)


def search_all(index: SearchIndex, queries: dict[str, np.ndarray], k: int | None) -> Results:
    """Every mode's queries searched for their top k (None: the whole database)."""
    k = depth(k, index.ntotal)
    if k == 0:  # an empty shard: no results, nothing to search
        return {mode: (np.empty((len(vectors), 0), np.float32),
                       np.empty((len(vectors), 0), np.int64))
                for mode, vectors in queries.items()}
    return {mode: index.search(vectors, k) for mode, vectors in queries.items()}


def open_shard(shard_dir: Path, index_dir: Path | None, params: IndexParams,
               use_gpu: str = "auto") -> SearchIndex:
    """The searcher of one embedding shard: its shard index (built with `params`, else
    refused), or for exact without one a flat index over the shard's vectors."""
    if index_dir is not None:
        return SearchIndex.load(index_dir, use_gpu, database_dir=shard_dir, expected=params)
    if params.kind != "exact":
        raise MarsevalError(f"search of shard {shard_dir}: index kind {params.kind!r} needs "
                            "the shard's index folder (--index)")
    meta = read_json(Path(shard_dir) / "shard.json")
    info = {"kind": "exact", "requested": {"kind": "exact"}, "dim": meta["dim"],
            "ntotal": meta["n"], "params": {}}
    return SearchIndex.from_vectors(Path(shard_dir), info, use_gpu)


def search_shard(shard_dir: Path, queries_path: Path, out: Path, *, params: IndexParams,
                 index_dir: Path | None = None, top_k: int | None = None,
                 use_gpu: str = "auto") -> dict[str, Any]:
    """Search one shard with every query of `queries_path`; writes the result file `out`."""
    shard_dir = Path(shard_dir)
    meta = read_json(shard_dir / "shard.json")
    queries, classes = read_queries(Path(queries_path))
    index = open_shard(shard_dir, index_dir, params, use_gpu)
    results = search_all(index, queries, top_k)
    k = depth(top_k, index.ntotal)
    arrays = {f"{mode}_{part}": values for mode, pair in results.items()
              for part, values in zip(("scores", "positions"), pair, strict=True)}
    record = {"modes": list(results), "classes": classes, "n": meta["n"], "dim": meta["dim"],
              "dtype": meta["dtype"], "k": k, "kind": index.info["kind"],
              "recall_at_10_vs_exact": index.info.get("recall_at_10_vs_exact", 1.0),
              "devices": sorted(index.devices)}
    with atomic_writer(out) as stream:
        np.savez(stream, **arrays, **{name: np.asarray(value) for name, value in record.items()})
    return record


def _read_result(path: Path) -> tuple[dict[str, Any], Results]:
    try:
        with np.load(path, allow_pickle=False) as data:
            modes = [str(m) for m in data["modes"]]
            record = {"modes": modes, "classes": [str(c) for c in data["classes"]],
                      "kind": str(data["kind"]),
                      "recall_at_10_vs_exact": float(data["recall_at_10_vs_exact"]),
                      **{key: int(data[key]) for key in ("n", "dim", "k")},
                      "dtype": str(data["dtype"])}
            results = {m: (data[f"{m}_scores"], data[f"{m}_positions"]) for m in modes}
    except (OSError, KeyError, ValueError) as error:
        raise MarsevalError(f"{path}: not a search result file ({error})") from None
    return record, results


class TopK:
    """The running top k of each query over shards' results (global positions): results wait
    until they hold 4 k columns, then one sort keeps the best k, so the merge holds at most
    about 5 k columns a query and sorts each result about once."""

    def __init__(self, k: int) -> None:
        self.k, self.parts, self.columns = k, [], 0

    def add(self, scores: np.ndarray, positions: np.ndarray) -> None:
        self.parts.append((scores, positions))
        self.columns += scores.shape[1]
        if self.columns > 4 * self.k and len(self.parts) > 1:
            self.parts = [self.result()]
            self.columns = self.parts[0][0].shape[1]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        scores = np.concatenate([p[0] for p in self.parts], axis=1)
        positions = np.concatenate([p[1] for p in self.parts], axis=1)
        scores, positions = order_results(scores, positions)
        return scores[:, : self.k], positions[:, : self.k]


def merge_rankings(result_paths: list[Path], shard_dirs: list[Path],
                   top_k: int | None = None) -> Rankings:
    """The global top K (None: every row) from the shards' result files, in shard order."""
    if not result_paths or len(result_paths) != len(shard_dirs):
        raise MarsevalError(f"merge: {len(result_paths)} search results for {len(shard_dirs)} "
                            "shards (one result per shard, in shard order)")
    metas = {Path(d): read_json(Path(d) / "shard.json") for d in shard_dirs}
    check_same("dimension", {d: m["dim"] for d, m in metas.items()}, "shard")
    check_same("dtype", {d: m["dtype"] for d, m in metas.items()}, "shard")
    ntotal = sum(m["n"] for m in metas.values())
    k = depth(top_k, ntotal)
    merged: dict[str, TopK] = {}
    records, shards, offset = {}, [], 0
    for path, shard_dir in zip(map(Path, result_paths), map(Path, shard_dirs), strict=True):
        record, results = _read_result(path)
        meta = metas[shard_dir]
        if (record["n"], record["dim"], record["dtype"]) != (meta["n"], meta["dim"],
                                                               meta["dtype"]):
            raise IndexMismatchError(
                f"search result {path} is of a shard of {record['n']} {record['dim']}-d "
                f"{record['dtype']} rows; {shard_dir} holds {meta['n']} {meta['dim']}-d "
                f"{meta['dtype']} (search it again)")
        if record["k"] < min(k, meta["n"]):
            raise MarsevalError(f"search result {path} holds the top {record['k']} of its shard;"
                                f" the merge needs {min(k, meta['n'])} (search it again)")
        records[path] = record
        for mode, (scores, positions) in results.items():
            shifted = np.where(positions >= 0, positions + offset, -1)
            merged.setdefault(mode, TopK(k)).add(scores, shifted)
        shards.append({"path": str(shard_dir), "n": meta["n"], "offset": offset,
                       "kind": record["kind"],
                       "recall_at_10_vs_exact": record["recall_at_10_vs_exact"]})
        offset += meta["n"]
    check_same("query modes", {p: r["modes"] for p, r in records.items()}, "search result")
    check_same("query classes", {p: r["classes"] for p, r in records.items()}, "search result")
    ids = concatenate_ids([(d, read_ids(d / "ids.parquet").astype({"id": str}))
                           for d in metas])
    first = next(iter(records.values()))
    info = {"modes": first["modes"], "classes": first["classes"], "k": k, "ntotal": ntotal,
            "dim": first["dim"], "kinds": sorted({r["kind"] for r in records.values()}),
            "min_recall_at_10_vs_exact": min(s["recall_at_10_vs_exact"] for s in shards),
            "shards": shards}
    return Rankings({mode: top.result() for mode, top in merged.items()}, first["classes"],
                    ids, first["dim"], k, info)


def write_rankings(rankings: Rankings, out: Path) -> Path:
    with atomic_directory(out) as tmp:
        for mode, (scores, positions) in rankings.results.items():
            np.save(tmp / f"{mode}_scores.npy", scores)
            np.save(tmp / f"{mode}_positions.npy", positions)
        rankings.ids.to_parquet(tmp / "ids.parquet", index=False)
        atomic_write_json(tmp / "rankings.json", rankings.info)
    return Path(out)


def read_rankings(folder: Path) -> Rankings:
    folder = Path(folder)
    info = read_json(folder / "rankings.json")
    results = {}
    for mode in info["modes"]:
        pair = []
        for part in ("scores", "positions"):
            path = folder / f"{mode}_{part}.npy"
            if not path.is_file():
                raise MarsevalError(f"{path} is missing (not a finished rankings folder?)")
            pair.append(np.load(path, allow_pickle=False))
        results[mode] = (pair[0], pair[1])
    ids = read_ids(folder / "ids.parquet").astype({"id": str})
    if len(ids) != info["ntotal"]:
        raise MarsevalError(f"{folder / 'ids.parquet'} has {len(ids)} rows; rankings.json says "
                            f"{info['ntotal']}")
    return Rankings(results, info["classes"], ids, info["dim"], info["k"], info)


def rankings_of_index(index: SearchIndex, queries_path: Path, top_k: int | None) -> Rankings:
    """The rankings of the merged layout: the queries searched in one index in-process."""
    queries, classes = read_queries(Path(queries_path))
    k = depth(top_k, index.ntotal)
    recall = index.info.get("recall_at_10_vs_exact", 1.0)
    info = {"modes": list(queries), "classes": classes, "k": k, "ntotal": index.ntotal,
            "dim": index.dim, "kinds": [index.info["kind"]], "min_recall_at_10_vs_exact": recall,
            "shards": [{"path": str(index.index_dir), "n": index.ntotal, "offset": 0,
                        "kind": index.info["kind"], "recall_at_10_vs_exact": recall}]}
    return Rankings(search_all(index, queries, top_k), classes, index.ids, index.dim, k, info)
