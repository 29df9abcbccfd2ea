"""Write the standardized dataset folder `results/data/{dataset}/` from a raw download.

meta.json, samples.parquet, subsets.json, images/ (and masks/, images_after/): the formats of
DESIGN.md. Everything is validated first and written into a temporary sibling folder that is
renamed at the end, so bad input leaves nothing under the target.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from marseval import __version__
from marseval.atomic import atomic_directory, atomic_write_json
from marseval.data.layouts import read_raw
from marseval.data.records import ImageRef, RawDataset, RawSample
from marseval.data.subsets import make_subsets
from marseval.data.validate import check_sample, mask_class_usage
from marseval.errors import DataError, MarsevalError
from marseval.registry import SPLITS, DatasetSpec, get_dataset

log = logging.getLogger(__name__)


def link_or_copy(ref: ImageRef, dest: Path) -> None:
    """Hard-link raw files (no second copy of a large dataset), copy across devices."""
    if ref.path is None:
        dest.write_bytes(ref.read())
        return
    try:
        os.link(ref.path, dest)
    except OSError:
        shutil.copyfile(ref.path, dest)


def assign_ids(samples: list[RawSample], dataset: str) -> list[str]:
    """Sample ids from file stems; split-prefixed where a stem repeats across splits."""
    stems = Counter(s.stem for s in samples)
    ids = [s.stem if stems[s.stem] == 1 else f"{s.split}-{s.stem}" for s in samples]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise DataError(dataset, f"{len(dupes)} duplicate image name(s) within a split, "
                        f"e.g. {dupes[0]!r}")
    return ids


def resolve_classes(raw: RawDataset, spec: DatasetSpec) -> list[str]:
    """Class names from the data where it names them, else from the registry."""
    if raw.classes and (spec.num_classes is None or len(raw.classes) == spec.num_classes):
        return list(raw.classes)
    if raw.classes:
        log.warning("%s: the data names %d classes, the registry %d; using the registry's",
                    spec.name, len(raw.classes), spec.num_classes)
    return spec.class_names()


def fetched_revision(raw_dir: Path) -> dict[str, Any] | None:
    """The repository and commit a Hugging Face download fetched (None for other sources)."""
    from marseval.fetch import SOURCE_RECORD

    path = Path(raw_dir) / SOURCE_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as exc:
        raise MarsevalError(f"{path}: unreadable download record ({exc})") from None


def standardize(
    raw_dir: Path,
    out_dir: Path,
    dataset: str,
    source: str,
    fractions: list[float],
    fewshot: list[int],
    seed: int = 0,
    detection_format: str | None = None,
    strict_counts: bool = False,
    retrieval_options: Any = None,
) -> dict[str, Any]:
    """Validate the raw dataset in `raw_dir` and write the standardized folder `out_dir`.

    `retrieval_options` (marseval.data.retrieval.RetrievalOptions) apply to retrieval
    datasets; None: the reference's settings."""
    spec = get_dataset(dataset)
    if spec.task == "retrieval":
        from marseval.data.retrieval import standardize_retrieval

        return standardize_retrieval(raw_dir, out_dir, spec, source, retrieval_options)
    raw = read_raw(raw_dir, spec, detection_format=detection_format)
    classes = resolve_classes(raw, spec)
    num_classes = len(classes) or None

    by_split = Counter(s.split for s in raw.samples)
    for split in SPLITS:
        if by_split[split] == 0:
            raise DataError(dataset, "split is empty", split=split, file=str(raw_dir))
    ids = assign_ids(raw.samples, dataset)
    infos = [check_sample(s, dataset, num_classes) for s in raw.samples]
    usage = mask_class_usage(infos, len(classes)) if spec.task == "segmentation" else {}
    if usage.get("absent_mask_classes"):
        log.warning("%s: no mask holds class(es) %s of the %d declared", dataset,
                    usage["absent_mask_classes"], len(classes))

    counts = {split: by_split[split] for split in SPLITS}
    mismatch = {
        split: {"expected": spec.splits.get(split), "found": counts[split]}
        for split in SPLITS
        if source != "synthetic" and spec.splits.get(split) not in (None, counts[split])
    }
    if mismatch:
        message = f"split counts differ from the registry: {mismatch}"
        if strict_counts:
            raise DataError(dataset, message, file=str(raw_dir))
        print(f"WARNING {dataset}: {message}")

    train_ids = [i for i, s in zip(ids, raw.samples, strict=True) if s.split == "train"]
    upstream = _upstream_subsets(raw, ids, dataset, raw_dir)
    classes_of = None
    if spec.task == "classification":
        classes_of = {i: (s.labels if s.labels is not None else [s.label])
                      for i, s in zip(ids, raw.samples, strict=True) if s.split == "train"}
    subsets, skipped = make_subsets(train_ids, classes_of, fractions, fewshot, seed, upstream)
    _report_skipped(dataset, skipped)

    bands = Counter(i.bands for i in infos).most_common(1)[0][0]
    size = Counter((i.height, i.width) for i in infos).most_common(1)[0][0]
    meta = {
        "name": dataset,
        "task": spec.task,
        "subtask": spec.subtask,
        "classes": classes,
        "num_classes": len(classes),
        "bands": bands,
        "image_size": list(size),
        "source": source,
        "layout": raw.layout,
        "splits": counts,
        "expected_splits": {s: spec.splits.get(s) for s in SPLITS},
        "split_mismatch": mismatch,
        "subsets": {key: len(v) for key, v in subsets.items()},
        "skipped_subsets": skipped,
        "upstream_subsets": sorted(upstream),
        "pairs": any(s.image_after is not None for s in raw.samples),
        **usage,
        "reference_num_classes": spec.reference_num_classes,  # where the reference differs
        "reader_notes": raw.notes,
        "marseval_version": __version__,
        "fetched": fetched_revision(raw_dir),
    }
    with atomic_directory(out_dir) as tmp:
        rows = _write_files(tmp, ids, raw.samples, infos, spec)
        pd.DataFrame(rows).to_parquet(tmp / "samples.parquet", index=False)
        atomic_write_json(tmp / "subsets.json", subsets)
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _upstream_subsets(raw: RawDataset, ids: list[str], dataset: str,
                      raw_dir: Path) -> dict[str, list[str]]:
    """Upstream subsets name image stems; map them to sample ids, all of them training ones."""
    stem_to_id = {s.stem: i for i, s in zip(ids, raw.samples, strict=True) if s.split == "train"}
    upstream = {}
    for key, stems in raw.subsets.items():
        unknown = [stem for stem in stems if stem not in stem_to_id]
        if unknown:
            raise DataError(dataset, f"upstream subset {key} names {unknown[0]!r}, which is not "
                            "a training sample", file=str(raw_dir))
        upstream[key] = [stem_to_id[stem] for stem in stems]
    return upstream


