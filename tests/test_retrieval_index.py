"""Embedding shards and the FAISS index: merging, exactness, approximate recall, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marseval.errors import MarsevalError
from marseval.retrieval import index as vi
from marseval.retrieval import shards as sh


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def id_frame(start: int, n: int) -> pd.DataFrame:
    rows = np.arange(start, start + n)
    return pd.DataFrame({"id": [f"tile{i:05d}" for i in rows],
                         "lon_min": rows.astype(float), "lat_min": -rows.astype(float)})


@pytest.fixture
def three_shards(tmp_path: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """300 vectors in shards of 120, 0 and 180 rows, with a paired `text_embeddings` extra."""
    x, text = unit_rows(300, 32, 0), unit_rows(300, 16, 1)
    bounds = [(0, 120), (120, 120), (120, 300)]
    dirs = [sh.write_shard(tmp_path / f"shard{i}", x[a:b], id_frame(a, b - a),
                           extra={"text_embeddings": text[a:b]})
            for i, (a, b) in enumerate(bounds)]
    return dirs, x, text


def test_merged_exact_index_matches_whole_matrix_and_brute_force(tmp_path, three_shards):
    dirs, x, _ = three_shards
    queries = unit_rows(20, 32, 7)
    merged = vi.build_index(dirs, tmp_path / "merged", use_gpu="no")
    whole = sh.write_shard(tmp_path / "whole_shard", x, id_frame(0, 300))
    vi.build_index([whole], tmp_path / "whole", use_gpu="no")
    a = vi.SearchIndex.load(tmp_path / "merged", use_gpu="no")
    b = vi.SearchIndex.load(tmp_path / "whole", use_gpu="no")
    scores_a, pos_a = a.search(queries, 10)
    scores_b, pos_b = b.search(queries, 10)
    oracle = queries @ x.T
    order = np.argsort(-oracle, axis=1)[:, :10]
    assert merged["ntotal"] == 300 and merged["kind"] == "exact"
    assert [s["n"] for s in merged["shards"]] == [120, 0, 180]
    np.testing.assert_array_equal(pos_a, pos_b)
    np.testing.assert_array_equal(pos_a, order)
    np.testing.assert_allclose(scores_a, np.take_along_axis(oracle, order, 1), atol=1e-5)
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-6)
    assert scores_a.dtype == np.float32 and pos_a.dtype == np.int64
    assert a.search(queries, 1000)[1].shape == (20, 300)  # k clamped to ntotal


def test_ids_and_extras_concatenate_in_shard_order(tmp_path, three_shards):
    dirs, x, text = three_shards
    vi.build_index([dirs[2], dirs[1], dirs[0]], tmp_path / "reversed", use_gpu="no")
    index = vi.SearchIndex.load(tmp_path / "reversed", use_gpu="no")
    order = np.r_[120:300, 0:120]
    assert list(index.ids["id"]) == [f"tile{i:05d}" for i in order]
    assert list(index.ids.columns) == ["id", "lon_min", "lat_min"]
    np.testing.assert_array_equal(index.embeddings(), x[order])
    np.testing.assert_array_equal(index.extra("text_embeddings"), text[order])
    with pytest.raises(MarsevalError, match="no extra 'captions'"):
        index.extra("captions")


def test_float16_shard_round_trips(tmp_path):
    x = unit_rows(50, 24, 3)
    sh.write_shard(tmp_path / "half", x, id_frame(0, 50), dtype="float16")
    assert np.load(tmp_path / "half/embeddings.npy").dtype == np.float16
    embeddings, ids, extras = sh.read_shard(tmp_path / "half")
    assert embeddings.dtype == np.float32 and extras == {}
    np.testing.assert_allclose(embeddings, x, atol=1e-3)
    pd.testing.assert_frame_equal(ids, id_frame(0, 50).astype({"id": str}))
    assert json.loads((tmp_path / "half/shard.json").read_text())["dtype"] == "float16"


def test_empty_shard_records_its_dim(tmp_path):
    sh.write_shard(tmp_path / "empty", np.zeros((0, 8), np.float32), id_frame(0, 0))
    embeddings, ids, _ = sh.read_shard(tmp_path / "empty")
    assert embeddings.shape == (0, 8) and len(ids) == 0
    assert json.loads((tmp_path / "empty/shard.json").read_text())["dim"] == 8
    with pytest.raises(MarsevalError, match="hold no embeddings.*empty"):
        vi.build_index([tmp_path / "empty"], tmp_path / "index", use_gpu="no")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_record_recall(tmp_path, kind):
    x = unit_rows(1600, 16, 5)
    shard = sh.write_shard(tmp_path / "shard", x, id_frame(0, 1600))
    info = vi.build_index([shard], tmp_path / kind, kind=kind, use_gpu="no",
                          recall_queries=200)
    assert 0.0 <= info["recall_at_10_vs_exact"] <= 1.0 and info["recall_queries"] == 200
    saved = json.loads((tmp_path / kind / "index.json").read_text())
    assert saved == info and saved["device"] == "cpu"
    index = vi.SearchIndex.load(tmp_path / kind, use_gpu="no")
    scores, positions = index.search(x[:5], 3)
    assert positions.shape == (5, 3) and (positions[:, 0] == np.arange(5)).all()


def test_ivf_probing_every_list_is_exact(tmp_path):
    x = unit_rows(800, 16, 6)
    shard = sh.write_shard(tmp_path / "shard", x, id_frame(0, 800))
    info = vi.build_index([shard], tmp_path / "ivf", kind="ivf", nlist=8, nprobe=8,
                          use_gpu="no", recall_queries=300)
    assert info["params"]["nlist"] == 8 and info["params"]["nprobe"] == 8
    assert info["recall_at_10_vs_exact"] == 1.0
    default = vi.build_index([shard], tmp_path / "ivf_default", kind="ivf", use_gpu="no")
    assert default["params"]["nlist"] == vi.default_nlist(800) == 20  # 800 // 39


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_build_is_deterministic(tmp_path, kind):
    shard = sh.write_shard(tmp_path / "shard", unit_rows(3000, 16, 8), id_frame(0, 3000))
    for name in ("a", "b"):
        vi.build_index([shard], tmp_path / name, kind=kind, use_gpu="no", seed=3)
    assert (tmp_path / "a/index.faiss").read_bytes() == (tmp_path / "b/index.faiss").read_bytes()


def test_dim_mismatch_between_shards_names_the_shard(tmp_path):
    a = sh.write_shard(tmp_path / "a", unit_rows(5, 8, 0), id_frame(0, 5))
    b = sh.write_shard(tmp_path / "b", unit_rows(5, 12, 0), id_frame(5, 5))
    with pytest.raises(sh.IndexMismatchError, match=r"shard .*b holds 12-d .* holds 8-d"):
        vi.build_index([a, b], tmp_path / "index", use_gpu="no")


def test_duplicate_id_across_shards_is_named(tmp_path):
    a = sh.write_shard(tmp_path / "a", unit_rows(5, 8, 0), id_frame(0, 5))
    b = sh.write_shard(tmp_path / "b", unit_rows(5, 8, 1), id_frame(4, 5))
    with pytest.raises(sh.IndexMismatchError, match=r"id 'tile00004' is in shard .*a .*b"):
        vi.build_index([a, b], tmp_path / "index", use_gpu="no")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_query_of_wrong_dim_names_both_dims(tmp_path):
    shard = sh.write_shard(tmp_path / "shard", unit_rows(5, 8, 0), id_frame(0, 5))
    vi.build_index([shard], tmp_path / "index", use_gpu="no")
    index = vi.SearchIndex.load(tmp_path / "index", use_gpu="no")
    with pytest.raises(sh.IndexMismatchError, match=r"index .*index built from 8-d embeddings; "
                                                    r"queries are 12-d"):
        index.search(unit_rows(2, 12, 1), 3)


def test_write_shard_rejects_bad_input(tmp_path):
    x = unit_rows(4, 8, 0)
    with pytest.raises(MarsevalError, match="not L2-normalised.*row 0"):
        sh.write_shard(tmp_path / "s", x * 2, id_frame(0, 4))
    with pytest.raises(MarsevalError, match="NaN"):
        sh.write_shard(tmp_path / "s", np.full((4, 8), np.nan, np.float32), id_frame(0, 4))
    with pytest.raises(MarsevalError, match="3 ids for 4 embedding rows"):
        sh.write_shard(tmp_path / "s", x, id_frame(0, 3))
    with pytest.raises(MarsevalError, match="2-D"):
        sh.write_shard(tmp_path / "s", x[0], id_frame(0, 1))
    with pytest.raises(MarsevalError, match="duplicate id"):
        sh.write_shard(tmp_path / "s", x, pd.DataFrame({"id": ["a", "b", "a", "c"]}))
    assert not list(tmp_path.iterdir())


def test_read_shard_names_the_missing_file(tmp_path):
    shard = sh.write_shard(tmp_path / "s", unit_rows(4, 8, 0), id_frame(0, 4))
    (shard / "ids.parquet").unlink()
    with pytest.raises(MarsevalError, match=r"s/ids\.parquet is missing"):
        sh.read_shard(shard)


def test_failed_build_leaves_only_the_finished_folder(tmp_path, monkeypatch):
    shard = sh.write_shard(tmp_path / "shards/s", unit_rows(30, 8, 0), id_frame(0, 30))
    out = tmp_path / "indexes/index"
    vi.build_index([shard], out, use_gpu="no")
    before = (out / "index.json").read_bytes()

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(vi.faiss, "write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        vi.build_index([shard], out, kind="hnsw", use_gpu="no")
    assert [p.name for p in out.parent.iterdir()] == ["index"]
    assert (out / "index.json").read_bytes() == before


def test_use_gpu_yes_without_gpu_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(vi, "gpu_available", lambda: False)
    shard = sh.write_shard(tmp_path / "s", unit_rows(4, 8, 0), id_frame(0, 4))
    with pytest.raises(MarsevalError, match="use_gpu is 'yes'"):
        vi.build_index([shard], tmp_path / "index", use_gpu="yes")


def test_recall_at_k_hand_example():
    approximate = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[3, 2, 9], [7, 8, 9]])
    assert vi.recall_at_k(approximate, exact, k=3) == pytest.approx((2 / 3 + 0) / 2)
    assert vi.recall_at_k(approximate, approximate, k=2) == 1.0
    assert vi.recall_at_k(np.array([[0, -1]]), np.array([[0, 1]]), k=2) == 0.5
