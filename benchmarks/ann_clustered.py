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
- ivfpq: IndexIVFPQ on the ivf shard's trained coarse centroids (their training seconds are
  counted in its build too), `--pq-bytes` 8-bit codes, by residual;
  also with exact re-ranking of `--refine` x K PQ candidates (IndexRefineFlat, keeps the vectors).
recall@K = |approximate top K ∩ exact top K| / K, mean over queries, for K in `--ks`; an index
that returns fewer than K results (IVF returns at most nprobe x mean list size; K is clamped to
the shard size) has the missing ones counted as misses. Every kind is timed on one batch of all
`--queries` queries per shard search (faiss's flat search runs as BLAS matrix products and is
several times faster per query in batches of 1,000 than of 200, so exact search is only timed
fairly on large batches); queries/s is the median of `--repeats` searches at the first K and one
search at each other K. For K >= `--large-k` the approximate kinds are searched with the first
`--large-k-queries` queries only (their cost is per query: HNSW and IVF scan per query), exact
still with all. HNSW settings that coincide at a K (efSearch raised to K) are measured once.
Memory per job: besides the serialized bytes, the peak resident memory a shard's build adds
(VmHWM after the build minus VmRSS before, the peak reset through /proc/self/clear_refs; Linux
only, approximate since freed heap may be reused) and the same for each search.

Run: nice python benchmarks/ann_clustered.py [--n 200000] [--dim 512] [--shards 1 4]
Writes benchmarks/results/ann_clustered.json and prints a Markdown table; `--show A.json B.json`
prints one table of the rows of earlier results files instead (the README's: the default run
and `--shards 16 --out benchmarks/results/ann_clustered_s16.json`; at 1 M see the README).
"""

from __future__ import annotations

import argparse
import hashlib
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

KINDS = ("exact", "ivf", "ivfpq", "hnsw")
IP = faiss.METRIC_INNER_PRODUCT


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


def tiny_clip_tiles(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tiny-clip embeddings of `n` crops of a synthetic global mosaic, and of `queries` crops.

    The database: 32-px crops (tiny-clip's input size) on a 16-px grid, row by row, of a mosaic
    drawn by the synthetic geo-localization generator (its five landform motifs, 50 sites
    each); the queries: crops at random positions of the same mosaic, so each overlaps
    database tiles, as a geo-localization query does.
    """
    import torch
    from PIL import Image

    from marseval.data.synthetic import scenes
    from marseval.data.synthetic.generate import GEO_LANDFORM_MOTIFS
    from marseval.retrieval.models import load_model

    torch.set_num_threads(1)  # the benchmark's one core
    size, stride = 32, 16
    height = stride * (math.ceil(math.sqrt(n / 2)) + 2)
    rng = np.random.default_rng(seed)
    mosaic, _ = scenes.global_mosaic(list(GEO_LANDFORM_MOTIFS.values()), rng, 2 * height,
                                     height, n_sites=50, bands=1)
    grid = [(r, c) for r in range(0, height - size + 1, stride)
            for c in range(0, 2 * height - size + 1, stride)][:n]
    spots = [(int(r), int(c)) for r, c in zip(rng.integers(0, height - size, queries),
                                              rng.integers(0, 2 * height - size, queries),
                                              strict=True)]
    model = load_model("tiny-clip")

    def embed(corners: list[tuple[int, int]]) -> np.ndarray:
        parts = [model.embed_images([Image.fromarray(mosaic[r:r + size, c:c + size])
                                     for r, c in corners[start:start + 4096]])
                 for start in range(0, len(corners), 4096)]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return embed(grid), embed(spots)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def with_peak(call: Callable[[], Any]) -> tuple[float, Any, int | None]:
    """Seconds, result, and the peak resident bytes the call added (None without Linux /proc)."""
    try:  # writing 5 resets VmHWM (peak RSS) to the current RSS, so the peak is this call's
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
    except OSError:
        before = None
    took, result = seconds(call)
    return took, result, None if before is None else max(0, _status_kb("VmHWM") - before) * 1024


