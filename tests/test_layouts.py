"""Both raw layouts standardize to the same samples; detection box formats agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from marseval.data import annotations as ann
from marseval.data.layouts import detect_layout
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_huggingface, write_zenodo
from marseval.registry import get_dataset

FRACTIONS = [0.01, 0.1, 0.25, 0.5, 1.0]
FEWSHOT = [1, 2, 5]
SAMPLES = {"train": 20, "val": 6, "test": 6}
ALL_SUBTASKS = [
    "mb-frost_cls",  # binary
    "mb-change_cls_hirise",  # binary, before/after pairs
    "mb-domars16k",  # multiclass
    "mb-surface_multi_label_cls",  # multi-label
    "mb-crater_binary_seg",  # binary segmentation
    "mb-crater_multi_seg",  # multi-class segmentation
    "mb-mmls",  # segmentation, 7-band TIFFs in the Zenodo layout (bands 2, 1, 0 kept)
    "mb-boulder_det",  # detection
]


def _standardize_both(name: str, tmp_path: Path) -> dict[str, tuple[pd.DataFrame, dict, dict]]:
    spec = get_dataset(name)
    raw = generate_benchmark(spec, seed=3, size=32, samples=SAMPLES)
    results = {}
    for layout, writer in (("zenodo", write_zenodo), ("huggingface", write_huggingface)):
        raw_dir = tmp_path / "raw" / layout
        writer(raw, spec, raw_dir)
        assert detect_layout(raw_dir) == layout
        out = tmp_path / "std" / layout
        meta = standardize(raw_dir, out, name, "synthetic", FRACTIONS, FEWSHOT, seed=0)
        frame = pd.read_parquet(out / "samples.parquet").sort_values("sample_id")
        results[layout] = (frame.reset_index(drop=True), json.loads(
            (out / "subsets.json").read_text()), meta)
    return results


def _pixels(folder: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(folder / relative))


@pytest.mark.parametrize("name", ALL_SUBTASKS)
def test_both_layouts_standardize_to_the_same_samples(name: str, tmp_path: Path) -> None:
    results = _standardize_both(name, tmp_path)
    (zen, zen_subsets, zen_meta), (hf, hf_subsets, hf_meta) = (results["zenodo"],
                                                               results["huggingface"])
    assert len(zen) == sum(SAMPLES.values())
    assert zen_meta["splits"] == SAMPLES
    pd.testing.assert_frame_equal(zen, hf)
    assert zen_subsets == hf_subsets
    for key in ("classes", "task", "subtask", "bands", "image_size", "subsets"):
        assert zen_meta[key] == hf_meta[key], key
    # the image (and mask) files hold the same pixels whichever layout they came from
    for column in [c for c in ("image", "mask", "image_after") if c in zen]:
        for relative in zen[column][:5]:
            np.testing.assert_array_equal(_pixels(tmp_path / "std/zenodo", relative),
                                          _pixels(tmp_path / "std/huggingface", relative))


def test_standardized_labels_match_the_generator(tmp_path: Path) -> None:
    spec = get_dataset("mb-surface_multi_label_cls")
    raw = generate_benchmark(spec, seed=1, size=32, samples=SAMPLES)
    write_zenodo(raw, spec, tmp_path / "raw")
    standardize(tmp_path / "raw", tmp_path / "out", spec.name, "synthetic", [1.0], [])
    frame = pd.read_parquet(tmp_path / "out/samples.parquet").set_index("sample_id")
    for sample in raw.samples:
        assert list(frame.loc[sample.stem, "labels"]) == sample.labels
        assert frame.loc[sample.stem, "split"] == sample.split


def test_detection_formats_give_the_same_boxes(tmp_path: Path) -> None:
    spec = get_dataset("mb-boulder_det")
    raw = generate_benchmark(spec, seed=2, size=48, samples=SAMPLES)
    write_zenodo(raw, spec, tmp_path / "raw")
    expected = {s.stem: s.boxes for s in raw.samples}
    assert sum(len(b) for b in expected.values()) > 10
    assert any(not b for b in expected.values()), "negatives (no boxes) must stay in"
    for fmt in ("coco", "yolo", "pascal_voc"):
        out = tmp_path / fmt
        standardize(tmp_path / "raw", out, spec.name, "synthetic", [1.0], [],
                    detection_format=fmt)
        frame = pd.read_parquet(out / "samples.parquet")
        assert len(frame) == sum(SAMPLES.values()), fmt
        for sample_id, boxes in zip(frame.sample_id, frame.boxes, strict=True):
            got = np.array([list(b) for b in boxes]).reshape(-1, 5)
            want = np.array(expected[sample_id]).reshape(-1, 5)
            np.testing.assert_allclose(got, want, atol=1e-3, err_msg=f"{fmt} {sample_id}")


def test_yolo_round_trip_by_hand() -> None:
    # a 100x50 image with one box from (10, 5) to (30, 25): centre (20, 15), size 20x20
    text = ann.format_yolo([[10, 5, 30, 25, 0]], width=100, height=50)
    assert text.split() == ["0", "0.20000000", "0.30000000", "0.20000000", "0.40000000"]
    assert ann.parse_yolo(text, 100, 50)[0] == pytest.approx([10, 5, 30, 25, 0])


def test_coco_and_voc_round_trip_by_hand() -> None:
    doc = ann.format_coco([("a.png", 64, 64, [[1.0, 2.0, 11.0, 22.0, 1]])], ["rock", "cone"])
    assert doc["annotations"][0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    assert doc["annotations"][0]["category_id"] == 2
    boxes, names = ann.parse_coco(json.dumps(doc))
    assert boxes == {"a.png": [[1.0, 2.0, 11.0, 22.0, 1]]} and names == ["rock", "cone"]
    xml = ann.format_voc("a.png", [[1.5, 2, 11, 22, 1]], ["rock", "cone"], 64, 64, 1)
    voc_boxes, voc_names = ann.parse_voc(xml)
    assert voc_boxes == [[1.5, 2.0, 11.0, 22.0, -1]] and voc_names == ["cone"]


def test_upstream_partition_is_used(tmp_path: Path) -> None:
    results = _standardize_both("mb-domars16k", tmp_path)
    spec = get_dataset("mb-domars16k")
    raw = generate_benchmark(spec, seed=3, size=32, samples=SAMPLES)
    for _, subsets, meta in results.values():
        assert subsets["fraction:0.50"] == sorted(raw.subsets["fraction:0.50"])
        assert subsets["fewshot:5"] == sorted(raw.subsets["fewshot:5"])
        assert meta["upstream_subsets"] == ["fewshot:5", "fraction:0.50"]
        assert "fraction:0.01" in meta["skipped_subsets"]  # floor(0.01 x 20) = 0
        assert len(subsets["fraction:0.25"]) == 5 and len(subsets["fraction:1.00"]) == 20


def test_upstream_partition_naming_an_unknown_image_is_rejected(tmp_path: Path) -> None:
    from marseval.errors import DataError

    spec = get_dataset("mb-domars16k")
    raw = generate_benchmark(spec, seed=3, size=32, samples=SAMPLES)
    write_zenodo(raw, spec, tmp_path / "raw")
    csv = tmp_path / "raw/partitions/0.50x_partition.csv"
    frame = pd.read_csv(csv)
    frame.loc[0, "file_id"] = "ghost.png"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError, match="upstream subset fraction:0.50 names 'ghost'"):
        standardize(tmp_path / "raw", tmp_path / "out", spec.name, "synthetic", [1.0], [])
    assert not (tmp_path / "out").exists()
