"""The Qwen3-VL adapter (Qwen3-VL-Embedding) on a tiny random Qwen3-VL saved as the hub
checkpoint is laid out (Qwen3VLForEmbedding's `model.*` weights, a Qwen3-VL processor with the
Qwen3-VL chat template): the published prompts reach the tokenizer, images are resized as
qwen_vl_utils does, the pooled token is the last real token under either padding, and the
embeddings equal a hand-written run of the published script's steps. Nothing is downloaded."""

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
from test_mllm_qwen2_vl import SPECIALS, _tokenizer_files

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import qwen3_vl
from marseval.retrieval.mllm.load import load_embedder
from marseval.retrieval.mllm.registry import get_embedder

KEY = "mllm:qwen3-vl-embedding-2b"
DIM = 32
# Qwen3VLEmbedder.default_instruction, verbatim
INSTRUCTION = "Represent the user's input."
# the conversation of format_model_input as the Qwen3-VL chat template renders it (for a text,
# as QwenLM/Qwen3-VL-Embedding examples/embedding_vllm.ipynb prints it for the hub tokenizer)
PUBLISHED = ("<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{input}<|im_end|>\n"
             "<|im_start|>assistant\n")
IMAGE_STR = "<|vision_start|><|image_pad|><|vision_end|>"
TEXTS = ["a photo of yardangs, a type of martian terrain", "chaos",
         "a high-resolution remote sensing image of glacier-like form on Mars."]
# the Qwen3-VL (Instruct) chat template without its tool-calling branches (no tools, no tool
# turns here); the hub checkpoint's own template is not stored in this repository
QWEN3_VL_TEMPLATE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].content is string %}
        {{- messages[0].content }}
    {%- else %}
        {%- for content in messages[0].content %}
            {%- if 'text' in content %}
                {{- content.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
# (width, height) -> (height, width) after qwen_vl_utils' smart_resize at factor 32 and the
# script's 4 to 1,800 x 32 x 32 pixels
SIZES = {(64, 48): (64, 64), (40, 90): (96, 64), (120, 120): (128, 128), (30, 30): (64, 64)}


def make_qwen3_vl_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny random Qwen3-VL-Embedding checkpoint: config, `model.*` weights, tokenizer with
    Qwen3-VL's special tokens, image / video processor configs, the chat template."""
    from safetensors.torch import save_file
    from transformers import Qwen3VLConfig, Qwen3VLModel

    folder.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer_files(folder)
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"], "tie_word_embeddings": True,
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": 256 + len(SPECIALS),
            "hidden_size": DIM, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2],
                             "mrope_interleaved": True},
            "rope_theta": 5000000, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "tie_word_embeddings": True},
        # deepstack: the first vision block's features are added after the first text layer
        "vision_config": {
            "model_type": "qwen3_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 64,
            "num_heads": 2, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "out_hidden_size": DIM, "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0], "hidden_act": "gelu_pytorch_tanh"},
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    processing = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
                  "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                  "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                  "do_convert_rgb": True, "processor_class": "Qwen3VLProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessorFast", "do_resize": True,
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, **processing}))
    (folder / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Qwen3VLVideoProcessor", "do_resize": True,
        "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "fps": 2,
        "do_sample_frames": True, **processing}))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_VL_TEMPLATE}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLModel(Qwen3VLConfig.from_pretrained(folder))
    # Qwen3VLForEmbedding's names: its Qwen3VLModel is `self.model`
    state = {f"model.{key}": value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_qwen3_vl_checkpoint(tmp_path_factory.mktemp("qwen3_vl"))


@pytest.fixture(scope="module")
def embedder(checkpoint):
    return load_embedder(KEY, "cpu", source=str(checkpoint))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]




def test_registry_entry_holds_the_scripts_settings():
    spec = get_embedder(KEY)
    assert (spec.family, spec.remote_code, spec.cuda_dtype, spec.padding_side) == (
        "qwen3_vl", False, "float16", "right")
    assert spec.prompts["instruction"] == INSTRUCTION
    assert spec.prompts["template"].format(instruction="{instruction}", input="{input}") == (
        PUBLISHED)
    # MAX_LENGTH, MIN_PIXELS, MAX_PIXELS (IMAGE_FACTOR = 16 * 2), image_patch_size=16
    assert qwen3_vl.qwen3_settings(spec) == {"max_length": 8192, "min_pixels": 4 * 32 * 32,
                                             "max_pixels": 1800 * 32 * 32,
                                             "image_patch_size": 16}
    assert spec.extra["image_tokens"] == 1800 and spec.extra["embedding_dim"] == 2048


