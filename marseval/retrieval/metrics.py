"""MarsRetrieval scores: paired image-text ranks, landform ranked lists, geo-localization coverage.

- Paired: the true match of query i is candidate i; R@1, R@10, median rank and MRR per direction.
- Landform: one text query per class ranks the whole database; macro mAP, R-Precision, nDCG@10
  and Hit@10 over the classes that have items.
- Geo-localization: predictions in rank order against ground-truth points; at each K, precision
  (top-K predictions within the radius of any truth point) and recall (truth points within the
  radius of any top-K prediction), then best F1 and AUPRC over the K grid. "degrees" is the
  reference code's metric (Euclidean in lon/lat, no wrap-around); "km" is geodesic on the sphere.

Ties are broken by the lower index everywhere, so every score is deterministic.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from marseval.errors import MarsevalError

MARS_RADIUS_KM = 3396.19

_PAIR_BLOCK_ENTRIES = 1 << 24  # similarity entries per block in paired_metrics (128 MiB float64)
_GEO_BLOCK = 1024  # predictions per block when finding each truth point's first hit
_GEO_PAIRS = 1 << 20  # (truth, prediction) pairs tested exactly at once: bounds the temporaries
_REL_TOL = 1e-9  # tree-distance band around the radius that is re-checked exactly


class RetrievalMetricError(MarsevalError, ValueError):
    """Bad input to a retrieval score (a ValueError, reported by the CLI as one line)."""


# --------------------------------------------------------------------------- paired


def _ranks_of_block(block: np.ndarray, start: int) -> np.ndarray:
    """1-based rank of the true match for rows start.. of a similarity matrix, given as `block`:
    1 + #higher scores + #equal scores at a lower column (the true one loses those ties)."""
    if not np.isfinite(block).all():
        raise RetrievalMetricError("similarity holds NaN or infinite scores")
    n_rows = block.shape[0]
    rows = np.arange(start, start + n_rows)
    true = block[np.arange(n_rows), rows][:, None]
    ahead = (block > true) | ((block == true) & (np.arange(block.shape[1]) < rows[:, None]))
    return 1 + ahead.sum(axis=1, dtype=np.int64)


