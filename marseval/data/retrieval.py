"""Standardize the three MarsRetrieval datasets.

mr-vl_pairs         parquet rows (key, image_url, ori_caption, refined_caption); images are
                    looked up as images/<key>.* in the raw folder (relative URLs resolve there,
                    remote URLs are fetched there by the image fetcher); pairs whose image is
                    listed in the fetcher's fetch_failures.csv are dropped and counted
mr-landforms        parquet rows (image, label) with ClassLabel names in the schema metadata
mr-geolocalization  ground_truth/<landform>.csv (lon, lat), image_queries/<landform>/*,
                    mars_map/*.tif (the global mosaic, optional for real data: it is tiled
                    from the CTX mosaic)

All rows are evaluation data, so split is "test" throughout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from marseval import __version__
from marseval.atomic import atomic_directory, atomic_write_json
from marseval.data.image_fetch import FAILURES_FILE, find_image, read_failures
from marseval.data.layouts.huggingface import _class_names, _image
from marseval.data.layouts.zenodo import IMAGE_SUFFIXES
from marseval.data.records import ImageRef
from marseval.data.standardize import link_or_copy
from marseval.data.validate import image_info, read_image
from marseval.errors import DataError
from marseval.registry import DatasetSpec

log = logging.getLogger(__name__)
PAIR_COLUMNS = ("key", "image_url", "ori_caption", "refined_caption")


def _parquet_rows(root: Path, spec: DatasetSpec) -> tuple[list[dict], list[str] | None, Path]:
    paths = sorted(root.rglob("*.parquet"))
    if not paths:
        raise DataError(spec.name, "no parquet files in the raw download", file=str(root))
    rows: list[dict] = []
    for path in paths:
        try:
            rows.extend({**r, "_where": f"{path}#row{i}"}
                        for i, r in enumerate(pq.read_table(path).to_pylist()))
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(spec.name, f"unreadable parquet ({exc})", file=str(path)) from None
    return rows, _class_names(paths[0]), paths[0]


def standardize_retrieval(raw_dir: Path, out_dir: Path, spec: DatasetSpec,
                          source: str) -> dict[str, Any]:
    builders = {"paired": _pairs, "landform": _landforms, "geolocalization": _geolocalization}
    with atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        meta = builders[spec.subtask](raw_dir, tmp, spec)
        meta.update({"name": spec.name, "task": spec.task, "subtask": spec.subtask,
                     "source": source, "marseval_version": __version__})
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _copy_image(ref: ImageRef, tmp: Path, sample_id: str, spec: DatasetSpec,
                origin: str = "") -> tuple[str, Any]:
    info = image_info(read_image(ref, spec.name, "test", origin))
    relative = f"images/{sample_id}{ref.suffix}"
    link_or_copy(ref, tmp / relative)
    return relative, info


def _complete(row: dict) -> bool:
    # the reference conversion skips incomplete rows too
    return bool(row["image_url"] and row["ori_caption"] and row["refined_caption"])


def _pair_rows(raw_dir: Path, spec: DatasetSpec) -> tuple[list[dict], int, Path]:
    """The complete rows of the pair parquet files, how many were incomplete, the first file."""
    rows, _, first = _parquet_rows(raw_dir, spec)
    missing = [c for c in PAIR_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise DataError(spec.name, f"parquet lacks column(s) {missing}", file=str(first))
    complete = [r for r in rows if _complete(r)]
    return complete, len(rows) - len(complete), first


def pair_image_urls(raw_dir: Path, spec: DatasetSpec) -> list[tuple[str, str]]:
    """(key, image_url) of every pair the standardizer would keep: what the fetcher fetches."""
    rows, _, _ = _pair_rows(raw_dir, spec)
    return [(str(r["key"]), str(r["image_url"])) for r in rows]


def _unfetched_keys(raw_dir: Path, spec: DatasetSpec) -> set[str]:
    path = raw_dir / FAILURES_FILE
    try:
        return {key for key, _, _ in read_failures(path)}
    except ValueError as exc:
        raise DataError(spec.name, f"malformed image failure list ({exc})",
                        file=str(path)) from None


def _pairs(raw_dir: Path, tmp: Path, spec: DatasetSpec) -> dict[str, Any]:
    rows, dropped, first = _pair_rows(raw_dir, spec)
    unfetched = _unfetched_keys(raw_dir, spec)
    out, lost = [], 0
    for row in rows:
        key = str(row["key"])
        local = find_image(raw_dir / "images", key)
        if local is None and key in unfetched:
            lost += 1  # a dead link: the paper's crawl loses those too
            continue
        if local is None:
            raise DataError(spec.name, f"image for key {key!r} ({row['image_url']}) has not "
                            "been fetched into images/", split="test", file=row["_where"])
        image, info = _copy_image(ImageRef(local.name, path=local), tmp, key, spec)
        out.append({"sample_id": key, "split": "test", "image": image, "width": info.width,
                    "height": info.height, "caption": row["refined_caption"],
                    "ori_caption": row["ori_caption"], "image_url": row["image_url"]})
    if lost:
        log.warning("%s: dropped %d of %d pairs whose image could not be fetched (see %s)",
                    spec.name, lost, len(rows), raw_dir / FAILURES_FILE)
    if not out:
        why = f"; all {lost} images failed to fetch" if lost else ""
        raise DataError(spec.name, f"no complete image-caption pairs{why}", split="test",
                        file=str(raw_dir / FAILURES_FILE if why else first))
    _unique(out, spec, first)
    pd.DataFrame(out).to_parquet(tmp / "samples.parquet", index=False)
    return {"splits": {"test": len(out)}, "dropped_incomplete_rows": dropped,
            "dropped_unfetched_images": lost}


def _unique(rows: list[dict], spec: DatasetSpec, where: Path) -> None:
    ids = [r["sample_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1)
        raise DataError(spec.name, f"duplicate sample id {dupe!r}", file=str(where))


def _landforms(raw_dir: Path, tmp: Path, spec: DatasetSpec) -> dict[str, Any]:
    rows, names, first = _parquet_rows(raw_dir, spec)
    classes = names or (list(spec.classes) if spec.classes else None)
    if classes is None:
        raise DataError(spec.name, "no class names: neither ClassLabel metadata nor registry",
                        file=str(first))
    out = []
    for index, row in enumerate(rows):
        ref = _image(row.get("image"), f"{index:06d}.png", spec.name, "test", row["_where"])
        label = row.get("label")
        if not isinstance(label, int) or not 0 <= label < len(classes):
            raise DataError(spec.name, f"label {label!r} is outside the class list "
                            f"(0..{len(classes) - 1})", split="test", file=row["_where"])
        sample_id = str(row.get("image_id") or row.get("id") or f"{index:06d}")
        image, info = _copy_image(ref, tmp, sample_id, spec, row["_where"])
        out.append({"sample_id": sample_id, "split": "test", "image": image, "label": label,
                    "width": info.width, "height": info.height})
    _unique(out, spec, first)
    pd.DataFrame(out).to_parquet(tmp / "samples.parquet", index=False)
    return {"classes": classes, "splits": {"test": len(out)}}


def _geolocalization(raw_dir: Path, tmp: Path, spec: DatasetSpec) -> dict[str, Any]:
    truth_dir = raw_dir / "ground_truth"
    files = sorted(truth_dir.glob("*.csv"))
    if not files:
        raise DataError(spec.name, "no ground_truth/<landform>.csv files", file=str(truth_dir))
    classes = [f.stem for f in files]
    points = []
    for label, csv in enumerate(files):
        try:
            frame = pd.read_csv(csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(spec.name, f"malformed ground-truth file ({exc})",
                            file=str(csv)) from None
        if not {"lon", "lat"} <= set(frame.columns):
            raise DataError(spec.name, f"ground truth lacks lon/lat columns (has "
                            f"{list(frame.columns)})", file=str(csv))
        lon = pd.to_numeric(frame["lon"], errors="coerce")
        lat = pd.to_numeric(frame["lat"], errors="coerce")
        bad = ~(lon.between(-180, 360) & lat.between(-90, 90))
        if bad.any():
            row = int(bad.idxmax()) + 2
            raise DataError(spec.name, f"row {row}: lon/lat {frame['lon'][row - 2]!r}, "
                            f"{frame['lat'][row - 2]!r} is not a position on Mars",
                            file=str(csv))
        # some sources use 0..360 east longitudes; everything downstream uses -180..180
        lon = ((lon + 180) % 360) - 180
        points += [{"landform": csv.stem, "label": label, "lon": float(x), "lat": float(y)}
                   for x, y in zip(lon, lat, strict=True)]
    pd.DataFrame(points).to_parquet(tmp / "ground_truth.parquet", index=False)

    queries = []
    for label, landform in enumerate(classes):
        folder = raw_dir / "image_queries" / landform
        images = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in images:
            sample_id = f"{landform}-{path.stem}"
            image, info = _copy_image(ImageRef(path.name, path=path), tmp, sample_id, spec)
            queries.append({"sample_id": sample_id, "split": "test", "image": image,
                            "label": label, "width": info.width, "height": info.height})
    pd.DataFrame(queries, columns=["sample_id", "split", "image", "label", "width", "height"]
                 ).to_parquet(tmp / "samples.parquet", index=False)
    return {"classes": classes, "splits": {"test": len(queries)},
            "ground_truth_points": len(points), "mosaic": _mosaic(raw_dir, tmp, spec)}


def _mosaic(raw_dir: Path, tmp: Path, spec: DatasetSpec) -> dict[str, Any] | None:
    import rasterio

    found = sorted((raw_dir / "mars_map").glob("*.tif"))
    if not found:
        log.warning("%s: no mars_map/*.tif mosaic; tiles must come from the CTX mosaic",
                    spec.name)
        return None
    path = found[0]
    try:
        with rasterio.open(path) as src:
            bounds, shape, crs = src.bounds, (src.height, src.width), src.crs
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(spec.name, f"unreadable mosaic ({exc})", file=str(path)) from None
    (tmp / "mosaic").mkdir()
    link_or_copy(ImageRef(path.name, path=path), tmp / "mosaic" / path.name)
    return {"path": f"mosaic/{path.name}", "height": shape[0], "width": shape[1],
            "bounds": [bounds.left, bounds.bottom, bounds.right, bounds.top],
            "crs": crs.to_string() if crs else None}
