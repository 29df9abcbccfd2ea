"""Text queries as the reference builds them: phrases per task, the three templates or one
bare phrase, per-class prompts, and the registry's landforms only for geo-localization."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from marseval.cli import build_parser
from marseval.errors import MarsevalError
from marseval.retrieval import queries as rq
from marseval.retrieval.models import load_model
from marseval.workflow import queries_flags

GLF = "glacier-like_form"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv("MARSEVAL_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-clip")


def _mean_of_unit(model, texts: list[str]) -> np.ndarray:
    """The oracle: each string embedded alone and L2-normalised, averaged, renormalised."""
    rows = np.concatenate([model.embed_texts([t]) for t in texts]).astype(np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    mean = rows.mean(axis=0)
    return mean / np.linalg.norm(mean)


# --------------------------------------------------------------------------- phrases


def test_landform_phrases_drop_hyphens_geolocalization_phrases_keep_them():
    # queries/landform_retrieval.py: _format_concept replaces "_" and "-";
    # queries/geolocalization.py: build_text_query replaces "_" only
    assert rq.class_phrase(GLF, "landform") == "glacier like form"
    assert rq.class_phrase(GLF, "geolocalization") == "glacier-like form"
    assert rq.class_phrase("pitted_cones", "geolocalization") == "pitted cones"
    assert rq.class_phrase("slope-streaks", "landform") == "slope streaks"
    assert rq.text_prompts(GLF, "geolocalization") == [
        "a photo of glacier-like form, a type of martian terrain",
        "a satellite photo of glacier-like form.",
        "a high-resolution remote sensing image of glacier-like form on Mars.",
    ]
    assert rq.text_prompts(GLF, "landform")[1] == "a satellite photo of glacier like form."
    with pytest.raises(MarsevalError, match="paired"):
        rq.class_phrase(GLF, "paired")


def test_prompt_styles_and_per_class_prompts():
    assert rq.text_prompts(GLF, "geolocalization", prompts="single") == ["glacier-like form"]
    assert rq.text_prompts(GLF, "landform", prompts="single") == ["glacier like form"]
    own = {GLF: ["a lobate glacier-like landform on Mars", "a debris-covered glacier"]}
    for style in rq.PROMPT_STYLES:
        assert rq.text_prompts(GLF, "geolocalization", prompts=style,
                               landform_prompts=own) == own[GLF]
    # a class the mapping does not name keeps the templates
    assert len(rq.text_prompts("yardangs", "geolocalization", landform_prompts=own)) == 3
    with pytest.raises(MarsevalError, match="prompts must be one of"):
        rq.text_prompts(GLF, "landform", prompts="five")
    with pytest.raises(MarsevalError, match="non-empty"):
        rq.text_prompts(GLF, "landform", landform_prompts={GLF: []})


# --------------------------------------------------------------------------- query vectors


def test_query_vector_is_the_mean_of_the_normalised_prompt_embeddings(tiny):
    own = {GLF: ["a lobate glacier-like landform on Mars", "a debris-covered glacier on Mars",
                 "ice-rich flow at the base of a crater wall"]}
    cases = [
        ({"subtask": "geolocalization"}, [t.format("glacier-like form")
                                          for t in rq.PROMPT_TEMPLATES]),
        ({"subtask": "landform"}, [t.format("glacier like form") for t in rq.PROMPT_TEMPLATES]),
        ({"subtask": "geolocalization", "prompts": "single"}, ["glacier-like form"]),
        ({"subtask": "landform", "prompts": "single"}, ["glacier like form"]),
        ({"subtask": "geolocalization", "landform_prompts": own}, own[GLF]),
    ]
    vectors = []
    for kwargs, texts in cases:
        got = rq.text_query(tiny, GLF, **kwargs)
        assert got.dtype == np.float32 and np.linalg.norm(got) == pytest.approx(1, abs=1e-6)
        np.testing.assert_allclose(got, _mean_of_unit(tiny, texts), atol=1e-5)
        vectors.append(got)
    # the variants are different queries (the tiny model tells the strings apart)
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            assert not np.allclose(vectors[i], vectors[j], atol=1e-4)


def _geo_dataset(root: Path, classes: list[str]) -> Path:
    """A standardized geo-localization dataset: meta and two query images per landform,
    each landform its own colour."""
    folder = root / "geo"
    (folder / "images").mkdir(parents=True)
    rows = []
    for label, name in enumerate(classes):
        for j in range(2):
            image = f"images/{name}-{j}.png"
            colour = (40 * label + 10 * j, 200 - 50 * label, 30 + 60 * j)
            Image.new("RGB", (32, 32), colour).save(folder / image)
            rows.append({"sample_id": f"{name}-{j}", "split": "test", "image": image,
                         "label": label, "width": 32, "height": 32})
    pd.DataFrame(rows).to_parquet(folder / "samples.parquet", index=False)
    meta = {"name": "mr-geolocalization", "task": "retrieval", "subtask": "geolocalization",
            "classes": classes}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_geolocalization_queries_cover_the_registry_landforms_only(tmp_path, tiny, caplog):
    # ground truth for "dunes" exists but the registry lists five other landforms: no query
    classes = ["dunes", "alluvial_fans", GLF]
    data = _geo_dataset(tmp_path, classes)
    own = {"alluvial_fans": ["a fan-shaped sedimentary landform on Mars"]}
    with caplog.at_level("WARNING"):
        arrays = rq.build_queries(data, "tiny-clip", tmp_path / "q.npz", landform_prompts=own)
    assert "ground truth of dunes is ignored" in caplog.text
    assert "landslides, pitted_cones, yardangs have no ground truth" in caplog.text
    read, names = rq.read_queries(tmp_path / "q.npz")
    assert names == ["alluvial_fans", GLF]
    assert list(read) == ["text", "image", "hybrid"]
    np.testing.assert_allclose(read["text"][0], _mean_of_unit(tiny, own["alluvial_fans"]),
                               atol=1e-5)
    np.testing.assert_allclose(
        read["text"][1],
        _mean_of_unit(tiny, [t.format("glacier-like form") for t in rq.PROMPT_TEMPLATES]),
        atol=1e-5)
    # image queries come from each landform's own images (labels 1 and 2 of the dataset)
    samples = pd.read_parquet(data / "samples.parquet")
    for row, label in enumerate((1, 2)):
        images = [Image.open(data / p) for p in samples.loc[samples.label == label, "image"]]
        mean = tiny.embed_images(images).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(read["image"][row], mean / np.linalg.norm(mean), atol=1e-5)
        np.testing.assert_allclose(arrays["hybrid"][row],
                                   rq.hybrid_query(tiny.embed_images(images), read["text"][row]),
                                   atol=1e-5)


def test_landform_queries_single_prompt(tmp_path, tiny):
    folder = tmp_path / "landform"
    folder.mkdir()
    meta = {"name": "mr-landforms", "task": "retrieval", "subtask": "landform",
            "classes": [GLF, "dunes"]}
    (folder / "meta.json").write_text(json.dumps(meta))
    rq.build_queries(folder, "tiny-clip", tmp_path / "q.npz", prompts="single")
    read, names = rq.read_queries(tmp_path / "q.npz")
    assert names == [GLF, "dunes"]  # landform retrieval scores the dataset's own classes
    np.testing.assert_allclose(read["text"][0], _mean_of_unit(tiny, ["glacier like form"]),
                               atol=1e-5)
    np.testing.assert_allclose(read["text"][1], _mean_of_unit(tiny, ["dunes"]), atol=1e-5)
    with pytest.raises(MarsevalError, match="prompts must be one of"):
        rq.build_queries(folder, "tiny-clip", tmp_path / "bad.npz", prompts="bare")


# --------------------------------------------------------------------------- CLI and workflow


def _config(**retrieval) -> dict:
    return {"offline": False,
            "retrieval": {"embed_batch_size": 8, "device": "cpu", **retrieval}}


def test_queries_flags_reach_the_cli_unchanged():
    parser = build_parser()
    base = ["queries", "--dataset-dir", "d", "--model", "tiny-clip", "--out", "q.npz"]
    default = parser.parse_args([*base, *shlex.split(queries_flags(_config()))])
    assert default.prompts == "templates" and default.landform_prompts == {}
    assert "--landform-prompts" not in queries_flags(_config(landform_prompts={}))

    own = {GLF: ["it's a \"lobate\" glacier-like form", "débris; $HOME {x}"], "yardangs": ["y"]}
    flags = queries_flags(_config(prompts="single", landform_prompts=own))
    args = parser.parse_args([*base, *shlex.split(flags)])
    assert args.prompts == "single"
    assert args.landform_prompts == own
    assert args.batch_size == 8 and args.device == "cpu"


def test_cli_refuses_bad_prompt_options(capsys):
    parser = build_parser()
    base = ["queries", "--dataset-dir", "d", "--model", "tiny-clip", "--out", "q.npz"]
    for bad in (["--prompts", "five"], ["--landform-prompts", "{not json"],
                ["--landform-prompts", '{"dunes": "one string"}'],
                ["--landform-prompts", '{"dunes": []}']):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])
    evaluate = ["evaluate", "--dataset-dir", "d", "--index", "i", "--model", "m", "--out", "o"]
    assert parser.parse_args(evaluate).k_step == "auto"
    assert parser.parse_args([*evaluate, "--k-step", "auto"]).k_step == "auto"
    assert parser.parse_args([*evaluate, "--k-step", "200"]).k_step == 200
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args([*evaluate, "--k-step", bad])
