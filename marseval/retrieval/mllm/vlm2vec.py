"""VLM2Vec-V2.0 and B3++ on transformers' own Qwen2-VL classes, LoRA merged with peft (no hub
code runs).

The MarsRetrieval reference (models/vlm2vec.py, models/image_encoder/vlm2vec_image_encoder.py,
models/text_encoder/vlm2vec_text_encoder.py) runs both models through the VLM2Vec code, which
docs/INSTALL.md clones from TIGER-AI-Lab/VLM2Vec main into third_party/vlm2vec (no commit
pinned; read here at 6e1e1d42d4cba85ae4db4d3f7a25cba2465d1e16, `VLM2VEC_COMMIT`).
configs/model/model_factory.py gives VLM2Vec `VLM2Vec/VLM2Vec-V2.0` and B3Qwen2
`raghavlite/B3_Qwen2_2B`, both `image_encoder_type = "vlm2vec"`: one path, with
`ModelArguments(model_name=<hub id>, pooling="last", normalize=True, model_backbone="qwen2_vl",
lora=True)` and `DataArguments()` defaults. What that code does (VLM2Vec src/model/model.py,
src/model/processor.py, src/arguments.py, src/model/vlm_backbone/qwen2_vl/):

- weights (`MMEBModel.load`, lora=True, no checkpoint_path): the backbone is VLM2Vec's copy of
  Qwen2VLForConditionalGeneration (transformers 4.x layout: `visual.*`, `model.*`, `lm_head`)
  `from_pretrained(<hub id>)`; the repo holds a LoRA adapter, so transformers' PEFT integration
  loads the base weights from the adapter's `base_model_name_or_path` (VLM2Vec-V2.0:
  `Qwen/Qwen2-VL-2B-Instruct`); `LoraConfig.from_pretrained(<hub id>)` and
  `PeftModel.from_pretrained(base, <hub id>, is_trainable=True)` put the adapter on (not merged:
  is_trainable stays True; the reference calls `.eval()`, so dropout is off). A repo without
  adapter_config.json would fail there. Here the adapter's weights are renamed to transformers'
  Qwen2VLModel layout (peft does not rename a 4.x-layout adapter for transformers 5: it loads
  nothing and only warns), loaded strictly, and merged in float32 (`merge_and_unload`; LoRA or
  DoRA, as adapter_config.json says), then cast to the GPU dtype. A folder or repo without
  adapter_config.json is taken as full weights (B3++'s hub layout is not known here);
- the processor comes from the same repo: VLM2Vec's Qwen2VLImageProcessor with
  `size={"shortest_edge": 28*28*4, "longest_edge": 28*28*1280}` (DataArguments'
  resize_min_pixels / resize_max_pixels; registry min/max_image_tokens x 28 x 28), PIL bicubic;
- images (`Qwen2_VL_process_fn`): each image alone through the processor with the prompt
  `"<|image_pad|> Represent the given image with the following question: What is in the image"`
  (`VLM_IMAGE_TOKENS[QWEN2_VL]` is `<|image_pad|>`: no vision start/end tokens, no chat
  template), an image under 28 px on a side first resized to 56 x 56; no truncation;
- texts: raw, no prompt, truncated only at the tokenizer's model_max_length; no EOS appended;
- rows padded by `tokenizer.pad` on the tokenizer's side; `encode_input` takes
  `hidden_states[-1]` (the final norm's output) and `_pooling("last")` the last real token
  (position -1 under left padding, attention_mask.sum - 1 otherwise), L2-normalised
  (normalize=True; temperature only scales the training loss);
- the forward (VLM2Vec's copy of Qwen2VLForConditionalGeneration.forward) puts the vision
  tower's merged patches in place of the `<|image_pad|>` embeddings. Position ids: the model
  caches `rope_deltas` after its first call and, with no cache_position given, every later
  call uses plain 0..n-1 on all three M-RoPE axes; the first call's `get_rope_index` finds no
  `<|vision_start|>` in these prompts and gives 0..n-1 over the real tokens too. That is the
  language model without position ids (transformers' default), the steps of GME's forward:
  `qwen2_vl.gme_forward` runs here. Under right padding (the registry's) the positions equal
  the reference's exactly; under left padding they shift by the pad count, which RoPE's
  relative form leaves without effect (the tests check both).

bf16 weights on a GPU (the reference also autocasts to bf16); float32 on the CPU.
EmbeddingModel L2-normalises in float32.
"""

from __future__ import annotations

import re

import torch
from PIL import Image
from torch import Tensor

from marseval.errors import MarsevalError
from marseval.retrieval.mllm.building import in_batches, load_complete
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.qwen2_vl import gme_forward, load_processor, resize_within
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel

VLM2VEC_COMMIT = "6e1e1d42d4cba85ae4db4d3f7a25cba2465d1e16"
# DataArguments.resize_min_pixels / resize_max_pixels, in image tokens of 28 x 28 pixels
VLM2VEC_IMAGE_TOKENS = {"min_image_tokens": 4, "max_image_tokens": 1280}
PIXELS_PER_TOKEN = 28 * 28
# Qwen2_VL_process_fn: "resize to 28*28 if either w or h is smaller than 28" (to 56 x 56)
SMALL_SIDE, SMALL_SIZE = 28, (56, 56)
# VLM2Vec's image_processing_qwen2_vl.smart_resize: factor, aspect ratio beyond which it
# squares the image
FACTOR, MAX_RATIO = 28, 200
# adapter weights saved from VLM2Vec's 4.x-layout model (or a transformers 5 one) ->
# transformers 5 Qwen2VLModel, under peft's `base_model.model.` prefix; first match wins
_ADAPTER_LAYOUT = ((re.compile(r"^base_model\.model\.model\.(language_model|visual)\."),
                    r"base_model.model.\1."),
                   (re.compile(r"^base_model\.model\.model\."),
                    "base_model.model.language_model."))
