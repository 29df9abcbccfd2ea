"""Standardize the three MarsRetrieval datasets.

mr-vl_pairs         parquet rows (key, image_url, ori_caption, refined_caption); images are
                    looked up as images/<sample id>.* in the raw folder (relative URLs resolve
                    there, remote URLs are fetched there by the image fetcher); the sample id is
                    the key, a repeated key k becoming k_1, k_2... (the reference numbers its
                    samples, so it keeps every row). Pairs whose image is listed in the
                    fetcher's fetch_failures.csv, does not decode or is absurdly large are
                    dropped and counted. Each image is written as img2dataset writes it for the
                    reference (--image_size 512 --resize_mode center_crop: a 512x512 JPEG),
                    or copied as it is (pair_resize_mode "keep")
mr-landforms        parquet rows (image, label) with ClassLabel names in the schema metadata
mr-geolocalization  ground_truth/<landform>.csv (lon, lat), image_queries/<landform>/*.
                    Longitudes are used as given unless wrap_longitudes: then those above
                    180 (0..360 east) move to -180..180. The dataset's mars_map/ basemap is
                    not used, as in the reference: the database is cut from the CTX mosaic
                    (marseval.retrieval.ctx)

All rows are evaluation data, so split is "test" throughout.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from marseval import __version__
from marseval.atomic import atomic_directory, atomic_write_json
from marseval.data.image_fetch import (
    FAILURES_FILE,
    TooManyPixels,
    find_image,
    img2dataset_center_crop,
    open_image,
    read_failures,
)
from marseval.data.layouts.huggingface import _class_names, _image
from marseval.data.records import ImageRef
from marseval.data.standardize import fetched_revision, link_or_copy
from marseval.data.validate import image_info, read_image
from marseval.errors import DataError
from marseval.registry import DatasetSpec

log = logging.getLogger(__name__)
PAIR_COLUMNS = ("key", "image_url", "ori_caption", "refined_caption")
PAIR_RESIZE_MODES = ("center_crop", "keep")
# the reference's query images (queries/geolocalization.py): one folder, not recursive, sorted
QUERY_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class RetrievalOptions:
    """How raw MarsRetrieval data is standardized; the defaults are the reference's."""

    pair_image_size: int = 512  # img2dataset --image_size
    pair_resize_mode: str = "center_crop"  # img2dataset --resize_mode; "keep": copy as is
    wrap_longitudes: bool = False  # move ground-truth longitudes above 180 to -180..180

    def __post_init__(self) -> None:
        if self.pair_resize_mode not in PAIR_RESIZE_MODES:
            raise ValueError(f"pair_resize_mode must be one of {PAIR_RESIZE_MODES}, not "
                             f"{self.pair_resize_mode!r}")
        if self.pair_image_size < 1:
            raise ValueError(f"pair_image_size must be positive, not {self.pair_image_size}")


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


def standardize_retrieval(raw_dir: Path, out_dir: Path, spec: DatasetSpec, source: str,
                          options: RetrievalOptions | None = None) -> dict[str, Any]:
    builders = {"paired": _pairs, "landform": _landforms, "geolocalization": _geolocalization}
    options = options or RetrievalOptions()
    with atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        meta = builders[spec.subtask](raw_dir, tmp, spec, options)
        meta.update({"name": spec.name, "task": spec.task, "subtask": spec.subtask,
                     "source": source, "marseval_version": __version__,
                     "fetched": fetched_revision(raw_dir)})
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
    """(sample id, image_url) of every pair the standardizer would keep: what the fetcher
    fetches, each image under its sample id (a repeated key has its own)."""
    rows, _, _ = _pair_rows(raw_dir, spec)
    ids, _ = _sample_ids([str(r["key"]) for r in rows])
    return [(i, str(r["image_url"])) for i, r in zip(ids, rows, strict=True)]


