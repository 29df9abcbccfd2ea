"""The evaluate and summary stages on hand-made embeddings whose answers are known by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lonlat_grid import cell_of, tile_grid
from sklearn.metrics import average_precision_score

from marseval.retrieval.evaluate import GeoOptions, evaluate
from marseval.retrieval.index import build_index
from marseval.retrieval.queries import write_queries
from marseval.retrieval.report import write_report
from marseval.retrieval.shards import IndexMismatchError, write_shard


def _dataset(root: Path, subtask: str, classes: list[str] | None = None) -> Path:
    folder = root / f"data-{subtask}"
    folder.mkdir()
    meta = {"name": f"mr-{subtask}", "task": "retrieval", "subtask": subtask}
    if classes:
        meta["classes"] = classes
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _index(root: Path, name: str, embeddings: np.ndarray, ids: pd.DataFrame,
           extra: dict | None = None, shards: int = 2) -> Path:
    """Write the database as `shards` shards and merge them, as the workflow does."""
    blocks = np.array_split(np.arange(len(ids)), shards)
    dirs = []
    for i, rows in enumerate(blocks):
        part = {k: v[rows] for k, v in (extra or {}).items()}
        dirs.append(write_shard(root / f"{name}-shard{i}", embeddings[rows],
                                ids.iloc[rows].reset_index(drop=True), extra=part))
    build_index(dirs, root / f"{name}-index")
    return root / f"{name}-index"


def test_paired_ranks_by_hand(tmp_path: Path) -> None:
    # images e0..e3; captions e0, e1, e3, e2 (the last two swapped). Image 2 scores 1 with
    # caption 3 and 0 with captions 0, 1 and its own caption 2: the tie puts captions 0 and 1
    # ahead (lower index), so its caption ranks 1 + 1 + 2 = 4; image 3 likewise.
    images = np.eye(4, dtype=np.float32)
    texts = images[[0, 1, 3, 2]]
    ids = pd.DataFrame({"id": [f"p{i}" for i in range(4)], "caption": list("abcd")})
    index = _index(tmp_path, "pairs", images, ids, {"text_embeddings": texts})
    record = evaluate(_dataset(tmp_path, "paired"), index, tmp_path / "eval", model="m")
    expected = {"r1": 0.5, "r10": 1.0, "medr": 2.5, "mrr": (1 + 1 + 0.25 + 0.25) / 4}
    for direction in ("i2t", "t2i"):
        for key, value in expected.items():
            assert record["metrics"][f"{direction}_{key}"] == pytest.approx(value)
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["metrics"]["i2t_mrr"] == pytest.approx(0.625)


def test_paired_without_text_is_not_applicable(tmp_path: Path) -> None:
    ids = pd.DataFrame({"id": ["a", "b"]})
    index = _index(tmp_path, "vis", np.eye(2, dtype=np.float32), ids, shards=1)
    out = tmp_path / "eval-vision"
    record = evaluate(_dataset(tmp_path, "paired"), index, out, model="vision-only")
    assert record["applicable"] is False and "vision-only" in record["reason"]
    summary = write_report([out], tmp_path / "summary")
    assert summary.loc[0, "note"].startswith("not applicable")


def test_landform_ap_matches_sklearn(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=60)
    database = rng.normal(size=(60, 8)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = pd.DataFrame({"id": [f"i{i}" for i in range(60)], "label": labels})
    index = _index(tmp_path, "landform", database, ids, shards=3)
    classes = ["dunes", "craters", "cones"]
    write_queries(tmp_path / "q.npz", {"text": queries}, classes)
    out = tmp_path / "eval-landform"
    record = evaluate(_dataset(tmp_path, "landform", classes), index, out, model="m",
                      queries_path=tmp_path / "q.npz")
    per_class = pd.read_csv(out / "per_class.csv").set_index("class")
    scores = database.astype(np.float64) @ queries.T.astype(np.float64)
    oracle = [average_precision_score(labels == c, scores[:, c]) for c in range(3)]
    assert per_class.loc[classes, "ap"].to_numpy() == pytest.approx(oracle, abs=1e-6)
    assert record["metrics"]["map"] == pytest.approx(np.mean(oracle), abs=1e-6)
    summary = write_report([out], tmp_path / "summary-landform")
    assert summary.loc[0, "map"] == pytest.approx(np.mean(oracle), abs=1e-6)
    for name in ("summary.csv", "summary.md", "per_class_ap.csv",
                 "figures/per_class_ap.png", "figures/per_class_ap.pdf"):
        assert (tmp_path / "summary-landform" / name).stat().st_size > 0


LANDFORMS = ["alluvial_fans", "pitted_cones"]  # two of the registry's five


def _geo_fixture(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Tiles of 10 degrees; the tiles holding a landform's two sites embed as that landform's
    vector, all others as a third vector. Sites sit on tile centres."""
    tiles = tile_grid(10.0, 80.0)
    sites = {0: [(-175.0, -75.0), (35.0, 45.0)], 1: [(105.0, 5.0), (-45.0, 65.0)]}
    vectors = np.eye(3, dtype=np.float32)
    embeddings = np.repeat(vectors[[2]], len(tiles), axis=0)
    truth = []
    for label, points in sites.items():
        for lon, lat in points:
            row, col = cell_of(lon, lat, 10.0, 80.0)
            embeddings[row * 36 + col] = vectors[label]
            truth.append({"landform": LANDFORMS[label], "label": label, "lon": lon, "lat": lat})
    data = _dataset(tmp_path, "geolocalization", LANDFORMS)
    pd.DataFrame(truth).to_parquet(data / "ground_truth.parquet")
    index = _index(tmp_path, "tiles", embeddings, tiles, shards=4)
    write_queries(tmp_path / "geo.npz", {"text": vectors[:2], "image": vectors[:2]}, LANDFORMS)
    return data, index, tmp_path / "geo.npz"


