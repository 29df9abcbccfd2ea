"""MarsRetrieval raw data as the reference prepares it: Task 1 pair images as img2dataset 1.47.0
writes them (shorter side 512, centre crop, JPEG 95), repeated keys kept, drop counts, and
Task 3 longitudes used as given unless wrapping is asked for."""

from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from marseval.cli import main
from marseval.data import image_fetch
from marseval.data.image_fetch import (
    TooManyPixels,
    _resize_area,
    _resize_lanczos4,
    center_crop_box,
    decode_unchanged,
    fetch_images,
    img2dataset_center_crop,
    open_image,
    resize_shorter_side,
)
from marseval.data.retrieval import (
    RetrievalOptions,
    _sample_ids,
    pair_image_urls,
    standardize_retrieval,
)
from marseval.data.standardize import standardize
from marseval.data.synthetic.retrieval import write_retrieval
from marseval.registry import get_dataset
from marseval.workflow import download_options, retrieval_standardize_flags

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
PAIRS, GEO = "mr-vl_pairs", "mr-geolocalization"
OPTS = {"pairs": 8, "landform_images_per_class": 2, "mosaic_width": 72, "mosaic_height": 36,
        "sites_per_landform": 2, "queries_per_landform": 2}


def encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


# --------------------------------------------------------------------------- the resizer


def test_600x400_is_enlarged_to_768x512_and_cropped_at_column_128() -> None:
    """Shorter side 400 -> 512: scale 1.28, 600 -> 768 columns, crop x 128..640 of the
    enlarged image, i.e. source columns 100..500."""
    ramp = np.rint(0.4 * np.arange(600)).astype(np.uint8)  # value 0.4 x at column x
    pixels = np.tile(ramp, (400, 1))
    assert resize_shorter_side(pixels, 512).shape == (512, 768)
    assert center_crop_box(512, 768, 512) == (128, 0, 640, 512)

    jpeg, original = img2dataset_center_crop(encode(pixels), 512)
    assert original == (600, 400)
    out = decode(jpeg)
    assert out.shape == (512, 512) and jpeg[:3] == b"\xff\xd8\xff"
    # output column j samples source column (j + 128 + 0.5) / 1.28 - 0.5 (99.89 at j = 0)
    source = (np.arange(512) + 128.5) / 1.28 - 0.5
    assert np.abs(out.astype(float) - 0.4 * source).max() <= 1  # rounding, Lanczos, JPEG


def test_1200x800_is_shrunk_by_area_to_768x512() -> None:
    """Shorter side 800 -> 512: 1200 -> 768 columns, each the mean of 1.5625 source columns."""
    ramp = np.rint(0.2 * np.arange(1200)).astype(np.uint8)
    pixels = np.stack([np.tile(ramp, (800, 1))] * 3, axis=-1)
    resized = resize_shorter_side(pixels, 512)
    assert resized.shape == (512, 768, 3)
    jpeg, original = img2dataset_center_crop(encode(pixels), 512)
    assert original == (1200, 800)
    out = decode(jpeg)
    assert out.shape == (512, 512, 3)
    centre = (np.arange(512) + 128 + 0.5) * 1.5625 - 0.5  # mean source column of column j
    assert np.abs(out[..., 1].astype(float) - 0.2 * centre).max() <= 1


def test_a_512_side_is_not_resampled() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (512, 700, 3), dtype=np.uint8)
    assert resize_shorter_side(pixels, 512) is pixels
    assert center_crop_box(512, 700, 512) == (94, 0, 606, 512)  # (700 - 512) // 2 = 94


def test_area_by_hand() -> None:
    # 2x2 blocks: OpenCV's integer-factor path rounds halves up, (sum + 2) >> 2
    blocks = np.array([[1, 2, 0, 0], [3, 4, 0, 2], [0, 0, 5, 5], [1, 1, 5, 6]], np.uint8)
    assert _resize_area(blocks, 2, 2).tolist() == [[3, 1], [1, 5]]  # 10/4, 2/4, 2/4, 21/4
    # 3 -> 2 (cells of 1.5 pixels): (0 + 90 / 2) / 1.5 = 30, (90 / 2 + 180) / 1.5 = 150
    rows = np.tile(np.array([0, 90, 180], np.uint8), (3, 1))
    assert _resize_area(rows, 2, 2).tolist() == [[30, 150], [30, 150]]


