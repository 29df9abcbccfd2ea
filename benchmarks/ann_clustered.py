"""Recall@K, queries/s, build time, memory of exact / IVF / HNSW / IVF-PQ on clustered embeddings.

Data with the structure of image embeddings rather than uniform noise (issue 19, item 4): a
Gaussian mixture of `--clusters` components (Dirichlet(1) weights, so cluster sizes vary) in
`--intrinsic` dimensions (centres N(0, I), within-cluster spread `--spread`), embedded by a random
orthonormal map into `--dim` dimensions, plus isotropic noise of total norm about `--noise`, then
L2-normalised (float32; database seed 0, `--queries` queries drawn from the same mixture with
seed 1). Inner-product search; the truth is exact search over the whole database.

For S in `--shards` the database is split into S contiguous shards of (almost) equal size; each
shard gets its own index of the same kind (IVF lists nlist = 4 sqrt(shard size)), every shard is
searched for the top K, and the S lists are merged by score (ties by global id). Build seconds
and index bytes (faiss.serialize_index) are summed over the shards, and the largest shard's bytes
are the memory of one job; queries/s counts all shard searches plus the merge, run one after the
other on this machine (parallel shard jobs would divide the search time by up to S); the
table's "vs exact" is against exact search with the fewest shards of the run:
- exact: IndexFlatIP;
- ivf: IndexIVFFlat, coarse k-means (10 iterations) on up to 64 x nlist sampled shard vectors;
- hnsw: IndexHNSWFlat(M = 32, efConstruction 40), efSearch from `--ef-search`, raised to K;
- ivfpq: IndexIVFPQ, coarse quantizer trained as for ivf, `--pq-bytes` 8-bit codes, by residual;
  also with exact re-ranking of `--refine` x K PQ candidates (IndexRefineFlat, keeps the vectors).
recall@K = |approximate top K ∩ exact top K| / K, mean over queries, for K in `--ks`; queries/s
is the median of `--repeats` k = 10 searches (one search for larger K). An IVF index returns at
most nprobe x (mean list size) results, so it cannot deliver a K larger than that.

Run: nice python benchmarks/ann_clustered.py [--n 200000] [--dim 512] [--queries 200] [--shards 1 4]
Writes benchmarks/results/ann_clustered.json and prints a Markdown table; `--show A.json B.json`
prints one table of the rows of earlier results files instead (the README's: the default run
and `--shards 16 --out benchmarks/results/ann_clustered_s16.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from vector_index import seconds  # noqa: E402

from marseval.retrieval import index as vi  # noqa: E402


class Mixture:
    """A Gaussian mixture in a low intrinsic dimension, embedded in `dim` dimensions."""

    def __init__(self, args) -> None:
        rng = np.random.default_rng(12345)
        self.args = args
        self.weights = rng.dirichlet(np.ones(args.clusters))
        self.centres = rng.standard_normal((args.clusters, args.intrinsic)).astype(np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((args.dim, args.intrinsic)))
        self.basis = basis.T.astype(np.float32)  # (intrinsic, dim), orthonormal rows

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng, a = np.random.default_rng(seed), self.args
        out = np.empty((n, a.dim), np.float32)
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            labels = rng.choice(a.clusters, size=m, p=self.weights)
            low = self.centres[labels] + a.spread * rng.standard_normal(
                (m, a.intrinsic), dtype=np.float32)
            block = low @ self.basis + (a.noise / math.sqrt(a.dim)) * rng.standard_normal(
                (m, a.dim), dtype=np.float32)
            out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out


def merge(results: list[tuple[np.ndarray, np.ndarray]], offsets: list[int], k: int) -> np.ndarray:
    """Global top-k ids of per-shard (scores, local ids): by score, ties by global id."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    ids = np.concatenate([np.where(i >= 0, i + off, -1) for (_, i), off in
                          zip(results, offsets, strict=True)], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=-1)
    return np.take_along_axis(ids, order[:, :k], axis=1)