def merge_into(running: tuple[np.ndarray, np.ndarray] | None, scores: np.ndarray,
               ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of a running top k and one shard's (scores, global ids), unsorted."""
    if running is not None:
        scores = np.concatenate([running[0], scores], axis=1)
        ids = np.concatenate([running[1], ids], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    if scores.shape[1] > k:  # a partition, not a sort: the merge of 16 x 20,000 stays cheap
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    return scores, ids


def sort_by_score(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ids ordered by score, ties by global id, missing (-1) last."""
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=-1)
    return np.take_along_axis(ids, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found top k ∩ exact top k| / k; results an index did not return count as misses."""
    hits = [np.intersect1d(f[:k][f[:k] >= 0], t[:k], assume_unique=True).size
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


class Sharded:
    """S indexes of one kind over contiguous shards of the database."""

    def __init__(self, x: np.ndarray, shards: int,
                 build: Callable[[np.ndarray, int], Any]) -> None:
        bounds = np.linspace(0, len(x), shards + 1).astype(int)
        self.offsets = [int(b) for b in bounds[:-1]]
        self.sizes = [int(hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        self.indexes, self.build_s, self.build_peak = [], 0.0, 0
        for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            took, index, peak = with_peak(lambda lo=lo, hi=hi, s=shard: build(x[lo:hi], s))
            self.build_s += took
            self.build_peak = None if peak is None else max(self.build_peak or 0, peak)
            self.indexes.append(index)
        sizes = [int(faiss.serialize_index(ix[0] if isinstance(ix, tuple) else ix).size)
                 for ix in self.indexes]
        self.bytes_total, self.bytes_max_shard = sum(sizes), max(sizes)

    def search(self, queries: np.ndarray, k: int, setup: Callable[[Any, int], Any]) -> np.ndarray:
        """Global top-k ids, shards searched one after the other and merged as they come."""
        running = None
        for index, offset, size in zip(self.indexes, self.offsets, self.sizes, strict=True):
            scores, ids = setup(index, k).search(queries, min(k, size))
            if len(self.indexes) == 1:
                return ids  # faiss's own order; one index needs no merge
            running = merge_into(running, scores, np.where(ids >= 0, ids + offset, -1), k)
        return sort_by_score(*running)


def measure(sharded: Sharded, queries: np.ndarray, truth: np.ndarray,
            setup: Callable[[Any, int], Any], args, all_queries: bool = False,
            effective: Callable[[int], Any] | None = None,
            memo: dict | None = None) -> dict[str, Any]:
    """Per K: recall, queries/s, results returned, peak memory of the search."""
    out: dict[str, Any] = {}
    for k in args.ks:
        key = None if effective is None else effective(k)
        if memo is not None and key in memo:  # e.g. efSearch 64 and 128 both raised to K
            out[f"k{k}"] = {**memo[key], "measured_with": str(key)}
            continue
        few = not all_queries and k >= args.large_k
        q = queries[:args.large_k_queries] if few else queries
        runs, found, peak = [], None, None
        for _ in range(args.repeats if k == args.ks[0] else 1):
            took, found, extra = with_peak(lambda k=k, q=q: sharded.search(q, k, setup))
            runs.append(took)
            peak = extra if peak is None or extra is None else max(peak, extra)
        out[f"k{k}"] = {"queries": len(q), "queries_per_s": len(q) / statistics.median(runs),
                        "runs_s": runs, "recall": recall(found, truth[:len(q)], k),
                        "mean_returned": float(np.mean((found[:, :k] >= 0).sum(axis=1))),
                        "search_peak_rss_bytes": peak}
        if memo is not None:
            memo[key] = out[f"k{k}"]
    return out


def nlist_for(n: int) -> int:
    return max(1, int(round(4 * math.sqrt(n))))


def train_sample(xs: np.ndarray, nlist: int) -> np.ndarray:
    return xs[np.random.default_rng(0).permutation(len(xs))[:64 * nlist]]


def make_build_ivf(coarse: dict[int, tuple[np.ndarray, float]]) -> Callable[..., Any]:
    """IVF-Flat builds that keep each shard's coarse centroids (and their seconds) for IVF-PQ."""
    def build(xs: np.ndarray, shard: int) -> faiss.Index:
        nlist = nlist_for(len(xs))
        quantizer = faiss.IndexFlatIP(xs.shape[1])
        index = faiss.IndexIVFFlat(quantizer, xs.shape[1], nlist, IP)
        index.cp.spherical, index.cp.niter, index.cp.seed = True, 10, 0
        took, _ = seconds(lambda: index.train(train_sample(xs, nlist)))
        coarse[shard] = (quantizer.reconstruct_n(0, nlist), took)
        index.add(xs)
        return index
    return build


def make_build_ivfpq(pq_bytes: int, refine: int,
                     coarse: dict[int, tuple[np.ndarray, float]]) -> Callable[..., Any]:
    def build(xs: np.ndarray, shard: int) -> tuple[faiss.Index, faiss.Index]:
        centroids = coarse[shard][0]
        quantizer = faiss.IndexFlatIP(xs.shape[1])
        quantizer.add(centroids)  # trained, ntotal == nlist: train() fits only the PQ codebooks
        ivfpq = faiss.IndexIVFPQ(quantizer, xs.shape[1], len(centroids), pq_bytes, 8, IP)
        ivfpq.train(train_sample(xs, len(centroids)))
        refined = faiss.IndexRefineFlat(ivfpq)
        refined.k_factor = refine
        refined.add(xs)
        return refined, ivfpq
    return build


def build_hnsw(xs: np.ndarray, shard: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(xs.shape[1], 32, IP)
    index.add(xs)
    return index


def build_flat(xs: np.ndarray, shard: int) -> faiss.Index:
    index = faiss.IndexFlatIP(xs.shape[1])
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
    """Rows of every kind in `args.kinds` and setting with the database in `shards` shards."""
    rows = []

    def run(kind: str, sharded: Sharded, setting: str, setup, **how) -> None:
        row = {"kind": kind, "shards": shards, "setting": setting, "build_s": sharded.build_s,
               "bytes_total": sharded.bytes_total, "bytes_max_shard": sharded.bytes_max_shard,
               "build_peak_rss_bytes_max_shard": sharded.build_peak,
               **measure(sharded, queries, truth, setup, args, **how)}
        rows.append(row)
        print(f"  S={shards} {kind} {setting}: build {row['build_s']:.1f} s, "
              + ", ".join(f"R@{k} {row[f'k{k}']['recall']:.3f} "
                          f"{row[f'k{k}']['queries_per_s']:,.0f} q/s" for k in args.ks),
              flush=True)

    if "exact" in args.kinds:
        run("exact", Sharded(x, shards, build_flat), "", lambda ix, k: ix, all_queries=True)
    nlist = nlist_for(len(x) // shards)
    coarse: dict[int, tuple[np.ndarray, float]] = {}
    if "ivf" in args.kinds or "ivfpq" in args.kinds:  # IVF-PQ reuses IVF's coarse centroids
        ivf = Sharded(x, shards, make_build_ivf(coarse))
        for nprobe in args.nprobe:
            run("ivf", ivf, f"nlist {nlist}, nprobe {nprobe}", set_nprobe(nprobe))
        del ivf
    if "ivfpq" in args.kinds:
        bench_ivfpq(x, shards, nlist, coarse, run, rows, args)
    if "hnsw" in args.kinds:
        hnsw, memo = Sharded(x, shards, build_hnsw), {}
        for ef in args.ef_search:
            run("hnsw", hnsw, f"M 32, efSearch {ef}", set_ef(ef), memo=memo,
                effective=lambda k, ef=ef: f"efSearch {max(ef, k)}, k {k}")
    return rows


def bench_ivfpq(x: np.ndarray, shards: int, nlist: int, coarse: dict, run: Callable[..., None],
                rows: list[dict[str, Any]], args) -> None:
    ivfpq = Sharded(x, shards, make_build_ivfpq(args.pq_bytes, args.refine, coarse))
    ivfpq.build_s += sum(took for _, took in coarse.values())  # the shared coarse training
    pq_only = [int(faiss.serialize_index(p[1]).size) for p in ivfpq.indexes]
    for refined in (False, True):
        for nprobe in args.nprobe:
            name = f"PQ{args.pq_bytes}{f' + refine x{args.refine}' if refined else ''}"
            run("ivfpq", ivfpq, f"{name}, nlist {nlist}, nprobe {nprobe}",
                set_ivfpq(nprobe, refined))
            if not refined:  # the codes alone, without the stored vectors of the refine step
                rows[-1]["bytes_total"], rows[-1]["bytes_max_shard"] = sum(pq_only), max(pq_only)


def exact_truth(x: np.ndarray, queries: np.ndarray, k: int, cache: Path | None,
                args) -> np.ndarray:
    """Exact top-k ids, cached on disk by the data's parameters (runs differing only in S)."""
    params = [args.n, args.dim, args.clusters, args.intrinsic, args.spread, args.noise,
              args.queries, k] + ([] if args.data == "mixture" else [args.data])
    key = hashlib.sha1(json.dumps(params).encode()).hexdigest()[:16]
    path = None if cache is None else cache / f"ann_truth_{key}.npy"
    if path is not None and path.exists():
        return np.load(path)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, truth = index.search(queries, k)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, truth)
    return truth


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("mixture", "tiny-clip"), default="mixture")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--intrinsic", type=int, default=48)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--queries", type=int, default=1000,
                        help="queries, searched as one batch (>= 1000 times exact search fairly)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 2000, 20000])
    parser.add_argument("--large-k", type=int, default=20000)
    parser.add_argument("--large-k-queries", type=int, default=100)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--pq-bytes", type=int, default=64)
    parser.add_argument("--refine", type=int, default=4)
    parser.add_argument("--no-hnsw", dest="hnsw", action="store_false")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--truth-cache", type=Path, help="folder for the exact top-K ids")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ann_clustered.json")
    parser.add_argument("--show", type=Path, nargs="+", help="only print these results' rows")
    args = parser.parse_args()
    if not args.hnsw:
        args.kinds = [k for k in args.kinds if k != "hnsw"]
    return args


def main() -> None:
    args = parse_args()
    if args.show:
        results = [json.loads(path.read_text()) for path in args.show]
        print_table({**results[0], "rows": [r for res in results for r in res["rows"]]})
        return
    faiss.omp_set_num_threads(args.threads)

    started = time.perf_counter()
    if args.data == "tiny-clip":
        data_s, (x, queries) = seconds(lambda: tiny_clip_tiles(args.n, args.queries))
        args.dim = x.shape[1]
    else:
        mixture = Mixture(args)
        data_s, x = seconds(lambda: mixture.sample(args.n, 0))
        queries = mixture.sample(args.queries, 1)
    truth = exact_truth(x, queries, max(args.ks), args.truth_cache, args)
    print(f"data {data_s:.1f} s, truth {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for shards in args.shards:
        rows += bench_shards(x, queries, truth, shards, args)
    result = {
        "n": args.n, "dim": args.dim, "queries": args.queries, "time_batch": args.queries,
        "ks": args.ks, "large_k": args.large_k, "large_k_queries": args.large_k_queries,
        "repeats": args.repeats, "shards": args.shards, "kinds": args.kinds,
        "data": data_description(args),
        "make_data_s": data_s, "rows": rows, "total_s": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(numpy=np.__version__, faiss=faiss.__version__,
                           faiss_threads=faiss.omp_get_max_threads()),
    }
    write_results(args.out, result)
    print_table(result)


def data_description(args) -> dict[str, Any]:
    if args.data == "tiny-clip":
        return {"model": "tiny-clip (random 2-layer CLIP, seed 0) image embeddings of 32-px "
                         "crops of a synthetic geo-localization mosaic: database on a 16-px "
                         "grid, queries at random positions", "mosaic_sites_per_landform": 50}
    return {"model": "Gaussian mixture in a low intrinsic dimension, random orthonormal map "
                     "to dim, isotropic noise, L2-normalised",
            "clusters": args.clusters, "intrinsic_dim": args.intrinsic,
            "within_cluster_sd": args.spread, "noise_norm": args.noise,
            "weights": "Dirichlet(1)"}


def break_even(build_s: float, qps: float, exact_qps: float) -> str:
    """Queries after which building the index beats exact search (build / time saved a query)."""
    saved = 1 / exact_qps - 1 / qps
    return f"{build_s / saved:,.0f}" if saved > 0 else "never"


def rate(qps: float) -> str:
    return f"{qps:,.0f}" if qps >= 10 else f"{qps:.1f}"


def print_table(result: dict[str, Any]) -> None:
    ks, rows = result["ks"], result["rows"]
    exact = [r for r in rows if r["kind"] == "exact"]  # the fewest shards of the run
    ref = min(exact, key=lambda r: r["shards"]) if exact else None
    print(f"\n{result['n']:,} x {result['dim']}-d, {result['queries']:,} queries a batch; "
          f"total {result['total_s']:.0f} s\n")
    print("| index | S | build s | MB (largest shard) | build peak MB a shard | queries/s @"
          f"{ks[0]} | vs exact | break-even queries | "
          + " | ".join(f"recall@{k}{'' if k == ks[0] else ' (q/s)'}" for k in ks) + " |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(ks))
    for r in rows:
        qps = r[f"k{ks[0]}"]["queries_per_s"]
        exact_qps = ref[f"k{ks[0]}"]["queries_per_s"] if ref else float("nan")
        name = r["kind"] + (f", {r['setting']}" if r["setting"] else "")
        peak = r.get("build_peak_rss_bytes_max_shard")
        cells = [f"{r[f'k{k}']['recall']:.3f}" + ("" if k == ks[0] else
                 f" ({rate(r[f'k{k}']['queries_per_s'])})") for k in ks]
        print(f"| {name} | {r['shards']} | {r['build_s']:.1f} | {r['bytes_total'] / 1e6:,.0f} "
              f"({r['bytes_max_shard'] / 1e6:,.0f}) | "
              f"{'-' if peak is None else f'{peak / 1e6:,.0f}'} | {qps:,.0f} | "
              f"{qps / exact_qps:.1f} x | "
              f"{'-' if r['kind'] == 'exact' else break_even(r['build_s'], qps, exact_qps)} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