def test_geolocalization_by_hand(tmp_path: Path) -> None:
    data, index, queries = _geo_fixture(tmp_path)
    out = tmp_path / "eval-geo"
    geo = GeoOptions(radius_deg=1.0, top_k=10, k_step=1)
    record = evaluate(data, index, out, model="m", queries_path=queries, geo=geo)
    assert record["ks"] == list(range(1, 11))
    assert record["radius_km"] == pytest.approx(np.radians(1.0) * 3396.19)
    for mode in ("text", "image"):
        for landform in ("alluvial_fans", "pitted_cones"):
            entry = record["metrics"][mode]["per_landform"][landform]
            for metric in ("degrees", "km"):
                # K=1: P 1, R 0.5; K=2: P 1, R 1 (best F1); K>2: recall stays 1.
                # AUPRC: trapezoid from (0.5, 1) to (1, 1) = 0.5; equal recalls add nothing.
                assert entry[metric]["f1"] == pytest.approx(1.0)
                assert entry[metric]["k"] == 2
                assert entry[metric]["auprc"] == pytest.approx(0.5)
    curves = pd.read_parquet(out / "curves.parquet")
    at_10 = curves[(curves.k == 10) & (curves.metric == "degrees")]
    assert at_10["precision"].to_numpy() == pytest.approx(0.2)
    retrieved = pd.read_parquet(out / "retrieved.parquet")
    top = retrieved[(retrieved["mode"] == "text") & (retrieved["landform"] == "alluvial_fans")
                    & (retrieved["rank"] <= 2)]
    assert sorted(zip(top.lon, top.lat, strict=True)) == [(-175.0, -75.0), (35.0, 45.0)]

    summary = write_report([out], tmp_path / "summary-geo")
    mean = summary[(summary["mode"] == "text") & (summary["landform"] == "mean")]
    assert mean["f1_degrees"].item() == pytest.approx(1.0)
    figures = tmp_path / "summary-geo" / "figures"
    for name in ("map_m_text.png", "map_m_image.pdf", "pr_over_k_m.png"):
        assert (figures / name).stat().st_size > 0


