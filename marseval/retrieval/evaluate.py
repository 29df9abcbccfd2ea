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
from marseval.retrieval.queries import scored_landforms
from marseval.retrieval.search import Rankings, depth, rankings_of_index, read_rankings
from marseval.retrieval.shards import load_npy, read_json
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


def evaluate(dataset_dir: Path, index_dir: Path | None, out: Path, *, model: str,
             queries_path: Path | None = None, geo: GeoOptions = GeoOptions(),
             rankings_dir: Path | None = None, shard_dirs: list[Path] | None = None) -> dict:
    """Score one model on a dataset's task. The database comes as one merged index folder
    (`index_dir`: the queries are searched here), or in the sharded layout as the merged
    search results (`rankings_dir`, landform and geo-localization) or the embedding shards
    themselves (`shard_dirs`, paired: ranks are scored shard by shard)."""
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir)
    task = meta["subtask"]
    record: dict[str, Any] = {"dataset": meta["name"], "task": task, "model": model}
    with atomic_directory(out) as tmp:
        if task == "paired":
            record.update(_paired(_pair_parts(index_dir, shard_dirs)))
        else:
            k = None if task == "landform" else geo.top_k
            rankings = _rankings(index_dir, rankings_dir, queries_path, k, model, task)
            record.update(database_size=rankings.ntotal, embedding_dim=rankings.dim,
                          index_kinds=rankings.info["kinds"],
                          index_recall_at_10=rankings.info["min_recall_at_10_vs_exact"])
            if task == "landform":
                record.update(_landform(rankings, tmp))
            else:
                truth = pd.read_parquet(dataset_dir / "ground_truth.parquet")
                record.update(_geolocalization(rankings, truth, geo, tmp, meta))
        atomic_write_json(tmp / "metrics.json", record)
    return record


def _rankings(index_dir: Path | None, rankings_dir: Path | None, queries_path: Path | None,
              k: int | None, model: str, task: str) -> Rankings:
    """The top k (None: all) of every query: searched here in the merged index, or read from
    the sharded layout's merged results (which must hold at least that many)."""
    if rankings_dir is not None:
        rankings = read_rankings(Path(rankings_dir))
        needed = depth(k, rankings.ntotal)
        if rankings.k < needed:
            raise MarsevalError(f"rankings {rankings_dir} hold the top {rankings.k} of each "
                                f"query; {task} evaluation needs {needed} (search again: "
                                "snakemake --forcerun search)")
        return rankings
    if index_dir is None or queries_path is None:
        raise MarsevalError(f"{task} evaluation of {model} needs its queries file and index, "
                            "or the merged search results (--rankings)")
    return rankings_of_index(SearchIndex.load(Path(index_dir)), Path(queries_path), k)


def _pair_parts(index_dir: Path | None,
                shard_dirs: list[Path] | None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """(images, captions) embeddings of every shard, memory-mapped; None for a vision-only
    model (no caption embeddings)."""
    folders = [Path(d) for d in shard_dirs] if shard_dirs else [Path(index_dir)]
    parts = []
    for folder in folders:
        meta = read_json(folder / ("shard.json" if shard_dirs else "index.json"))
        if "text_embeddings" not in meta.get("extras", []):
            return None
        parts.append((load_npy(folder / "embeddings.npy", mmap=True),
                      load_npy(folder / "text_embeddings.npy", mmap=True)))
    return parts


def _paired(parts: list[tuple[np.ndarray, np.ndarray]] | None) -> dict[str, Any]:
    if parts is None:
        return {"applicable": False, "reason": "vision-only model: no caption embeddings"}
    return {"applicable": True, "database_size": sum(len(images) for images, _ in parts),
            "embedding_dim": int(parts[0][0].shape[1]),
            "metrics": metrics.paired_metrics_of_parts(parts)}


def _full_scores(scores: np.ndarray, positions: np.ndarray, ntotal: int) -> np.ndarray:
    """(Q, N) scores of every database item; items an approximate index skips get -inf."""
    full = np.full((len(scores), ntotal), -np.inf, dtype=np.float32)
    for row, (s, p) in enumerate(zip(scores, positions, strict=True)):
        keep = p >= 0
        full[row, p[keep]] = s[keep]
    return full


def _landform(rankings: Rankings, tmp: Path) -> dict[str, Any]:
    if "text" not in rankings.results:
        return {"applicable": False, "reason": "vision-only model: no text queries"}
    labels = rankings.ids["label"].to_numpy()
    scores = _full_scores(*rankings.results["text"], rankings.ntotal)
    macro, per_class = metrics.landform_metrics(scores, labels, rankings.classes)
    per_class.to_csv(tmp / "per_class.csv", index=False)
    return {"applicable": True, "metrics": macro}


def _truth_of(truth: pd.DataFrame, landform: str, meta: dict) -> np.ndarray:
    """The ground-truth lon/lat of one landform: by name, or by its label in the dataset."""
    if "landform" in truth.columns:
        rows = truth["landform"] == landform
    else:
        rows = truth["label"] == list(meta["classes"]).index(landform)
    return truth.loc[rows, ["lon", "lat"]].to_numpy(np.float64)


def _geolocalization(rankings: Rankings, truth: pd.DataFrame, geo: GeoOptions, tmp: Path,
                     meta: dict) -> dict[str, Any]:
    locations = tile_locations(rankings.ids, geo.convention)
    top_k = min(geo.top_k, rankings.ntotal)
    ks = metrics.k_grid(rankings.ntotal, top_k, geo.k_step)
    scored = scored_landforms(meta, rankings.classes)
    rows = [rankings.classes.index(landform) for landform in scored]
    results: dict[str, Any] = {}
    curves, retrieved = [], []
    for mode, (all_scores, all_found) in rankings.results.items():
        found_scores, found = all_scores[rows, :top_k], all_found[rows, :top_k]
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
                "id": rankings.ids["id"].to_numpy()[ranked], "lon": predicted[:, 0],
                "lat": predicted[:, 1], "score": found_scores[row][: len(ranked)]}))
        results[mode] = {"per_landform": per_landform, "mean": _mean_over(per_landform)}
    if "landform" in truth.columns:
        truth = truth[truth["landform"].isin(scored)]
    truth.to_parquet(tmp / "ground_truth.parquet", index=False)  # the maps draw it
    pd.concat(curves, ignore_index=True).to_parquet(tmp / "curves.parquet", index=False)
    pd.concat(retrieved, ignore_index=True).to_parquet(tmp / "retrieved.parquet", index=False)
    return {"applicable": True, "modes": list(rankings.results), "landforms": scored, "ks": ks,
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