# LoRA on the output head changes logits only, never the hidden states the embedding reads
_OUTPUT_HEAD = re.compile(r"^base_model\.model\.lm_head\.")


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """VLM2Vec's smart_resize (its copy of the Qwen2-VL image processor): sides to multiples
    of 28 with the pixel count between the limits, aspect kept; a side under 28 or an aspect
    beyond 200 makes the image square first (transformers 5 refuses such an aspect)."""
    if height < FACTOR or width < FACTOR or max(height, width) / min(height, width) > MAX_RATIO:
        height = width = max(FACTOR, height, width)
    return resize_within(height, width, FACTOR, min_pixels, max_pixels)


def vlm2vec_image(image: Image.Image, settings: dict[str, int]) -> Image.Image:
    """An image as VLM2Vec's processor sizes it: RGB; under 28 px on a side -> 56 x 56
    (Qwen2_VL_process_fn, PIL's default bicubic); then its smart_resize, bicubic. The
    transformers processor then finds the size already conforming and keeps it."""
    image = image.convert("RGB")
    if image.size[0] < SMALL_SIDE or image.size[1] < SMALL_SIDE:
        image = image.resize(SMALL_SIZE, Image.Resampling.BICUBIC)
    width, height = image.size
    new_height, new_width = smart_resize(
        height, width, settings["min_image_tokens"] * PIXELS_PER_TOKEN,
        settings["max_image_tokens"] * PIXELS_PER_TOKEN)
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


def image_settings(spec: EmbedderSpec) -> dict[str, int]:
    return {key: int(spec.extra.get(key) or default)
            for key, default in VLM2VEC_IMAGE_TOKENS.items()}


def adapter_config_file(source: str, revision: str | None) -> str | None:
    """adapter_config.json of `source` (a folder or hub repo), or None: full weights. The
    check transformers' from_pretrained makes before it loads an adapter's base model."""
    from transformers.utils.peft_utils import find_adapter_config_file

    return find_adapter_config_file(source, revision=revision)


def qwen2vl_model_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapter weight names for transformers' Qwen2VLModel (`language_model.*`, `visual.*`),
    from VLM2Vec's layout (`model.*`, `visual.*`) or transformers 5's conditional-generation
    layout; output-head (`lm_head`) LoRA weights are dropped."""
    renamed = {}
    for key, value in state.items():
        if _OUTPUT_HEAD.match(key):
            continue
        for pattern, replacement in _ADAPTER_LAYOUT:
            key, found = pattern.subn(replacement, key)
            if found:
                break
        renamed[key] = value
    return renamed


def load_lora(name: str, source: str, revision: str | None):
    """The adapter's base model (`base_model_name_or_path`, complete weights) with the adapter
    merged (peft, float32), refusing adapter weights that do not all land on the model."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import Qwen2VLModel

    config = PeftConfig.from_pretrained(source, revision=revision)
    if config.peft_type != "LORA":
        raise MarsevalError(f"{name}: the adapter at {source} is {config.peft_type}, not a "
                            "LoRA adapter (what VLM2Vec's MMEBModel.load reads)")
    base = config.base_model_name_or_path
    if not base:
        raise MarsevalError(f"{name}: the adapter at {source} names no base model "
                            "(adapter_config.json base_model_name_or_path)")
    model = load_complete(Qwen2VLModel, name, base, getattr(config, "revision", None),
                          torch.float32)
    state = qwen2vl_model_keys(load_peft_weights(source, device="cpu", revision=revision))
    config.inference_mode = True
    wrapped = get_peft_model(model, config)
    result = set_peft_model_state_dict(wrapped, state)
    missing = sorted(k for k in result.missing_keys if "lora_" in k)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        shown = (missing or unexpected)[:3]
        raise MarsevalError(f"{name}: the adapter at {source} does not fit the Qwen2-VL model "
                            f"of {base} ({len(missing)} adapter weights left unloaded, "
                            f"{len(unexpected)} with no place: {', '.join(shown)} ...)")
    return wrapped.merge_and_unload()


def load_model(name: str, source: str, revision: str | None):
    """transformers' Qwen2VLModel in float32: a LoRA adapter merged onto its base model when
    `source` holds adapter_config.json, else `source`'s own (complete) weights."""
    from transformers import Qwen2VLModel

    if adapter_config_file(source, revision) is not None:
        return load_lora(name, source, revision)
    return load_complete(Qwen2VLModel, name, source, revision, torch.float32)


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    spec.require(prompts=("image",))
    image_prompt = spec.prompts["image"]
    model = load_model(name, source, revision)
    model = model.to(device=device, dtype=weights_dtype(spec, device)).eval()
    settings = image_settings(spec)
    processor = load_processor(source, revision, settings, spec.padding_side)

    def encode_images(images: list[Image.Image]) -> Tensor:
        def batch(part: list[Image.Image]) -> Tensor:
            sized = [vlm2vec_image(im, settings) for im in part]
            inputs = processor(text=[image_prompt] * len(part), images=sized, padding=True,
                               return_tensors="pt")
            return gme_forward(model, inputs, device)
        return in_batches(images, spec.batch_size, batch)

    def encode_texts(texts: list[str]) -> Tensor:
        return in_batches(texts, spec.batch_size, lambda part: gme_forward(
            model, processor(text=list(part), images=None, padding=True, truncation=True,
                             return_tensors="pt"), device))

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