def _report_skipped(dataset: str, skipped: dict[str, str]) -> None:
    """One line per dataset, keys grouped by reason."""
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    print(f"{dataset}: subsets skipped: "
          + "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in by_reason.items()))


def _write_files(tmp: Path, ids: list[str], samples: list[RawSample], infos: list,
                 spec: DatasetSpec) -> list[dict[str, Any]]:
    folders = {"images": tmp / "images"}
    if spec.task == "segmentation":
        folders["masks"] = tmp / "masks"
    if spec.pairs:
        folders["images_after"] = tmp / "images_after"
    for folder in folders.values():
        folder.mkdir()
    rows = []
    for sample_id, sample, info in zip(ids, samples, infos, strict=True):
        image = f"images/{sample_id}{sample.image.suffix}"
        link_or_copy(sample.image, tmp / image)
        row: dict[str, Any] = {"sample_id": sample_id, "split": sample.split, "image": image,
                               "width": info.width, "height": info.height}
        if spec.task == "classification":
            if spec.subtask == "multilabel":
                row["labels"] = list(sample.labels or [])
            else:
                row["label"] = int(sample.label)
        if sample.image_after is not None:
            row["image_after"] = f"images_after/{sample_id}{sample.image_after.suffix}"
            link_or_copy(sample.image_after, tmp / row["image_after"])
        if sample.mask is not None:
            row["mask"] = f"masks/{sample_id}{sample.mask.suffix}"
            link_or_copy(sample.mask, tmp / row["mask"])
        if spec.task == "detection":
            row["boxes"] = [[float(v) for v in box[:4]] + [int(box[4])]
                            for box in sample.boxes or []]
        rows.append(row)
    return rows
