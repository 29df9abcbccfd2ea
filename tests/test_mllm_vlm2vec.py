"""The VLM2Vec adapter (VLM2Vec-V2.0, B3++) on a tiny random Qwen2-VL (GME's test layout:
`visual.*` / `model.*` weights, byte-level tokenizer) plus a tiny DoRA/LoRA adapter saved as
VLM2Vec saves one (transformers 4.x module names, adapter_config.json naming the base folder,
the processor files beside it): the image prompt and the raw texts reach the tokenizer, the
last real token is pooled under either padding, the LoRA really is merged, and the embeddings
equal a hand-written run of the VLM2Vec steps (Qwen2_VL_process_fn, the unmerged peft model,
MMEBModel._pooling). Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mllm_probe import decoded, record_forward
from PIL import Image
from retrieval_stages import run_retrieval_stages
from test_mllm_qwen2_vl import make_gme_checkpoint

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import vlm2vec
from marseval.retrieval.mllm.load import load_embedder
from marseval.retrieval.mllm.registry import get_embedder

KEY = "mllm:vlm2vec-v2"
# VLM2Vec's processor.py: VLM_IMAGE_TOKENS[QWEN2_VL]; models/vlm2vec.py's prompt, verbatim
IMAGE_PROMPT = ("<|image_pad|> Represent the given image with the following question: "
                "What is in the image")
# ModelArguments.lora_target_modules (VLM2Vec src/arguments.py)
TARGETS = "qkv_proj,o_proj,gate_up_proj,down_proj,k_proj,q_proj,out_proj,v_proj,gate_proj,up_proj"
# DataArguments.resize_min_pixels / resize_max_pixels
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 1280
TEXTS = ["a photo of yardangs, a type of martian terrain", "chaos",
         "a high-resolution remote sensing image of glacier-like form on Mars."]
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                   "config.json")


def make_adapter(folder: Path, base: Path, use_dora: bool = True, seed: int = 1) -> Path:
    """A tiny adapter on `base` as VLM2Vec's MMEBModel saves it: adapter_config.json (LoRA r 4,
    VLM2Vec's target modules, DoRA as its training config sets) and adapter_model.safetensors
    with transformers 4.x names (`base_model.model.model.layers.*`), every weight random and
    nonzero (lora_B too, so the merge matters); the processor files beside it, as on the hub."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import Qwen2VLModel

    folder.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=TARGETS.split(","),
                        init_lora_weights="gaussian", use_dora=use_dora)
    wrapped = get_peft_model(Qwen2VLModel.from_pretrained(base), config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in get_peft_model_state_dict(wrapped).items():
        noise = torch.randn(value.shape, generator=generator) * 0.5
        value = value + noise if "magnitude" in key else noise
        old = key.replace("base_model.model.language_model.", "base_model.model.model.", 1)
        state[old] = value.contiguous()
    assert all(k.startswith("base_model.model.model.layers.") for k in state)
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.base_model_name_or_path = str(base)
    config.save_pretrained(folder)
    for name in PROCESSOR_FILES:
        shutil.copy(base / name, folder / name)
    return folder


def make_vlm2vec_checkpoint(folder: Path) -> Path:
    """A tiny VLM2Vec-V2.0 as the hub holds it: a DoRA adapter (`folder/adapter`) on a tiny
    Qwen2-VL base (`folder/base`, VLM2Vec's pixel limits); returns the adapter's folder."""
    base = make_gme_checkpoint(folder / "base", tokens=None)
    return make_adapter(folder / "adapter", base)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return make_vlm2vec_checkpoint(tmp_path_factory.mktemp("vlm2vec"))


@pytest.fixture(scope="module")
def base(adapter) -> Path:
    return adapter.parent / "base"


@pytest.fixture(scope="module")
def model(adapter):
    return load_embedder(KEY, "cpu", source=str(adapter))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    sizes = [(56, 56), (84, 56), (20, 40), (60, 90)]  # (width, height); 20 px: the 56 x 56 rule
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]




