"""Sharded search: shard indexes, (queries x shard) top K, the merge, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marseval.errors import MarsevalError
from marseval.retrieval import index as vi
from marseval.retrieval import metrics
from marseval.retrieval import shards as sh
from marseval.retrieval.index_params import IndexParams
from marseval.retrieval.queries import write_queries
from marseval.retrieval.search import (
    merge_rankings,
    rankings_of_index,
    read_rankings,
    search_shard,
    write_rankings,
)


def dyadic_rows(n: int, dim: int, seed: int, patterns: int = 12) -> np.ndarray:
    """Unit rows with four entries of +-0.5: every inner product is a multiple of 0.25, exact
    in any summation order, so ties are real ties (rows repeat among `patterns` patterns)."""
    rng = np.random.default_rng(seed)
    table = np.zeros((patterns, dim), np.float32)
    for row in table:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return table[rng.integers(0, patterns, n)]


def write_shards(folder: Path, x: np.ndarray, sizes: list[int],
                 extra: np.ndarray | None = None) -> list[Path]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(x)
    shards = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        ids = pd.DataFrame({"id": [f"row{j:04d}" for j in range(a, b)],
                            "label": np.arange(a, b) % 3,
                            "lon_min": np.arange(a, b, dtype=float),
                            "lat_min": np.zeros(b - a), "lon_max": np.arange(a, b) + 1.0,
                            "lat_max": np.ones(b - a)})
        extras = {"text_embeddings": extra[a:b]} if extra is not None else None
        shards.append(sh.write_shard(folder / f"shard{i}", x[a:b], ids, extra=extras))
    return shards


def sharded(folder: Path, shards: list[Path], queries: Path, k: int | None,
            params: IndexParams | None = None):
    params = params or IndexParams()
    results = []
    for i, shard in enumerate(shards):
        index_dir = None
        if params.kind != "exact":
            index_dir = folder / f"index{i}"
            vi.build_shard_index(shard, index_dir, params, use_gpu="no", recall_queries=50)
        results.append(folder / f"result{i}.npz")
        search_shard(shard, queries, results[-1], params=params, index_dir=index_dir,
                     top_k=k, use_gpu="no")
    return merge_rankings(results, shards, k)


@pytest.mark.parametrize("sizes", [[200], [17, 120, 63], [1, 40, 33, 9, 60, 2, 55]])
def test_sharded_exact_search_is_the_single_exact_index_ties_included(tmp_path, sizes):
    x, q = dyadic_rows(200, 16, 0), dyadic_rows(9, 16, 1)
    shards = write_shards(tmp_path, x, sizes)
    queries = write_queries(tmp_path / "q.npz", {"text": q, "image": q[::-1].copy()},
                            [f"c{i}" for i in range(9)])
    single = vi.build_index(shards, tmp_path / "single", use_gpu="no")
    searcher = vi.SearchIndex.load(tmp_path / "single", use_gpu="no")
    exact_scores = q.astype(np.float64) @ x.T.astype(np.float64)
    boundary_ties = 0
    for k in (1, 5, 37, 200):
        merged = sharded(tmp_path / f"k{k}", shards, queries, k)
        whole = rankings_of_index(searcher, queries, k)
        oracle = np.argsort(-exact_scores, axis=1, kind="stable")[:, :k]  # ties: lower row
        assert merged.ntotal == single["ntotal"] == 200 and merged.k == k
        for mode in ("text", "image"):
            assert np.array_equal(merged.results[mode][1], whole.results[mode][1])
            assert np.array_equal(merged.results[mode][0], whole.results[mode][0])
        assert np.array_equal(merged.results["text"][1], oracle)
        if k < 200:
            kth = np.take_along_axis(exact_scores, oracle[:, -1:], axis=1)
            boundary_ties += int((exact_scores == kth).sum() > (exact_scores > kth).sum() + k)
        assert merged.ids["id"].tolist() == [f"row{j:04d}" for j in range(200)]
    assert boundary_ties >= 3  # the tie rule decided which rows made the top K


def test_rankings_folder_round_trip(tmp_path):
    x, q = dyadic_rows(30, 8, 2), dyadic_rows(3, 8, 3)
    shards = write_shards(tmp_path, x, [10, 20])
    queries = write_queries(tmp_path / "q.npz", {"text": q}, ["a", "b", "c"])
    merged = sharded(tmp_path, shards, queries, 7)
    read = read_rankings(write_rankings(merged, tmp_path / "rankings"))
    assert read.k == 7 and read.classes == ["a", "b", "c"] and read.ntotal == 30
    assert np.array_equal(read.results["text"][1], merged.results["text"][1])
    assert read.info["shards"][1] == {"path": str(shards[1]), "n": 20, "offset": 10,
                                      "kind": "exact", "recall_at_10_vs_exact": 1.0}


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_shard_indexes_record_recall_and_merge(tmp_path, kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    shards = write_shards(tmp_path, x, [500, 700])
    queries = write_queries(tmp_path / "q.npz", {"text": x[:20]}, [str(i) for i in range(20)])
    params = IndexParams(kind=kind, nlist=8, nprobe=8, pq_m=4, refine=4)
    merged = sharded(tmp_path, shards, queries, 10, params)
    info = json.loads((tmp_path / "index1/index.json").read_text())
    assert info["kind"] == kind and info["database"]["n"] == 700
    assert 0 <= info["recall_at_10_vs_exact"] <= 1 and info["recall_queries"] == 50
    assert info["requested"] == {"kind": kind, **params.used()}
    assert merged.info["kinds"] == [kind] and merged.info["min_recall_at_10_vs_exact"] == min(
        json.loads((tmp_path / f"index{i}/index.json").read_text())["recall_at_10_vs_exact"]
        for i in (0, 1))
    # every row is its own best match; all lists probed (nprobe = nlist): IVF is exact
    assert (merged.results["text"][1][:, 0] == np.arange(20)).all()
    truth = np.argsort(-(x[:20] @ x.T), axis=1, kind="stable")[:, :10]
    recall = vi.recall_at_k(merged.results["text"][1], truth, 10)
    assert recall == 1.0 if kind == "ivf" else recall >= 0.8


def test_auto_picks_exact_within_the_memory_budget_and_ivfpq_beyond():
    params = IndexParams(kind="auto", auto_exact_max_mb=1)
    assert params.resolve(1000, 256) == "exact"  # 1,024,000 bytes <= 1 MiB
    assert params.resolve(1100, 256) == "ivfpq"
    assert IndexParams(kind="hnsw").resolve(10**9, 1024) == "hnsw"


def test_index_settings_give_distinct_tags():
    assert IndexParams().tag() == "exact"
    assert IndexParams(nprobe=99).tag() == "exact"  # unused by exact
    ivf = IndexParams(kind="ivf")
    assert ivf.tag().startswith("ivf-") and ivf.tag() != IndexParams(kind="ivf", nprobe=32).tag()
    assert IndexParams(kind="hnsw").tag() == IndexParams(kind="hnsw", nprobe=32).tag()


def test_paired_metrics_of_parts_equal_the_whole(tmp_path):
    images = dyadic_rows(50, 8, 5, patterns=6)  # repeated rows: tied candidates
    texts = dyadic_rows(50, 8, 6, patterns=6)
    whole = metrics.paired_metrics(images, texts)
    for sizes in ([50], [3, 30, 17], [1, 1, 48]):
        bounds = np.cumsum([0, *sizes])
        parts = [(images[a:b], texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:],
                                                          strict=True)]
        assert metrics.paired_metrics_of_parts(parts) == whole
    similarity = images.astype(np.float64) @ texts.T.astype(np.float64)
    ranks = metrics.pair_ranks(similarity)  # the plain (N, N) oracle
    assert whole["i2t_mrr"] == pytest.approx(np.mean(1 / ranks))


# ---------------------------------------------------------------- bad input


def test_shards_of_different_dimension_or_dtype_are_refused(tmp_path):
    q = write_queries(tmp_path / "q.npz", {"text": dyadic_rows(2, 8, 0)}, ["a", "b"])
    a = write_shards(tmp_path / "a", dyadic_rows(5, 8, 1), [5])[0]
    b = sh.write_shard(tmp_path / "b", dyadic_rows(5, 16, 1), pd.DataFrame(
        {"id": [f"b{i}" for i in range(5)]}))
    c = sh.write_shard(tmp_path / "c", dyadic_rows(5, 8, 1), pd.DataFrame(
        {"id": [f"c{i}" for i in range(5)]}), dtype="float16")
    ra = tmp_path / "ra.npz"
    search_shard(a, q, ra, params=IndexParams(), use_gpu="no")
    with pytest.raises(sh.IndexMismatchError,
                       match=r"shard .*b has dimension 16 but .*a/shard0 has 8"):
        merge_rankings([ra, ra], [a, b], 3)
    with pytest.raises(sh.IndexMismatchError, match=r"shard .*c has dtype 'float16' but "
                                                    r".*a/shard0 has 'float32'"):
        merge_rankings([ra, ra], [a, c], 3)
    with pytest.raises(sh.IndexMismatchError, match=r"shard .*c has dtype 'float16' but "
                                                    r".*a/shard0 has 'float32'"):
        vi.build_index([a, c], tmp_path / "merged", use_gpu="no")


def test_a_missing_shard_or_result_is_named(tmp_path):
    q = write_queries(tmp_path / "q.npz", {"text": dyadic_rows(2, 8, 0)}, ["a", "b"])
    shards = write_shards(tmp_path, dyadic_rows(10, 8, 1), [4, 6])
    results = [tmp_path / "r0.npz", tmp_path / "r1.npz"]
    for shard, result in zip(shards, results, strict=True):
        search_shard(shard, q, result, params=IndexParams(), use_gpu="no")
    with pytest.raises(MarsevalError, match="2 search results for 3 shards"):
        merge_rankings(results, [*shards, tmp_path / "shard9"], 3)
    with pytest.raises(MarsevalError, match=r"shard9/shard\.json is missing"):
        merge_rankings(results, [shards[0], tmp_path / "shard9"], 3)
    with pytest.raises(MarsevalError, match=r"r7\.npz: not a search result file"):
        merge_rankings([results[0], tmp_path / "r7.npz"], shards, 3)
    with pytest.raises(sh.IndexMismatchError, match=r"r1\.npz is of a shard of 6 .*shard0 "
                                                    r"holds 4"):
        merge_rankings([results[1], results[0]], shards, 3)  # results out of order
    with pytest.raises(MarsevalError, match=r"shard9/shard\.json is missing"):
        search_shard(tmp_path / "shard9", q, tmp_path / "r9.npz", params=IndexParams())
    assert not (tmp_path / "r9.npz").exists()


def test_an_index_built_with_other_settings_is_not_reused(tmp_path):
    shard = write_shards(tmp_path, dyadic_rows(400, 8, 1, patterns=300), [400])[0]
    q = write_queries(tmp_path / "q.npz", {"text": dyadic_rows(2, 8, 0)}, ["a", "b"])
    built = IndexParams(kind="ivf", nlist=4, nprobe=2)
    vi.build_shard_index(shard, tmp_path / "index", built, use_gpu="no")
    search_shard(shard, q, tmp_path / "ok.npz", params=built, index_dir=tmp_path / "index",
                 use_gpu="no")
    with pytest.raises(sh.IndexMismatchError, match=r"index .*index was built with .*'nprobe': "
                                                    r"2.*asks for .*'nprobe': 4"):
        search_shard(shard, q, tmp_path / "stale.npz", index_dir=tmp_path / "index",
                     params=IndexParams(kind="ivf", nlist=4, nprobe=4), use_gpu="no")
    assert not (tmp_path / "stale.npz").exists()
    other = write_shards(tmp_path / "other", dyadic_rows(300, 8, 2), [300])[0]
    with pytest.raises(MarsevalError, match=r"does not fit database .*other/shard0: the index "
                                            r"holds 400"):
        search_shard(other, q, tmp_path / "x.npz", index_dir=tmp_path / "index", params=built,
                     use_gpu="no")


def test_rankings_shorter_than_the_evaluation_needs_are_refused(tmp_path):
    from marseval.retrieval.evaluate import _rankings

    q = write_queries(tmp_path / "q.npz", {"text": dyadic_rows(2, 8, 0)}, ["a", "b"])
    shards = write_shards(tmp_path, dyadic_rows(10, 8, 1), [4, 6])
    rankings = write_rankings(sharded(tmp_path, shards, q, 3), tmp_path / "rankings")
    with pytest.raises(MarsevalError, match=r"top 3 of each query; geolocalization evaluation "
                                            r"needs 5"):
        _rankings(None, rankings, None, 5, "m", "geolocalization")
    assert _rankings(None, rankings, None, 3, "m", "geolocalization").k == 3


def test_an_exact_search_goes_deeper_only_while_the_kth_score_is_tied(tmp_path, monkeypatch):
    depths = []
    original = vi.SearchIndex._search

    def spy(self, queries, k):
        depths.append(k)
        return original(self, queries, k)

    monkeypatch.setattr(vi.SearchIndex, "_search", spy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    untied = write_shards(tmp_path / "untied", x, [500])
    vi.SearchIndex.from_vectors(untied[0], {"kind": "exact", "dim": 16, "ntotal": 500},
                                "no").search(x[:3], 10)
    assert depths == [11]  # no tie: one row deeper than asked
    depths.clear()
    rows, query = dyadic_rows(500, 16, 0, patterns=4), dyadic_rows(1, 16, 0, patterns=4)
    tied = write_shards(tmp_path / "tied", rows, [500])
    found = vi.SearchIndex.from_vectors(tied[0], {"kind": "exact", "dim": 16, "ntotal": 500},
                                        "no").search(query, 10)
    assert depths[0] == 11 and len(depths) > 1  # ~125 copies of each row tie: deeper
    oracle = np.argsort(-(query @ rows.T)[0], kind="stable")[:10]  # the lowest tied rows
    assert found[1][0].tolist() == oracle.tolist()


def test_changed_index_settings_name_new_index_folders():
    """An index built with other settings is never found again: its folder is the settings'."""
    from types import SimpleNamespace

    from marseval.workflow import search_inputs

    def config(**retrieval):
        return {"results": "r", "retrieval": {"index": "ivf", "nlist": None, "nprobe": 16,
                                              **retrieval}}

    wildcards = SimpleNamespace(dataset="mr-landforms", model="m", shard="3")
    first = search_inputs(config())(wildcards)["index"]
    assert first.startswith("r/retrieval/shard_index/mr-landforms/m/ivf-")
    assert first.endswith("/shard3")
    assert search_inputs(config(nprobe=64))(wildcards)["index"] != first
    assert search_inputs(config(hnsw_m=8))(wildcards)["index"] == first  # unused by ivf
    assert "index" not in search_inputs(config(index="exact"))(wildcards)


def test_an_empty_shard_contributes_nothing(tmp_path):
    x, q = dyadic_rows(60, 8, 3), dyadic_rows(4, 8, 4)
    queries = write_queries(tmp_path / "q.npz", {"text": q}, list("abcd"))
    with_empty = sharded(tmp_path / "a", write_shards(tmp_path / "a", x, [0, 25, 0, 35]),
                         queries, 12)
    without = sharded(tmp_path / "b", write_shards(tmp_path / "b", x, [25, 35]), queries, 12)
    assert np.array_equal(with_empty.results["text"][1], without.results["text"][1])
    assert [s["offset"] for s in with_empty.info["shards"]] == [0, 0, 25, 25]
    # an approximate kind: the empty shards get an index.json saying so, and search nothing
    params = IndexParams(kind="hnsw")
    hnsw = sharded(tmp_path / "c", write_shards(tmp_path / "c", x, [0, 60]), queries, 12, params)
    assert json.loads((tmp_path / "c/index0/index.json").read_text())["ntotal"] == 0
    assert hnsw.info["kinds"] == ["exact", "hnsw"] and hnsw.ntotal == 60
