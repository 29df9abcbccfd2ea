"""The `evaluate` stage: one model on one retrieval task, from its index and queries.

Writes a folder: `metrics.json` always; per task also `per_class.csv` (landform),
`curves.parquet` and `retrieved.parquet` (geo-localization: precision/recall over K, and the
ranked tiles behind the maps). Geo-localization scores the registry's landforms only (the
reference's five; `queries.scored_landforms`). A model that cannot do a task (a vision-only
model on paired retrieval) gets a record with `applicable: false` and the reason, so summary
tables show it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marseval.atomic import atomic_directory, atomic_write_json
from marseval.errors import MarsevalError
from marseval.retrieval import metrics
from marseval.retrieval.embed import read_meta
from marseval.retrieval.index import SearchIndex
from marseval.retrieval.queries import read_queries, scored_landforms
from marseval.retrieval.tiles import tile_locations


@dataclass(frozen=True)
class GeoOptions:
    radius_deg: float = 0.5
    radius_km: float | None = None  # None: the arc of radius_deg on the Mars sphere
    top_k: int = 20000
    k_step: int | str = "auto"  # "auto": the reference's max(1, max_k // 100)
    convention: str = "centre"

    @property
    def km(self) -> float:
        if self.radius_km is not None:
            return self.radius_km
        return math.radians(self.radius_deg) * metrics.MARS_RADIUS_KM


def evaluate(dataset_dir: Path, index_dir: Path, out: Path, *, model: str,
             queries_path: Path | None = None, geo: GeoOptions = GeoOptions()) -> dict:
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir)
    index = SearchIndex.load(Path(index_dir))
    task = meta["subtask"]
    record: dict[str, Any] = {"dataset": meta["name"], "task": task, "model": model,
                              "database_size": index.ntotal, "embedding_dim": index.dim}
    with atomic_directory(out) as tmp:
        if task == "paired":
            record.update(_paired(index))
        else:
            if queries_path is None:
                raise MarsevalError(f"{task} evaluation needs the queries file of {model}")
            queries, classes = read_queries(Path(queries_path))
            if task == "landform":
                record.update(_landform(index, queries, classes, tmp))
            else:
                truth = pd.read_parquet(dataset_dir / "ground_truth.parquet")
                record.update(_geolocalization(index, queries, classes, truth, geo, tmp,
                                               meta))
        atomic_write_json(tmp / "metrics.json", record)
    return record


def _paired(index: SearchIndex) -> dict[str, Any]:
    if "text_embeddings" not in index.info.get("extras", []):
        return {"applicable": False, "reason": "vision-only model: no caption embeddings"}
    images = np.asarray(index.embeddings(), dtype=np.float32)
    return {"applicable": True,
            "metrics": metrics.paired_metrics(images, index.extra("text_embeddings"))}


def _full_scores(index: SearchIndex, queries: np.ndarray) -> np.ndarray:
    """(Q, N) scores of every database item; items an approximate index skips get -inf."""
    scores, positions = index.search(queries, index.ntotal)
    full = np.full((len(queries), index.ntotal), -np.inf, dtype=np.float32)
    for row, (s, p) in enumerate(zip(scores, positions, strict=True)):
        keep = p >= 0
        full[row, p[keep]] = s[keep]
    return full


def _landform(index: SearchIndex, queries: dict[str, np.ndarray], classes: list[str],
              tmp: Path) -> dict[str, Any]:
    if "text" not in queries:
        return {"applicable": False, "reason": "vision-only model: no text queries"}
    labels = index.ids["label"].to_numpy()
    macro, per_class = metrics.landform_metrics(_full_scores(index, queries["text"]), labels,
                                                classes)
    per_class.to_csv(tmp / "per_class.csv", index=False)
    return {"applicable": True, "metrics": macro}


def _truth_of(truth: pd.DataFrame, landform: str, meta: dict) -> np.ndarray:
    """The ground-truth lon/lat of one landform: by name, or by its label in the dataset."""
    if "landform" in truth.columns:
        rows = truth["landform"] == landform
    else:
        rows = truth["label"] == list(meta["classes"]).index(landform)
    return truth.loc[rows, ["lon", "lat"]].to_numpy(np.float64)


def _geolocalization(index: SearchIndex, queries: dict[str, np.ndarray], classes: list[str],
                     truth: pd.DataFrame, geo: GeoOptions, tmp: Path,
                     meta: dict) -> dict[str, Any]:
    locations = tile_locations(index.ids, geo.convention)
    top_k = min(geo.top_k, index.ntotal)
    ks = metrics.k_grid(index.ntotal, top_k, geo.k_step)
    scored = scored_landforms(meta, classes)
    rows = [classes.index(landform) for landform in scored]
    results: dict[str, Any] = {}
    curves, retrieved = [], []
    for mode, vectors in queries.items():
        found_scores, found = index.search(vectors[rows], top_k)
        per_landform = {}
        for row, landform in enumerate(scored):
            ranked = found[row][found[row] >= 0]
            points = _truth_of(truth, landform, meta)
            predicted = locations[ranked]
            entry = {"n_truth": len(points)}
            for metric, radius in (("degrees", geo.radius_deg), ("km", geo.km)):
                curve = metrics.coverage_curve(predicted, points, ks, radius=radius,
                                               metric=metric)
                entry[metric] = {**metrics.best_f1(curve), "auprc": metrics.auprc(curve)}
                curves.append(curve.assign(mode=mode, landform=landform, metric=metric))
            per_landform[landform] = entry
            retrieved.append(pd.DataFrame({
                "mode": mode, "landform": landform, "rank": np.arange(1, len(ranked) + 1),
                "id": index.ids["id"].to_numpy()[ranked], "lon": predicted[:, 0],
                "lat": predicted[:, 1], "score": found_scores[row][: len(ranked)]}))
        results[mode] = {"per_landform": per_landform, "mean": _mean_over(per_landform)}
    if "landform" in truth.columns:
        truth = truth[truth["landform"].isin(scored)]
    truth.to_parquet(tmp / "ground_truth.parquet", index=False)  # the maps draw it
    pd.concat(curves, ignore_index=True).to_parquet(tmp / "curves.parquet", index=False)
    pd.concat(retrieved, ignore_index=True).to_parquet(tmp / "retrieved.parquet", index=False)
    return {"applicable": True, "modes": list(queries), "landforms": scored, "ks": ks,
            "k_step": geo.k_step,
            "radius_deg": geo.radius_deg, "radius_km": geo.km, "top_k": top_k,
            "location": geo.convention, "metrics": results}


def _mean_over(per_landform: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Means over landforms of each metric variant (the paper reports per landform and mean)."""
    mean = {}
    for metric in ("degrees", "km"):
        keys = ("f1", "precision", "recall", "auprc")
        mean[metric] = {k: float(np.mean([e[metric][k] for e in per_landform.values()]))
                        for k in keys}
    return mean