class Sharded:
    """S indexes of one kind over contiguous shards of the database."""

    def __init__(self, x: np.ndarray, shards: int, build: Callable[[np.ndarray], Any]) -> None:
        bounds = np.linspace(0, len(x), shards + 1).astype(int)
        self.offsets = [int(b) for b in bounds[:-1]]
        self.indexes, self.build_s = [], 0.0
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            took, index = seconds(lambda lo=lo, hi=hi: build(x[lo:hi]))
            self.build_s += took
            self.indexes.append(index)
        sizes = [int(faiss.serialize_index(ix[0] if isinstance(ix, tuple) else ix).size)
                 for ix in self.indexes]
        self.bytes_total, self.bytes_max_shard = sum(sizes), max(sizes)

    def search(self, queries: np.ndarray, k: int, setup: Callable[[Any, int], Any]) -> np.ndarray:
        return merge([setup(ix, k).search(queries, k) for ix in self.indexes], self.offsets, k)


def measure(sharded: Sharded, queries: np.ndarray, truth: np.ndarray,
            setup: Callable[[Any, int], Any], args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in args.ks:
        runs, found = [], None
        for _ in range(args.repeats if k == args.ks[0] else 1):
            took, found = seconds(lambda k=k: sharded.search(queries, k, setup))
            runs.append(took)
        qps = len(queries) / statistics.median(runs)
        out[f"k{k}"] = {"queries_per_s": qps, "runs_s": runs,
                        "recall": vi.recall_at_k(found, truth, k),
                        "mean_returned": float(np.mean((found >= 0).sum(axis=1)))}
    return out


def nlist_for(n: int) -> int:
    return max(1, int(round(4 * math.sqrt(n))))


def train_ivf(xs: np.ndarray, quantizer: faiss.Index, index: faiss.Index, nlist: int) -> None:
    sample = xs[np.random.default_rng(0).permutation(len(xs))[:64 * nlist]]
    index.cp.niter, index.cp.seed = 10, 0
    index.train(sample)


def build_ivf(xs: np.ndarray) -> faiss.Index:
    nlist = nlist_for(len(xs))
    quantizer = faiss.IndexFlatIP(xs.shape[1])
    index = faiss.IndexIVFFlat(quantizer, xs.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True
    train_ivf(xs, quantizer, index, nlist)
    index.add(xs)
    return index


def make_build_ivfpq(pq_bytes: int, refine: int) -> Callable[[np.ndarray], Any]:
    def build(xs: np.ndarray) -> tuple[faiss.Index, faiss.Index]:
        nlist = nlist_for(len(xs))
        quantizer = faiss.IndexFlatIP(xs.shape[1])
        ivfpq = faiss.IndexIVFPQ(quantizer, xs.shape[1], nlist, pq_bytes, 8,
                                 faiss.METRIC_INNER_PRODUCT)
        ivfpq.cp.spherical = True
        train_ivf(xs, quantizer, ivfpq, nlist)
        refined = faiss.IndexRefineFlat(ivfpq)
        refined.k_factor = refine
        refined.add(xs)
        return refined, ivfpq
    return build


def build_hnsw(xs: np.ndarray) -> faiss.Index:
    index = faiss.IndexHNSWFlat(xs.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(xs)
    return index


def set_nprobe(nprobe: int) -> Callable[[Any, int], Any]:
    def setup(index: Any, k: int) -> Any:
        index.nprobe = nprobe
        return index
    return setup


def set_ivfpq(nprobe: int, refined: bool) -> Callable[[Any, int], Any]:
    def setup(pair: Any, k: int) -> Any:
        pair[1].nprobe = nprobe
        return pair[0] if refined else pair[1]
    return setup


def set_ef(ef: int) -> Callable[[Any, int], Any]:
    def setup(index: Any, k: int) -> Any:
        index.hnsw.efSearch = max(ef, k)
        return index
    return setup


def bench_shards(x: np.ndarray, queries: np.ndarray, truth: np.ndarray, shards: int,
                 args) -> list[dict[str, Any]]:
    rows = []

    def run(kind: str, sharded: Sharded, setting: str, setup) -> None:
        row = {"kind": kind, "shards": shards, "setting": setting, "build_s": sharded.build_s,
               "bytes_total": sharded.bytes_total, "bytes_max_shard": sharded.bytes_max_shard,
               **measure(sharded, queries, truth, setup, args)}
        rows.append(row)
        print(f"  S={shards} {kind} {setting}: build {row['build_s']:.1f} s, "
              + ", ".join(f"R@{k} {row[f'k{k}']['recall']:.3f} "
                          f"{row[f'k{k}']['queries_per_s']:,.0f} q/s" for k in args.ks),
              flush=True)

    def flat(xs: np.ndarray) -> faiss.Index:
        index = faiss.IndexFlatIP(xs.shape[1])
        index.add(xs)
        return index

    run("exact", Sharded(x, shards, flat), "", lambda ix, k: ix)
    ivf = Sharded(x, shards, build_ivf)
    nlist = nlist_for(len(x) // shards)
    for nprobe in args.nprobe:
        run("ivf", ivf, f"nlist {nlist}, nprobe {nprobe}", set_nprobe(nprobe))
    del ivf
    ivfpq = Sharded(x, shards, make_build_ivfpq(args.pq_bytes, args.refine))
    ivfpq.bytes_total_pq_only = sum(int(faiss.serialize_index(p[1]).size) for p in ivfpq.indexes)
    for refined in (False, True):
        for nprobe in args.nprobe:
            name = f"PQ{args.pq_bytes}{f' + refine x{args.refine}' if refined else ''}"
            run("ivfpq", ivfpq, f"{name}, nlist {nlist}, nprobe {nprobe}",
                set_ivfpq(nprobe, refined))
            if not refined:  # the codes alone, without the stored vectors of the refine step
                rows[-1]["bytes_total"] = ivfpq.bytes_total_pq_only
                rows[-1]["bytes_max_shard"] = max(int(faiss.serialize_index(p[1]).size)
                                                  for p in ivfpq.indexes)
    del ivfpq
    if args.hnsw:
        hnsw = Sharded(x, shards, build_hnsw)
        for ef in args.ef_search:
            run("hnsw", hnsw, f"M 32, efSearch {ef}", set_ef(ef))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--intrinsic", type=int, default=48)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 2000])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--pq-bytes", type=int, default=64)
    parser.add_argument("--refine", type=int, default=4)
    parser.add_argument("--no-hnsw", dest="hnsw", action="store_false")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ann_clustered.json")
    parser.add_argument("--show", type=Path, nargs="+", help="only print these results' rows")
    args = parser.parse_args()
    if args.show:
        results = [json.loads(path.read_text()) for path in args.show]
        print_table({**results[0], "rows": [r for res in results for r in res["rows"]]})
        return
    faiss.omp_set_num_threads(args.threads)

    started = time.perf_counter()
    mixture = Mixture(args)
    data_s, x = seconds(lambda: mixture.sample(args.n, 0))
    queries = mixture.sample(args.queries, 1)
    truth_index = faiss.IndexFlatIP(args.dim)
    truth_index.add(x)
    _, truth = truth_index.search(queries, max(args.ks))
    del truth_index
    print(f"data {data_s:.1f} s, truth {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for shards in args.shards:
        rows += bench_shards(x, queries, truth, shards, args)
    result = {
        "n": args.n, "dim": args.dim, "queries": args.queries, "ks": args.ks,
        "repeats": args.repeats, "shards": args.shards,
        "data": {"model": "Gaussian mixture in a low intrinsic dimension, random orthonormal map "
                          "to dim, isotropic noise, L2-normalised",
                 "clusters": args.clusters, "intrinsic_dim": args.intrinsic,
                 "within_cluster_sd": args.spread, "noise_norm": args.noise,
                 "weights": "Dirichlet(1)"},
        "make_data_s": data_s, "rows": rows, "total_s": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(numpy=np.__version__, faiss=faiss.__version__,
                           faiss_threads=faiss.omp_get_max_threads()),
    }
    write_results(args.out, result)
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    ks, rows = result["ks"], result["rows"]
    exact = [r for r in rows if r["kind"] == "exact"]  # the fewest shards of this run
    exact_qps = min(exact, key=lambda r: r["shards"])[f"k{ks[0]}"]["queries_per_s"]
    print(f"\n{result['n']:,} x {result['dim']}-d, {result['queries']:,} queries; "
          f"total {result['total_s']:.0f} s\n")
    print("| index | S | build s | MB (largest shard) | queries/s @10 | vs exact | "
          + " | ".join(f"recall@{k}" for k in ks) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(ks))
    for r in rows:
        qps = r[f"k{ks[0]}"]["queries_per_s"]
        name = r["kind"] + (f", {r['setting']}" if r["setting"] else "")
        print(f"| {name} | {r['shards']} | {r['build_s']:.1f} | {r['bytes_total'] / 1e6:,.0f} "
              f"({r['bytes_max_shard'] / 1e6:,.0f}) | {qps:,.0f} | {qps / exact_qps:.1f} x | "
              + " | ".join(f"{r[f'k{k}']['recall']:.3f}" for k in ks) + " |")


if __name__ == "__main__":
    main()
