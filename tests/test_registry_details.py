"""Registry details: mask ids against the class count (S5Mars), multi-band MMLS TIFFs, and the
order in which detection annotations are preferred (the reference's pascal_voc first)."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from marseval.data import annotations as ann
from marseval.data.multiband import keep_bands, read_tiff, write_series_tiff
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_huggingface, write_parquet, write_zenodo
from marseval.data.validate import mask_values
from marseval.errors import DataError
from marseval.registry import SPLITS, get_dataset

SAMPLES = {"train": 6, "val": 3, "test": 3}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run(raw: Path, out: Path, name: str, **kwargs) -> dict:
    return standardize(raw, out, name, "synthetic", [1.0], [], **kwargs)


# ------------------------------------------------------------- S5Mars: mask ids vs classes
def test_s5mars_registry_uses_the_data_count_and_notes_the_reference() -> None:
    spec = get_dataset("mb-s5mars")
    assert spec.num_classes == 9 and len(spec.class_names()) == 9
    assert spec.reference_num_classes == 10  # reference config: background + 9 names


def test_s5mars_mask_id_beyond_the_class_count_is_an_error(tmp_path: Path) -> None:
    spec = get_dataset("mb-s5mars")
    write_huggingface(generate_benchmark(spec, 0, 32, SAMPLES), spec, tmp_path / "raw")
    shard = tmp_path / "raw/data/val-00000-of-00001.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[1]["mask"]["bytes"] = png(np.full((32, 32), 9, dtype=np.uint8))  # a 10th class id
    write_parquet(rows, shard, json.loads(table.schema.metadata[b"huggingface"])["info"]
                  ["features"])
    with pytest.raises(DataError) as info:
        run(tmp_path / "raw", tmp_path / "out", spec.name)
    message = str(info.value)
    for fragment in ("dataset mb-s5mars", f"{shard}#row1", "class 9", "num_classes 9",
                     "registry key `num_classes`"):
        assert fragment in message, message
    assert not (tmp_path / "out").exists()


def test_ids_no_mask_holds_are_recorded_and_logged(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    spec = get_dataset("mb-s5mars")
    write_zenodo(generate_benchmark(spec, 0, 32, SAMPLES), spec, tmp_path / "raw")
    for i, mask in enumerate(sorted((tmp_path / "raw/data").glob("*/masks/*.png"))):
        mask.write_bytes(png(np.full((32, 32), (0, 3, 7)[i % 3], dtype=np.uint8)))
    with caplog.at_level(logging.WARNING, logger="marseval.data.standardize"):
        meta = run(tmp_path / "raw", tmp_path / "out", spec.name)
    assert meta["num_classes"] == 9 and meta["reference_num_classes"] == 10
    assert meta["mask_values"] == [0, 3, 7]
    assert meta["absent_mask_classes"] == [1, 2, 4, 5, 6, 8]
    assert "no mask holds class(es) [1, 2, 4, 5, 6, 8]" in caplog.text


def test_mask_values() -> None:
    assert mask_values(np.array([[0, 2], [2, 5]], dtype=np.uint8)) == (0, 2, 5)
    assert mask_values(np.array([[0.0, 1.0]], dtype=np.float32)) == (0, 1)  # MMLS float masks
    assert mask_values(np.array([[0.0, 0.5]], dtype=np.float32)) is None
    assert mask_values(np.array([[-1, 0]], dtype=np.int16)) is None


# ------------------------------------------------------------------- MMLS: 7-band TIFFs
def seven_bands(seed: int) -> np.ndarray:
    """float32 (16, 16, 7) in [0, 1], k / 255 like MMLS; band b lies in [30 b, 30 b + 20]."""
    rng = np.random.default_rng(seed)
    levels = 30 * np.arange(7) + rng.integers(0, 21, size=(16, 16, 7))
    return (levels / 255.0).astype(np.float32)


def gdal_tiff(pixels: np.ndarray) -> bytes:
    """One page with C samples per pixel, as GDAL/rasterio write it."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    height, width, count = pixels.shape
    with MemoryFile() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with mem.open(driver="GTiff", width=width, height=height, count=count,
                      dtype=str(pixels.dtype)) as dst:
            dst.write(np.moveaxis(pixels, -1, 0))
        return mem.read()