def pair_ranks(similarity: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Rank (1-based, int64) of the true match, column i, in each row i of an (N, N) similarity.

    A candidate with the same score ranks ahead of the true one only if its column is lower.
    Rows are scored `chunk` at a time, so the temporaries stay at chunk x N.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise RetrievalMetricError(
            f"pair_ranks: similarity must be square (N, N), got shape {similarity.shape}"
        )
    chunk = operator.index(chunk)
    if chunk < 1:
        raise RetrievalMetricError(f"pair_ranks: chunk must be >= 1, got {chunk}")
    n = similarity.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        ranks[start : start + chunk] = _ranks_of_block(similarity[start : start + chunk], start)
    return ranks


def _embedding_ranks(queries: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> np.ndarray:
    """pair_ranks of the row-wise concatenation of the query parts against that of the
    candidate parts (query row i's true match is candidate row i, in the same part), scored
    part by part, so no more than one query block x one candidate part is held at a time.
    Float64 products of the float32 inputs are exact, so near-ties are not decided by float32
    rounding; the true score comes from the same product as its competitors'."""
    offsets = np.cumsum([0, *(len(c) for c in candidates)])
    rows = max(1, _PAIR_BLOCK_ENTRIES // max(len(c) for c in candidates))
    ranks = []
    for a, part in enumerate(queries):
        for start in range(0, len(part), rows):
            block = np.asarray(part[start : start + rows], dtype=np.float64)
            local = np.arange(start, start + len(block))
            own = block @ np.asarray(candidates[a], dtype=np.float64).T
            true = own[np.arange(len(block)), local][:, None]
            query_rows = (offsets[a] + local)[:, None]
            ahead = np.zeros(len(block), dtype=np.int64)
            for b, candidate in enumerate(candidates):
                scores = own if b == a else block @ np.asarray(candidate, dtype=np.float64).T
                if not np.isfinite(scores).all():
                    raise RetrievalMetricError("similarity holds NaN or infinite scores")
                columns = offsets[b] + np.arange(len(candidate))
                ahead += ((scores > true) | ((scores == true) & (columns < query_rows))).sum(
                    axis=1)
            ranks.append(1 + ahead)
    return np.concatenate(ranks)


def _rank_summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_r1": float(np.mean(ranks <= 1)),
        f"{prefix}_r10": float(np.mean(ranks <= 10)),
        f"{prefix}_medr": float(np.median(ranks)),
        f"{prefix}_mrr": float(np.mean(1.0 / ranks)),
    }


def paired_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> dict[str, float]:
    """R@1, R@10, median rank and MRR image->text ("i2t_*") and text->image ("t2i_*"), and "n".

    Row i of both arrays is one pair; the similarity is the inner product (cosine for the
    L2-normalised embeddings the pipeline writes).
    """
    images, texts = np.asarray(image_embeddings), np.asarray(text_embeddings)
    if images.ndim != 2 or images.shape != texts.shape:
        raise RetrievalMetricError(
            f"paired_metrics: image embeddings {images.shape} and text embeddings {texts.shape} "
            "must both be (N, D) with the same shape"
        )
    if images.shape[0] == 0:
        raise RetrievalMetricError("paired_metrics: no pairs to score")
    return paired_metrics_of_parts([(images, texts)])


def paired_metrics_of_parts(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """`paired_metrics` of the pairs of every (images, texts) part, concatenated in order,
    computed part by part (e.g. memory-mapped embedding shards: the whole set is never held)."""
    for index, (images, texts) in enumerate(parts):
        if images.ndim != 2 or images.shape != texts.shape:
            raise RetrievalMetricError(
                f"paired_metrics: part {index}: image embeddings {images.shape} and text "
                f"embeddings {texts.shape} must both be (N, D) with the same shape")
    if len({images.shape[1] for images, _ in parts}) > 1:
        raise RetrievalMetricError("paired_metrics: parts of different embedding dimensions")
    images, texts = [p[0] for p in parts if len(p[0])], [p[1] for p in parts if len(p[0])]
    if not images:
        raise RetrievalMetricError("paired_metrics: no pairs to score")
    return {
        **_rank_summary(_embedding_ranks(images, texts), "i2t"),
        **_rank_summary(_embedding_ranks(texts, images), "t2i"),
        "n": float(sum(len(i) for i in images)),
    }


# --------------------------------------------------------------------------- landform


def _as_relevance(values: ArrayLike) -> np.ndarray:
    rel = np.asarray(values)
    if rel.ndim != 1:
        raise RetrievalMetricError(f"relevance must be 1-D, got shape {rel.shape}")
    if rel.dtype != bool:
        if rel.size and not np.isin(rel, (0, 1)).all():
            raise RetrievalMetricError("relevance must be boolean (or 0/1)")
        rel = rel.astype(bool)
    return rel


def ranked_list_metrics(
    relevant_in_rank_order: np.ndarray, n_relevant: int | None = None
) -> dict[str, float]:
    """AP, R-Precision, nDCG@10 (binary gains) and Hit@10 of one query's ranked database.

    `relevant_in_rank_order[i]` tells whether the item at rank i+1 is relevant. `n_relevant`
    (default: the hits in the list) is the denominator of AP and R-Precision and sizes the
    ideal DCG; a larger value counts relevant items missing from the list as never retrieved.
    """
    rel = _as_relevance(relevant_in_rank_order)
    hits = int(np.count_nonzero(rel))
    n_rel = hits if n_relevant is None else operator.index(n_relevant)
    if n_rel < hits:
        raise RetrievalMetricError(
            f"ranked_list_metrics: n_relevant={n_rel} is below the {hits} hits in the list"
        )
    if n_rel == 0:
        raise RetrievalMetricError("ranked_list_metrics: the query has no relevant items")
    positions = np.flatnonzero(rel) + 1  # 1-based ranks of the hits
    top10 = positions[positions <= 10]
    ideal = np.arange(1, min(n_rel, 10) + 1)
    return {
        "ap": float(np.sum(np.arange(1, hits + 1) / positions) / n_rel),
        "r_precision": float(np.count_nonzero(positions <= n_rel) / n_rel),
        "ndcg10": float(np.sum(1.0 / np.log2(top10 + 1)) / np.sum(1.0 / np.log2(ideal + 1))),
        "hit10": float(top10.size > 0),
    }


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort a 1-D score vector from the highest score down, ties by lower index."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise RetrievalMetricError(f"descending_order: scores must be 1-D, got {scores.shape}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise RetrievalMetricError("descending_order: scores hold NaN")
    # a stable ascending sort of the reversed vector, read backwards: no negation, so any dtype
    n = scores.shape[0]
    return (n - 1) - np.argsort(scores[::-1], kind="stable")[::-1]


LANDFORM_COLUMNS = ["class", "n_relevant", "ap", "r_precision", "ndcg10", "hit10"]


def landform_metrics(
    scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> tuple[dict[str, float], pd.DataFrame]:
    """Macro mAP, R-Precision, nDCG@10, Hit@10 and "n_classes", and the per-class table.

    `scores[c, n]` scores database item n for the query of class c; `labels[n]` is the item's
    class, 0..C-1. Classes without items get a row with n_relevant 0 and NaN scores and are
    left out of the means.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[1] != labels.shape[0]:
        raise RetrievalMetricError(
            f"landform_metrics: scores {scores.shape} must be (C, N) for labels (N,), "
            f"got labels {labels.shape}"
        )
    n_classes = scores.shape[0]
    if len(class_names) != n_classes:
        raise RetrievalMetricError(
            f"landform_metrics: {len(class_names)} class names for {n_classes} score rows"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise RetrievalMetricError(f"landform_metrics: labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise RetrievalMetricError(
            f"landform_metrics: labels span {labels.min()}..{labels.max()}, outside "
            f"0..{n_classes - 1}"
        )
    rows = []
    for c, name in enumerate(class_names):
        relevant = labels == c
        n_rel = int(np.count_nonzero(relevant))
        if n_rel == 0:
            rows.append(
                {"class": name, "n_relevant": 0} | dict.fromkeys(LANDFORM_COLUMNS[2:], np.nan)
            )
            continue
        ranked = relevant[descending_order(scores[c])]
        rows.append({"class": name, "n_relevant": n_rel} | ranked_list_metrics(ranked, n_rel))
    table = pd.DataFrame(rows, columns=LANDFORM_COLUMNS)
    scored = table[table["n_relevant"] > 0]
    if scored.empty:
        raise RetrievalMetricError("landform_metrics: no class has items in the database")
    macro = {
        "map": float(scored["ap"].mean()),
        "r_precision": float(scored["r_precision"].mean()),
        "ndcg10": float(scored["ndcg10"].mean()),
        "hit10": float(scored["hit10"].mean()),
        "n_classes": float(len(scored)),
    }
    return macro, table


# --------------------------------------------------------------------------- geo-localization


K_POINTS = 100  # the reference's `points`: about 100 K values when the step is "auto"


def k_step_of(maximum: int, step: int | str = "auto") -> int:
    """The K step for a largest K `maximum`: "auto" is the reference's max(1, maximum // 100)
    (MarsRetrieval GeoLocalizationEvaluator: 200 for the top 20,000); an int is used as is."""
    if step == "auto":
        return max(1, operator.index(maximum) // K_POINTS)
    if isinstance(step, str):
        raise RetrievalMetricError(f"k_grid: step must be 'auto' or an int >= 1, got {step!r}")
    return operator.index(step)


def k_grid(n_predictions: int, top_k: int, step: int | str = "auto") -> list[int]:
    """K = step, 2 step, ... up to max_k = min(top_k, n_predictions), max_k appended if
    off-grid; [max_k] alone when it is below step.

    step "auto" (the reference's rule) is max(1, max_k // 100): top 20,000 gives K = 200, 400,
    ... 20,000; 150 predictions give K = 1..150. An int is a fixed step.
    """
    n_predictions, top_k = map(operator.index, (n_predictions, top_k))
    if n_predictions < 0 or top_k < 1:
        raise RetrievalMetricError(
            f"k_grid: need n_predictions >= 0, top_k >= 1; got {n_predictions}, {top_k}"
        )
    maximum = min(top_k, n_predictions)
    step = k_step_of(maximum, step)
    if step < 1:
        raise RetrievalMetricError(f"k_grid: step must be >= 1, got {step}")
    if maximum < step:
        return [maximum]
    ks = list(range(step, maximum + 1, step))
    if ks[-1] != maximum:
        ks.append(maximum)
    return ks


def geodesic_km(
    lon1: ArrayLike,
    lat1: ArrayLike,
    lon2: ArrayLike,
    lat2: ArrayLike,
    radius_km: float = MARS_RADIUS_KM,
) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (NumPy broadcasting).

    The atan2 form of the spherical distance, written with haversine terms: well conditioned
    for near-identical and for near-antipodal points alike (haversine's asin is not near pi).
    """
    lon1, lat1, lon2, lat2 = (
        np.radians(np.asarray(v, dtype=np.float64)) for v in (lon1, lat1, lon2, lat2)
    )
    hav_lon = np.sin((lon2 - lon1) / 2) ** 2
    dlat = lat2 - lat1
    cos1, cos2 = np.cos(lat1), np.cos(lat2)
    # |p1 x p2| and p1 . p2 of the unit vectors, without the cancellation of the textbook form
    cross = np.hypot(cos2 * np.sin(lon2 - lon1), np.sin(dlat) + 2 * np.sin(lat1) * cos2 * hav_lon)
    dot = np.cos(dlat) - 2 * cos1 * cos2 * hav_lon
    return radius_km * np.arctan2(cross, dot)


class _Space(NamedTuple):
    """Where a metric's neighbour search runs: KD-tree coordinates of predictions and truth,
    the tree-distance band [low, high] around the radius, and the exact within-radius test."""

    pred: np.ndarray
    truth: np.ndarray
    low: float  # tree distance <= low: surely within the radius
    high: float  # tree distance > high: surely not
    within: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (pred, truth) lon/lat, broadcast


def _unit_vectors(lonlat: np.ndarray) -> np.ndarray:
    lon, lat = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def _space(
    pred: np.ndarray, truth: np.ndarray, radius: float, metric: str, sphere_km: float
) -> _Space:
    if metric == "degrees":

        def within(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            d_lon, d_lat = a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]
            return np.sqrt(d_lon * d_lon + d_lat * d_lat) <= radius

        band = _REL_TOL * radius + 1e-10  # degrees; rounding is ~1e-13 at |lon| <= 360
        return _Space(pred, truth, radius - band, radius + band, within)
    if metric == "km":
        if not np.isfinite(sphere_km) or sphere_km <= 0:
            raise RetrievalMetricError(
                f"coverage_curve: sphere radius must be > 0, got {sphere_km}"
            )
        for name, points in (("predicted", pred), ("truth", truth)):
            if points.size and np.abs(points[:, 1]).max() > 90:
                raise RetrievalMetricError(f"coverage_curve: {name} latitudes outside -90..90")

        def within(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return geodesic_km(a[..., 0], a[..., 1], b[..., 0], b[..., 1], sphere_km) <= radius

        # chord between unit vectors of an arc radius/R; the band absorbs the rounding of both
        chord = 2 * np.sin(min(radius / sphere_km, np.pi) / 2)
        band = _REL_TOL * chord + 1e-12
        return _Space(_unit_vectors(pred), _unit_vectors(truth), chord - band, chord + band, within)
    raise RetrievalMetricError(f"coverage_curve: metric must be 'degrees' or 'km', got {metric!r}")


def _prediction_hits(space: _Space, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per prediction: is any truth point within the radius? The nearest truth point decides,
    except inside the rounding band, where every candidate is tested exactly."""
    tree = cKDTree(space.truth)
    dist, _ = tree.query(space.pred, k=1, distance_upper_bound=space.high)
    hits = dist <= space.low
    unsure = np.flatnonzero(~hits & np.isfinite(dist))
    if unsure.size:
        candidates = tree.query_ball_point(space.pred[unsure], space.high)
        counts = np.fromiter(map(len, candidates), dtype=np.int64, count=unsure.size)
        rows = np.repeat(unsure, counts)
        cols = np.concatenate([np.asarray(c, dtype=np.intp) for c in candidates])
        close = space.within(pred[rows], truth[cols])
        hits[np.unique(rows[close])] = True
    return hits


def _first_hit_ranks(space: _Space, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per truth point: the 0-based rank of the first prediction within the radius, or P.

    Predictions are taken in rank-order blocks; a KD-tree on each block counts candidates for
    the truth points not yet hit, and only those are tested exactly against the block.
    """
    n_pred = pred.shape[0]
    first = np.full(truth.shape[0], n_pred, dtype=np.int64)
    pending = np.arange(truth.shape[0])
    for start in range(0, n_pred, _GEO_BLOCK):
        if pending.size == 0:
            break
        stop = min(start + _GEO_BLOCK, n_pred)
        tree = cKDTree(space.pred[start:stop])
        counts = tree.query_ball_point(space.truth[pending], space.high, return_length=True)
        near = pending[counts > 0]
        if near.size == 0:
            continue
        hit = []
        for part in np.array_split(near, -(-near.size * (stop - start) // _GEO_PAIRS)):
            # (prediction, truth) in that order, as everywhere: the distance is not symmetric
            # to the last bit, and a pair must get one verdict
            close = space.within(pred[None, start:stop, :], truth[part][:, None, :])
            found = close.any(axis=1)
            first[part[found]] = start + close[found].argmax(axis=1)
            hit.append(part[found])
        pending = np.setdiff1d(pending, np.concatenate(hit), assume_unique=True)
    return first


def _lonlat(name: str, values: np.ndarray) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise RetrievalMetricError(
            f"coverage_curve: {name} must be (M, 2) lon/lat, got {points.shape}"
        )
    if not np.isfinite(points).all():
        raise RetrievalMetricError(f"coverage_curve: {name} holds NaN or infinite coordinates")
    return points


def coverage_curve(
    predicted_lonlat: np.ndarray,
    truth_lonlat: np.ndarray,
    ks: Sequence[int],
    *,
    radius: float,
    metric: str = "degrees",
    radius_km_sphere: float = MARS_RADIUS_KM,
) -> pd.DataFrame:
    """Precision, recall and F1 of the top-K predictions at each K in `ks`.

    `predicted_lonlat` (P, 2) is in rank order, best first; `truth_lonlat` (G, 2). "Within" is
    distance <= radius: Euclidean in (lon, lat) degrees with no wrap-around for "degrees"
    (radius in degrees, as the reference code), geodesic on the sphere for "km" (radius in km).
    precision = pred_hit / K, recall = gt_hit / G; all zeros when either side is empty.
    Columns: k, precision, recall, f1, pred_hit, gt_hit.
    """
    pred, truth = (
        _lonlat("predicted_lonlat", predicted_lonlat),
        _lonlat("truth_lonlat", truth_lonlat),
    )
    ks_arr = np.array([operator.index(k) for k in ks], dtype=np.int64)
    if not np.isfinite(radius) or radius < 0:
        raise RetrievalMetricError(f"coverage_curve: radius must be >= 0, got {radius}")
    n_pred, n_truth = pred.shape[0], truth.shape[0]
    if (ks_arr < 0).any() or (n_pred > 0 and (ks_arr > n_pred).any()):
        raise RetrievalMetricError(
            f"coverage_curve: every K must lie in 0..{n_pred} (the predictions), "
            f"got {ks_arr.tolist()}"
        )
    space = _space(pred, truth, float(radius), metric, float(radius_km_sphere))
    pred_hit = np.zeros(ks_arr.shape, dtype=np.int64)
    gt_hit = np.zeros(ks_arr.shape, dtype=np.int64)
    if n_pred and n_truth:
        # each K is then a prefix count: hits among the first K, truth points first hit before K
        hits_before = np.concatenate([[0], np.cumsum(_prediction_hits(space, pred, truth))])
        pred_hit = hits_before[ks_arr]
        gt_hit = np.searchsorted(np.sort(_first_hit_ranks(space, pred, truth)), ks_arr, "left")
    precision = np.divide(pred_hit, ks_arr, out=np.zeros(ks_arr.shape), where=ks_arr > 0)
    recall = gt_hit / n_truth if n_truth else np.zeros(ks_arr.shape)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(ks_arr.shape), where=total > 0)
    return pd.DataFrame(
        {
            "k": ks_arr,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "pred_hit": pred_hit.astype(np.int64),
            "gt_hit": gt_hit.astype(np.int64),
        }
    )


def best_f1(curve: pd.DataFrame) -> dict[str, float]:
    """The curve point with the highest F1 (ties: the smallest K): f1, precision, recall, k."""
    if curve.empty:
        raise RetrievalMetricError("best_f1: the curve has no points")
    best = np.lexsort((curve["k"].to_numpy(), -curve["f1"].to_numpy(dtype=np.float64)))[0]
    row = curve.iloc[best]
    return {key: float(row[key]) for key in ("f1", "precision", "recall", "k")}


def auprc(curve: pd.DataFrame) -> float:
    """Area under precision over recall by the trapezoid rule, points sorted by recall then K
    (the reference's sklearn.metrics.auc on recall-sorted points); one point has zero area."""
    if curve.empty:
        raise RetrievalMetricError("auprc: the curve has no points")
    recall = curve["recall"].to_numpy(dtype=np.float64)
    precision = curve["precision"].to_numpy(dtype=np.float64)
    order = np.lexsort((curve["k"].to_numpy(), recall))
    recall, precision = recall[order], precision[order]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))