def test_lanczos_by_hand() -> None:
    """At 3x, output pixel 3k + 1 sits exactly on source pixel k: its weights are (0, 0, 0, 1,
    0...) and it is that pixel."""
    pixels = np.random.default_rng(1).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    out = _resize_lanczos4(pixels, 30, 30)
    assert np.array_equal(out[1::3, 1::3], pixels)
    flat = np.full((7, 9), 77, np.uint8)
    assert (_resize_lanczos4(flat, 512, 658) == 77).all()


def test_alpha_is_matted_on_white_and_exif_is_ignored() -> None:
    rgba = np.array([[[100, 50, 0, 128], [100, 50, 0, 0], [100, 50, 0, 255]]], np.uint8)
    # img2dataset: alpha / 255 * rgb + 255 - alpha, rounded: 128/255*100 + 127 = 177.2
    assert decode_unchanged(encode(rgba)).tolist() == [[[177, 152, 127], [255, 255, 255],
                                                        [100, 50, 0]]]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": cv2.IMREAD_UNCHANGED does not, nor do we
    wide = np.zeros((20, 30, 3), np.uint8)
    assert decode_unchanged(encode(wide, "JPEG", exif=exif)).shape == (20, 30, 3)
    deep = np.array([[0, 200, 300, 65535]], np.uint16)  # OpenCV saturates 16 bits to 8
    assert decode_unchanged(encode(deep)).tolist() == [[0, 200, 255, 255]]


