"""Build time, queries/s and recall@10 of the retrieval index kinds on random embeddings.

A database of `--n` random N(0, 1) vectors in `--dim` dimensions, L2-normalised (float32,
seed 0), and `--queries` separate random normalised queries (seed 1). Indexes are built with
`marseval.retrieval.index.make_index`, the builder `build_index` uses (no shard or index files
are written, so disk speed is not part of the figures):
- exact: IndexFlatIP; build seconds, queries/s at k = 10 (median of `--repeats`);
- ivf: IndexIVFFlat, `--nlist` lists trained on `--train` sampled vectors; train + add
  seconds; queries/s and recall@10 against exact search for each nprobe in `--nprobe`;
- hnsw: IndexHNSWFlat(M = 32) on the first `--hnsw-n` vectors (0 skips it; slow to build);
  recall against exact search over the same subset;
- gpu: the exact index on the GPU where faiss sees one, else null.
Uniformly random vectors have no cluster structure: the worst case for IVF.

Run: nice python benchmarks/vector_index.py [--n 1000000] [--dim 512] [--queries 1000]
Writes benchmarks/results/vector_index.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
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

from marseval.retrieval import index as vi  # noqa: E402

K = 10


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """Random normalised float32 rows, made in blocks to keep peak memory at one copy."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def seconds(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def search_rate(index: Any, queries: np.ndarray, repeats: int) -> tuple[dict[str, Any], Any]:
    """Median queries/s of `repeats` k = 10 searches, and the positions found."""
    runs, positions = [], None
    for _ in range(repeats):
        took, (_, positions) = seconds(lambda: index.search(queries, K))
        runs.append(took)
    median = statistics.median(runs)
    return {"seconds": median, "runs_s": runs, "queries_per_s": len(queries) / median}, positions


def bench_exact(x: np.ndarray, queries: np.ndarray, repeats: int) -> tuple[dict, np.ndarray]:
    build_s, (index, _) = seconds(lambda: vi.make_index(x, "exact"))
    search, truth = search_rate(index, queries, repeats)
    return {"build_s": build_s, **search}, truth


def bench_ivf(x: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> dict[str, Any]:
    build_s, (index, params) = seconds(lambda: vi.make_index(
        x, "ivf", nlist=args.nlist, max_train=args.train, seed=0))
    probes = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        search, found = search_rate(index, queries, args.repeats)
        probes.append({"nprobe": nprobe, **search, "recall_at_10": vi.recall_at_k(found, truth)})
    return {"nlist": params["nlist"], "train_size": params["train_size"],
            "train_add_s": build_s, "nprobe": probes}


def bench_hnsw(x: np.ndarray, queries: np.ndarray, args) -> dict[str, Any] | None:
    if args.hnsw_n <= 0:
        return None
    subset = x[:args.hnsw_n]
    _, truth = vi.make_index(subset, "exact")[0].search(queries, K)
    build_s, (index, params) = seconds(lambda: vi.make_index(subset, "hnsw", hnsw_m=32))
    searches = []
    for ef in args.ef_search:
        index.hnsw.efSearch = ef
        search, found = search_rate(index, queries, args.repeats)
        searches.append({"ef_search": ef, **search, "recall_at_10": vi.recall_at_k(found, truth)})
    return {"n": len(subset), "m": 32, "ef_construction": params["ef_construction"],
            "build_s": build_s, "ef": searches}


def bench_gpu(x: np.ndarray, queries: np.ndarray, repeats: int) -> dict[str, Any] | None:
    if not vi.gpu_available():
        return None
    build_s, (index, _) = seconds(lambda: vi.make_index(x, "exact", gpu=True))
    index.search(queries, K)  # warm-up: kernels load on first use
    search, _ = search_rate(index, queries, repeats)
    return {"build_s": build_s, **search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--train", type=int, default=65_536)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--hnsw-n", type=int, default=100_000)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 128, 512])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/vector_index.json")
    args = parser.parse_args()

    started = time.perf_counter()
    data_s, x = seconds(lambda: unit_rows(args.n, args.dim, 0))
    queries = unit_rows(args.queries, args.dim, 1)
    exact, truth = bench_exact(x, queries, args.repeats)
    ivf = bench_ivf(x, queries, truth, args)
    hnsw = bench_hnsw(x, queries, args)
    gpu = bench_gpu(x, queries, args.repeats)
    result = {
        "n": args.n, "dim": args.dim, "queries": args.queries, "k": K, "repeats": args.repeats,
        "data": "uniformly random unit vectors (no cluster structure: worst case for IVF)",
        "make_data_s": data_s, "exact": exact, "ivf": ivf, "hnsw": hnsw, "gpu": gpu,
        "total_s": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(numpy=np.__version__, faiss=faiss.__version__,
                           faiss_threads=faiss.omp_get_max_threads()),
    }
    write_results(args.out, result)
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    exact, ivf, hnsw = result["exact"], result["ivf"], result["hnsw"]
    print(f"{result['n']:,} x {result['dim']}-d, {result['queries']:,} queries, k = {K}, "
          f"median of {result['repeats']}; total {result['total_s']:.0f} s\n")
    print("| index | build s | queries/s | recall@10 |")
    print("|---|---|---|---|")
    print(f"| exact (IndexFlatIP) | {exact['build_s']:.2f} | {exact['queries_per_s']:,.0f} | 1 |")
    for probe in ivf["nprobe"]:
        print(f"| IVF{ivf['nlist']}, nprobe {probe['nprobe']} | {ivf['train_add_s']:.1f} | "
              f"{probe['queries_per_s']:,.0f} | {probe['recall_at_10']:.3f} |")
    for ef in (hnsw or {}).get("ef", []):
        print(f"| HNSW32 on {hnsw['n']:,}, efSearch {ef['ef_search']} | {hnsw['build_s']:.1f} | "
              f"{ef['queries_per_s']:,.0f} | {ef['recall_at_10']:.3f} |")


if __name__ == "__main__":
    main()
