"""The Qwen2-VL adapter (GME) on a tiny random Qwen2-VL saved as the GME checkpoint is laid
out (flat config.json, `visual.*` / `model.*` weights, a Qwen2-VL image processor config):
the published prompt strings reach the tokenizer, the pooled token is the last real token
under either padding, and the embeddings equal a hand-written run of GmeQwen2VL's steps.
Nothing is downloaded."""

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

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import qwen2_vl
from marseval.retrieval.mllm.load import load_embedder
from marseval.retrieval.mllm.registry import get_embedder

KEY = "mllm:gme-qwen2-vl-2b"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# the published GmeQwen2VL.embed, verbatim
PUBLISHED = ("<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{input_str}"
             "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
IMAGE_STR = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_INSTRUCTION = "You are a helpful assistant."
TEXT_INSTRUCTION = "Find an image that matches the given text."
TEXTS = ["a photo of yardangs, a type of martian terrain", "chaos",
         "a high-resolution remote sensing image of glacier-like form on Mars."]


def _tokenizer_files(folder: Path) -> dict[str, int]:
    """A byte-level BPE without merges (every byte a token) plus Qwen2-VL's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in SPECIALS])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<|endoftext|>",
        "eos_token": "<|im_end|>", "model_max_length": 32768,
        "padding_side": "left"}))  # GME sets right padding itself
    return {t: tokenizer.token_to_id(t) for t in SPECIALS}


def make_gme_checkpoint(folder: Path, tokens: tuple[int, int] | None = (4, 16),
                        seed: int = 0) -> Path:
    """A tiny random GME-layout checkpoint; `tokens` (min, max image tokens) go into
    config.json as GmeQwen2VLConfig fields (None: left out, the code's defaults apply)."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLModel

    folder.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer_files(folder)
    config = {
        "architectures": ["GmeQwen2VL"], "model_type": "qwen2_vl",
        "vocab_size": 256 + len(SPECIALS), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": True, "use_sliding_window": False,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        # as Qwen2-VL-2B-Instruct's config.json: the vision config's model_type "qwen2_vl"
        "vision_config": {"model_type": "qwen2_vl", "depth": 1, "embed_dim": 32,
                          "mlp_ratio": 2, "num_heads": 2,
                          "in_chans": 3, "hidden_size": 32, "patch_size": 14,
                          "spatial_merge_size": 2, "temporal_patch_size": 2},
        "max_length": 1800, "torch_dtype": "float32",
    }
    if tokens is not None:
        config["min_image_tokens"], config["max_image_tokens"] = tokens
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "do_resize": True, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLModel(Qwen2VLConfig.from_pretrained(folder))
    state = {}
    for key, value in model.state_dict().items():  # GmeQwen2VL's names: visual.*, model.*
        key = key.replace("language_model.", "model.", 1) if key.startswith("language_model.") \
            else key
        state[key] = value.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_gme_checkpoint(tmp_path_factory.mktemp("gme"))


@pytest.fixture(scope="module")
def gme(checkpoint):
    return load_embedder(KEY, "cpu", source=str(checkpoint))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    sizes = [(64, 48), (40, 90), (120, 120), (30, 30)]  # (width, height): 2 to 16 tokens
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def published_fetch_image(image: Image.Image) -> Image.Image:
    """fetch_image / smart_resize of the GME code (factor 28, 4 to 16384 x 28 x 28 pixels)."""
    factor, lo, hi = 28, 4 * 28 * 28, 16384 * 28 * 28
    image = image.convert("RGB")
    width, height = image.size
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > hi:
        beta = math.sqrt(height * width / hi)
        h_bar, w_bar = (math.floor(height / beta / factor) * factor,
                        math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < lo:
        beta = math.sqrt(lo / (height * width))
        h_bar, w_bar = (math.ceil(height * beta / factor) * factor,
                        math.ceil(width * beta / factor) * factor)
    return image.resize((w_bar, h_bar))




def test_published_prompt_strings_reach_the_tokenizer(gme, checkpoint, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    seen = record_forward(monkeypatch, qwen2_vl, "gme_forward")
    gme.embed_texts(TEXTS)
    gme.embed_images(images()[:2])
    text_batch, image_batch = seen
    assert decoded(tokenizer, text_batch) == [
        PUBLISHED.format(instruction=TEXT_INSTRUCTION, input_str=t) for t in TEXTS]
    # each image's pad token expanded to its merged patch count (grid t*h*w / 2**2)
    counts = [int(g.prod()) // 4 for g in image_batch["image_grid_thw"]]
    assert decoded(tokenizer, image_batch) == [
        PUBLISHED.format(instruction=DEFAULT_INSTRUCTION,
                         input_str=IMAGE_STR.replace("<|image_pad|>", "<|image_pad|>" * n))
        for n in counts]
    # right padding: pads at the end of the shorter rows
    mask = text_batch["attention_mask"]
    assert mask[:, 0].all() and not mask[:, -1].all()


def test_pixel_limits_and_truncation_follow_the_checkpoint_config(checkpoint, tmp_path,
                                                                  monkeypatch):
    spec = get_embedder(KEY)
    from transformers import Qwen2VLConfig

    assert qwen2_vl.gme_settings(Qwen2VLConfig.from_pretrained(checkpoint), spec) == {
        "min_image_tokens": 4, "max_image_tokens": 16, "max_length": 1800}
    bare = make_gme_checkpoint(tmp_path / "defaults", tokens=None)
    assert qwen2_vl.gme_settings(Qwen2VLConfig.from_pretrained(bare), spec) == {
        "min_image_tokens": 256, "max_image_tokens": 1280, "max_length": 1800}
    seen = record_forward(monkeypatch, qwen2_vl, "gme_forward")
    load_embedder(KEY, "cpu", source=str(checkpoint)).embed_images(images())
    grids = seen[0]["image_grid_thw"]
    tokens = grids.prod(dim=1) // 4
    assert tokens.min() >= 4 and tokens.max() <= 16
    assert (grids[:, 0] == 1).all()


def test_fetch_image_resize_as_published():
    for width, height in [(512, 512), (30, 30), (64, 48), (40, 90), (9000, 7000), (1000, 10)]:
        image = Image.new("RGB", (width, height))
        assert qwen2_vl.fetch_image(image).size == published_fetch_image(image).size
    assert qwen2_vl.fetch_resize(512, 512) == (504, 504)
    assert qwen2_vl.fetch_resize(32, 32) == (56, 56)


def test_batches_equal_one_by_one_under_either_padding(checkpoint, gme):
    pictures = images()
    texts_batch, images_batch = gme.embed_texts(TEXTS), gme.embed_images(pictures)
    one_texts = np.concatenate([gme.embed_texts([t]) for t in TEXTS])
    one_images = np.concatenate([gme.embed_images([p]) for p in pictures])
    np.testing.assert_allclose(texts_batch, one_texts, atol=1e-5)
    np.testing.assert_allclose(images_batch, one_images, atol=1e-5)
    left_spec = dataclasses.replace(get_embedder(KEY), padding_side="left")
    left = qwen2_vl.build(KEY, left_spec, "cpu", str(checkpoint), None)
    np.testing.assert_allclose(left.embed_texts(TEXTS), texts_batch, atol=1e-5)
    np.testing.assert_allclose(left.embed_images(pictures), images_batch, atol=1e-5)


def test_unit_embeddings_of_one_width(gme):
    image_vectors, text_vectors = gme.embed_images(images()), gme.embed_texts(TEXTS)
    assert image_vectors.shape == (4, 32) and text_vectors.shape == (3, 32)
    assert image_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1, atol=1e-5)
    assert gme.dim == 32


@torch.inference_mode()
def test_matches_a_hand_written_run_of_the_published_steps(checkpoint, gme):
    """GmeQwen2VL.embed + .forward written out: the processor (PIL backend, min/max pixels
    from the config's image tokens x 28 x 28, right padding, truncation at max_length), image
    features in place of the image pads, the language model without position ids, the final
    hidden state of the last real token (attention_mask.sum - 1), L2-normalised."""
    from transformers import AutoImageProcessor, AutoProcessor, Qwen2VLModel

    model = Qwen2VLModel.from_pretrained(checkpoint).eval()
    image_processor = AutoImageProcessor.from_pretrained(
        checkpoint, backend="pil", min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    processor = AutoProcessor.from_pretrained(checkpoint, image_processor=image_processor)
    processor.tokenizer.padding_side = "right"

    def run(texts, pictures):
        inputs = processor(text=texts, images=pictures, padding=True, truncation=True,
                           max_length=1800, return_tensors="pt")
        embeds = model.language_model.embed_tokens(inputs["input_ids"])
        if pictures is not None:
            features = model.visual(inputs["pixel_values"],
                                    grid_thw=inputs["image_grid_thw"]).pooler_output
            embeds[inputs["input_ids"] == model.config.image_token_id] = features
        hidden = model.language_model(inputs_embeds=embeds,
                                      attention_mask=inputs["attention_mask"]).last_hidden_state
        last = inputs["attention_mask"].sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0]), last]
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()

    pictures = images()
    expected_images = run([PUBLISHED.format(instruction=DEFAULT_INSTRUCTION,
                                            input_str=IMAGE_STR)] * len(pictures),
                          [published_fetch_image(p) for p in pictures])
    expected_texts = run([PUBLISHED.format(instruction=TEXT_INSTRUCTION, input_str=t)
                          for t in TEXTS], None)
    np.testing.assert_allclose(gme.embed_images(pictures), expected_images, atol=1e-5)
    np.testing.assert_allclose(gme.embed_texts(TEXTS), expected_texts, atol=1e-5)
    # the images and texts really differ (a constant output would pass the above)
    assert np.abs(expected_images[0] - expected_images[1]).max() > 1e-3
    assert np.abs(expected_texts[0] - expected_texts[1]).max() > 1e-3


def test_refuses_a_checkpoint_with_weights_missing(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = make_gme_checkpoint(tmp_path / "broken")
    state = load_file(str(broken / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MarsevalError, match="unloaded.*norm"):
        load_embedder(KEY, "cpu", source=str(broken))


def test_other_qwen2_vl_recipes_are_refused_by_name(checkpoint, monkeypatch):
    from marseval.retrieval.mllm import registry

    other = dataclasses.replace(get_embedder(KEY), extra={"recipe": "other"})
    monkeypatch.setattr(registry, "embedders", lambda: {"gme-qwen2-vl-2b": other})
    with pytest.raises(MarsevalError, match="no recipe 'other'"):
        load_embedder(KEY, "cpu", source=str(checkpoint))
