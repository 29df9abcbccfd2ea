"""Qwen3-VL-Embedding on transformers' own Qwen3-VL classes and qwen_vl_utils (no hub code runs).

`Qwen/Qwen3-VL-Embedding-2B` as its published script computes it (the hub's
scripts/qwen3_vl_embedding.py, which MarsRetrieval downloads: `Qwen3VLEmbedder`; followed here
in QwenLM/Qwen3-VL-Embedding src/models/qwen3_vl_embedding.py at 8ce3aab1, whose image and
text steps equal the hub copies stored publicly), called as the reference calls
it (models/qwen3_vl_embedding.py and its image / text encoders): `process([{"image": path}])`
and `process([{"text": text}])`, no instruction, fp16 weights on a GPU:

- every input is one chat conversation, a system turn holding the default instruction
  ("Represent the user's input.", registry `prompts.instruction`) and a user turn holding the
  image or the text; `processor.apply_chat_template(add_generation_prompt=True)` renders it.
  The prompt strings are the registry's `prompts.template` (the Qwen3-VL chat template on
  that conversation); a checkpoint that carries a chat template must render the same strings,
  or the build stops (the hub's template is not stored here);
- each image goes through qwen_vl_utils' `process_vision_info(image_patch_size=16)`: RGB, sides
  rounded to multiples of 32 (patch 16 x merge 2) between `min_pixels` and `max_pixels` (the
  conversation's image entry: 4 and 1,800 x 32 x 32), PIL's default (bicubic) resize; the
  Qwen3-VL processor then only rescales and normalises (`do_resize=False`), pads on the right
  and truncates at `max_length` (8,192);
- Qwen3VLModel runs on the processor's whole output (input ids, attention mask, pixels, image
  grids, token types), so the vision tower with its deepstack features and the M-RoPE
  positions of `get_rope_index` (over the real tokens, with the image grid's 3-D positions)
  are transformers' own. A text-only batch gets sequential positions (transformers 4.57, the
  reference's, counted them over the real tokens; 5.x counts from position 0, a left pad
  included): RoPE sees only position differences, so the two agree;
- the embedding is the final-norm hidden state (`last_hidden_state`) of the last real token.
  The script L2-normalises it in the weights' dtype; EmbeddingModel normalises in float32.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image
from torch import Tensor

from marseval.errors import MarsevalError
from marseval.retrieval.mllm.building import in_batches, load_complete
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.pooling import last_token
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel

log = logging.getLogger(__name__)
# the registry entry's settings: the script's constants, verbatim there
SETTINGS = ("max_length", "min_pixels", "max_pixels", "image_patch_size")
PROMPTS = ("template", "image", "instruction")


def qwen3_settings(spec: EmbedderSpec) -> dict[str, int]:
    spec.require(prompts=PROMPTS, fields=SETTINGS)
    return {key: int(spec.extra[key]) for key in SETTINGS}


def conversation(spec: EmbedderSpec, settings: dict[str, int], *, text: str | None = None,
                 image: Image.Image | None = None) -> list[dict]:
    """`Qwen3VLEmbedder.format_model_input` for one image or one text, no instruction: the
    default instruction as the system turn, the image (with the pixel limits) or the text as
    the user turn."""
    if image is not None:
        content = {"type": "image", "image": image, "min_pixels": settings["min_pixels"],
                   "max_pixels": settings["max_pixels"]}
    else:
        content = {"type": "text", "text": text}
    return [{"role": "system",
             "content": [{"type": "text", "text": spec.prompts["instruction"]}]},
            {"role": "user", "content": [content]}]


def prompt(spec: EmbedderSpec, *, text: str | None = None) -> str:
    """The rendered conversation (registry `prompts.template`): the image string when `text`
    is None."""
    return spec.prompts["template"].format(
        instruction=spec.prompts["instruction"],
        input=spec.prompts["image"] if text is None else text)


def check_chat_template(name: str, processor, spec: EmbedderSpec,
                        settings: dict[str, int]) -> None:
    """The checkpoint's own chat template (what the script renders with), where it has one,
    must give the registry's prompt strings for an image and a text."""
    if not getattr(processor, "chat_template", None):
        log.info("%s: the checkpoint has no chat template; the registry's prompts apply", name)
        return
    probe = "a probe text"
    rendered = processor.apply_chat_template(
        [conversation(spec, settings, image=Image.new("RGB", (32, 32))),
         conversation(spec, settings, text=probe)], add_generation_prompt=True, tokenize=False)
    expected = [prompt(spec), prompt(spec, text=probe)]
    if list(rendered) != expected:
        raise MarsevalError(f"{name}: the checkpoint's chat template renders {rendered!r}, the "
                            f"registry's prompts.template {expected!r}: the prompts would not "
                            "be the published script's")


def load_processor(source: str, revision: str | None, padding_side: str):
    """Qwen3VLProcessor (the image processor transformers picks by default: torchvision, as
    4.57 forced for Qwen2VLImageProcessor), padding on `padding_side` (the script: right)."""
    from transformers import Qwen3VLProcessor

    processor = Qwen3VLProcessor.from_pretrained(source, revision=revision)
    processor.tokenizer.padding_side = padding_side
    return processor


def load_model(name: str, source: str, revision: str | None, dtype: torch.dtype):
    """Qwen3VLModel from a checkpoint in the script's layout (Qwen3VLForEmbedding: `model.*`,
    which transformers maps), refusing one that leaves weights unloaded."""
    from transformers import Qwen3VLModel

    return load_complete(Qwen3VLModel, name, source, revision, dtype)


def qwen3_forward(model, inputs, device: str) -> Tensor:
    """`Qwen3VLEmbedder.forward` + `_pooling_last`: the model on the processor's output, the
    last real token's final hidden state (not normalised here)."""
    inputs = {key: value.to(device) for key, value in inputs.items()}
    hidden = model(**inputs, use_cache=False).last_hidden_state
    return last_token(hidden, inputs["attention_mask"])


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    from qwen_vl_utils import process_vision_info

    settings = qwen3_settings(spec)
    model = load_model(name, source, revision, weights_dtype(spec, device))
    model = model.to(device).eval()
    processor = load_processor(source, revision, spec.padding_side)
    check_chat_template(name, processor, spec, settings)
    # `Qwen3VLEmbedder._preprocess_inputs`: the processor does not resize again
    call = {"padding": True, "truncation": True, "max_length": settings["max_length"],
            "do_resize": False, "return_tensors": "pt"}

    def encode_images(images: list[Image.Image]) -> Tensor:
        def batch(part: list[Image.Image]) -> Tensor:
            fetched, _ = process_vision_info(
                [conversation(spec, settings, image=im) for im in part],
                image_patch_size=settings["image_patch_size"])
            return qwen3_forward(model, processor(text=[prompt(spec)] * len(part),
                                                  images=fetched, **call), device)
        return in_batches(images, spec.batch_size, batch)

    def encode_texts(texts: list[str]) -> Tensor:
        return in_batches(texts, spec.batch_size, lambda part: qwen3_forward(
            model, processor(text=[prompt(spec, text=t) for t in part], **call), device))

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
