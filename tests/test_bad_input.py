"""Bad raw input: every case fails with a DataError that names the dataset, the split and the
file, and leaves neither the standardized folder nor a hidden temporary sibling behind.

Raw data come from the synthetic generator written in the Zenodo (folder) or Hugging Face
(parquet) layout, then one thing is broken before `standardize` runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from marseval import cli
from marseval.data.records import RawDataset
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.retrieval import write_retrieval
from marseval.data.synthetic.writers import write_huggingface, write_zenodo
from marseval.errors import DataError
from marseval.registry import get_dataset

SIZE = 32
SAMPLES = {"train": 20, "val": 6, "test": 6}
LAYOUTS = ("zenodo", "huggingface")
CLS = "mb-domars16k"
MULTI = "mb-surface_multi_label_cls"
SEG = "mb-crater_binary_seg"
DET = "mb-boulder_det"
RETRIEVAL_OPTS = {
    "pairs": 8,
    "landform_images_per_class": 3,
    "mosaic_width": 144,
    "mosaic_height": 72,
    "sites_per_landform": 2,
    "queries_per_landform": 2,
}


# ----------------------------------------------------------------------------- helpers
@cache
def generated(name: str) -> RawDataset:
    return generate_benchmark(get_dataset(name), seed=0, size=SIZE, samples=SAMPLES)


def make_raw(tmp_path: Path, name: str, layout: str) -> Path:
    dest = tmp_path / "raw"
    writer = write_zenodo if layout == "zenodo" else write_huggingface
    writer(generated(name), get_dataset(name), dest)
    return dest


def out_for(tmp_path: Path, name: str) -> Path:
    return tmp_path / "standardized" / name


def leftovers(out_dir: Path) -> list[str]:
    if not out_dir.parent.exists():
        return []
    return sorted(
        p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")
    )


def expect_error(
    raw_dir: Path,
    out_dir: Path,
    name: str,
    *,
    split: str | None,
    fragments: list[str],
    source: str = "synthetic",
    **kwargs,
) -> DataError:
    """Run standardize, which must fail cleanly, and check what the error names."""
    with pytest.raises(DataError) as info:
        standardize(raw_dir, out_dir, name, source, [0.5, 1.0], [1], **kwargs)
    message = str(info.value)
    assert f"dataset {name}" in message
    assert info.value.dataset == name
    if split is not None:
        assert f"split {split}" in message, message
        assert info.value.split == split
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not out_dir.exists()
    assert leftovers(out_dir) == []
    return info.value


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def shard(raw_dir: Path, split: str) -> Path:
    return raw_dir / "data" / f"{split}-00000-of-00001.parquet"


def rewrite_parquet(
    path: Path, edit: Callable[[list[dict]], None], types: dict[str, pa.DataType] | None = None
) -> None:
    """Rewrite a parquet shard after editing its rows (schema metadata kept)."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    schema = table.schema
    for column, kind in (types or {}).items():
        schema = schema.set(schema.get_field_index(column), pa.field(column, kind))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_annotation(raw_dir: Path) -> pd.DataFrame:
    return pd.read_csv(raw_dir / "annotation.csv", dtype=str, keep_default_na=False)


