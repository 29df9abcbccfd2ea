"""The jina-embeddings-v4 adapter on a tiny random Qwen2.5-VL saved as the hub checkpoint is
laid out (config.json with text_config and the jina fields, `model.*` / `visual.*` /
`lm_head` / `multi_vector_projector` weights, adapters/ with a peft LoRA whose pairs are
named by task): the published prompt strings reach the tokenizer, the mean pooling is right
under either padding, the retrieval LoRA is applied, and the embeddings equal a hand-written
run of the hub code's steps. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mllm_probe import decoded, record_forward
from PIL import Image
from retrieval_stages import run_retrieval_stages
from test_mllm_qwen2_vl import SPECIALS, _tokenizer_files

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import jina_v4
from marseval.retrieval.mllm.load import load_embedder
from marseval.retrieval.mllm.registry import get_embedder

KEY = "mllm:jina-embeddings-v4"
# modeling_jina_embeddings_v4.py, verbatim: process_images' string, PREFIX_DICT["query"]
IMAGE_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                "Describe the image.<|im_end|>\n")
QUERY_PREFIX = "Query"
TEXTS = ["a photo of yardangs, a type of martian terrain", "chaos",
         "a high-resolution remote sensing image of glacier-like form on Mars."]
TASKS = ["retrieval", "text-matching", "code"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
HIDDEN = 32


def make_jina_checkpoint(folder: Path, seed: int = 0, tasks: list[str] = TASKS,
                         max_image_tokens: int = 16) -> Path:
    """A tiny random checkpoint in jina-embeddings-v4's layout, with a random nonzero LoRA
    pair per task on the language model's linear layers and the multi-vector projector; its
    image processor caps an image at `max_image_tokens` tokens of 28 x 28 pixels."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    folder.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer_files(folder)
    config = {
        "architectures": ["JinaEmbeddingsV4Model"], "model_type": "qwen2_5_vl",
        "text_config": {
            "model_type": "qwen2_5_vl_text", "vocab_size": 256 + len(SPECIALS),
            "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "tie_word_embeddings": True, "use_sliding_window": False,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        },
        "vision_config": {"model_type": "qwen2_5_vl", "depth": 2, "hidden_size": 32,
                          "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
                          "fullatt_block_indexes": [1], "window_size": 56, "patch_size": 14,
                          "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "in_channels": 3, "tokens_per_second": 2},
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        # JinaEmbeddingsV4Config's fields, as the hub's config.json sets them
        "single_vector_pool_strategy": "mean", "multi_vector_projector_dim": 8,
        "matryoshka_dims": [8, 16, 32], "truncate_dim": None, "task_names": TASKS,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "JinaEmbeddingsV4Processor",
        "min_pixels": 3136, "max_pixels": max_image_tokens * 28 * 28, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "do_resize": True, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLModel(Qwen2_5_VLConfig.from_pretrained(folder))
    state = {}
    for key, value in model.state_dict().items():  # the hub's names: visual.*, model.*
        if key.startswith("language_model."):
            key = "model." + key.removeprefix("language_model.")
        state[key] = value.contiguous()
    state["multi_vector_projector.weight"] = torch.randn(8, HIDDEN, generator=generator)
    state["multi_vector_projector.bias"] = torch.randn(8, generator=generator)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    adapters = folder / "adapters"
    adapters.mkdir(exist_ok=True)
    (adapters / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "use_rslora": False, "use_dora": False, "bias": "none",
        "target_modules": TARGETS + ["multi_vector_projector"],
        "exclude_modules": ".*visual.*", "task_type": "FEATURE_EXTRACTION"}))
    lora = {}
    modules = [f"model.language_model.layers.{i}.{part}.{t}" for i in range(2)
               for part, names in (("self_attn", TARGETS[:4]), ("mlp", TARGETS[4:]))
               for t in names] + ["multi_vector_projector"]
    for module in modules:
        base = model.get_submodule(module.removeprefix("model.")) \
            if module != "multi_vector_projector" else torch.nn.Linear(HIDDEN, 8)
        for task in tasks:
            prefix = f"base_model.model.{module}"
            lora[f"{prefix}.lora_A.{task}.weight"] = 0.3 * torch.randn(
                RANK, base.in_features, generator=generator)
            lora[f"{prefix}.lora_B.{task}.weight"] = 0.3 * torch.randn(
                base.out_features, RANK, generator=generator)
    save_file(lora, str(adapters / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_jina_checkpoint(tmp_path_factory.mktemp("jina"))


@pytest.fixture(scope="module")
def jina(checkpoint):
    return load_embedder(KEY, "cpu", source=str(checkpoint))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    sizes = [(64, 48), (40, 90), (120, 120), (30, 30)]  # (width, height): 1 to 16 tokens
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]




def test_published_prompt_strings_reach_the_tokenizer(jina, checkpoint, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    seen = record_forward(monkeypatch, jina_v4, "jina_forward")
    jina.embed_texts(TEXTS)
    jina.embed_images(images()[:2])
    text_batch, image_batch = seen
    assert decoded(tokenizer, text_batch) == [f"{QUERY_PREFIX}: {t}" for t in TEXTS]
    counts = [int(g.prod()) // 4 for g in image_batch["image_grid_thw"]]
    assert decoded(tokenizer, image_batch) == [
        IMAGE_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * n) for n in counts]
    assert counts[0] != counts[1]  # padded rows: pooling sees pads
    mask = text_batch["attention_mask"]
    assert mask[:, 0].all() and not mask[:, -1].all()  # the registry's right padding
    # the checkpoint's pixel limits: at most 16 merged tokens an image
    assert (image_batch["image_grid_thw"].prod(dim=1) // 4).max() <= 16


def test_unit_embeddings_of_the_declared_width(jina):
    image_vectors, text_vectors = jina.embed_images(images()), jina.embed_texts(TEXTS)
    assert image_vectors.shape == (4, HIDDEN) and text_vectors.shape == (3, HIDDEN)
    assert image_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1, atol=1e-5)
    assert jina.dim == HIDDEN
    # the registry's width is the real model's hidden size
    assert get_embedder(KEY).extra["embedding_dim"] == 2048


def test_batches_equal_one_by_one_under_either_padding(checkpoint, jina):
    pictures = images()
    texts_batch, images_batch = jina.embed_texts(TEXTS), jina.embed_images(pictures)
    one_texts = np.concatenate([jina.embed_texts([t]) for t in TEXTS])
    one_images = np.concatenate([jina.embed_images([p]) for p in pictures])
    np.testing.assert_allclose(texts_batch, one_texts, atol=1e-5)
    np.testing.assert_allclose(images_batch, one_images, atol=1e-5)
    left_spec = dataclasses.replace(get_embedder(KEY), padding_side="left")
    left = jina_v4.build(KEY, left_spec, "cpu", str(checkpoint), None)
    np.testing.assert_allclose(left.embed_texts(TEXTS), texts_batch, atol=1e-5)
    np.testing.assert_allclose(left.embed_images(pictures), images_batch, atol=1e-5)


def test_image_pooling_spans_vision_start_to_end():
    ids = torch.tensor([[0, 0, 5, 7, 7, 6, 1], [5, 7, 6, 1, 2, 0, 0]])
    mask = jina_v4.vision_span(ids, 5, 6)
    assert mask.tolist() == [[False, False, True, True, True, True, False],
                             [True, True, True, False, False, False, False]]
    with pytest.raises(MarsevalError, match="vision_start"):
        jina_v4.vision_span(torch.tensor([[5, 7, 1]]), 5, 6)


def published_rope_index(config, input_ids, grid_thw, attention_mask):
    """get_rope_index of transformers 4.52's Qwen2.5-VL (the hub code's copy) for one image
    per prompt (second_per_grid_t 0 for images), and its text-only branch."""
    if grid_thw is None:
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)
        return positions.unsqueeze(0).expand(3, -1, -1)
    merge = config.vision_config.spatial_merge_size
    positions = torch.ones(3, *input_ids.shape, dtype=input_ids.dtype)
    for i, row in enumerate(input_ids):
        row = row[attention_mask[i] == 1].tolist()
        start = row.index(config.image_token_id)
        t, h, w = (int(v) for v in grid_thw[i])
        h, w = h // merge, w // merge
        text = torch.arange(start).view(1, -1).expand(3, -1)
        t_idx = torch.arange(t).view(-1, 1).expand(-1, h * w).flatten() * 0
        h_idx = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
        w_idx = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
        vision = torch.stack([t_idx, h_idx, w_idx]) + start
        after = len(row) - start - t * h * w
        tail = torch.arange(after).view(1, -1).expand(3, -1) + vision.max() + 1
        positions[:, i, attention_mask[i] == 1] = torch.cat([text, vision, tail], dim=1)
    return positions


@torch.inference_mode()
def published_run(checkpoint: Path, texts, pictures, lora: bool = True) -> tuple:
    """The hub code's steps written out on transformers' Qwen2.5-VL: process_texts /
    process_images strings, get_rope_index positions, the forward with each adapted Linear
    computing base(x) + lora_B(lora_A(x)) * alpha / r (MultiAdapterLinear, task
    "retrieval"), the last hidden state mean-pooled over the attention mask (texts) or the
    <|vision_start|>..<|vision_end|> span (images), L2-normalised."""
    from safetensors.torch import load_file
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLModel,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    model = Qwen2_5_VLModel.from_pretrained(checkpoint).eval()
    adapter = load_file(str(checkpoint / "adapters" / "adapter_model.safetensors"))
    hooks = []
    if lora:
        for key, a in adapter.items():
            if ".lora_A.retrieval." not in key or "projector" in key:
                continue
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            module = key.removeprefix("base_model.model.model.").split(".lora_A")[0]
            layer = model.get_submodule(module)
            hooks.append(layer.register_forward_hook(
                lambda _m, args, out, a=a, b=b: out + (args[0] @ a.T) @ b.T * (ALPHA / RANK)))
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(checkpoint),
        tokenizer=AutoTokenizer.from_pretrained(checkpoint),
        video_processor=Qwen2VLVideoProcessor())

    def run(batch, image: bool):
        grid = batch.get("image_grid_thw")
        positions = published_rope_index(model.config, batch["input_ids"], grid,
                                         batch["attention_mask"])
        extra = {"pixel_values": batch["pixel_values"], "image_grid_thw": grid} if image \
            else {}
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=positions, **extra).last_hidden_state
        ids = batch["input_ids"]
        if image:
            starts = torch.where(ids == model.config.vision_start_token_id)[1]
            ends = torch.where(ids == model.config.vision_end_token_id)[1]
            index = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
            mask = (index >= starts.unsqueeze(1)) & (index <= ends.unsqueeze(1))
        else:
            mask = batch["attention_mask"]
        pooled = (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    text_out = run(processor(text=[f"{QUERY_PREFIX}: {t}" for t in texts], padding="longest",
                             max_length=32768, truncation=True, return_tensors="pt"), False)
    image_out = run(processor(text=[IMAGE_PROMPT] * len(pictures), images=pictures,
                              padding="longest", return_tensors="pt"), True)
    for hook in hooks:
        hook.remove()
    return text_out, image_out


def test_matches_a_hand_written_run_of_the_published_steps(checkpoint, jina):
    pictures = [p.convert("RGB") for p in images()]
    expected_texts, expected_images = published_run(checkpoint, TEXTS, pictures)
    np.testing.assert_allclose(jina.embed_texts(TEXTS), expected_texts, atol=1e-5)
    np.testing.assert_allclose(jina.embed_images(pictures), expected_images, atol=1e-5)
    # the outputs differ between inputs (a constant output would pass the above) ...
    assert np.abs(expected_images[0] - expected_images[1]).max() > 1e-3
    assert np.abs(expected_texts[0] - expected_texts[1]).max() > 1e-3
    # ... and the retrieval LoRA matters: without it the embeddings change
    bare_texts, bare_images = published_run(checkpoint, TEXTS, pictures, lora=False)
    assert np.abs(bare_texts - expected_texts).max() > 1e-2
    assert np.abs(bare_images - expected_images).max() > 1e-2


def test_only_the_retrieval_pairs_are_applied(checkpoint):
    """Another task's pairs (text-matching here) give other embeddings: the adapter picks the
    registry's task, not the first pairs it meets."""
    spec = get_embedder(KEY)
    other = dataclasses.replace(spec, prompts={**spec.prompts, "task": "text-matching"})
    moved = jina_v4.build(KEY, other, "cpu", str(checkpoint), None).embed_texts(TEXTS[:1])
    retrieval = jina_v4.build(KEY, spec, "cpu", str(checkpoint), None).embed_texts(TEXTS[:1])
    assert np.abs(moved - retrieval).max() > 1e-2


def test_backbone_paths_of_either_transformers_naming():
    assert jina_v4.backbone_path("model.layers.3.mlp.up_proj") == \
        "language_model.layers.3.mlp.up_proj"
    assert jina_v4.backbone_path("model.language_model.layers.3.mlp.up_proj") == \
        "language_model.layers.3.mlp.up_proj"
    assert jina_v4.backbone_path("model.visual.blocks.0.attn.qkv") == "visual.blocks.0.attn.qkv"
    assert jina_v4.backbone_path("multi_vector_projector") is None


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_on_cuda_only():
    spec = get_embedder(KEY)
    context = jina_v4.autocast(spec, "cuda:0")
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert not isinstance(jina_v4.autocast(spec, "cpu"), torch.autocast)


@pytest.mark.parametrize("dataset", ["mr-vl_pairs", "mr-landforms"])
def test_retrieval_stages_end_to_end(checkpoint, dataset, tmp_path):
    run_retrieval_stages(f"{KEY}@{checkpoint}", dataset, tmp_path, HIDDEN)


def test_refuses_a_checkpoint_with_weights_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    broken = make_jina_checkpoint(tmp_path / "broken")
    state = load_file(str(broken / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MarsevalError, match=f"{KEY}.*unloaded.*norm"):
        load_embedder(KEY, "cpu", source=str(broken))


def test_refuses_a_checkpoint_without_the_retrieval_adapter(tmp_path):
    other = make_jina_checkpoint(tmp_path / "other", tasks=["text-matching"])
    with pytest.raises(MarsevalError,
                       match=f"{KEY}.*adapter_model.safetensors holds no 'retrieval'"):
        load_embedder(KEY, "cpu", source=str(other))
    (other / "adapters" / "adapter_model.safetensors").unlink()
    with pytest.raises(MarsevalError, match=f"{KEY}.*no adapters/adapter_model.safetensors"):
        load_embedder(KEY, "cpu", source=str(other))


def test_registry_entry_is_adapted_without_remote_code():
    from marseval.retrieval.mllm.registry import check_embedders

    spec = get_embedder(KEY)
    assert (spec.family, spec.remote_code, spec.cuda_dtype, spec.batch_size) == (
        "jina_v4", False, "float16", 8)
    assert spec.prompts["text"].format(text="x") == f"{QUERY_PREFIX}: x"
    assert spec.prompts["image"] == IMAGE_PROMPT and spec.prompts["task"] == "retrieval"
    assert spec.extra["max_length"] == 32768 and spec.extra["autocast"] == "bfloat16"
    assert check_embedders([KEY], {}) == []