def test_sw_corner_convention_moves_predictions(tmp_path: Path) -> None:
    # Scored at the south-west corner, a tile is 5 * sqrt(2) degrees from a site at its
    # centre: outside a 1-degree radius, inside a 10-degree one.
    data, index, queries = _geo_fixture(tmp_path)
    for radius, expected in ((1.0, 0.0), (10.0, 1.0)):
        geo = GeoOptions(radius_deg=radius, top_k=2, k_step=2, convention="sw_corner")
        record = evaluate(data, index, tmp_path / f"eval-{radius}", model="m",
                          queries_path=queries, geo=geo)
        fans = record["metrics"]["text"]["per_landform"]["alluvial_fans"]
        assert fans["degrees"]["recall"] == expected


def test_queries_of_another_model_are_refused(tmp_path: Path) -> None:
    data, index, _ = _geo_fixture(tmp_path)
    write_queries(tmp_path / "wide.npz", {"text": np.eye(2, 5, dtype=np.float32)}, LANDFORMS)
    out = tmp_path / "eval-wrong"
    with pytest.raises(IndexMismatchError, match="3-d embeddings; queries are 5-d"):
        evaluate(data, index, out, model="m", queries_path=tmp_path / "wide.npz")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval-wrong")]


def test_k_grid_defaults_to_the_references_auto_step(tmp_path: Path) -> None:
    # 36 x 16 = 576 tiles: top 400 -> step 4; top 20,000 -> max_k 576, step 5, 576 appended
    data, index, queries = _geo_fixture(tmp_path)
    for top_k, expected in ((10, list(range(1, 11))), (400, list(range(4, 401, 4))),
                            (20000, [*range(5, 576, 5), 576])):
        record = evaluate(data, index, tmp_path / f"eval-{top_k}", model="m",
                          queries_path=queries, geo=GeoOptions(radius_deg=1.0, top_k=top_k))
        assert record["k_step"] == "auto"
        assert record["ks"] == expected
    fixed = evaluate(data, index, tmp_path / "eval-fixed", model="m", queries_path=queries,
                     geo=GeoOptions(radius_deg=1.0, top_k=400, k_step=150))
    assert fixed["ks"] == [150, 300, 400]


def test_only_the_registrys_landforms_are_scored(tmp_path: Path, caplog) -> None:
    # a third ground-truth file, "dunes", is not a landform of mr-geolocalization's registry
    # entry: it is left out with a warning, and the two others keep their rows' queries
    data, index, _ = _geo_fixture(tmp_path)
    truth = pd.read_parquet(data / "ground_truth.parquet")
    truth["label"] += 1
    dunes = pd.DataFrame([{"landform": "dunes", "label": 0, "lon": 5.0, "lat": 5.0}])
    pd.concat([dunes, truth]).to_parquet(data / "ground_truth.parquet")
    classes = ["dunes", *LANDFORMS]
    meta = json.loads((data / "meta.json").read_text()) | {"classes": classes}
    (data / "meta.json").write_text(json.dumps(meta))
    vectors = np.eye(3, dtype=np.float32)[[2, 0, 1]]
    write_queries(tmp_path / "three.npz", {"text": vectors}, classes)
    out = tmp_path / "eval-three"
    with caplog.at_level("WARNING"):
        record = evaluate(data, index, out, model="m", queries_path=tmp_path / "three.npz",
                          geo=GeoOptions(radius_deg=1.0, top_k=10))
    assert "ground truth of dunes is ignored" in caplog.text
    assert record["landforms"] == LANDFORMS
    per_landform = record["metrics"]["text"]["per_landform"]
    assert list(per_landform) == LANDFORMS
    for landform in LANDFORMS:
        assert per_landform[landform]["degrees"]["f1"] == pytest.approx(1.0)
    assert set(pd.read_parquet(out / "retrieved.parquet")["landform"]) == set(LANDFORMS)
    assert set(pd.read_parquet(out / "curves.parquet")["landform"]) == set(LANDFORMS)
    assert set(pd.read_parquet(out / "ground_truth.parquet")["landform"]) == set(LANDFORMS)
