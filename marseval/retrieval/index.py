"""FAISS indexes over embedding shards (marseval.retrieval.shards), built and searched.

An index folder (likewise atomic):
    index.json          kind, dim, ntotal, params, build_seconds, device, faiss_version, shards,
                        extras, and `recall_at_10_vs_exact` for approximate kinds
    index.faiss         the CPU index (faiss.write_index)
    ids.parquet         the shards' ids concatenated in the given shard order
    embeddings.npy      the merged float32 matrix (evaluation needs exact vectors)
    <name>.npy          merged extras

A shard index folder (`build_shard_index`, the sharded layout: one per embedding shard):
    index.json          as above, plus `database` (the shard's path, n, dim and dtype)
    index.faiss         absent for exact: the flat index is the shard's own vectors

Positions returned by `SearchIndex.search` are rows of `ids.parquet` and `embeddings.npy` of
the database folder (the merged index folder itself, or the embedding shard).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from marseval.atomic import atomic_directory, atomic_write_json
from marseval.errors import MarsevalError
from marseval.retrieval.index_params import KINDS, IndexParams
from marseval.retrieval.shards import (
    IndexMismatchError,
    load_npy,
    merge_shards,
    read_ids,
    read_json,
    read_shard,
)

GPU_MAX_K = 2048  # faiss GPU top-k selection limit; larger k searches the CPU copy


# ---------------------------------------------------------------- faiss


def gpu_available() -> bool:
    """Whether this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _want_gpu(use_gpu: str) -> bool:
    if use_gpu not in ("auto", "yes", "no"):
        raise MarsevalError(f"use_gpu must be 'auto', 'yes' or 'no', got {use_gpu!r}")
    if use_gpu == "yes" and not gpu_available():
        raise MarsevalError("use_gpu is 'yes' but faiss has no GPU here (faiss-cpu installed, "
                            f"or no visible GPU; faiss.get_num_gpus() = {faiss.get_num_gpus()})")
    return use_gpu != "no" and gpu_available()


@functools.cache
def _gpu_resources() -> Any:
    # one per process: GPU indexes must not outlive the resources they were made with
    return faiss.StandardGpuResources()