def test_published_prompts_reach_the_tokenizer(embedder, checkpoint, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    seen = record_forward(monkeypatch, qwen3_vl, "qwen3_forward")
    embedder.embed_texts(TEXTS)
    embedder.embed_images(images())
    text_batch, image_batch = seen
    assert decoded(tokenizer, text_batch) == [
        PUBLISHED.format(instruction=INSTRUCTION, input=t) for t in TEXTS]
    # each image's pad token expanded to its merged patch count (grid t*h*w / 2**2)
    counts = [int(g.prod()) // 4 for g in image_batch["image_grid_thw"]]
    assert decoded(tokenizer, image_batch) == [
        PUBLISHED.format(instruction=INSTRUCTION,
                         input=IMAGE_STR.replace("<|image_pad|>", "<|image_pad|>" * n))
        for n in counts]
    # right padding: pads at the end of the shorter rows
    mask = text_batch["attention_mask"]
    assert mask[:, 0].all() and not mask[:, -1].all()
    # images resized by qwen_vl_utils (factor 32, at least 4 x 32 x 32 pixels), not again
    assert image_batch["image_grid_thw"].tolist() == [[1, h // 16, w // 16]
                                                      for h, w in SIZES.values()]


def test_batches_equal_one_by_one_under_either_padding(checkpoint, embedder):
    pictures = images()
    texts_batch, images_batch = embedder.embed_texts(TEXTS), embedder.embed_images(pictures)
    one_texts = np.concatenate([embedder.embed_texts([t]) for t in TEXTS])
    one_images = np.concatenate([embedder.embed_images([p]) for p in pictures])
    np.testing.assert_allclose(texts_batch, one_texts, atol=1e-5)
    np.testing.assert_allclose(images_batch, one_images, atol=1e-5)
    left_spec = dataclasses.replace(get_embedder(KEY), padding_side="left")
    left = qwen3_vl.build(KEY, left_spec, "cpu", str(checkpoint), None)
    np.testing.assert_allclose(left.embed_texts(TEXTS), texts_batch, atol=1e-5)
    np.testing.assert_allclose(left.embed_images(pictures), images_batch, atol=1e-5)


def test_unit_embeddings_of_one_width(embedder):
    image_vectors, text_vectors = embedder.embed_images(images()), embedder.embed_texts(TEXTS)
    assert image_vectors.shape == (4, DIM) and text_vectors.shape == (3, DIM)
    assert image_vectors.dtype == np.float32 and text_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1, atol=1e-5)
    assert embedder.dim == DIM


@torch.inference_mode()
def test_matches_a_hand_written_run_of_the_published_script(checkpoint, embedder):
    """Qwen3VLEmbedder.process written out (the hub script, as QwenLM/Qwen3-VL-Embedding
    src/models/qwen3_vl_embedding.py): format_model_input's conversation,
    processor.apply_chat_template, process_vision_info(image_patch_size=16), the processor
    (right padding, truncation at 8192, do_resize=False), Qwen3VLForEmbedding = Qwen3VLModel
    on all the processor's outputs, _pooling_last, F.normalize."""
    from qwen_vl_utils import process_vision_info
    from transformers import Qwen3VLModel, Qwen3VLProcessor

    model = Qwen3VLModel.from_pretrained(checkpoint).eval()
    processor = Qwen3VLProcessor.from_pretrained(checkpoint, padding_side="right")
    assert processor.tokenizer.padding_side == "right"

    def format_model_input(text=None, image=None):
        content = []
        conversation = [{"role": "system", "content": [{"type": "text", "text": INSTRUCTION}]},
                        {"role": "user", "content": content}]
        if image is not None:
            content.append({"type": "image", "image": image, "min_pixels": 4 * 32 * 32,
                            "max_pixels": 1800 * 32 * 32})
        if text is not None:
            content.append({"type": "text", "text": text})
        return conversation

    def process(inputs):
        conversations = [format_model_input(**ele) for ele in inputs]
        text = processor.apply_chat_template(conversations, add_generation_prompt=True,
                                             tokenize=False)
        images, video_inputs, video_kwargs = process_vision_info(
            conversations, image_patch_size=16, return_video_metadata=True,
            return_video_kwargs=True)
        assert video_inputs is None
        processed = processor(text=text, images=images, videos=None, video_metadata=None,
                              truncation=True, max_length=8192, padding=True, do_resize=False,
                              return_tensors="pt", **video_kwargs)
        hidden = model(**processed).last_hidden_state
        mask = processed["attention_mask"]
        col = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0]), col]
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).numpy()

    pictures = images()
    expected_images = process([{"image": p} for p in pictures])
    expected_texts = process([{"text": t} for t in TEXTS])
    np.testing.assert_allclose(embedder.embed_images(pictures), expected_images, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_texts(TEXTS), expected_texts, atol=1e-5)
    # the images and texts really differ (a constant output would pass the above)
    assert np.abs(expected_images[0] - expected_images[1]).max() > 1e-3
    assert np.abs(expected_texts[0] - expected_texts[1]).max() > 1e-3


@pytest.mark.parametrize("dataset", ["mr-vl_pairs", "mr-landforms"])
def test_retrieval_stages_end_to_end(checkpoint, dataset, tmp_path):
    run_retrieval_stages(f"{KEY}@{checkpoint}", dataset, tmp_path, dim=DIM)


def test_refuses_a_checkpoint_with_weights_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    broken = make_qwen3_vl_checkpoint(tmp_path / "broken")
    state = load_file(str(broken / "model.safetensors"))
    state.pop("model.language_model.norm.weight")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MarsevalError, match=r"qwen3-vl-embedding-2b.*unloaded.*norm"):
        load_embedder(f"{KEY}@{broken}", "cpu", source=str(broken))


def test_refuses_a_chat_template_rendering_other_prompts(checkpoint, tmp_path):
    other = Path(shutil.copytree(checkpoint, tmp_path / "other"))
    template = QWEN3_VL_TEMPLATE.replace("{{- '<|im_start|>assistant\\n' }}",
                                         "{{- '<|im_start|>assistant\\n<think>\\n' }}")
    assert template != QWEN3_VL_TEMPLATE
    (other / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    with pytest.raises(MarsevalError, match="qwen3-vl-embedding-2b: the checkpoint's chat "
                                            "template renders"):
        load_embedder(KEY, "cpu", source=str(other))
