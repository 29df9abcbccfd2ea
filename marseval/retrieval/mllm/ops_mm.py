"""Ops-MM-embedding-v1 on transformers' own Qwen2-VL classes (no hub code runs).

`OpenSearch-AI/Ops-MM-embedding-v1-2B` (a Qwen2-VL-2B fine-tune) as its published code
computes it (the hub repo's ops_mm_embedding_v1.py, `OpsMMEmbeddingV1.embed`, `.encode_input`,
`._pooling` and its `fetch_image`), called as the MarsRetrieval reference calls it
(models/opsmm_v1.py, `OpsMMEmbeddingV1(model, device, attn_implementation=
"flash_attention_2")`; `get_image_embeddings(images)` and `get_text_embeddings(texts)`, both
without an instruction):

- the weights load as `AutoModelForImageTextToText` (Qwen2VLForConditionalGeneration) in
  bfloat16; here Qwen2VLModel (the same vision tower and language model, no LM head);
- every input is one hand-built string, `<|im_start|>system\\n{instruction}<|im_end|>\\n
  <|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>` (registry
  `prompts.template`, the same as GME's), where the input is
  `<|vision_start|><|image_pad|><|vision_end|>` for an image and the text itself for a text;
  the instruction is the code's default, "You are a helpful assistant.", for both (the
  reference passes none);
- each image is resized by the code's `fetch_image` (qwen_vl_utils' with its limits changed:
  sides rounded to multiples of 28, 256 to 1,280 patches of 28 x 28, aspect kept, PIL's
  default bicubic), then the Qwen2-VL processor, loaded with the same limits (`min_pixels=
  256 * 28 * 28, max_pixels=1280 * 28 * 28`), finds it at its size and only rescales and
  normalises it. The processor here (qwen2_vl.load_processor: the PIL backend, the same
  limits) computes the same size with the same smart_resize and resizes once with PIL's
  bicubic: the same pixels in one step (tests/test_mllm_ops_mm.py checks them equal). Only
  an aspect beyond 200 differs: fetch_image clips it and warns, the processor refuses it;
- the tokenizer pads on the LEFT and truncates at `max_length=None`, i.e. the tokenizer's
  `model_max_length`;
- the model runs its own forward: image features in place of the `<|image_pad|>` tokens and
  M-RoPE position ids from `get_rope_index` (3-D positions for the image tokens, pads
  skipped), passed for every batch as transformers 4.5x's forward computed them; transformers
  5 would number a text-only batch 0..n-1 with the pads counted (an offset that RoPE's
  relative attention ignores, up to rounding);
- the embedding is `hidden_states[-1]` (the final-norm output) at the LAST position, which is
  the last real token under left padding (here the last non-pad token under either padding),
  L2-normalised in bfloat16; EmbeddingModel normalises in float32 here.
"""

from __future__ import annotations

from PIL import Image
from torch import Tensor

from marseval.retrieval.mllm.building import in_batches
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.pooling import last_token
from marseval.retrieval.mllm.qwen2_vl import load_model, load_processor, system_user_prompts
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel

# registry fields: the limits of fetch_image and of the processor, in image tokens (x 28 x 28
# pixels); `max_length` (null: the tokenizer's model_max_length, as max_length=None does)
SETTINGS = ("min_image_tokens", "max_image_tokens")


def ops_settings(spec: EmbedderSpec) -> dict[str, int]:
    """min_image_tokens and max_image_tokens of the registry entry (the code hard-codes
    them: MIN_PIXELS / MAX_PIXELS of its fetch_image, the processor's min/max_pixels)."""
    spec.require(fields=SETTINGS)
    return {key: int(spec.extra[key]) for key in SETTINGS}


def ops_forward(model, inputs, device: str) -> Tensor:
    """OpsMMEmbeddingV1.encode_input and _pooling (not normalised here): the model's forward
    with M-RoPE positions from get_rope_index (pads skipped, for text-only batches too), the
    final hidden state of the last real token."""
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    grid = inputs.get("image_grid_thw")
    grid = grid.to(device) if grid is not None else None
    position_ids, _ = model.get_rope_index(input_ids, inputs["mm_token_type_ids"].to(device),
                                           image_grid_thw=grid, attention_mask=attention_mask)
    pixels = inputs.get("pixel_values")
    if pixels is not None:
        pixels = pixels.to(device, model.visual.dtype)
    hidden = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids, pixel_values=pixels, image_grid_thw=grid,
                   use_cache=False).last_hidden_state
    return last_token(hidden, attention_mask)


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    image_input, text_input = system_user_prompts(spec)
    settings = ops_settings(spec)
    model = load_model(name, source, revision, weights_dtype(spec, device))
    model = model.to(device).eval()
    processor = load_processor(source, revision, settings, spec.padding_side)
    call = {"padding": True, "truncation": True, "max_length": spec.extra.get("max_length"),
            "return_tensors": "pt"}

    def encode_images(images: list[Image.Image]) -> Tensor:
        # the processor's one PIL resize is fetch_image's (module docstring)
        return in_batches(images, spec.batch_size, lambda part: ops_forward(
            model, processor(text=[image_input] * len(part), images=part, **call), device))

    def encode_texts(texts: list[str]) -> Tensor:
        return in_batches(texts, spec.batch_size, lambda part: ops_forward(
            model, processor(text=[text_input(t) for t in part], images=None, **call),
            device))

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