def _to_gpu(index: Any) -> Any:
    return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, at most n // 39 so each centroid trains on >= 39 points."""
    return int(min(max(round(4 * math.sqrt(n)), 1), max(n // 39, 1)))


def _ivf_centroids(train: np.ndarray, nlist: int, seed: int, gpu: bool) -> np.ndarray:
    """Spherical k-means as IndexIVF.train runs it for inner product, but with our seed."""
    params = faiss.ClusteringParameters()
    params.niter, params.spherical, params.seed = 10, True, seed
    params.max_points_per_centroid = max(len(train) // nlist + 1, 256)  # no second subsample
    clustering = faiss.Clustering(train.shape[1], nlist, params)
    assign = faiss.IndexFlatIP(train.shape[1])
    clustering.train(train, _to_gpu(assign) if gpu else assign)
    return faiss.vector_to_array(clustering.centroids).reshape(nlist, train.shape[1])


def make_index(
    embeddings: np.ndarray,
    kind: str = "exact",
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    pq_m: int = 64,
    seed: int = 0,
    max_train: int | None = None,
    gpu: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """A filled faiss index over `embeddings` (on the GPU where `gpu` and the kind allows)
    and the parameters it was built with. IVF and IVF-PQ train on at most `max_train` rows
    (default 256 * nlist) sampled with `seed`."""
    n, dim = embeddings.shape
    params: dict[str, Any] = {"nlist": None, "nprobe": None, "hnsw_m": None, "ef_search": None}
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
        index = _to_gpu(index) if gpu else index
    elif kind in ("ivf", "ivfpq"):
        nlist = default_nlist(n) if nlist is None else nlist
        if not 1 <= nlist <= n:
            raise MarsevalError(f"{kind}: nlist must be between 1 and the {n} vectors, got "
                                f"{nlist}")
        cap = min(n, max_train or 256 * nlist)
        if kind == "ivfpq":
            _check_pq(n, dim, pq_m)
            cap = min(n, max(cap, 256 * 39))  # faiss: >= 39 points per 8-bit PQ centroid
        if cap < nlist:
            raise MarsevalError(f"{kind}: {cap} training vectors for {nlist} lists")
        rows = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False)) \
            if cap < n else slice(None)
        train = np.ascontiguousarray(embeddings[rows])
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(_ivf_centroids(train, nlist, seed, gpu))
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:  # the quantizer is trained, so train() fits only the residual codebooks
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.pq.cp.seed = seed
            index.train(train)
            params.update(pq_m=pq_m)
        index.nprobe = min(nprobe, nlist)
        index = _to_gpu(index) if gpu and kind == "ivf" else index
        params.update(nlist=nlist, nprobe=min(nprobe, nlist), train_size=cap)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
        params.update(hnsw_m=hnsw_m, ef_search=ef_search,
                      ef_construction=int(index.hnsw.efConstruction))
    else:
        raise MarsevalError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind == "hnsw":
        _add_single_threaded(index, embeddings)
    else:
        index.add(embeddings)
    return index, params


def _check_pq(n: int, dim: int, pq_m: int) -> None:
    if dim % pq_m:
        raise MarsevalError(f"ivfpq: pq_m = {pq_m} code bytes must divide the embedding "
                            f"dimension {dim} (config key retrieval.pq_m)")
    if n < 256:
        raise MarsevalError(f"ivfpq: {n} vectors cannot train 8-bit codes (256 centroids per "
                            "sub-quantizer); use exact for so small a shard")


def _add_single_threaded(index: Any, embeddings: np.ndarray) -> None:
    """faiss inserts HNSW points in parallel, so the graph depends on thread timing; one
    thread makes the same vectors give the same graph (slower to build, same to search)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(embeddings)
    finally:
        faiss.omp_set_num_threads(threads)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |top-k approximate ∩ top-k exact| / k (positions, (Q, >=k))."""
    approximate, exact = np.asarray(approximate)[:, :k], np.asarray(exact)[:, :k]
    if len(approximate) != len(exact):
        raise MarsevalError(f"recall_at_k: {len(approximate)} approximate result rows but "
                            f"{len(exact)} exact ones")
    if len(exact) == 0:
        return float("nan")
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approximate, exact,
                                                                      strict=True)]
    return float(np.mean(hits) / k)


def _build(embeddings: np.ndarray, params: IndexParams, use_gpu: str,
           recall_queries: int) -> tuple[Any, dict[str, Any]]:
    """The CPU faiss index of `params` (kind resolved by size) over `embeddings` and the
    index.json fields describing it."""
    kind = params.resolve(*embeddings.shape)
    gpu = _want_gpu(use_gpu) and kind in ("exact", "ivf")  # no GPU HNSW; GPU PQ is picky
    start = time.perf_counter()
    index, used = make_index(embeddings, kind, nlist=params.nlist, nprobe=params.nprobe,
                             hnsw_m=params.hnsw_m, ef_search=params.ef_search,
                             pq_m=params.pq_m, seed=params.seed, gpu=gpu)
    if kind == "ivfpq":
        used["refine"] = params.refine
    info: dict[str, Any] = {
        "kind": kind, "requested": {"kind": params.kind, **params.used()},
        "dim": int(embeddings.shape[1]), "ntotal": int(index.ntotal), "params": used,
        "seed": params.seed, "build_seconds": round(time.perf_counter() - start, 3),
        "device": "cuda" if gpu else "cpu", "faiss_version": faiss.__version__,
    }
    if kind != "exact":
        searcher = SearchIndex(Path(), info, index, None, embeddings)
        recall, sampled = _measure_recall(searcher, embeddings, recall_queries, params.seed, gpu)
        info.update(recall_at_10_vs_exact=recall, recall_queries=sampled)
    return (faiss.index_gpu_to_cpu(index) if gpu else index), info


def _measure_recall(index: SearchIndex, embeddings: np.ndarray, queries: int, seed: int,
                    gpu: bool) -> tuple[float, int]:
    """recall@10 of `index` (as searched, re-ranking included) against exact search, a
    sample of the database's own vectors as queries."""
    n = len(embeddings)
    rng = np.random.default_rng([seed, 1])  # independent of the IVF training sample
    rows = np.sort(rng.choice(n, min(queries, n), replace=False))
    sample = np.ascontiguousarray(embeddings[rows])
    k = min(10, n)
    exact, _ = make_index(embeddings, "exact", gpu=gpu)
    _, truth = exact.search(sample, k)
    _, found = index.search(sample, k)
    return recall_at_k(found, truth, k), len(rows)


def build_index(
    shard_dirs: list[Path],
    out_dir: Path,
    params: IndexParams | None = None,
    *,
    use_gpu: str = "auto",
    recall_queries: int = 1000,
    **settings: Any,
) -> dict:
    """Merge shards (in the given order) into one faiss index written as `out_dir` (the
    `merged` layout); `params`, or IndexParams(**settings). Returns its index.json."""
    out_dir = Path(out_dir)
    params = params or IndexParams(**settings)
    embeddings, ids, extras, shards = merge_shards([Path(d) for d in shard_dirs])
    if len(embeddings) == 0:
        raise MarsevalError(f"index {out_dir}: the shards hold no embeddings "
                            f"({', '.join(s['path'] for s in shards)})")
    index, info = _build(embeddings, params, use_gpu, recall_queries)
    info.update(shards=shards, extras=sorted(extras))
    with atomic_directory(out_dir) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        ids.to_parquet(tmp / "ids.parquet", index=False)
        np.save(tmp / "embeddings.npy", embeddings)
        for name, values in extras.items():
            np.save(tmp / f"{name}.npy", values)
        atomic_write_json(tmp / "index.json", info)
    return info


def build_shard_index(shard_dir: Path, out_dir: Path, params: IndexParams, *,
                      use_gpu: str = "auto", recall_queries: int = 1000) -> dict:
    """The index of one embedding shard (the `sharded` layout), written as `out_dir`; only
    index.json for exact. Returns its index.json."""
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    embeddings, _, _ = read_shard(shard_dir)
    meta = read_json(shard_dir / "shard.json")
    if len(embeddings) == 0:  # e.g. a cell group of empty cells dropped: nothing to search
        index, info = None, {"kind": "exact", "requested": {"kind": params.kind,
                                                            **params.used()},
                             "dim": meta["dim"], "ntotal": 0, "params": {}}
    else:
        index, info = _build(np.ascontiguousarray(embeddings), params, use_gpu, recall_queries)
    info["database"] = {"path": str(shard_dir), "n": meta["n"], "dim": meta["dim"],
                        "dtype": meta["dtype"]}
    with atomic_directory(out_dir) as tmp:
        if info["kind"] != "exact":
            faiss.write_index(index, str(tmp / "index.faiss"))
        atomic_write_json(tmp / "index.json", info)
    return info


# ---------------------------------------------------------------- search


def order_results(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted by score, highest first, ties by the lower position, missing results
    (position -1) last: the one order every layout and shard count returns."""
    missing = positions < 0
    scores = np.where(missing, -np.inf, scores).astype(np.float32, copy=False)
    key = np.where(missing, np.iinfo(np.int64).max, positions)
    order = np.lexsort((key, -scores), axis=-1)
    return (np.take_along_axis(scores, order, axis=-1),
            np.take_along_axis(positions, order, axis=-1))


def _flat_database(database_dir: Path) -> tuple[Any, pd.DataFrame, np.ndarray]:
    """A flat (exact) index over a database folder's vectors, its ids and the vectors."""
    vectors = load_npy(database_dir / "embeddings.npy", mmap=True)
    ids = read_ids(database_dir / "ids.parquet")
    index = faiss.IndexFlatIP(int(vectors.shape[1]))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index, ids, vectors


class SearchIndex:
    """A faiss index over a database folder (the merged index folder, or one embedding shard
    with its shard index folder), ready to search."""

    def __init__(self, index_dir: Path, info: dict[str, Any], index: Any,
                 ids: pd.DataFrame | None, vectors: np.ndarray | None = None,
                 gpu_index: Any = None, database_dir: Path | None = None) -> None:
        self.index_dir, self.info, self.ids = index_dir, info, ids
        self.database_dir = database_dir or index_dir
        self.dim, self.ntotal = int(info["dim"]), int(info["ntotal"])
        self.refine = int(info.get("params", {}).get("refine") or 1)
        self._cpu, self._gpu, self._vectors = index, gpu_index, vectors
        self.devices: set[str] = set()  # where searches ran (the GPU stops at GPU_MAX_K)

    @classmethod
    def load(cls, index_dir: Path, use_gpu: str = "auto", database_dir: Path | None = None,
             expected: IndexParams | None = None) -> SearchIndex:
        """Read an index folder over its database (default: the folder itself, the merged
        layout); exact and IVF indexes go to the GPU where one is used. With `expected`, an
        index built with other settings is refused (rebuild it)."""
        index_dir = Path(index_dir)
        database_dir = Path(database_dir or index_dir)
        info = read_json(index_dir / "index.json")
        if expected is not None:
            _check_settings(index_dir, info, expected)
        path = index_dir / "index.faiss"
        if info["kind"] == "exact" and not path.is_file():  # a shard index: its own vectors
            index, ids, vectors = _flat_database(database_dir)
        else:
            if not path.is_file():
                raise MarsevalError(f"{path} is missing")
            index = faiss.read_index(str(path))
            ids = read_ids(database_dir / "ids.parquet")
            vectors = load_npy(database_dir / "embeddings.npy", mmap=True)
        if not (index.ntotal == len(ids) == len(vectors) == info.get("ntotal")
                and index.d == vectors.shape[1] == info.get("dim")):
            raise MarsevalError(
                f"index {index_dir} does not fit database {database_dir}: the index holds "
                f"{index.ntotal} {index.d}-d vectors, index.json says {info.get('ntotal')} "
                f"{info.get('dim')}-d, the database {len(vectors)} {vectors.shape[1]}-d rows "
                f"and {len(ids)} ids (rebuild the index)")
        params = info.get("params", {})
        if params.get("nprobe"):
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]
        if params.get("ef_search"):
            index.hnsw.efSearch = params["ef_search"]
        gpu = info["kind"] in ("exact", "ivf") and _want_gpu(use_gpu)
        return cls(index_dir, info, index, ids.astype({"id": str}), vectors,
                   _to_gpu(index) if gpu else None, database_dir)

    @classmethod
    def from_vectors(cls, database_dir: Path, info: dict[str, Any],
                     use_gpu: str = "auto") -> SearchIndex:
        """An exact index over a database folder's own vectors (no index file)."""
        index, ids, vectors = _flat_database(Path(database_dir))
        gpu = _to_gpu(index) if _want_gpu(use_gpu) else None
        return cls(Path(database_dir), info, index, ids.astype({"id": str}), vectors, gpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (float32, (Q, k)) and positions (int64, (Q, k)) of the k best matches of
        each query in `order_results`' order; k is clamped to ntotal. An approximate index
        that finds fewer than k gives position -1 and score -inf for the missing ones.
        IVF-PQ with refine > 1 re-scores refine * k candidates exactly from the vectors."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            got = queries.shape[1] if queries.ndim == 2 else queries.shape
            raise IndexMismatchError(
                f"index {self.index_dir} built from {self.dim}-d embeddings; queries are "
                f"{got}-d (embeddings of a different model?)")
        if k < 1:
            raise MarsevalError(f"search of index {self.index_dir}: k must be >= 1, got {k}")
        k = min(k, self.ntotal)
        if len(queries) == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        exact = self.info["kind"] == "exact"
        # faiss keeps an arbitrary subset of the rows tied at the k-th score: an exact search
        # goes one deeper, and deeper still while the last result ties with the k-th, until
        # every tied row is in and order_results decides (ties by the lower position)
        wanted = min(k + 1 if exact else k * self.refine, self.ntotal)
        scores, positions = self._search(queries, wanted)
        while exact and wanted < self.ntotal and (scores[:, -1] == scores[:, k - 1]).any():
            wanted = min(2 * wanted, self.ntotal)
            scores, positions = self._search(queries, wanted)
        if self.refine > 1:
            scores = self._rescore(queries, positions)
        scores, positions = order_results(scores, positions)
        return scores[:, :k], positions[:, :k]

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        on_gpu = self._gpu is not None and k <= GPU_MAX_K
        self.devices.add("cuda" if on_gpu else "cpu")
        scores, positions = (self._gpu if on_gpu else self._cpu).search(queries, k)
        return scores, positions.astype(np.int64, copy=False)

    def _rescore(self, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact inner products of each query with its candidates' stored vectors."""
        scores = np.full(positions.shape, -np.inf, dtype=np.float32)
        for row, (query, found) in enumerate(zip(queries, positions, strict=True)):
            keep = found >= 0
            scores[row, keep] = np.asarray(self._vectors[found[keep]], np.float32) @ query
        return scores

    def embeddings(self) -> np.ndarray:
        """The database's (ntotal, dim) matrix, memory-mapped."""
        return load_npy(self.database_dir / "embeddings.npy", mmap=True)

    def extra(self, name: str) -> np.ndarray:
        """A merged per-row extra array (e.g. `text_embeddings`), memory-mapped."""
        if name not in self.info.get("extras", []):
            raise MarsevalError(f"index {self.index_dir} has no extra {name!r} (it has "
                                f"{self.info.get('extras', [])})")
        return load_npy(self.database_dir / f"{name}.npy", mmap=True)


def _check_settings(index_dir: Path, info: dict[str, Any], expected: IndexParams) -> None:
    wanted = {"kind": expected.kind, **expected.used()}
    if info.get("requested") != wanted:
        raise IndexMismatchError(
            f"index {index_dir} was built with {info.get('requested')}, the config asks for "
            f"{wanted}: it is not reused (delete it, or let the workflow build the index of "
            "the new settings)")
