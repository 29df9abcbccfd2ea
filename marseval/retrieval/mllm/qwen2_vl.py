"""Qwen2-VL embedders on transformers' own Qwen2-VL classes (no hub code runs).

GME (`Alibaba-NLP/gme-Qwen2-VL-2B-Instruct`, registry `recipe: gme`) as its published remote
code computes it (modeling_gme_qwen2vl.py, `GmeQwen2VL.embed` and `.forward`, which needs
transformers<4.52), called as the MarsRetrieval reference calls it (models/gme.py):
`get_image_embeddings(images, is_query=False)` and `get_text_embeddings(texts,
instruction="Find an image that matches the given text.")`:

- every input is one string, `<|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n
  {input}<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>` (registry `prompts.template`), where
  the input is `<|vision_start|><|image_pad|><|vision_end|>` for an image and the text itself
  for a text; the instruction is "You are a helpful assistant." for images (is_query=False
  always takes the default) and the registry's text instruction for texts;
- each image is first resized by the code's copy of qwen_vl_utils' `fetch_image` (sides
  rounded to multiples of 28, 4 to 16,384 patches of 28 x 28, PIL's default bicubic), then
  the Qwen2-VL processor resizes it again between `min_image_tokens` and `max_image_tokens`
  x 28 x 28 pixels (GmeQwen2VLConfig: 256 and 1,280 unless the checkpoint's config.json says
  otherwise). transformers<4.52 gave the slow (PIL) image processor for a checkpoint saved
  with one, so the PIL backend is asked for here;
- the tokenizer pads on the right and truncates at `max_length` (1,800);
- the image features (the vision tower's merger output) replace the `<|image_pad|>` token
  embeddings, and the language model runs on those embeddings with NO position ids: plain
  sequential positions 0..n-1 on all three M-RoPE axes (GME never calls get_rope_index);
- the embedding is the final-norm hidden state (`last_hidden_state`) of the last real token.
  GME L2-normalises it in the weights' dtype; EmbeddingModel normalises in float32 here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor

from marseval.errors import MarsevalError
from marseval.retrieval.mllm.building import in_batches, load_complete
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.pooling import last_token
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel

# fetch_image of the GME code ("Copied from qwen_vl_utils.vision_process.py"): IMAGE_FACTOR,
# MIN_PIXELS, MAX_PIXELS, MAX_RATIO
FETCH_FACTOR = 28
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
FETCH_MAX_RATIO = 200
# GmeQwen2VLConfig defaults; the checkpoint's config.json overrides them where it sets them
GME_CONFIG_DEFAULTS = {"min_image_tokens": 256, "max_image_tokens": 1280, "max_length": 1800}
# pixels per image token: GmeQwen2VL.__init__ (`min_image_tokens * 28 * 28`)
PIXELS_PER_TOKEN = 28 * 28
RECIPES = ("gme",)


def resize_within(height: int, width: int, factor: int, min_pixels: int,
                  max_pixels: int) -> tuple[int, int]:
    """The core of Qwen2-VL's `smart_resize` (each published copy wraps it in its own aspect
    rule): (height, width) rounded to multiples of `factor` (at least one), scaled down or up
    to stay between `min_pixels` and `max_pixels`, aspect kept."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fetch_resize(height: int, width: int) -> tuple[int, int]:
    """`smart_resize` of the GME code's fetch_image: (height, width) rounded to multiples of
    28 and brought between 4 and 16,384 patches of 28 x 28, aspect kept; an aspect beyond 200
    is clipped to 200 (the code logs a warning and goes on)."""
    h_bar, w_bar = resize_within(height, width, FETCH_FACTOR, FETCH_MIN_PIXELS,
                                 FETCH_MAX_PIXELS)
    if max(h_bar, w_bar) / min(h_bar, w_bar) > FETCH_MAX_RATIO:
        if h_bar > w_bar:
            h_bar = w_bar * FETCH_MAX_RATIO
        else:
            w_bar = h_bar * FETCH_MAX_RATIO
    return h_bar, w_bar


def fetch_image(image: Image.Image) -> Image.Image:
    """The GME code's fetch_image on a PIL image: RGB, then `image.resize((w, h))`, whose
    default filter is bicubic for RGB images."""
    image = image.convert("RGB")
    width, height = image.size
    resized_height, resized_width = fetch_resize(height, width)
    return image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)


