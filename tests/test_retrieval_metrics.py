"""Retrieval scores against hand-computed values and independent oracles (scikit-learn,
geographiclib, brute-force numpy)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from geographiclib.geodesic import Geodesic
from sklearn.metrics import auc, average_precision_score, ndcg_score

from marseval.retrieval.metrics import (
    MARS_RADIUS_KM,
    auprc,
    best_f1,
    coverage_curve,
    descending_order,
    geodesic_km,
    k_grid,
    landform_metrics,
    pair_ranks,
    paired_metrics,
    ranked_list_metrics,
)

# --------------------------------------------------------------------------- paired


def _brute_ranks(similarity: np.ndarray) -> np.ndarray:
    """Position of column i in row i sorted descending, ties by lower column (stable sort)."""
    return np.array(
        [
            np.flatnonzero(np.argsort(-row, kind="stable") == i)[0] + 1
            for i, row in enumerate(similarity)
        ]
    )


def test_pair_ranks_hand_example_with_ties():
    s = np.array(
        [
            [0.5, 0.5, 0.1, 0.0],  # row 0: nothing higher; the tie at column 1 is above i -> 1
            [0.9, 0.2, 0.2, 0.2],  # row 1: 0.9 higher; ties at columns 2, 3 are above i -> 2
            [0.3, 0.3, 0.3, 0.4],  # row 2: 0.4 higher; ties at columns 0, 1 are below i -> 4
            [0.1, 0.7, 0.0, 0.7],  # row 3: nothing higher; the tie at column 1 is below i -> 2
        ]
    )
    for chunk in (1, 3, 4096):
        ranks = pair_ranks(s, chunk=chunk)
        assert ranks.dtype == np.int64
        np.testing.assert_array_equal(ranks, [1, 2, 4, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_ranks_matches_stable_argsort_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.uniform(0, 1, (37, 37)), 1)  # 11 distinct values: ties in every row
    expected = _brute_ranks(s)
    for chunk in (1, 5, 37, 4096):
        np.testing.assert_array_equal(pair_ranks(s, chunk=chunk), expected)


def test_paired_metrics_hand_example():
    # images one-hot, so image @ text.T is exactly s (i2t) and its transpose is t2i
    s = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],
            [0.8, 0.5, 0.0, 0.0],
            [0.0, 0.0, 0.2, 0.6],
            [0.0, 0.3, 0.2, 0.1],
        ],
        dtype=np.float32,
    )
    images, texts = np.eye(4, dtype=np.float32), np.ascontiguousarray(s.T)
    got = paired_metrics(images, texts)
    # i2t ranks: [1, 2 (0.8 > 0.5), 2 (0.6 > 0.2), 3 (0.3, 0.2 > 0.1)]
    # t2i rows of s.T: [.9 .8 0 0], [.1 .5 0 .3], [0 0 .2 .2], [0 0 .6 .1] -> ranks [1, 1, 1, 2]
    #   (row 2: the tie with column 3 is above the true column 2, so it does not count)
    expected = {
        "i2t_r1": 0.25,
        "i2t_r10": 1.0,
        "i2t_medr": 2.0,
        "i2t_mrr": (1 + 1 / 2 + 1 / 2 + 1 / 3) / 4,
        "t2i_r1": 0.75,
        "t2i_r10": 1.0,
        "t2i_medr": 1.0,
        "t2i_mrr": (1 + 1 + 1 + 1 / 2) / 4,
        "n": 4.0,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_paired_metrics_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    # small integer embeddings: exact integer inner products, so many exact ties
    images = rng.integers(0, 3, (60, 3)).astype(np.float32)
    texts = rng.integers(0, 3, (60, 3)).astype(np.float32)
    s = images.astype(np.float64) @ texts.astype(np.float64).T
    got = paired_metrics(images, texts)
    for prefix, ranks in (("i2t", _brute_ranks(s)), ("t2i", _brute_ranks(s.T))):
        assert got[f"{prefix}_r1"] == pytest.approx(np.mean(ranks == 1))
        assert got[f"{prefix}_r10"] == pytest.approx(np.mean(ranks <= 10))
        assert got[f"{prefix}_medr"] == pytest.approx(np.median(ranks))
        assert got[f"{prefix}_mrr"] == pytest.approx(np.mean(1 / ranks))
    assert got["n"] == 60.0


def test_paired_metrics_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(5, 8\)"):
        paired_metrics(np.zeros((4, 8), np.float32), np.zeros((5, 8), np.float32))
    with pytest.raises(ValueError, match="square"):
        pair_ranks(np.zeros((3, 4)))


# --------------------------------------------------------------------------- landform


def test_ranked_list_metrics_hand_example():
    got = ranked_list_metrics(np.array([1, 0, 1, 0, 0], dtype=bool))
    # hits at ranks 1 and 3: AP = (1/1 + 2/3) / 2; first 2 hold one hit; DCG = 1 + 1/log2(4)
    assert got["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert got["r_precision"] == pytest.approx(1 / 2)
    assert got["ndcg10"] == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert got["hit10"] == 1.0

    # 4 relevant, 2 of them never retrieved: AP and R-Precision over 4, IDCG of 4 hits
    got = ranked_list_metrics(np.array([1, 0, 1, 0, 0], dtype=bool), n_relevant=4)
    assert got["ap"] == pytest.approx((1 + 2 / 3) / 4)
    assert got["r_precision"] == pytest.approx(2 / 4)
    idcg = 1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)
    assert got["ndcg10"] == pytest.approx(1.5 / idcg)

    # the only hit at rank 11: outside the top 10
    late = np.zeros(20, dtype=bool)
    late[10] = True
    got = ranked_list_metrics(late)
    assert got["ap"] == pytest.approx(1 / 11)
    assert got["r_precision"] == 0.0
    assert got["ndcg10"] == 0.0
    assert got["hit10"] == 0.0


def test_ranked_list_metrics_rejects_no_relevant():
    with pytest.raises(ValueError, match="no relevant"):
        ranked_list_metrics(np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="below"):
        ranked_list_metrics(np.array([1, 1, 0], dtype=bool), n_relevant=1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ranked_list_metrics_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    scores = rng.permutation(80) / 80.0  # distinct: no ties, so sklearn's tie handling is moot
    y = rng.uniform(size=80) < 0.2
    y[rng.integers(80)] = True
    got = ranked_list_metrics(y[descending_order(scores)])
    assert got["ap"] == pytest.approx(average_precision_score(y, scores), rel=1e-12)
    assert got["ndcg10"] == pytest.approx(ndcg_score(y[None], scores[None], k=10), rel=1e-12)
    top = np.argsort(-scores)
    assert got["r_precision"] == pytest.approx(y[top[: y.sum()]].mean())
    assert got["hit10"] == float(y[top[:10]].any())


def test_descending_order_breaks_ties_by_lower_index():
    np.testing.assert_array_equal(descending_order(np.array([3, 1, 3, 2, 1])), [0, 2, 3, 1, 4])
    np.testing.assert_array_equal(descending_order(np.array([0, 255, 255], np.uint8)), [1, 2, 0])
    np.testing.assert_array_equal(descending_order(np.array([0.5, -1.0, 0.5])), [0, 2, 1])
    with pytest.raises(ValueError, match="NaN"):
        descending_order(np.array([0.1, np.nan]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_landform_metrics_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes, n_items = 5, 120
    labels = rng.integers(0, 4, n_items)  # class 4 has no items
    labels[:4] = np.arange(4)
    scores = np.stack([rng.permutation(n_items) / n_items for _ in range(n_classes)])
    names = [f"class{c}" for c in range(n_classes)]
    macro, table = landform_metrics(scores, labels, names)

    assert list(table.columns) == ["class", "n_relevant", "ap", "r_precision", "ndcg10", "hit10"]
    assert table["class"].tolist() == names
    np.testing.assert_array_equal(table["n_relevant"], np.bincount(labels, minlength=5))
    empty = table.iloc[4]
    assert empty["n_relevant"] == 0 and empty[["ap", "r_precision", "ndcg10", "hit10"]].isna().all()

    aps, ndcgs = [], []
    for c in range(4):
        y = labels == c
        aps.append(average_precision_score(y, scores[c]))
        ndcgs.append(ndcg_score(y[None], scores[c][None], k=10))
        assert table.loc[c, "ap"] == pytest.approx(aps[-1], rel=1e-12)
        assert table.loc[c, "ndcg10"] == pytest.approx(ndcgs[-1], rel=1e-12)
    assert macro["map"] == pytest.approx(np.mean(aps), rel=1e-12)
    assert macro["ndcg10"] == pytest.approx(np.mean(ndcgs), rel=1e-12)
    assert macro["r_precision"] == pytest.approx(table["r_precision"].iloc[:4].mean())
    assert macro["hit10"] == pytest.approx(table["hit10"].iloc[:4].mean())
    assert macro["n_classes"] == 4.0
    assert all(isinstance(v, float) for v in macro.values())


def test_landform_metrics_ties_rank_lower_index_first():
    # class 0's only item is 1; it ties with item 0, which ranks first -> AP 1/2 (not 1)
    scores = np.array([[0.5, 0.5, 0.1], [0.0, 0.0, 0.9]])
    macro, table = landform_metrics(scores, np.array([1, 0, 1]), ["a", "b"])
    assert table.loc[0, "ap"] == pytest.approx(1 / 2)
    # class 1 = items 0, 2; order [2, 0, 1] -> hits at ranks 1, 2 -> AP 1
    assert table.loc[1, "ap"] == pytest.approx(1.0)
    assert macro["map"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="outside"):
        landform_metrics(scores, np.array([0, 2, 1]), ["a", "b"])


# --------------------------------------------------------------------------- geo-localization


def test_k_grid_hand_cases():
    grid = k_grid(20000, 20000, 200)
    assert len(grid) == 100 and grid[0] == 200 and grid[-1] == 20000
    assert grid == list(range(200, 20001, 200))
    assert k_grid(450, 20000, 200) == [200, 400, 450]
    assert k_grid(150, 20000, 200) == [150]
    assert k_grid(50000, 20000, 200)[-1] == 20000
    assert k_grid(1000, 500, 200) == [200, 400, 500]


def _reference_k_values(n_pred: int, eval_max_k: int, points: int = 100) -> list[int]:
    """MarsRetrieval evaluators/geolocalization_evaluator.py, GeoLocalizationEvaluator.evaluate."""
    max_k = min(n_pred, eval_max_k)
    step = max(1, max_k // points)
    k_values = list(range(step, max_k + 1, step))
    if k_values[-1] != max_k:
        k_values.append(max_k)
    return k_values


def test_k_grid_auto_step_is_the_references_rule():
    # top 20,000: step 200, K = 200..20,000, 100 points (the paper)
    assert k_grid(20000, 20000) == list(range(200, 20001, 200))
    assert k_grid(1_440_000, 20000, "auto") == list(range(200, 20001, 200))
    # top 400 (the embedded config): step 4, K = 4..400
    assert k_grid(10000, 400, "auto") == list(range(4, 401, 4))
    # fewer predictions than top_k: max_k 150 -> step 1, K = 1..150
    assert k_grid(150, 20000, "auto") == list(range(1, 151))
    # max_k off the grid is appended: 450 // 100 = 4, K = 4..448, then 450
    grid = k_grid(450, 20000, "auto")
    assert grid[:2] == [4, 8] and grid[-2:] == [448, 450] and len(grid) == 113
    assert k_grid(99, 20000, "auto") == list(range(1, 100))
    assert k_grid(1, 20000, "auto") == [1]
    assert k_grid(0, 20000, "auto") == [0]
    for n_pred, top_k in ((20000, 20000), (400, 400), (150, 20000), (450, 20000), (12345, 20000),
                          (20001, 20000), (199, 20000), (7, 5)):
        assert k_grid(n_pred, top_k, "auto") == _reference_k_values(n_pred, top_k)


def test_k_grid_fixed_step_still_works_and_bad_steps_are_refused():
    assert k_grid(20000, 20000, 200) == list(range(200, 20001, 200))
    assert k_grid(1000, 400, 20) == list(range(20, 401, 20))
    assert k_grid(450, 20000, 200) == [200, 400, 450]
    for bad in (0, -5, "every", "200"):
        with pytest.raises(ValueError, match="step"):
            k_grid(1000, 400, bad)


def _geographiclib_km(lon1, lat1, lon2, lat2):
    sphere = Geodesic(MARS_RADIUS_KM * 1000.0, 0)
    return np.array(
        [
            sphere.Inverse(b1, a1, b2, a2)["s12"] / 1000.0
            for a1, b1, a2, b2 in zip(lon1, lat1, lon2, lat2, strict=True)
        ]
    )


def test_geodesic_km_matches_geographiclib():
    rng = np.random.default_rng(0)
    n = 100

    def random_points(size):
        return rng.uniform(-180, 180, size), np.degrees(np.arcsin(rng.uniform(-1, 1, size)))

    lon1, lat1 = random_points(n)
    lon2, lat2 = random_points(n)
    # near-antipodal: the antipode moved by up to 1e-3 degrees
    lon_a, lat_a = random_points(n)
    lon_b = (lon_a + 180 + rng.uniform(-1e-3, 1e-3, n) + 180) % 360 - 180
    lat_b = -lat_a + rng.uniform(-1e-3, 1e-3, n)
    # near-identical: metres apart
    lon_c, lat_c = random_points(n)
    lon_d, lat_d = lon_c + rng.uniform(-1e-4, 1e-4, n), np.clip(lat_c + 1e-4, -90, 90)
    lons1, lats1 = np.r_[lon1, lon_a, lon_c], np.r_[lat1, lat_a, lat_c]
    lons2, lats2 = np.r_[lon2, lon_b, lon_d], np.r_[lat2, lat_b, lat_d]

    got = geodesic_km(lons1, lats1, lons2, lats2)
    expected = _geographiclib_km(lons1, lats1, lons2, lats2)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert (got[n : 2 * n] > 0.999 * math.pi * MARS_RADIUS_KM).all()
    assert (got[2 * n :] < 0.01).all()


def test_geodesic_km_hand_values_and_broadcasting():
    quarter = math.pi / 2 * MARS_RADIUS_KM
    assert geodesic_km(0.0, 0.0, 90.0, 0.0) == pytest.approx(quarter, rel=1e-14)
    assert geodesic_km(10.0, 0.0, 10.0, 90.0) == pytest.approx(quarter, rel=1e-14)
    assert geodesic_km(0.0, 0.0, 180.0, 0.0) == pytest.approx(2 * quarter, rel=1e-14)
    assert geodesic_km(179.9, 0.0, -179.9, 0.0) == pytest.approx(
        math.radians(0.2) * MARS_RADIUS_KM, rel=1e-12
    )
    assert geodesic_km(5.0, 5.0, 5.0, 5.0) == 0.0
    assert geodesic_km(0.0, 0.0, 90.0, 0.0, radius_km=1.0) == pytest.approx(math.pi / 2)
    grid = geodesic_km(np.zeros((3, 1)), np.zeros((3, 1)), np.arange(4.0)[None, :], 0.0)
    assert grid.shape == (3, 4)
    np.testing.assert_allclose(grid[1], np.radians(np.arange(4.0)) * MARS_RADIUS_KM)


def _haversine_km(lon1, lat1, lon2, lat2):
    """The textbook haversine (an independent formula from the module's atan2 form)."""
    lon1, lat1, lon2, lat2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * MARS_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _brute_curve(pred, truth, ks, radius, metric):
    """O(P * G) oracle: the full distance matrix, then every K from scratch."""
    p, g = pred[:, None, :], truth[None, :, :]
    if metric == "degrees":
        dist = np.sqrt(((p - g) ** 2).sum(-1))
    else:
        dist = _haversine_km(p[..., 0], p[..., 1], g[..., 0], g[..., 1])
    within = dist <= radius
    rows = []
    for k in ks:
        pred_hit = int(within[:k].any(axis=1).sum())
        gt_hit = int(within[:k].any(axis=0).sum())
        precision, recall = pred_hit / k, gt_hit / len(truth)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((k, precision, recall, f1, pred_hit, gt_hit))
    return pd.DataFrame(rows, columns=["k", "precision", "recall", "f1", "pred_hit", "gt_hit"])


@pytest.mark.parametrize(("metric", "radius"), [("degrees", 1.0), ("km", 60.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_curve_matches_brute_force(metric, radius, seed):
    rng = np.random.default_rng(seed)

    # a 20-degree band across the dateline: the metrics differ for pairs on either side of it
    def wrap(lon):
        return (lon + 180) % 360 - 180

    truth = np.c_[wrap(rng.uniform(170, 190, 120)), rng.uniform(-10, 10, 120)]
    near = truth[rng.integers(0, 120, 1500)] + rng.normal(0, 0.8, (1500, 2))
    far = np.c_[rng.uniform(-180, 180, 1000), rng.uniform(-60, 60, 1000)]
    pred = np.r_[near, far][rng.permutation(2500)]  # > one block of 1024 predictions
    pred[:, 0] = wrap(pred[:, 0])
    ks = k_grid(len(pred), 20000, 200) + [1, 7]

    got = coverage_curve(pred, truth, ks, radius=radius, metric=metric)
    expected = _brute_curve(pred, truth, ks, radius, metric)
    assert list(got.columns) == list(expected.columns)
    np.testing.assert_array_equal(got["k"], expected["k"])
    np.testing.assert_array_equal(got["pred_hit"], expected["pred_hit"])
    np.testing.assert_array_equal(got["gt_hit"], expected["gt_hit"])
    for column in ("precision", "recall", "f1"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-12)
    assert got["gt_hit"].iloc[-3] > 0


def test_coverage_curve_dateline_wraps_only_in_km():
    pred, truth = np.array([[179.9, 0.0]]), np.array([[-179.9, 0.0]])  # 0.2 degrees apart
    degrees = coverage_curve(pred, truth, [1], radius=0.5, metric="degrees")
    km = coverage_curve(pred, truth, [1], radius=30.0, metric="km")  # 0.2 deg ~ 11.9 km
    assert degrees[["pred_hit", "gt_hit"]].iloc[0].tolist() == [0, 0]
    assert km[["pred_hit", "gt_hit"]].iloc[0].tolist() == [1, 1]


def test_coverage_curve_hand_example():
    truth = np.array([[0.0, 0.0], [10.0, 0.0]])
    pred = np.array(
        [
            [0.5, 0.5],  # 0.71 from truth 0: hit
            [5.0, 5.0],  # far from both: miss
            [10.0, 1.0],  # exactly 1.0 from truth 1: hit (within means <= radius)
        ]
    )
    curve = coverage_curve(pred, truth, [1, 2, 3], radius=1.0)
    # K=1: 1/1 hit, truth 0 of 2 -> P 1, R 1/2, F1 2/3
    # K=2: 1/2 hit, truth 0 of 2 -> P 1/2, R 1/2, F1 1/2
    # K=3: 2/3 hit, both truth  -> P 2/3, R 1, F1 2 (2/3) / (5/3) = 4/5
    np.testing.assert_allclose(curve["precision"], [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(curve["recall"], [1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(curve["f1"], [2 / 3, 1 / 2, 4 / 5])
    np.testing.assert_array_equal(curve["pred_hit"], [1, 1, 2])
    np.testing.assert_array_equal(curve["gt_hit"], [1, 1, 2])
    assert best_f1(curve) == pytest.approx({"f1": 0.8, "precision": 2 / 3, "recall": 1, "k": 3})
    # recall-sorted points (1/2, 1) k=1, (1/2, 1/2) k=2, (1, 2/3) k=3:
    # 0 * (1 + 1/2)/2 + (1 - 1/2) * (1/2 + 2/3)/2 = 7/24
    assert auprc(curve) == pytest.approx(7 / 24)


def test_coverage_curve_radius_is_inclusive_at_the_exact_boundary():
    # degrees: a 3-4-5 triangle scaled by 1/8 -> exactly 0.625 apart in binary floating point
    pred, truth = np.array([[0.0, 0.0]]), np.array([[0.375, 0.5]])
    assert coverage_curve(pred, truth, [1], radius=0.625)["pred_hit"].iloc[0] == 1
    below = np.nextafter(0.625, 0)
    assert coverage_curve(pred, truth, [1], radius=below)["pred_hit"].iloc[0] == 0
    # km: the radius set to the pair's own geodesic distance, then one ulp less; the KD-tree's
    # chord alone would decide some of these wrongly
    rng = np.random.default_rng(5)
    for _ in range(25):
        a = np.array([[rng.uniform(-180, 180), rng.uniform(-80, 80)]])
        b = a + rng.uniform(-0.5, 0.5, (1, 2))
        d = float(geodesic_km(a[0, 0], a[0, 1], b[0, 0], b[0, 1]))
        on = coverage_curve(a, b, [1], radius=d, metric="km")
        off = coverage_curve(a, b, [1], radius=np.nextafter(d, 0), metric="km")
        assert on[["pred_hit", "gt_hit"]].iloc[0].tolist() == [1, 1]
        assert off[["pred_hit", "gt_hit"]].iloc[0].tolist() == [0, 0]


def test_coverage_curve_grid_on_the_boundary_matches_brute_force():
    # tile centres on a 0.5-degree grid: many pairs exactly one radius apart
    grid = np.array([(x, y) for x in np.arange(0, 10, 0.5) for y in np.arange(0, 10, 0.5)])
    pred = grid[np.random.default_rng(1).permutation(len(grid))]
    truth = grid[::7] + np.array([0.5, 0.0])
    ks = k_grid(len(pred), 20000, 50)
    got = coverage_curve(pred, truth, ks, radius=0.5)
    expected = _brute_curve(pred, truth, ks, 0.5, "degrees")
    np.testing.assert_array_equal(got["pred_hit"], expected["pred_hit"])
    np.testing.assert_array_equal(got["gt_hit"], expected["gt_hit"])


def test_coverage_curve_empty_inputs_and_bad_arguments():
    truth = np.array([[0.0, 0.0]])
    for pred, gt, ks in ((np.empty((0, 2)), truth, [0]), (truth, np.empty((0, 2)), [1])):
        for metric in ("degrees", "km"):
            curve = coverage_curve(pred, gt, ks, radius=1.0, metric=metric)
            assert curve[["precision", "recall", "f1", "pred_hit", "gt_hit"]].eq(0).all().all()
    assert k_grid(0, 20000, 200) == [0]
    with pytest.raises(ValueError, match="metric"):
        coverage_curve(truth, truth, [1], radius=1.0, metric="miles")
    with pytest.raises(ValueError, match="0..1"):
        coverage_curve(truth, truth, [2], radius=1.0)


def test_best_f1_ties_take_the_smallest_k():
    curve = pd.DataFrame(
        {
            "k": [400, 200, 300, 100],
            "precision": [0.5, 0.6, 0.2, 0.9],
            "recall": [0.5, 0.4, 0.9, 0.1],
            "f1": [0.5, 0.5, 0.3, 0.18],
        }
    )
    assert best_f1(curve) == {"f1": 0.5, "precision": 0.6, "recall": 0.4, "k": 200.0}


def test_auprc_hand_curve():
    curve = pd.DataFrame(
        {
            "k": [300, 100, 400, 200],
            "recall": [0.5, 0.2, 0.9, 0.2],
            "precision": [0.6, 0.9, 0.3, 0.8],
        }
    )
    # sorted by recall then k: (0.2, 0.9) k100, (0.2, 0.8) k200, (0.5, 0.6), (0.9, 0.3)
    # 0 * (0.9 + 0.8)/2 + 0.3 * (0.8 + 0.6)/2 + 0.4 * (0.6 + 0.3)/2 = 0.21 + 0.18 = 0.39
    assert auprc(curve) == pytest.approx(0.39)
    assert auc([0.2, 0.2, 0.5, 0.9], [0.9, 0.8, 0.6, 0.3]) == pytest.approx(0.39)
    assert auprc(curve.iloc[:1]) == 0.0