def test_open_image_lifts_pils_bomb_limit_but_not_its_own(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    data = encode(np.zeros((20, 30), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above 2 x 100 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    with open_image(data) as image:
        assert image.size == (30, 20)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    with (pytest.raises(TooManyPixels, match="30x20 = 600 pixels, above the limit of 599"),
          open_image(data, limit=599)):
        pass


def test_the_resizer_is_opencvs() -> None:
    """img2dataset's resizer.py steps run with OpenCV (albumentations' SmallestMaxSize and
    CenterCrop written out) give the same pixels and the same JPEG."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    shapes = [(400, 600, 3), (600, 400, 0), (1024, 1024, 3), (1536, 999, 3), (1200, 1700, 3),
              (100, 37, 3), (513, 700, 0), (256, 256, 3), (64, 64, 3)]
    for h, w, c in shapes:
        pixels = rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)
        data = encode(pixels)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        downscale = min(w, h) > 512
        scale = 512 / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != (w, h):
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if downscale
                             else cv2.INTER_LANCZOS4)
        y0, x0 = (img.shape[0] - 512) // 2, (img.shape[1] - 512) // 2
        img = img[y0:y0 + 512, x0:x0 + 512]
        reference = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1].tobytes()

        ours = resize_shorter_side(pixels, 512)
        x0, y0, x1, y1 = center_crop_box(*ours.shape[:2], 512)
        bgr = ours[y0:y1, x0:x1, ::-1] if c else ours[y0:y1, x0:x1]
        assert np.array_equal(bgr, img), (h, w, c)
        jpeg, _ = img2dataset_center_crop(data, 512)
        assert np.abs(decode(jpeg).astype(int) - decode(reference)).max() <= 1, (h, w, c)


# --------------------------------------------------------------------------- pairs


def test_repeated_keys_get_suffixes_no_other_key_has() -> None:
    ids, renamed = _sample_ids(["a", "b", "a", "a_1", "a"])
    assert ids == ["a", "b", "a_2", "a_1", "a_3"]
    assert renamed == {"a_2": "a", "a_3": "a"}


def pairs_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_retrieval(get_dataset(PAIRS), raw, seed=0, size=32, opts=OPTS)
    return raw


def test_pairs_standardize_with_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    raw = pairs_raw(tmp_path)
    shard = raw / "data" / "train-00000-of-00001.parquet"
    frame = pd.read_parquet(shard)
    frame.loc[1, "refined_caption"] = ""  # incomplete: skipped as hf2tsv.py skips it
    frame.loc[2, "key"] = "000000000"  # a repeated key: its own sample, 000000000_1
    frame.loc[2, "image_url"] = "extra/dup.png"
    frame.loc[3, "image_url"] = "extra/none.png"  # dead link
    frame.to_parquet(shard, index=False)
    (raw / "extra").mkdir()
    (raw / "extra" / "dup.png").write_bytes(encode(np.full((32, 32, 3), 7, np.uint8)))
    for key in ("000000002", "000000003"):
        (raw / "images" / f"{key}.png").unlink()
    good = (raw / "images" / "000000004.png").read_bytes()
    (raw / "images" / "000000004.png").write_bytes(good[:len(good) // 2])  # truncated
    (raw / "images" / "000000005.png").write_bytes(encode(np.zeros((40, 40, 3), np.uint8)))

    spec = get_dataset(PAIRS)
    assert [k for k, _ in pair_image_urls(raw, spec)] == [
        "000000000", "000000000_1", "000000003", "000000004", "000000005", "000000006",
        "000000007"]
    report = fetch_images(pair_image_urls(raw, spec), raw / "images", base=raw)
    assert report.fetched == 1 and [k for k, _, _ in report.failed] == ["000000003"]

    monkeypatch.setattr(image_fetch, "MAX_PIXELS", 1500)  # 32 x 32 passes, 40 x 40 does not
    out = tmp_path / "std"
    with caplog.at_level(logging.INFO):
        meta = standardize(raw, out, PAIRS, "huggingface", [1.0], [1])
    counts = {"dropped_incomplete_rows": 1, "dropped_unfetched_images": 1,
              "dropped_undecodable_images": 1, "dropped_oversized_images": 1,
              "renamed_duplicate_keys": 1}
    assert {k: meta[k] for k in counts} == counts
    assert meta["splits"] == {"test": 4}
    assert (meta["pair_resize_mode"], meta["pair_image_size"]) == ("center_crop", 512)
    assert json.loads((out / "meta.json").read_text())["dropped_oversized_images"] == 1
    assert "4 pairs kept of 8 rows" in caplog.text
    assert "dropped undecodable images: 1" in caplog.text
    assert "renamed duplicate keys: 1" in caplog.text
    assert "dropped pair '000000005': 40x40 = 1,600 pixels, above the limit of 1,500" \
        in caplog.text
    assert "dropped pair '000000004': image does not decode" in caplog.text

    samples = pd.read_parquet(out / "samples.parquet")
    assert samples["sample_id"].tolist() == ["000000000", "000000000_1", "000000006",
                                             "000000007"]
    assert samples["caption"].tolist() == frame.loc[[0, 2, 6, 7], "refined_caption"].tolist()
    assert (samples[["width", "height"]] == 512).all().all()
    assert (samples[["original_width", "original_height"]] == 32).all().all()
    for image in samples["image"]:
        assert image.endswith(".jpg")
        with Image.open(out / image) as written:
            assert (written.format, written.size) == ("JPEG", (512, 512))
    dup = decode((out / "images" / "000000000_1.jpg").read_bytes())
    assert np.abs(dup.astype(int) - 7).max() <= 1  # the repeated key's own image


def test_keep_mode_copies_images_as_fetched(tmp_path: Path) -> None:
    raw = pairs_raw(tmp_path)
    out = tmp_path / "std"
    meta = standardize_retrieval(raw, out, get_dataset(PAIRS), "synthetic",
                                 RetrievalOptions(pair_resize_mode="keep"))
    assert (meta["pair_resize_mode"], meta["pair_image_size"]) == ("keep", None)
    samples = pd.read_parquet(out / "samples.parquet")
    assert (samples["width"] == 32).all() and (samples["original_width"] == 32).all()
    for sample_id, image in zip(samples["sample_id"], samples["image"], strict=True):
        assert image == f"images/{sample_id}.png"
        assert (out / image).read_bytes() == (raw / "images" / f"{sample_id}.png").read_bytes()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="pair_resize_mode"):
        RetrievalOptions(pair_resize_mode="border")
    with pytest.raises(ValueError, match="pair_image_size"):
        RetrievalOptions(pair_image_size=0)


# --------------------------------------------------------------------------- geo-localization


def geo_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_retrieval(get_dataset(GEO), raw, seed=0, size=32, opts=OPTS)
    pd.DataFrame({"lon": [10.1, 190.5, 359.0, 180.0, -180.0], "lat": [0, 1, 2, 3, 4]}).to_csv(
        raw / "ground_truth" / "landslides.csv", index=False)
    return raw


def landslides(out: Path) -> list[float]:
    truth = pd.read_parquet(out / "ground_truth.parquet")
    return truth.loc[truth["landform"] == "landslides", "lon"].tolist()


def test_longitudes_are_used_as_given(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = geo_raw(tmp_path)
    with caplog.at_level(logging.WARNING):
        meta = standardize(raw, tmp_path / "std", GEO, "synthetic", [1.0], [1])
    assert landslides(tmp_path / "std") == [10.1, 190.5, 359.0, 180.0, -180.0]
    assert (meta["wrap_longitudes"], meta["longitudes_above_180"],
            meta["longitudes_wrapped"]) == (False, 2, 0)
    total = meta["ground_truth_points"]
    assert f"2 of {total} ground-truth longitudes lie above 180" in caplog.text


def test_longitudes_wrap_when_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = geo_raw(tmp_path)
    out = tmp_path / "std"
    with caplog.at_level(logging.INFO):
        assert main(["standardize", "--dataset", GEO, "--raw", str(raw), "--out", str(out),
                     "--source", "synthetic", "--wrap-longitudes"]) == 0
    # only the two above 180 move; 10.1 stays exactly 10.1, 180 stays 180
    assert landslides(out) == [10.1, -169.5, -1.0, 180.0, -180.0]
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["wrap_longitudes"], meta["longitudes_above_180"],
            meta["longitudes_wrapped"]) == (True, 2, 2)
    assert f"wrapped 2 of {meta['ground_truth_points']} ground-truth longitudes" in caplog.text


def test_query_images_as_the_reference_lists_them(tmp_path: Path) -> None:
    """jpg/jpeg/png/bmp/webp/tif/tiff in any case, one folder deep, sorted by name."""
    raw = geo_raw(tmp_path)
    folder = raw / "image_queries" / "yardangs"
    pixels = np.full((16, 16, 3), 90, np.uint8)
    (folder / "query_a.bmp").write_bytes(encode(pixels, "BMP"))
    (folder / "query_b.webp").write_bytes(encode(pixels, "WEBP"))
    (folder / "query_E.JPG").write_bytes(encode(pixels, "JPEG"))
    (folder / "query_c.gif").write_bytes(encode(pixels, "GIF"))
    (folder / "sub").mkdir()
    (folder / "sub" / "query_d.png").write_bytes(encode(pixels))
    out = tmp_path / "std"
    standardize(raw, out, GEO, "synthetic", [1.0], [1])
    samples = pd.read_parquet(out / "samples.parquet")
    ids = samples.loc[samples["sample_id"].str.startswith("yardangs-"), "sample_id"].tolist()
    assert ids == ["yardangs-query_00", "yardangs-query_01", "yardangs-query_E",
                   "yardangs-query_a", "yardangs-query_b"]


# --------------------------------------------------------------------------- config and CLI


def validated(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, SCHEMA, set_default=True)
    return config


def test_config_keys_reach_download_and_standardize() -> None:
    config = validated({"datasets": [PAIRS, GEO, "mb-frost_cls"]})
    download = config["download"]
    assert (download["pair_image_size"], download["pair_resize_mode"], download["image_timeout"],
            download["image_retries"]) == (512, "center_crop", 10, 3)
    assert retrieval_standardize_flags(config, PAIRS) == (
        "--pair-image-size 512 --pair-resize-mode center_crop")
    assert retrieval_standardize_flags(config, GEO) == ""
    assert retrieval_standardize_flags(config, "mb-frost_cls") == ""
    fetched = json.loads(download_options(config, PAIRS))
    assert (fetched["image_timeout"], fetched["image_retries"]) == (10, 3)
    assert "image_timeout" not in json.loads(download_options(config, "mb-frost_cls"))

    config = validated({"datasets": [GEO], "dataset_options": {GEO: {"wrap_longitudes": True}},
                        "download": {"pair_image_size": 256, "pair_resize_mode": "keep"}})
    assert retrieval_standardize_flags(config, GEO) == "--wrap-longitudes"
    assert retrieval_standardize_flags(config, PAIRS) == (
        "--pair-image-size 256 --pair-resize-mode keep")
    with pytest.raises(WorkflowError):
        validated({"datasets": [PAIRS], "download": {"pair_resize_mode": "border"}})


def test_cli_pair_flags(tmp_path: Path) -> None:
    raw = pairs_raw(tmp_path)
    out = tmp_path / "std"
    assert main(["standardize", "--dataset", PAIRS, "--raw", str(raw), "--out", str(out),
                 "--source", "synthetic", "--pair-image-size", "48"]) == 0
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == 8 and (samples["width"] == 48).all()
    with Image.open(out / samples["image"][0]) as image:
        assert image.size == (48, 48)
