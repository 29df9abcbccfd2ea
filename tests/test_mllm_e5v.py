"""Multimodal-LLM embedders: the registry, the remote-code opt-in, E5-V on tiny weights."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from retrieval_stages import run_retrieval_stages
from snakemake.utils import validate

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import llava_next
from marseval.retrieval.mllm.pooling import last_token
from marseval.retrieval.mllm.registry import check_embedders, embedders, get_embedder
from marseval.workflow import ConfigError, check_config

SCHEMA = str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml")
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# --------------------------------------------------------------------------- pooling


def test_last_token_under_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    # by hand: row 0 pools position 1 (right padded) or 3 (left padded), row 1 position 3:
    # element (row, position, 0) is 12 row + 3 position
    assert last_token(hidden, right).tolist() == [[3, 4, 5], [21, 22, 23]]
    assert last_token(hidden, left).tolist() == [[9, 10, 11], [21, 22, 23]]
    with pytest.raises(ValueError, match="no token to pool"):
        last_token(hidden, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))


# --------------------------------------------------------------------------- registry


def validated(retrieval: dict) -> dict:
    config = {"datasets": ["mr-vl_pairs"], "retrieval": copy.deepcopy(retrieval)}
    validate(config, SCHEMA, set_default=True)
    return config


def test_the_registry_holds_the_papers_embedders():
    assert set(embedders()) == {"e5-v", "gme-qwen2-vl-2b", "b3-qwen2-2b", "vlm2vec-v2",
                                "ops-mm-embedding-v1", "qwen3-vl-embedding-2b",
                                "jina-embeddings-v4", "bge-vl-large"}
    e5v = get_embedder("mllm:e5-v")
    assert (e5v.hub, e5v.remote_code, e5v.cuda_dtype, e5v.batch_size) == (
        "royokong/e5-v", False, "float16", 1)
    assert get_embedder("gme-qwen2-vl-2b").prompts["text_instruction"] == (
        "Find an image that matches the given text.")  # models/gme.py, verbatim
    with pytest.raises(MarsevalError, match="'nope' is not in the embedder registry"):
        get_embedder("mllm:nope")


def test_remote_code_runs_only_when_opted_in_with_a_commit(monkeypatch):
    assert check_embedders(["mllm:e5-v", "tiny-clip"], {}) == []  # no remote code
    # a remote-code model of an adapted family needs retrieval.remote_code.<key>
    from marseval.retrieval.mllm import registry

    adapted = dataclasses.replace(get_embedder("bge-vl-large"), family="llava_next",
                                  remote_code=True)  # an adapter that would run hub code
    monkeypatch.setattr(registry, "embedders", lambda: {**embedders(), "bge-vl-large": adapted})
    assert check_embedders(["mllm:bge-vl-large"], {}) == [
        "mllm:bge-vl-large runs remote code from BAAI/BGE-VL-large: opt in by naming the "
        "commit to run under retrieval.remote_code.bge-vl-large (40 hex digits)"]
    assert "not a branch or tag" in check_embedders(["mllm:bge-vl-large"],
                                                    {"bge-vl-large": "main"})[0]
    assert check_embedders(["mllm:bge-vl-large"], {"bge-vl-large": COMMIT}) == []


def test_the_config_check_stops_before_any_job(monkeypatch):
    check_config(validated({"models": ["mllm:e5-v"]}))
    check_config(validated({"models": ["mllm:gme-qwen2-vl-2b"]}))  # adapted, no hub code
    check_config(validated({"models": ["mllm:bge-vl-large"]}))  # adapted, no hub code
    from marseval.retrieval.mllm import registry

    # an entry of a family without an adapter, and one of a family's unwritten recipe
    unwritten = dataclasses.replace(get_embedder("vlm2vec-v2"), family="new_family")
    other_recipe = dataclasses.replace(get_embedder("gme-qwen2-vl-2b"),
                                       extra={"recipe": "other"})
    monkeypatch.setattr(registry, "embedders", lambda: {
        **embedders(), "vlm2vec-v2": unwritten, "gme-qwen2-vl-2b": other_recipe})
    with pytest.raises(ConfigError, match="mllm:vlm2vec-v2: its adapter .new_family family. is"):
        check_config(validated({"models": ["mllm:vlm2vec-v2"]}))
    with pytest.raises(ConfigError, match="mllm:gme-qwen2-vl-2b: its adapter .qwen2_vl family"):
        check_config(validated({"models": ["mllm:gme-qwen2-vl-2b"]}))
    with pytest.raises(ConfigError, match="'nope' is not in the embedder registry"):
        check_config(validated({"models": ["mllm:nope"]}))
    with pytest.raises(ConfigError, match="remote_code names e5-v, which retrieval.models"):
        check_config(validated({"models": ["tiny-clip"], "remote_code": {"e5-v": COMMIT}}))


# --------------------------------------------------------------------------- E5-V

SPECIAL = ["<pad>", "<unk>", "<image>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>"]
WORDS = "user assistant summary above image sentence in one word a crater on mars pitted cones"
PINPOINTS = [[32, 32], [32, 64], [64, 32]]


def make_e5v_checkpoint(folder: Path) -> Path:
    """A random LLaVA-NeXT (2-layer CLIP vision tower, 2-layer LLaMA) saved with its processor
    into `folder` (also what benchmarks/mllm_embedding.py times)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        PreTrainedTokenizerFast,
    )

    tokens = dict.fromkeys(SPECIAL + WORDS.split() + list("abcdefghijklmnopqrstuvwxyz.,:"))
    vocab = {token: i for i, token in enumerate(tokens)}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>",
                                        pad_token="<pad>", additional_special_tokens=SPECIAL[2:])
    images = LlavaNextImageProcessor(size={"shortest_edge": 32},
                                     crop_size={"height": 32, "width": 32},
                                     image_grid_pinpoints=PINPOINTS)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default",
                                   image_token="<image>", num_additional_image_tokens=1)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32,
                           patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0),
        image_token_index=vocab["<image>"], image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaNextForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_e5v(tmp_path_factory) -> Path:
    return make_e5v_checkpoint(tmp_path_factory.mktemp("e5v"))


