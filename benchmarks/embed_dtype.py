"""What storing embeddings as float16 (`retrieval.embed_dtype: float16`) does to rankings.

The index searches float32 either way; float16 on disk rounds every component to 11 bits of
mantissa. This measures the cost on embeddings with the structure of image embeddings rather
than noise: unit vectors from a Gaussian mixture (`--clusters` centres in a `--rank`-dimensional
subspace of `--dim`-d space, spread within each cluster, plus isotropic noise). For queries
drawn the same way it compares the exact top K of the float32 database with the exact top K
of its float16 copy (FAISS IndexFlatIP both): the share of the float32 top K that the float16
top K keeps, for K = 10, 200 (the reference's K step) and 20,000 (its top K), and the largest
change of an inner product.

Run: python benchmarks/embed_dtype.py [--n 200000] [--dim 1024] [--queries 50]
Writes benchmarks/results/embed_dtype.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

KS = (10, 200, 20000)


def clustered_unit_vectors(rng: np.random.Generator, n: int, dim: int, clusters: int,
                           rank: int, spread: float, noise: float,
                           basis: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """n unit vectors: a cluster centre plus in-subspace spread plus isotropic noise."""
    labels = rng.integers(0, clusters, n)
    low = centres[labels] + spread * rng.standard_normal((n, rank))
    vectors = low @ basis + noise * rng.standard_normal((n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def top_k(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(queries, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/embed_dtype.json")
    args = parser.parse_args()
    import faiss

    rng = np.random.default_rng(args.seed)
    basis = np.linalg.qr(rng.standard_normal((args.dim, args.rank)))[0].T  # rank x dim
    centres = rng.standard_normal((args.clusters, args.rank))
    draw = dict(clusters=args.clusters, rank=args.rank, spread=0.35, noise=0.02,
                basis=basis, centres=centres)
    database = clustered_unit_vectors(rng, args.n, args.dim, **draw)
    queries = clustered_unit_vectors(rng, args.queries, args.dim, **draw)
    half = database.astype(np.float16).astype(np.float32)  # what the index reads back
    k_max = min(max(KS), args.n)
    scores32, ids32 = top_k(database, queries, k_max)
    scores16, ids16 = top_k(half, queries, k_max)
    kept = {}
    for k in (k for k in KS if k <= args.n):
        kept[str(k)] = float(np.mean([len(set(a[:k]) & set(b[:k])) / k
                                      for a, b in zip(ids32, ids16, strict=True)]))
    exact = queries @ database.T
    rounded = queries @ half.T
    results = {
        "machine": machine(faiss=faiss.__version__),
        "n": args.n, "dim": args.dim, "clusters": args.clusters, "rank": args.rank,
        "queries": args.queries,
        "top_k_kept": kept,
        "same_order_top10": float(np.mean([(a[:10] == b[:10]).all()
                                           for a, b in zip(ids32, ids16, strict=True)])),
        "max_abs_score_change": float(np.abs(exact - rounded).max()),
        "median_gap_between_neighbours_at_200": float(np.median(
            scores32[:, 199] - scores32[:, 200])) if k_max > 200 else None,
        "disk_gb_paper_model": {"float32": 1.44e6 * args.dim * 4 / 1e9,
                                "float16": 1.44e6 * args.dim * 2 / 1e9},
    }
    write_results(args.out, results)
    print("| K | share of the float32 top K kept in float16 |\n|---|---|")
    for k, share in kept.items():
        print(f"| {k} | {share:.4f} |")
    print(f"\nlargest inner-product change {results['max_abs_score_change']:.2e}; "
          f"top 10 in the same order for {results['same_order_top10']:.0%} of queries; "
          f"{args.n} x {args.dim}-d vectors, {args.clusters} clusters")


if __name__ == "__main__":
    main()