def system_user_prompts(spec: EmbedderSpec) -> tuple[str, Callable[[str], str]]:
    """The image input string and the text input builder of an entry whose prompts are one
    system + user template (GME, Ops-MM): `template` filled with an instruction and an input."""
    spec.require(prompts=("template", "image", "image_instruction", "text_instruction"))
    prompts = spec.prompts
    template = prompts["template"]
    image_input = template.format(instruction=prompts["image_instruction"],
                                  input=prompts["image"])
    text_instruction = prompts["text_instruction"]
    return image_input, lambda text: template.format(instruction=text_instruction, input=text)


def gme_settings(config, spec: EmbedderSpec) -> dict[str, int]:
    """min_image_tokens, max_image_tokens and max_length: the checkpoint's config.json where
    it sets them (GmeQwen2VLConfig reads them from there), else the code's defaults."""
    return {key: int(getattr(config, key, None) or spec.extra.get(key) or default)
            for key, default in GME_CONFIG_DEFAULTS.items()}


def _image_processor(source: str, revision: str | None, min_pixels: int, max_pixels: int):
    """The Qwen2-VL image processor, PIL backend (the slow processor transformers<4.52 gave
    GME), with GME's pixel limits."""
    from transformers import AutoImageProcessor

    kwargs = {"revision": revision, "min_pixels": min_pixels, "max_pixels": max_pixels}
    try:
        return AutoImageProcessor.from_pretrained(source, backend="pil", **kwargs)
    except TypeError:  # transformers 4.x: no backends, use_fast=False is the PIL processor
        return AutoImageProcessor.from_pretrained(source, use_fast=False, **kwargs)


def load_processor(source: str, revision: str | None, settings: dict[str, int],
                   padding_side: str):
    from transformers import AutoProcessor

    image_processor = _image_processor(source, revision,
                                       settings["min_image_tokens"] * PIXELS_PER_TOKEN,
                                       settings["max_image_tokens"] * PIXELS_PER_TOKEN)
    processor = AutoProcessor.from_pretrained(source, revision=revision,
                                              image_processor=image_processor)
    processor.tokenizer.padding_side = padding_side
    return processor


def load_model(name: str, source: str, revision: str | None, dtype: torch.dtype):
    """Qwen2VLModel (vision tower + language model) from a checkpoint in GME's layout
    (`visual.*`, `model.*`; transformers maps them), refusing one that leaves weights
    unloaded (they would be random)."""
    from transformers import Qwen2VLModel

    return load_complete(Qwen2VLModel, name, source, revision, dtype)


def gme_forward(model, inputs, device: str) -> Tensor:
    """GmeQwen2VL.forward: image features in place of the image pad tokens, the language
    model without position ids (sequential positions), the last real token's final hidden
    state (not normalised here)."""
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    embeds = model.get_input_embeddings()(input_ids)
    if inputs.get("pixel_values") is not None:
        visual = model.visual
        pixels = inputs["pixel_values"].to(device, visual.get_dtype())
        output = visual(pixels, grid_thw=inputs["image_grid_thw"].to(device))
        features = output if isinstance(output, Tensor) else output.pooler_output
        image_mask = input_ids == model.config.image_token_id
        if int(image_mask.sum()) != features.shape[0]:
            raise MarsevalError(f"{int(image_mask.sum())} image tokens in the prompts for "
                                f"{features.shape[0]} image features (truncated prompt?)")
        embeds[image_mask] = features.to(embeds.dtype)
    hidden = model.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state
    return last_token(hidden, attention_mask)


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    recipe = spec.extra.get("recipe")
    if recipe not in RECIPES:
        raise MarsevalError(f"{name}: the qwen2_vl adapter has no recipe {recipe!r} for "
                            f"{spec.key} (it runs: {', '.join(RECIPES)})")
    image_input, text_input = system_user_prompts(spec)
    model = load_model(name, source, revision, weights_dtype(spec, device))
    model = model.to(device).eval()
    settings = gme_settings(model.config, spec)
    processor = load_processor(source, revision, settings, spec.padding_side)
    call = {"padding": True, "truncation": True, "max_length": settings["max_length"],
            "return_tensors": "pt"}

    def encode_images(images: list[Image.Image]) -> Tensor:
        def batch(part: list[Image.Image]) -> Tensor:
            fetched = [fetch_image(im) for im in part]
            return gme_forward(model, processor(text=[image_input] * len(part),
                                                images=fetched, **call), device)
        return in_batches(images, spec.batch_size, batch)

    def encode_texts(texts: list[str]) -> Tensor:
        return in_batches(texts, spec.batch_size, lambda part: gme_forward(
            model, processor(text=[text_input(t) for t in part], images=None, **call),
            device))

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