def _sample_ids(keys: list[str]) -> tuple[list[str], dict[str, str]]:
    """Each key as its sample id, but a key already used becomes k_1, k_2... (the first
    suffix no other key has): the reference ignores the keys and numbers its samples, so a
    repeated key is a sample of its own. Also returns {new id: key} of the renamed."""
    taken, used = set(keys), set()
    ids, renamed = [], {}
    for key in keys:
        sample_id, n = key, 0
        while sample_id in used or (n and sample_id in taken):
            n += 1
            sample_id = f"{key}_{n}"
        if n:
            renamed[sample_id] = key
            taken.add(sample_id)
        used.add(sample_id)
        ids.append(sample_id)
    return ids, renamed


def _unfetched_keys(raw_dir: Path, spec: DatasetSpec) -> set[str]:
    path = raw_dir / FAILURES_FILE
    try:
        return {key for key, _, _ in read_failures(path)}
    except ValueError as exc:
        raise DataError(spec.name, f"malformed image failure list ({exc})",
                        file=str(path)) from None


def _pairs(raw_dir: Path, tmp: Path, spec: DatasetSpec,
           options: RetrievalOptions) -> dict[str, Any]:
    rows, incomplete, first = _pair_rows(raw_dir, spec)
    ids, renamed = _sample_ids([str(r["key"]) for r in rows])
    if renamed:
        example = next(iter(renamed.items()))
        log.warning("%s: %d repeated key(s) kept as samples of their own, with a suffix "
                    "(e.g. %r as %r)", spec.name, len(renamed), example[1], example[0])
    unfetched = _unfetched_keys(raw_dir, spec)
    out, dropped = [], Counter()
    for sample_id, row in zip(ids, rows, strict=True):
        local = find_image(raw_dir / "images", sample_id)
        if local is None and sample_id in unfetched:
            dropped["unfetched"] += 1  # a dead link: the paper's crawl loses those too
            continue
        if local is None:
            raise DataError(spec.name, f"image for key {sample_id!r} ({row['image_url']}) has "
                            "not been fetched into images/", split="test", file=row["_where"])
        try:
            image, size, original = _pair_image(local, tmp, sample_id, options)
        except _Dropped as exc:
            # img2dataset drops what it cannot decode; the fetcher checked, so this is rare
            dropped[exc.kind] += 1
            log.warning("%s: dropped pair %r: %s (%s)", spec.name, sample_id, exc, local)
            continue
        out.append({"sample_id": sample_id, "split": "test", "image": image, "width": size[0],
                    "height": size[1], "original_width": original[0],
                    "original_height": original[1], "caption": row["refined_caption"],
                    "ori_caption": row["ori_caption"], "image_url": row["image_url"]})
    if dropped["unfetched"]:
        log.warning("%s: dropped %d of %d pairs whose image could not be fetched (see %s)",
                    spec.name, dropped["unfetched"], len(rows), raw_dir / FAILURES_FILE)
    counts = {"dropped_incomplete_rows": incomplete,
              "dropped_unfetched_images": dropped["unfetched"],
              "dropped_undecodable_images": dropped["undecodable"],
              "dropped_oversized_images": dropped["oversized"],
              "renamed_duplicate_keys": len(renamed)}
    log.info("%s: %d pairs kept of %d rows (%s)", spec.name, len(out), len(rows) + incomplete,
             ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
    if not out:
        lost = dropped["unfetched"]
        why = f"; all {lost} images failed to fetch" if lost and lost == len(rows) else (
            f"; {lost} failed to fetch, {dropped['undecodable']} did not decode, "
            f"{dropped['oversized']} too large" if rows else "")
        raise DataError(spec.name, f"no complete image-caption pairs{why}", split="test",
                        file=str(raw_dir / FAILURES_FILE if lost else first))
    _unique(out, spec, first)
    pd.DataFrame(out).to_parquet(tmp / "samples.parquet", index=False)
    return {"splits": {"test": len(out)}, **counts,
            "pair_resize_mode": options.pair_resize_mode,
            "pair_image_size": (options.pair_image_size
                                if options.pair_resize_mode != "keep" else None)}


class _Dropped(Exception):
    """A pair image left out, as img2dataset leaves it out; `kind` names the count."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _pair_image(local: Path, tmp: Path, sample_id: str, options: RetrievalOptions
                ) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The standardized image of one pair: its path in the dataset folder, its (width,
    height) and that of the raw image; _Dropped for what img2dataset would not keep."""
    data = local.read_bytes()
    try:
        if options.pair_resize_mode == "keep":
            with open_image(data) as image:
                image.load()
                original = image.size
            relative = f"images/{sample_id}{local.suffix.lower()}"
            link_or_copy(ImageRef(local.name, path=local), tmp / relative)
            return relative, original, original
        jpeg, original = img2dataset_center_crop(data, options.pair_image_size)
    except TooManyPixels as exc:
        raise _Dropped("oversized", str(exc)) from None
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises many types for a broken image
        raise _Dropped("undecodable", f"image does not decode ({exc})") from None
    relative = f"images/{sample_id}.jpg"
    (tmp / relative).write_bytes(jpeg)
    return relative, (options.pair_image_size, options.pair_image_size), original


def _unique(rows: list[dict], spec: DatasetSpec, where: Path) -> None:
    ids = [r["sample_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1)
        raise DataError(spec.name, f"duplicate sample id {dupe!r}", file=str(where))


def _landforms(raw_dir: Path, tmp: Path, spec: DatasetSpec,
               options: RetrievalOptions) -> dict[str, Any]:
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


def _geolocalization(raw_dir: Path, tmp: Path, spec: DatasetSpec,
                     options: RetrievalOptions) -> dict[str, Any]:
    truth_dir = raw_dir / "ground_truth"
    files = sorted(truth_dir.glob("*.csv"))
    if not files:
        raise DataError(spec.name, "no ground_truth/<landform>.csv files", file=str(truth_dir))
    classes = [f.stem for f in files]
    points, above_180, wrapped = [], 0, 0
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
        # used as given, as the reference does; some sources use 0..360 east longitudes,
        # where everything downstream (tile names) uses -180..180: wrapping is an option
        above = lon > 180
        above_180 += int(above.sum())
        if options.wrap_longitudes and above.any():
            lon = lon.where(~above, lon - 360)
            wrapped += int(above.sum())
        points += [{"landform": csv.stem, "label": label, "lon": float(x), "lat": float(y)}
                   for x, y in zip(lon, lat, strict=True)]
    pd.DataFrame(points).to_parquet(tmp / "ground_truth.parquet", index=False)
    if options.wrap_longitudes:
        log.info("%s: wrapped %d of %d ground-truth longitudes from above 180 to -180..180",
                 spec.name, wrapped, len(points))
    elif above_180:
        log.warning("%s: %d of %d ground-truth longitudes lie above 180 (0..360 east?) and are "
                    "used as given: no tile (named in -180..180) is near them; set "
                    "dataset_options.%s.wrap_longitudes to wrap them", spec.name, above_180,
                    len(points), spec.name)

    queries = []
    for label, landform in enumerate(classes):
        folder = raw_dir / "image_queries" / landform
        images = sorted(p for p in folder.glob("*") if p.suffix.lower() in QUERY_SUFFIXES)
        for path in images:
            sample_id = f"{landform}-{path.stem}"
            image, info = _copy_image(ImageRef(path.name, path=path), tmp, sample_id, spec)
            queries.append({"sample_id": sample_id, "split": "test", "image": image,
                            "label": label, "width": info.width, "height": info.height})
    pd.DataFrame(queries, columns=["sample_id", "split", "image", "label", "width", "height"]
                 ).to_parquet(tmp / "samples.parquet", index=False)
    return {"classes": classes, "splits": {"test": len(queries)},
            "ground_truth_points": len(points), "wrap_longitudes": options.wrap_longitudes,
            "longitudes_above_180": above_180, "longitudes_wrapped": wrapped}

