"""The Ops-MM adapter (marseval/retrieval/mllm/ops_mm.py) on a tiny random Qwen2-VL saved as
the Ops-MM-embedding-v1-2B hub repo is laid out (a Qwen2VLForConditionalGeneration
config.json, `visual.*` / `model.*` weights, Qwen2-VL tokenizer and image processor configs):
the published prompt strings reach the tokenizer, the pooled token is the last real token
under either padding, and the embeddings equal a hand-written run of the published
OpsMMEmbeddingV1 steps (the hub's ops_mm_embedding_v1.py) on the same weights, as the
MarsRetrieval reference calls them. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mllm_probe import decoded, record_forward
from PIL import Image
from retrieval_stages import run_retrieval_stages
from test_mllm_qwen2_vl import make_gme_checkpoint

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import ops_mm
from marseval.retrieval.mllm.load import load_embedder
from marseval.retrieval.mllm.registry import check_embedders, get_embedder

KEY = "mllm:ops-mm-embedding-v1"
DIM = 32  # the tiny language model's hidden size
# OpsMMEmbeddingV1.embed, verbatim
PUBLISHED = ("<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{input_str}"
             "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
IMAGE_STR = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_INSTRUCTION = "You are a helpful assistant."  # OpsMMEmbeddingV1.default_instruction
# OpsMMEmbeddingV1.__init__ (AutoProcessor min/max_pixels) and fetch_image's MIN/MAX_PIXELS
MIN_PIXELS, MAX_PIXELS, MAX_RATIO = 256 * 28 * 28, 1280 * 28 * 28, 200
TEXTS = ["a photo of yardangs, a type of martian terrain", "chaos",
         "a high-resolution remote sensing image of glacier-like form on Mars."]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv("MARSEVAL_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_ops_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny Qwen2-VL in the Ops-MM hub repo's layout: GME's tiny checkpoint (the same
    Qwen2-VL tokenizer, image processor and weight names) with a plain Qwen2-VL config.json
    (AutoModelForImageTextToText loads it as Qwen2VLForConditionalGeneration) and none of
    GmeQwen2VLConfig's fields."""
    make_gme_checkpoint(folder, tokens=None, seed=seed)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Qwen2VLForConditionalGeneration"]
    del config["max_length"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_ops_checkpoint(tmp_path_factory.mktemp("ops_mm"))


@pytest.fixture(scope="module")
def ops(checkpoint):
    return load_embedder(f"{KEY}@{checkpoint}", "cpu", source=str(checkpoint))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    # (width, height): up to 256 tokens, a wide one, and one over the 1,280-token cap
    sizes = [(64, 48), (40, 90), (30, 30), (1200, 1000)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def published_fetch_image(image: Image.Image) -> Image.Image:
    """fetch_image / smart_resize of the Ops-MM code ("Modified from qwen_vl_utils"): factor
    28, 256 to 1,280 x 28 x 28 pixels, an aspect beyond 200 clipped, `image.resize((w, h))`."""
    factor = 28
    image = image.convert("RGB")
    width, height = image.size
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h_bar, w_bar = (math.floor(height / beta / factor) * factor,
                        math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h_bar, w_bar = (math.ceil(height * beta / factor) * factor,
                        math.ceil(width * beta / factor) * factor)
    if max(h_bar, w_bar) / min(h_bar, w_bar) > MAX_RATIO:
        if h_bar > w_bar:
            h_bar = w_bar * MAX_RATIO
        else:
            w_bar = h_bar * MAX_RATIO
    return image.resize((w_bar, h_bar))




def test_registry_entry_as_published():
    spec = get_embedder(KEY)
    assert (spec.family, spec.hub, spec.cuda_dtype, spec.padding_side, spec.batch_size) == (
        "ops_mm", "OpenSearch-AI/Ops-MM-embedding-v1-2B", "bfloat16", "left", 8)
    assert spec.prompts == {"template": PUBLISHED.replace("{input_str}", "{input}"),
                            "image": IMAGE_STR, "image_instruction": DEFAULT_INSTRUCTION,
                            "text_instruction": DEFAULT_INSTRUCTION}
    assert ops_mm.ops_settings(spec) == {"min_image_tokens": 256, "max_image_tokens": 1280}
    assert spec.extra["max_length"] is None
    # transformers' own classes: no hub code, so no remote-code opt-in
    assert not spec.remote_code and check_embedders([KEY], {}) == []


def test_published_prompt_strings_reach_the_tokenizer(ops, checkpoint, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    seen = record_forward(monkeypatch, ops_mm, "ops_forward")
    ops.embed_texts(TEXTS)
    ops.embed_images(images()[:2])
    text_batch, image_batch = seen
    assert decoded(tokenizer, text_batch) == [
        PUBLISHED.format(instruction=DEFAULT_INSTRUCTION, input_str=t) for t in TEXTS]
    # each image's pad token expanded to its merged patch count (grid t*h*w / 2**2)
    counts = [int(g.prod()) // 4 for g in image_batch["image_grid_thw"]]
    assert decoded(tokenizer, image_batch) == [
        PUBLISHED.format(instruction=DEFAULT_INSTRUCTION,
                         input_str=IMAGE_STR.replace("<|image_pad|>", "<|image_pad|>" * n))
        for n in counts]
    # left padding: pads at the start of the shorter rows, every row ends on a real token
    mask = text_batch["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()


def test_the_processor_resizes_as_fetch_image_within_the_pixel_limits(ops, checkpoint,
                                                                       monkeypatch):
    """The adapter's processor on a raw image gives the pixels the published steps give
    (fetch_image, then the processor at its size): one PIL bicubic resize to the same size."""
    from marseval.retrieval.mllm import qwen2_vl

    processor = qwen2_vl.load_processor(str(checkpoint), None,
                                        ops_mm.ops_settings(get_embedder(KEY)), "left")
    sizes = [(512, 512), (30, 30), (64, 48), (40, 90), (1200, 1000), (100, 4000)]
    rng = np.random.default_rng(5)
    for width, height in sizes:
        raw = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours = processor.image_processor(images=[raw], return_tensors="pt")
        published = processor.image_processor(images=[published_fetch_image(raw)],
                                              return_tensors="pt")
        assert torch.equal(ours["image_grid_thw"], published["image_grid_thw"])
        assert torch.equal(ours["pixel_values"], published["pixel_values"])
    seen = record_forward(monkeypatch, ops_mm, "ops_forward")
    pictures = images()
    ops.embed_images(pictures)
    grids = seen[0]["image_grid_thw"]
    tokens = grids.prod(dim=1) // 4
    assert tokens.min() == 256 and tokens.max() <= 1280 and (grids[:, 0] == 1).all()
    # 14 px patches of the fetched image: the processor kept fetch_image's size
    for grid, picture in zip(grids.tolist(), pictures, strict=True):
        width, height = published_fetch_image(picture).size
        assert grid[1:] == [height // 14, width // 14]


def test_batches_equal_one_by_one_under_either_padding(checkpoint, ops):
    pictures = images()[:3]
    texts_batch, images_batch = ops.embed_texts(TEXTS), ops.embed_images(pictures)
    one_texts = np.concatenate([ops.embed_texts([t]) for t in TEXTS])
    one_images = np.concatenate([ops.embed_images([p]) for p in pictures])
    np.testing.assert_allclose(texts_batch, one_texts, atol=1e-5)
    np.testing.assert_allclose(images_batch, one_images, atol=1e-5)
    right_spec = dataclasses.replace(get_embedder(KEY), padding_side="right")
    right = ops_mm.build(KEY, right_spec, "cpu", str(checkpoint), None)
    np.testing.assert_allclose(right.embed_texts(TEXTS), texts_batch, atol=1e-5)
    np.testing.assert_allclose(right.embed_images(pictures), images_batch, atol=1e-5)


def test_unit_embeddings_of_the_declared_width(ops):
    image_vectors, text_vectors = ops.embed_images(images()[:2]), ops.embed_texts(TEXTS)
    assert image_vectors.shape == (2, DIM) and text_vectors.shape == (3, DIM)
    assert image_vectors.dtype == np.float32 and text_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1, atol=1e-5)
    assert ops.dim == DIM


@pytest.mark.filterwarnings("ignore:Passing `min_pixels` and `max_pixels`:FutureWarning")
@torch.inference_mode()
def test_matches_a_hand_written_run_of_the_published_steps(checkpoint, ops):
    """OpsMMEmbeddingV1.__init__ / embed / encode_input / _pooling written out, as
    get_image_embeddings(images) and get_text_embeddings(texts) run them: the model as
    AutoModelForImageTextToText, AutoProcessor with min/max_pixels (its default image
    processor), LEFT padding, truncation with max_length=None, fetch_image on every image,
    `base_model(**inputs, output_hidden_states=True).hidden_states[-1]` at position -1,
    L2-normalised. transformers 4.5x's forward took the text positions from get_rope_index
    (attention_mask.cumsum - 1); transformers 5 would count the pads, so those are written
    out and passed for the text batch."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base_model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, min_pixels=MIN_PIXELS,
                                              max_pixels=MAX_PIXELS)
    processor.tokenizer.padding_side = "left"
    # the default backend (torchvision), as transformers 4.57 forced for Qwen2-VL; the
    # adapter's is PIL: after fetch_image both only rescale and normalise
    assert "Pil" not in type(processor.image_processor).__name__

    def run(texts, pictures):
        inputs = processor(text=texts, images=pictures, padding=True, truncation=True,
                           max_length=None, return_tensors="pt")
        extra = {}
        if pictures is None:
            mask = inputs["attention_mask"]
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
            extra["position_ids"] = positions.unsqueeze(0).expand(3, -1, -1)
        hidden = base_model(**inputs, **extra, return_dict=True,
                            output_hidden_states=True).hidden_states[-1]
        reps = hidden[torch.arange(hidden.shape[0]), -1, :]
        return torch.nn.functional.normalize(reps, p=2, dim=-1).numpy()

    pictures = images()[:3]
    expected_images = run([PUBLISHED.format(instruction=DEFAULT_INSTRUCTION,
                                            input_str=IMAGE_STR)] * len(pictures),
                          [published_fetch_image(p) for p in pictures])
    expected_texts = run([PUBLISHED.format(instruction=DEFAULT_INSTRUCTION, input_str=t)
                          for t in TEXTS], None)
    np.testing.assert_allclose(ops.embed_images(pictures), expected_images, atol=1e-5)
    np.testing.assert_allclose(ops.embed_texts(TEXTS), expected_texts, atol=1e-5)
    # the images and texts really differ (a constant output would pass the above)
    assert np.abs(expected_images[0] - expected_images[1]).max() > 1e-3
    assert np.abs(expected_texts[0] - expected_texts[1]).max() > 1e-3


@pytest.mark.parametrize("dataset", ["mr-vl_pairs", "mr-landforms"])
def test_runs_the_retrieval_stages_on_synthetic_sets(checkpoint, tmp_path, dataset):
    """embed -> index -> queries -> evaluate with `mllm:ops-mm-embedding-v1@<tiny weights>`."""
    run_retrieval_stages(f"{KEY}@{checkpoint}", dataset, tmp_path, dim=DIM)


def test_refuses_a_checkpoint_with_weights_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    broken = make_ops_checkpoint(tmp_path / "broken")
    state = load_file(str(broken / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MarsevalError, match=r"mllm:ops-mm-embedding-v1@.*unloaded.*norm"):
        load_embedder(f"{KEY}@{broken}", "cpu", source=str(broken))