def write_annotation(raw_dir: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(raw_dir / "annotation.csv", index=False)


def first_row(frame: pd.DataFrame, split: str) -> int:
    return int(frame.index[frame["split"] == split][0])


def zenodo_image(raw_dir: Path, frame: pd.DataFrame, index: int) -> Path:
    row = frame.loc[index]
    return raw_dir / "data" / row["split"] / row["feature_name"] / row["file_id"]


# ------------------------------------------------------------------ corrupt / missing image
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_image_zenodo(tmp_path: Path, damage: str) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    frame = read_annotation(raw)
    image = zenodo_image(raw, frame, first_row(frame, "val"))
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a png" * 20)
    error = expect_error(
        raw, out_for(tmp_path, CLS), CLS, split="val", fragments=[image.name, "corrupt"]
    )
    assert error.file == str(image)


def test_corrupt_image_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        rows[2]["image"]["bytes"] = b"not a png" * 20

    rewrite_parquet(path, edit)
    expect_error(
        raw, out_for(tmp_path, CLS), CLS, split="val", fragments=[path.name, "val_00002.png"]
    )


def test_missing_image_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    frame = read_annotation(raw)
    image = zenodo_image(raw, frame, first_row(frame, "test"))
    image.unlink()
    error = expect_error(
        raw, out_for(tmp_path, CLS), CLS, split="test", fragments=[image.name, "missing"]
    )
    assert error.file == str(image)


def test_image_cell_without_bytes_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        rows[3]["image"]["bytes"] = None

    rewrite_parquet(path, edit)
    expect_error(
        raw, out_for(tmp_path, CLS), CLS, split="val", fragments=[f"{path.name}#row3", "no encoded"]
    )


# -------------------------------------------------------------------------- segmentation
def _bad_mask(kind: str) -> bytes:
    if kind == "size":
        return png(np.zeros((SIZE // 2, SIZE // 2), dtype=np.uint8))
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[4:8, 4:8] = 7  # crater_binary_seg has classes 0..1
    return png(mask)


@pytest.mark.parametrize("kind", ["size", "value"])
def test_bad_mask_zenodo(tmp_path: Path, kind: str) -> None:
    raw = make_raw(tmp_path, SEG, "zenodo")
    mask = raw / "data" / "val" / "masks" / "val_00001.png"
    assert mask.is_file()
    mask.write_bytes(_bad_mask(kind))
    expected = "16x16" if kind == "size" else "class 7"
    error = expect_error(
        raw, out_for(tmp_path, SEG), SEG, split="val", fragments=["val_00001.png", expected]
    )
    assert error.file == str(mask)


@pytest.mark.parametrize("kind", ["size", "value"])
def test_bad_mask_huggingface(tmp_path: Path, kind: str) -> None:
    raw = make_raw(tmp_path, SEG, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        rows[1]["mask"]["bytes"] = _bad_mask(kind)

    rewrite_parquet(path, edit)
    expected = "16x16" if kind == "size" else "class 7"
    # the error must lead to the parquet shard, the only file of this layout on disk
    expect_error(raw, out_for(tmp_path, SEG), SEG, split="val", fragments=[path.name, expected])


# ----------------------------------------------------------------------------- detection
def test_box_outside_image_yolo_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "zenodo")
    label = raw / "data" / "val" / "labels" / "val_00001.txt"
    assert label.is_file()
    label.write_text("0 1.5 0.5 0.1 0.1\n")
    error = expect_error(
        raw,
        out_for(tmp_path, DET),
        DET,
        split="val",
        fragments=["labels/val_00001.txt", "outside"],
        detection_format="yolo",
    )
    assert error.file == str(label)


def test_box_outside_image_coco_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "zenodo")
    coco_file = raw / "data" / "test" / "coco_annotations.json"
    doc = json.loads(coco_file.read_text())
    doc["annotations"].append(
        {"id": 999, "image_id": 1, "category_id": 1, "bbox": [28.0, 2.0, 10.0, 5.0]}
    )  # x2 = 38 > 32
    coco_file.write_text(json.dumps(doc))
    expect_error(
        raw,
        out_for(tmp_path, DET),
        DET,
        split="test",
        fragments=["test/coco_annotations.json", "outside"],
        detection_format="coco",
    )


def test_box_outside_image_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        rows[2]["coco_annotation"] = {
            "annotations": {"bbox": [[48.0, 3.0, 6.0, 6.0]], "category_id": [1]}
        }

    rewrite_parquet(path, edit)
    expect_error(
        raw, out_for(tmp_path, DET), DET, split="val", fragments=[f"{path.name}#row2", "outside"]
    )


# ------------------------------------------------------------------ labels outside classes
def test_label_outside_classes_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    frame = read_annotation(raw)
    index = first_row(frame, "val")
    frame.loc[index, "label"] = "99"
    write_annotation(raw, frame)
    expect_error(
        raw,
        out_for(tmp_path, CLS),
        CLS,
        split="val",
        fragments=[f"annotation.csv:{index + 2}", "label 99", "0..14"],
    )


def test_label_outside_classes_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    path = shard(raw, "test")

    def edit(rows: list[dict]) -> None:
        rows[4]["label"] = 99

    rewrite_parquet(path, edit)
    expect_error(
        raw,
        out_for(tmp_path, CLS),
        CLS,
        split="test",
        fragments=[f"{path.name}#row4", "label 99", "0..14"],
    )


def test_multilabel_outside_classes_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, MULTI, "zenodo")
    frame = read_annotation(raw)
    index = first_row(frame, "val")
    frame.loc[index, "label"] = "[3, 99]"
    write_annotation(raw, frame)
    expect_error(
        raw,
        out_for(tmp_path, MULTI),
        MULTI,
        split="val",
        fragments=[f"annotation.csv:{index + 2}", "label 99", "0..24"],
    )


def test_multilabel_outside_classes_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, MULTI, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        rows[0]["label"] = [3, 99]

    rewrite_parquet(path, edit)
    expect_error(
        raw,
        out_for(tmp_path, MULTI),
        MULTI,
        split="val",
        fragments=[f"{path.name}#row0", "label 99", "0..24"],
    )


# ------------------------------------------------------------------------------ empty split
def test_empty_split_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    frame = read_annotation(raw)
    write_annotation(raw, frame[frame["split"] != "val"])
    expect_error(raw, out_for(tmp_path, CLS), CLS, split="val", fragments=[str(raw), "empty"])


def test_empty_split_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    shard(raw, "val").unlink()
    expect_error(raw, out_for(tmp_path, CLS), CLS, split="val", fragments=[str(raw), "empty"])


# ------------------------------------------------------------------ malformed annotations
def test_annotation_csv_without_label_column(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    write_annotation(raw, read_annotation(raw).drop(columns=["label"]))
    expect_error(
        raw,
        out_for(tmp_path, CLS),
        CLS,
        split=None,
        fragments=["annotation.csv", "'label'"],
    )


def test_parquet_without_label_column(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    path = shard(raw, "train")
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["label"]), path)
    expect_error(raw, out_for(tmp_path, CLS), CLS, split="train", fragments=[path.name, "'label'"])


def test_unparseable_label_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    frame = read_annotation(raw)
    index = first_row(frame, "val")
    frame.loc[index, "label"] = "[1,"
    write_annotation(raw, frame)
    expect_error(
        raw,
        out_for(tmp_path, CLS),
        CLS,
        split="val",
        fragments=[f"annotation.csv:{index + 2}", "unparseable label '[1,'"],
    )


def test_unparseable_label_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        for row in rows:
            row["label"] = str(row["label"])
        rows[1]["label"] = "[1,"

    rewrite_parquet(path, edit, types={"label": pa.string()})
    expect_error(
        raw,
        out_for(tmp_path, CLS),
        CLS,
        split="val",
        fragments=[f"{path.name}#row1", "unparseable label '[1,'"],
    )


def test_coco_invalid_json_zenodo(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "zenodo")
    coco_file = raw / "data" / "val" / "coco_annotations.json"
    coco_file.write_text('{"images": [')
    error = expect_error(
        raw,
        out_for(tmp_path, DET),
        DET,
        split="val",
        fragments=["val/coco_annotations.json", "invalid JSON"],
        detection_format="coco",
    )
    assert error.file == str(coco_file)


def test_coco_invalid_json_huggingface(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "huggingface")
    path = shard(raw, "val")

    def edit(rows: list[dict]) -> None:
        for row in rows:
            row["coco_annotation"] = json.dumps(row["coco_annotation"])
        rows[3]["coco_annotation"] = '{"annotations": {"bbox": ['

    rewrite_parquet(path, edit, types={"coco_annotation": pa.string()})
    expect_error(
        raw,
        out_for(tmp_path, DET),
        DET,
        split="val",
        fragments=[f"{path.name}#row3", "malformed coco_annotation"],
    )


def test_yolo_line_with_four_fields(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "zenodo")
    label = raw / "data" / "test" / "labels" / "test_00002.txt"
    label.write_text("0 0.5 0.5 0.1\n")
    error = expect_error(
        raw,
        out_for(tmp_path, DET),
        DET,
        split="test",
        fragments=["labels/test_00002.txt", "expected 5 fields, got 4"],
        detection_format="yolo",
    )
    assert error.file == str(label)


def test_invalid_pascal_voc_xml(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, DET, "zenodo")
    xml = raw / "data" / "val" / "pascal_voc" / "val_00003.xml"
    assert xml.is_file()
    xml.write_text("<annotation><object><name>boulder</name>")
    error = expect_error(
        raw,
        out_for(tmp_path, DET),
        DET,
        split="val",
        fragments=["pascal_voc/val_00003.xml", "invalid XML"],
        detection_format="pascal_voc",
    )
    assert error.file == str(xml)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mapping_json_invalid(tmp_path: Path, layout: str) -> None:
    raw = make_raw(tmp_path, CLS, layout)
    (raw / "mapping.json").write_text('{"0": "ael", ')
    error = expect_error(
        raw, out_for(tmp_path, CLS), CLS, split=None, fragments=["mapping.json", "malformed"]
    )
    assert error.file == str(raw / "mapping.json")


# ------------------------------------------------------------------------------- retrieval
def make_retrieval(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / "raw"
    write_retrieval(get_dataset(name), dest, seed=0, size=SIZE, opts=RETRIEVAL_OPTS)
    return dest


def test_geolocalization_latitude_out_of_range(tmp_path: Path) -> None:
    name = "mr-geolocalization"
    raw = make_retrieval(tmp_path, name)
    csv = raw / "ground_truth" / "landslides.csv"
    frame = pd.read_csv(csv)
    frame.loc[1, "lat"] = 123.0
    frame.to_csv(csv, index=False)
    error = expect_error(
        raw, out_for(tmp_path, name), name, split=None, fragments=["landslides.csv", "row 3", "123"]
    )
    assert error.file == str(csv)


def test_geolocalization_without_lon_column(tmp_path: Path) -> None:
    name = "mr-geolocalization"
    raw = make_retrieval(tmp_path, name)
    csv = raw / "ground_truth" / "yardangs.csv"
    pd.read_csv(csv).drop(columns=["lon"]).to_csv(csv, index=False)
    error = expect_error(
        raw, out_for(tmp_path, name), name, split=None, fragments=["yardangs.csv", "lon/lat"]
    )
    assert error.file == str(csv)


def test_vl_pairs_image_not_fetched(tmp_path: Path) -> None:
    name = "mr-vl_pairs"
    raw = make_retrieval(tmp_path, name)
    (raw / "images" / "000000003.png").unlink()
    expect_error(
        raw,
        out_for(tmp_path, name),
        name,
        split="test",
        fragments=["train-00000-of-00001.parquet#row3", "images/000000003.png", "'000000003'"],
    )


# --------------------------------------------------------------------------- split counts
def test_split_count_mismatch_strict(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    expect_error(
        raw,
        out_for(tmp_path, CLS),
        CLS,
        split=None,
        fragments=["split counts differ", "'expected': 11305", "'found': 20"],
        source="huggingface",
        strict_counts=True,
    )


def test_split_count_mismatch_recorded(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, CLS, "huggingface")
    out = out_for(tmp_path, CLS)
    meta = standardize(raw, out, CLS, "huggingface", [0.5, 1.0], [1], strict_counts=False)
    written = json.loads((out / "meta.json").read_text())
    expected = {
        "train": {"expected": 11305, "found": 20},
        "val": {"expected": 1231, "found": 6},
        "test": {"expected": 1014, "found": 6},
    }
    assert written["split_mismatch"] == expected
    assert meta["split_mismatch"] == expected
    assert written["splits"] == {"train": 20, "val": 6, "test": 6}
    assert written["expected_splits"] == {"train": 11305, "val": 1231, "test": 1014}
    assert leftovers(out) == []


# ------------------------------------------------------------- existing output is kept
@pytest.mark.parametrize("layout", LAYOUTS)
def test_failed_rerun_keeps_previous_output(tmp_path: Path, layout: str) -> None:
    raw = make_raw(tmp_path, CLS, layout)
    out = out_for(tmp_path, CLS)
    standardize(raw, out, CLS, "synthetic", [0.5, 1.0], [1])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("meta.json") in before

    if layout == "zenodo":
        frame = read_annotation(raw)
        frame.loc[first_row(frame, "train"), "label"] = "99"
        write_annotation(raw, frame)
    else:
        rewrite_parquet(shard(raw, "train"), lambda rows: rows[0].update(label=99))

    with pytest.raises(DataError, match="label 99"):
        standardize(raw, out, CLS, "synthetic", [0.5, 1.0], [1])
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after[Path("meta.json")] == before[Path("meta.json")]
    assert after == before
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------ CLI
def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    raw = make_raw(tmp_path, CLS, "zenodo")
    frame = read_annotation(raw)
    image = zenodo_image(raw, frame, first_row(frame, "val"))
    image.write_bytes(b"garbage")
    out = out_for(tmp_path, CLS)
    argv = ["standardize", "--dataset", CLS, "--raw", str(raw), "--out", str(out)]
    code = cli.main([*argv, "--source", "zenodo", "--fractions", "0.5,1.0", "--fewshot", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: dataset {CLS}, split val, file {image}: "), err
    assert "Traceback" not in err
    assert not out.exists()
    assert leftovers(out) == []