def test_registry_entries_take_the_vlm2vec_path():
    for key in (KEY, "mllm:b3-qwen2-2b"):
        spec = get_embedder(key)
        assert spec.family == "vlm2vec" and not spec.remote_code
        assert spec.prompts["image"] == IMAGE_PROMPT and spec.cuda_dtype == "bfloat16"
        assert spec.extra["embedding_dim"] == 1536  # Qwen2-VL-2B's hidden size
        assert vlm2vec.image_settings(spec) == {"min_image_tokens": MIN_PIXELS // 784,
                                                "max_image_tokens": MAX_PIXELS // 784}
    assert get_embedder(KEY).hub == "VLM2Vec/VLM2Vec-V2.0"  # models/vlm2vec.py's default


def test_image_prompt_and_raw_texts_reach_the_tokenizer(model, adapter, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    seen = record_forward(monkeypatch, vlm2vec, "gme_forward")
    model.embed_texts(TEXTS)
    model.embed_images(images())
    text_batch, image_batch = seen
    assert decoded(tokenizer, text_batch) == TEXTS  # raw: no template, no EOS
    counts = [int(g.prod()) // 4 for g in image_batch["image_grid_thw"]]
    assert decoded(tokenizer, image_batch) == [
        IMAGE_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * n) for n in counts]
    # VLM2Vec's sizes: 56 x 56 -> 2 x 2 merged patches, the 20 x 40 image first to 56 x 56
    assert [tuple(g.tolist()) for g in image_batch["image_grid_thw"]] == [
        (1, 4, 4), (1, 4, 6), (1, 4, 4), (1, 6, 4)]
    mask = text_batch["attention_mask"]  # the registry's right padding
    assert mask[:, 0].all() and not mask[:, -1].all()


def test_vlm2vec_resize_rules():
    settings = vlm2vec.VLM2VEC_IMAGE_TOKENS
    assert vlm2vec.smart_resize(512, 512, MIN_PIXELS, MAX_PIXELS) == (504, 504)  # 324 tokens
    assert vlm2vec.smart_resize(2000, 2000, MIN_PIXELS, MAX_PIXELS) == (980, 980)
    assert vlm2vec.smart_resize(30, 7000, MIN_PIXELS, MAX_PIXELS) == (980, 980)  # squared
    assert vlm2vec.vlm2vec_image(Image.new("RGB", (20, 300)), settings).size == (56, 56)
    assert vlm2vec.vlm2vec_image(Image.new("L", (40, 40)), settings).mode == "RGB"


def test_unit_embeddings_of_the_model_width(model):
    image_vectors, text_vectors = model.embed_images(images()), model.embed_texts(TEXTS)
    assert image_vectors.shape == (4, 32) and text_vectors.shape == (3, 32)  # hidden size
    assert image_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1, atol=1e-5)
    assert model.dim == 32


def test_batches_equal_one_by_one_and_the_last_real_token_is_pooled(model, adapter):
    """Rows of different lengths in one batch give their one-by-one vectors (no pad pooled,
    no pad attended) under right padding and under left padding."""
    pictures = images()
    texts_batch, images_batch = model.embed_texts(TEXTS), model.embed_images(pictures)
    one_texts = np.concatenate([model.embed_texts([t]) for t in TEXTS])
    one_images = np.concatenate([model.embed_images([p]) for p in pictures])
    np.testing.assert_allclose(texts_batch, one_texts, atol=1e-5)
    np.testing.assert_allclose(images_batch, one_images, atol=1e-5)
    left_spec = dataclasses.replace(get_embedder(KEY), padding_side="left")
    left = vlm2vec.build(KEY, left_spec, "cpu", str(adapter), None)
    np.testing.assert_allclose(left.embed_texts(TEXTS), texts_batch, atol=1e-5)
    np.testing.assert_allclose(left.embed_images(pictures), images_batch, atol=1e-5)


@torch.inference_mode()
def reference_run(base: Path, adapter: Path | None, texts: list[str],
                  pictures: list[Image.Image] | None, first_call: bool = False) -> np.ndarray:
    """The VLM2Vec steps written out: Qwen2_VL_process_fn (each row alone through the
    processor built as load_processor builds it, images under 28 px to 56 x 56,
    tokenizer.pad on the checkpoint's side: left here), the encoder as MMEBModel.load leaves
    it (Qwen2VLForConditionalGeneration, the adapter on it unmerged through peft, eval), the
    position ids VLM2Vec's forward uses after its first call (0..n-1 on the three axes, pads
    included) or, `first_call`, those its get_rope_index gives prompts without
    <|vision_start|> (0..n-1 over the real tokens, pads at 1), hidden_states[-1],
    MMEBModel._pooling('last') and normalize."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    folder = adapter or base
    encoder = Qwen2VLForConditionalGeneration.from_pretrained(base)
    if adapter is not None:
        encoder = get_peft_model(encoder, PeftConfig.from_pretrained(adapter))
        state = {k.replace("base_model.model.model.", "base_model.model.model.language_model.",
                           1): v for k, v in load_peft_weights(str(adapter), "cpu").items()}
        result = set_peft_model_state_dict(encoder, state)
        assert not result.unexpected_keys
        assert not [k for k in result.missing_keys if "lora_" in k]
    encoder.eval()
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    processor = AutoProcessor.from_pretrained(
        folder, image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder, size=size))
    ids, pixel_values, grids = [], [], []
    for i, text in enumerate(texts):
        if pictures is None:
            row = processor(text=[text], images=None, return_tensors="np", truncation=True)
        else:
            image = pictures[i].convert("RGB")
            if image.size[0] < 28 or image.size[1] < 28:
                image = image.resize((56, 56))
            row = processor(text=[text], images=[image], return_tensors="np")
            pixel_values.append(torch.from_numpy(row["pixel_values"]))
            grids.append(torch.from_numpy(row["image_grid_thw"]))
        ids.append(row["input_ids"].squeeze(0).tolist())
    padded = processor.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    mask = padded["attention_mask"]
    length = mask.shape[1]
    kwargs = {}
    if pictures is not None:
        kwargs = {"pixel_values": torch.cat(pixel_values), "image_grid_thw": torch.cat(grids)}
    positions = torch.arange(length).view(1, 1, -1).expand(3, len(texts), -1)
    if first_call:
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1).unsqueeze(0).expand(3, -1, -1)
    hidden = encoder(input_ids=padded["input_ids"], attention_mask=mask, position_ids=positions,
                     output_hidden_states=True, return_dict=True, **kwargs).hidden_states[-1]
    if mask[:, -1].sum() == mask.shape[0]:  # _pooling: left padding -> the last position
        reps = hidden[torch.arange(hidden.shape[0]), -1, :]
    else:
        reps = hidden[torch.arange(hidden.shape[0]), mask.sum(dim=1) - 1]
    return torch.nn.functional.normalize(reps, p=2, dim=-1).numpy()


@pytest.mark.parametrize("first_call", [False, True])
def test_matches_a_hand_written_run_of_the_vlm2vec_steps(model, base, adapter, first_call):
    pictures = images()
    expected_images = reference_run(base, adapter, [IMAGE_PROMPT] * len(pictures), pictures,
                                    first_call)
    expected_texts = reference_run(base, adapter, TEXTS, None, first_call)
    got_images, got_texts = model.embed_images(pictures), model.embed_texts(TEXTS)
    np.testing.assert_allclose(got_images, expected_images, atol=1e-5)
    np.testing.assert_allclose(got_texts, expected_texts, atol=1e-5)
    # the inputs really differ (a constant output would pass the above)
    assert np.abs(expected_images[0] - expected_images[1]).max() > 1e-3
    assert np.abs(expected_texts[0] - expected_texts[1]).max() > 1e-3


def test_the_adapter_is_merged_and_full_weights_load_as_they_are(model, base):
    """The base folder itself (no adapter_config.json: full weights, a layout B3++'s repo may
    have) gives the base model's vectors, which the merged adapter changes."""
    full = load_embedder(KEY, "cpu", source=str(base))
    pictures = images()
    base_images, base_texts = full.embed_images(pictures), full.embed_texts(TEXTS)
    np.testing.assert_allclose(base_images, reference_run(
        base, None, [IMAGE_PROMPT] * len(pictures), pictures), atol=1e-5)
    np.testing.assert_allclose(base_texts, reference_run(base, None, TEXTS, None), atol=1e-5)
    assert np.abs(model.embed_images(pictures) - base_images).max() > 1e-2
    assert np.abs(model.embed_texts(TEXTS) - base_texts).max() > 1e-2


def test_plain_lora_and_the_b3_entry_take_the_same_path(base, tmp_path):
    """A LoRA adapter without DoRA merges too, and `mllm:b3-qwen2-2b` runs the same steps."""
    lora = make_adapter(tmp_path / "lora", base, use_dora=False, seed=2)
    assert json.loads((lora / "adapter_config.json").read_text())["use_dora"] is False
    b3 = load_embedder("mllm:b3-qwen2-2b", "cpu", source=str(lora))
    np.testing.assert_allclose(b3.embed_texts(TEXTS), reference_run(base, lora, TEXTS, None),
                               atol=1e-5)


@pytest.mark.parametrize("dataset", ["mr-vl_pairs", "mr-landforms"])
def test_runs_the_retrieval_stages_on_synthetic_sets(adapter, tmp_path, dataset):
    """embed -> index -> queries -> evaluate with `mllm:vlm2vec-v2@<tiny adapter>`."""
    run_retrieval_stages(f"{KEY}@{adapter}", dataset, tmp_path, dim=32)


def test_refuses_a_base_with_weights_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    broken = make_gme_checkpoint(tmp_path / "broken", tokens=None)
    state = load_file(str(broken / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MarsevalError, match="vlm2vec-v2.*unloaded.*norm"):
        load_embedder(KEY, "cpu", source=str(broken))


def test_refuses_an_adapter_that_does_not_fit(base, adapter, tmp_path):
    """Adapter weights under names the model lacks (peft alone would only warn and leave the
    LoRA random) are refused, naming the model."""
    from safetensors.torch import load_file, save_file

    odd = tmp_path / "odd"
    shutil.copytree(adapter, odd)
    state = load_file(str(odd / "adapter_model.safetensors"))
    state = {k.replace("base_model.model.model.layers.", "base_model.model.decoder.layers.", 1)
             if ".layers.1." in k else k: v for k, v in state.items()}
    save_file(state, str(odd / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MarsevalError, match="vlm2vec-v2.*does not fit.*left unloaded"):
        load_embedder(KEY, "cpu", source=str(odd))