def mmls_zenodo(root: Path, encode) -> dict[str, np.ndarray]:
    """MMLS's Zenodo layout: data/<split>/images/Image<x>.tif, masks/Mask<x>.tif (float32)."""
    originals = {}
    for s, split in enumerate(SPLITS):
        for i in range(2):
            key = f"_patch_{s}_{i}"
            pixels = seven_bands(10 * s + i)
            originals[f"Image{key}"] = pixels
            for folder, name, data in (("images", f"Image{key}.tif", encode(pixels)),
                                       ("masks", f"Mask{key}.tif", _float_mask(i))):
                path = root / "data" / split / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return originals


def _float_mask(i: int) -> bytes:
    """A single-page float32 0/1 mask, as MMLS stores them."""
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[: 4 + i, :] = 1.0
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("encode", [write_series_tiff, gdal_tiff], ids=["tifffile", "gdal"])
def test_mmls_keeps_bands_2_1_0(tmp_path: Path, encode) -> None:
    originals = mmls_zenodo(tmp_path / "raw", encode)
    meta = run(tmp_path / "raw", tmp_path / "out", "mb-mmls")
    assert meta["bands"] == 3 and meta["image_size"] == [16, 16]
    assert "bands [2, 1, 0]" in meta["reader_notes"][0]
    frame = pd.read_parquet(tmp_path / "out/samples.parquet").set_index("sample_id")
    assert sorted(frame.index) == sorted(originals)
    for sample_id, pixels in originals.items():
        got = np.asarray(Image.open(tmp_path / "out" / frame.loc[sample_id, "image"]))
        assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
        # channel c is band (2, 1, 0)[c]: the bands' value ranges do not overlap
        assert [int(got[..., c].min()) // 30 for c in range(3)] == [2, 1, 0]
        np.testing.assert_array_equal(got, np.round(pixels[..., [2, 1, 0]] * 255))
        assert str(frame.loc[sample_id, "mask"]).startswith("masks/")


@pytest.mark.parametrize("encode", [write_series_tiff, gdal_tiff], ids=["tifffile", "gdal"])
def test_multiband_tiffs_read_whatever_image_open_has_become(
        encode, monkeypatch: pytest.MonkeyPatch) -> None:
    # ultralytics replaces PIL.Image.open in any process that imports it with one that, on an
    # unreadable file, tries to install and import pi_heif (this broke the gdal case in CI)
    from marseval.data.multiband import read_tiff

    def patched_open(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'pi_heif'")

    monkeypatch.setattr(Image, "open", patched_open)
    pixels = seven_bands(3)
    np.testing.assert_array_equal(read_tiff(encode(pixels)), pixels)


def test_mmls_float_bands_outside_unit_range_are_an_error(tmp_path: Path) -> None:
    mmls_zenodo(tmp_path / "raw", lambda p: write_series_tiff(p * 255.0))
    with pytest.raises(DataError, match=r"Image_patch_0_0\.tif.*cannot keep bands \[2, 1, 0\]"
                       r".*expected \[0, 1\]"):
        run(tmp_path / "raw", tmp_path / "out", "mb-mmls")


def test_keep_bands_scaling() -> None:
    pixels = np.stack([np.full((2, 2), v, dtype=np.uint8) for v in (10, 20, 30, 40)], axis=2)
    assert keep_bands(pixels, (2, 1, 0))[0, 0].tolist() == [30, 20, 10]  # uint8 kept as is
    floats = pixels.astype(np.float32) / 255.0
    assert keep_bands(floats, (3, 0, 1))[0, 0].tolist() == [40, 10, 20]  # x 255, rounded
    with pytest.raises(ValueError, match="has 4 band"):
        keep_bands(pixels, (4, 1, 0))
    series = write_series_tiff(floats)
    np.testing.assert_array_equal(read_tiff(series), floats)


# ------------------------------------------------------- detection: pascal_voc preferred
BOXES = {  # one box per image, a different one in each annotation, in pixels of a 64x64 image
    "pascal_voc": [4.0, 6.0, 20.0, 30.0],
    "coco": [10.0, 10.0, 40.0, 24.0],
    "yolo": [32.0, 36.0, 48.0, 60.0],
}


def _hf_row(index: int) -> dict:
    x1, y1, x2, y2 = BOXES["pascal_voc"]
    cx1, cy1, cx2, cy2 = BOXES["coco"]
    yx1, yy1, yx2, yy2 = BOXES["yolo"]
    return {
        "image": {"bytes": png(np.full((64, 64), 40 + index, dtype=np.uint8)),
                  "path": f"img_{index}.png"},
        "pascal_voc_annotation": {"objects": {
            "bbox": [{"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2}], "name": ["boulder"]}},
        "coco_annotation": {"annotations": {"bbox": [[cx1, cy1, cx2 - cx1, cy2 - cy1]],
                                            "category_id": [1]}},
        "yolo_annotation": {"bbox": [[(yx1 + yx2) / 128, (yy1 + yy2) / 128, (yx2 - yx1) / 64,
                                      (yy2 - yy1) / 64]], "category": [0]},
    }


def _hf_detection(root: Path, drop: tuple[str, ...] = ()) -> None:
    for s, split in enumerate(SPLITS):
        rows = [_hf_row(10 * s + i) for i in range(2)]
        for row in rows:
            for fmt in drop:
                del row[f"{fmt}_annotation"]
        write_parquet(rows, root / "data" / f"{split}-00000-of-00001.parquet",
                      {"image": {"_type": "Image"}})


def _boxes(out: Path) -> set[tuple[float, ...]]:
    frame = pd.read_parquet(out / "samples.parquet")
    return {tuple(round(float(v), 3) for v in box) for boxes in frame.boxes for box in boxes}


@pytest.mark.parametrize(("drop", "asked", "expected"), [
    ((), None, "pascal_voc"),                 # the reference's detectors all read pascal_voc
    (("pascal_voc",), None, "coco"),          # then COCO
    (("pascal_voc", "coco"), None, "yolo"),   # then YOLO
    ((), "yolo", "yolo"),                     # unless one is asked for
])
def test_huggingface_box_column_order(tmp_path: Path, drop: tuple[str, ...], asked: str | None,
                                      expected: str) -> None:
    _hf_detection(tmp_path / "raw", drop)
    run(tmp_path / "raw", tmp_path / "out", "mb-boulder_det", detection_format=asked)
    assert _boxes(tmp_path / "out") == {(*BOXES[expected], 0)}


def test_huggingface_asked_format_missing_is_an_error(tmp_path: Path) -> None:
    _hf_detection(tmp_path / "raw", drop=("coco",))
    with pytest.raises(DataError, match="no box column.*coco_annotation"):
        run(tmp_path / "raw", tmp_path / "out", "mb-boulder_det", detection_format="coco")


def test_zenodo_prefers_pascal_voc_files(tmp_path: Path) -> None:
    spec = get_dataset("mb-boulder_det")
    raw = generate_benchmark(spec, 0, 64, SAMPLES)
    write_zenodo(raw, spec, tmp_path / "raw")
    sample = next(s for s in raw.samples if s.split == "val")
    xml = tmp_path / "raw/data/val/pascal_voc" / f"{sample.stem}.xml"
    xml.write_text(ann.format_voc(sample.image.name, [[*BOXES["pascal_voc"], 0]], ["boulder"],
                                  64, 64, 1))
    run(tmp_path / "raw", tmp_path / "out", spec.name)
    frame = pd.read_parquet(tmp_path / "out/samples.parquet").set_index("sample_id")
    assert [list(b) for b in frame.loc[sample.stem, "boxes"]] == [[*BOXES["pascal_voc"], 0]]
