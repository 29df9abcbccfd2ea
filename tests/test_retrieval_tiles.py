"""Geo-localization tile grid, query building and database sharding of MarsRetrieval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lonlat_grid import cell_of, tile_grid

from marseval.errors import MarsevalError
from marseval.retrieval import embed as re
from marseval.retrieval import queries as rq
from marseval.retrieval.tiles import tile_locations

# --------------------------------------------------------------------------- tile grid


def test_tile_grid_10_degrees():
    grid = tile_grid(10, 80)
    assert len(grid) == 36 * 16
    assert list(grid.columns) == ["id", "lon_min", "lat_min", "lon_max", "lat_max", "row", "col"]
    assert grid["id"].is_unique
    assert grid.loc[0, "id"] == "tile_r00000_c00000"
    assert sorted(set(grid["lon_min"])) == list(range(-180, 180, 10))
    assert sorted(set(grid["lat_min"])) == list(range(-80, 80, 10))
    np.testing.assert_array_equal(grid["lon_max"] - grid["lon_min"], 10.0)
    np.testing.assert_array_equal(grid["lat_max"] - grid["lat_min"], 10.0)
    np.testing.assert_array_equal(grid["lon_min"], -180 + 10 * grid["col"])
    np.testing.assert_array_equal(grid["lat_min"], -80 + 10 * grid["row"])
    south = grid[grid["row"] == 0]
    assert len(south) == 36 and (south["lat_min"] == -80).all()
    assert grid["lat_max"].max() == 80 and grid["lon_max"].max() == 180
    # every (row, col) once
    assert len(set(zip(grid["row"], grid["col"], strict=True))) == len(grid)


@pytest.fixture(scope="module")
def paper_grid() -> pd.DataFrame:
    return tile_grid(0.2, 80)


@pytest.mark.parametrize("delta", [10, 0.2])
def test_cell_of_round_trips_tile_centres_and_south_west_corners(delta, paper_grid):
    grid = paper_grid if delta == 0.2 else tile_grid(delta, 80)
    sample = grid if len(grid) < 10_000 else grid.iloc[::97]  # 0.2 degrees: 14,846 tiles
    for t in sample.itertuples(index=False):
        centre = ((t.lon_min + t.lon_max) / 2, (t.lat_min + t.lat_max) / 2)
        assert cell_of(*centre, delta, 80) == (t.row, t.col)
        assert cell_of(t.lon_min, t.lat_min, delta, 80) == (t.row, t.col)


def test_paper_grid_size_and_uneven_deltas(paper_grid):
    assert len(paper_grid) == 1800 * 800
    with pytest.raises(MarsevalError, match="does not divide 360"):
        tile_grid(7, 80)
    with pytest.raises(MarsevalError, match="does not divide 160"):
        tile_grid(12, 80)  # divides 360, not the latitude span
    with pytest.raises(MarsevalError):
        tile_grid(0, 80)


def test_tile_locations_by_hand():
    grid = tile_grid(10, 80)
    tile = grid[(grid["row"] == 2) & (grid["col"] == 3)]  # lon -150..-140, lat -60..-50
    np.testing.assert_array_equal(tile_locations(tile), [[-145.0, -55.0]])
    np.testing.assert_array_equal(tile_locations(tile, "sw_corner"), [[-150.0, -60.0]])
    assert tile_locations(grid).shape == (576, 2)
    with pytest.raises(MarsevalError, match="'ne_corner'"):
        tile_locations(tile, "ne_corner")


# --------------------------------------------------------------------------- queries


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_hybrid_query_by_hand():
    images = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.6, 0, 0.8, 0]], np.float32)
    text = np.array([0.8, 0.6, 0, 0], np.float32)
    sims = np.array([0.8, 0.6, 0.48])  # by hand: images @ text
    weights = np.exp(sims / 0.1) / np.exp(sims / 0.1).sum()
    weighted = unit(weights @ images.astype(np.float64))
    expected = unit(0.3 * weighted + 0.7 * text)
    got = rq.hybrid_query(images, text)
    assert got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got), 1.0, atol=1e-6)
    # a softmax, not a mean: differs from weighting the images equally
    flat = unit(0.3 * unit(images.mean(axis=0)) + 0.7 * text)
    assert not np.allclose(got, flat, atol=1e-3)
    # a very hot softmax is the plain mean; image_weight 1 leaves the weighted images only
    np.testing.assert_allclose(rq.hybrid_query(images, text, temperature=1e6), flat, atol=1e-5)
    np.testing.assert_allclose(rq.hybrid_query(images, text, image_weight=1.0), weighted,
                               atol=1e-6)


def test_image_query_is_the_normalised_mean():
    images = np.array([[1, 0, 0], [0, 1, 0], [0, 0.6, 0.8]], np.float32)
    got = rq.image_query(images)
    np.testing.assert_allclose(got, np.array([1, 1.6, 0.8]) / math.sqrt(1 + 2.56 + 0.64),
                               atol=1e-6)


class FixedTextModel:
    """Stands in for a vision-language model: records prompts, returns fixed vectors."""

    VECTORS = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.6, 0.8]], np.float32)

    def __init__(self):
        self.prompts: list[list[str]] = []

    def embed_texts(self, texts):
        self.prompts.append(list(texts))
        return self.VECTORS[:len(texts)]


def test_text_query_averages_the_three_templates():
    model = FixedTextModel()
    got = rq.text_query(model, "pitted_cones")
    assert model.prompts == [["a photo of pitted cones, a type of martian terrain",
                              "a satellite photo of pitted cones.",
                              "a high-resolution remote sensing image of pitted cones on Mars."]]
    np.testing.assert_allclose(got, np.array([1, 1, 0.6, 0.8]) / math.sqrt(3), atol=1e-6)
    assert got.dtype == np.float32


def test_queries_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {m: unit(rng.standard_normal((3, 8))) for m in ("hybrid", "text", "image")}
    classes = ["pitted_cones", "dunes", "gullies"]
    out = rq.write_queries(tmp_path / "q.npz", arrays, classes)
    read, read_classes = rq.read_queries(out)
    assert read_classes == classes
    assert list(read) == ["text", "image", "hybrid"]  # MODES order
    for mode, values in arrays.items():
        assert read[mode].dtype == np.float32
        np.testing.assert_allclose(read[mode], values, atol=1e-7)
    only_image, _ = rq.read_queries(rq.write_queries(tmp_path / "i.npz",
                                                     {"image": arrays["image"]}, classes))
    assert list(only_image) == ["image"]


def test_read_queries_refuses_other_files(tmp_path):
    bad = tmp_path / "not_queries.npz"
    bad.write_text("hello")
    with pytest.raises(MarsevalError, match="not_queries.npz: not a queries file"):
        rq.read_queries(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(MarsevalError, match="other.npz: not a queries file"):
        rq.read_queries(other)


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("shards", [1, 2, 3, 4])
def test_shard_rows_partition_contiguously(n, shards):
    parts = [re.shard_rows(n, i, shards) for i in range(shards)]
    assert all(isinstance(p, range) and p.step == 1 for p in parts)
    assert [i for p in parts for i in p] == list(range(n))  # everything, in order, once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_rows_by_hand_and_out_of_range():
    assert [re.shard_rows(10, i, 3) for i in range(3)] == [range(0, 4), range(4, 7),
                                                           range(7, 10)]
    for shard, shards in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(MarsevalError, match="outside"):
            re.shard_rows(10, shard, shards)


def test_paired_captions_follow_the_caption_key(tmp_path):
    pd.DataFrame({"sample_id": ["a", "b"], "image": ["images/a.jpg", "images/b.jpg"],
                  "caption": ["refined a", "refined b"], "ori_caption": ["raw a", "raw b"]}
                 ).to_parquet(tmp_path / "samples.parquet")
    meta = {"subtask": "paired"}
    assert re.database(tmp_path, meta)["caption"].tolist() == ["refined a", "refined b"]
    got = re.database(tmp_path, meta, caption_key="ori_caption")
    assert got["caption"].tolist() == ["raw a", "raw b"] and got["id"].tolist() == ["a", "b"]
    with pytest.raises(MarsevalError, match="caption key 'caption'"):
        re.database(tmp_path, meta, caption_key="caption")
    with pytest.raises(MarsevalError, match="give the cell group"):
        re.database(tmp_path, {"subtask": "geolocalization"})


def test_an_unreadable_image_stops_the_shard_or_is_left_out(tmp_path, caplog):
    from marseval.data.retrieval import standardize_retrieval
    from marseval.data.synthetic.retrieval import write_retrieval
    from marseval.registry import get_dataset
    from marseval.retrieval.shards import read_shard

    spec = get_dataset("mr-vl_pairs")
    write_retrieval(spec, tmp_path / "raw", 0, 32, {"pairs": 5})
    data = tmp_path / "data"
    standardize_retrieval(tmp_path / "raw", data, spec, "synthetic")
    samples = pd.read_parquet(data / "samples.parquet")
    broken = data / samples["image"][2]
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated JPEG
    with pytest.raises(MarsevalError, match=rf"image {broken}: unreadable .*bad_images: skip"):
        re.embed_shard(data, "tiny-clip", 0, 1, tmp_path / "stopped")
    assert not (tmp_path / "stopped").exists()  # nothing half-written
    with caplog.at_level("WARNING"):
        done = re.embed_shard(data, "tiny-clip", 0, 1, tmp_path / "shard",
                              skip_bad_images=True)
    assert done["rows"] == 4 and done["skipped"] == [str(broken)]
    assert f"image {broken}: unreadable" in caplog.text
    embeddings, ids, extras = read_shard(tmp_path / "shard")
    kept = samples["sample_id"].drop(index=2).tolist()
    assert ids["id"].tolist() == kept  # rows, captions and embeddings stay aligned
    assert len(embeddings) == len(extras["text_embeddings"]) == 4
    assert ids["caption"].tolist() == samples["caption"].drop(index=2).tolist()
