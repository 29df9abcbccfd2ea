"""E5-V: a LLaVA-NeXT (LLaMA-3) model whose embedding is the last token's hidden state.

As the reference (models/e5v.py, models/image_encoder/e5v_image_encoder.py, models/
text_encoder/e5v_text_encoder.py): the LLaMA-3 chat template around "<image>\\nSummary above
image in one word: " (images) or "<sent>\\nSummary above sentence in one word: " with the
sentence in place of <sent> (texts), transformers' LlavaNextProcessor and
LlavaNextForConditionalGeneration, the last layer's hidden state at the last position, float16
on a GPU, one item a batch. Here the batch is the registry's `batch_size`, left padded, and
the pooled token is the last real token of each row, so a batch gives what one-by-one gives.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor

from marseval.retrieval.mllm.building import in_batches, load_complete
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.pooling import last_token
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel


def prompts(spec: EmbedderSpec) -> tuple[str, Callable[[str], str]]:
    """The image prompt and the text prompt builder of the registry entry."""
    template = spec.prompts["template"]
    image_prompt = template.format(spec.prompts["image"])
    text_template = template.format(spec.prompts["text"])
    return image_prompt, lambda text: text_template.replace("<sent>", text)


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    dtype = weights_dtype(spec, device)
    processor = LlavaNextProcessor.from_pretrained(source, revision=revision)
    # models/e5v.py: patch size 14 where the processor config leaves it out
    patch = spec.extra.get("patch_size", 14)
    processor.patch_size = processor.patch_size or patch
    if getattr(processor.image_processor, "patch_size", None) is None:
        processor.image_processor.patch_size = patch
    processor.tokenizer.padding_side = spec.padding_side
    model = load_complete(LlavaNextForConditionalGeneration, name, source, revision, dtype)
    model = model.to(device).eval()
    image_prompt, text_prompt = prompts(spec)

    def pooled(inputs) -> Tensor:
        inputs = inputs.to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        output = model(**inputs, output_hidden_states=True, return_dict=True)
        return last_token(output.hidden_states[-1], inputs["attention_mask"])

    def encode_images(images: list[Image.Image]) -> Tensor:
        return in_batches(images, spec.batch_size, lambda batch: pooled(processor(
            text=[image_prompt] * len(batch), images=batch, return_tensors="pt",
            padding=True)))

    def encode_texts(texts: list[str]) -> Tensor:
        return in_batches(texts, spec.batch_size, lambda batch: pooled(processor(
            text=[text_prompt(t) for t in batch], images=None, return_tensors="pt",
            padding=True)))

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