def images(sizes) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


SIZES = [(40, 40), (30, 60), (64, 20)]  # different sizes: different numbers of image tokens
TEXTS = ["a crater on mars", "pitted cones", "a crater"]  # different lengths: padding


def load(folder: Path, **changes):
    spec = dataclasses.replace(get_embedder("mllm:e5-v"), **changes)
    return llava_next.build("mllm:e5-v", spec, "cpu", str(folder), None)


def reference_embedding(folder: Path, text: str, image: Image.Image | None) -> np.ndarray:
    """The reference's call path for one item (models/*/e5v_*_encoder.py, batch 1):
    processor(text, images) -> model(output_hidden_states) -> hidden_states[-1][:, -1, :]."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    processor = LlavaNextProcessor.from_pretrained(folder)
    model = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
    inputs = processor(text=[text], images=[image] if image else None, return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states
    feature = hidden[-1][:, -1, :]
    return torch.nn.functional.normalize(feature, dim=-1).numpy()[0]


def test_e5v_prompts_are_the_references():
    image_prompt, text_prompt = llava_next.prompts(get_embedder("mllm:e5-v"))
    header = "<|start_header_id|>user<|end_header_id|>\n\n"
    footer = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"
    assert image_prompt == header + "<image>\nSummary above image in one word: " + footer
    assert text_prompt("pitted cones") == (
        header + "pitted cones\nSummary above sentence in one word: " + footer)


def test_e5v_equals_the_reference_call_path(tiny_e5v):
    model = load(tiny_e5v)
    image_prompt, text_prompt = llava_next.prompts(get_embedder("mllm:e5-v"))
    pictures = images(SIZES)
    got = model.embed_images(pictures)
    expected = [reference_embedding(tiny_e5v, image_prompt, im) for im in pictures]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got_text = model.embed_texts(TEXTS)
    expected_text = [reference_embedding(tiny_e5v, text_prompt(t), None) for t in TEXTS]
    np.testing.assert_allclose(got_text, expected_text, atol=1e-5)
    assert got.shape == got_text.shape == (3, 32)  # one space: the LLM's hidden size
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_e5v_batches_equal_one_by_one(tiny_e5v, side):
    batched = load(tiny_e5v, batch_size=3, padding_side=side)
    single = load(tiny_e5v, batch_size=1)
    np.testing.assert_allclose(batched.embed_texts(TEXTS), single.embed_texts(TEXTS),
                               atol=1e-5)
    pictures = images(SIZES)
    np.testing.assert_allclose(batched.embed_images(pictures), single.embed_images(pictures),
                               atol=1e-5)


@pytest.mark.parametrize("dataset", ["mr-vl_pairs", "mr-landforms"])
def test_e5v_runs_the_retrieval_stages_on_synthetic_sets(tiny_e5v, tmp_path, dataset):
    """embed -> index -> queries -> evaluate with `mllm:e5-v@<tiny weights>`, as the jobs do."""
    run_retrieval_stages(f"mllm:e5-v@{tiny_e5v}", dataset, tmp_path, dim=32)


def test_an_entry_lacking_what_its_adapter_needs_is_named():
    spec = dataclasses.replace(get_embedder("qwen3-vl-embedding-2b"),
                               prompts={"template": "{}"}, extra={"max_length": 0})
    with pytest.raises(MarsevalError, match="qwen3-vl-embedding-2b: its entry in "
                       "marseval/registry/mllm_embedders.yaml lacks prompts.image, max_length"):
        spec.require(prompts=("template", "image"), fields=("max_length",))
    get_embedder("qwen3-vl-embedding-2b").require(prompts=("template", "image", "instruction"),
                                                  fields=("max_length", "max_pixels"))
