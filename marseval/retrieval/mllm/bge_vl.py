"""BGE-VL (`BAAI/BGE-VL-large`, MMRet-CLIP) on transformers' own CLIP classes (no hub code).

BGE-VL's published remote code (modeling_MMRet_CLIP.py, VectorSpaceLab/MegaPairs, the file the
hub repo's `auto_map` names) is a copy of transformers' CLIP: its CLIPModel has transformers'
module names and weight layout, and adds only `set_processor` (`CLIPProcessor.from_pretrained`),
`data_process`, `encode`, `encode_image` and `encode_text`. Those steps, as the MarsRetrieval
reference calls them (models/bgevl.py, models/image_encoder/bgevl_image_encoder.py,
models/text_encoder/bgevl_text_encoder.py), run here on transformers' CLIPModel and
CLIPProcessor:

- images: each PIL image is saved as `img.convert("RGB")` to an in-memory JPEG at quality 95
  (registry `jpeg_quality`), which `data_process` reopens with `Image.open(...).convert("RGB")`;
  the processor's image processor makes the pixels (the slow PIL one, which transformers 4.x,
  the reference's 4.57.3, gave when `use_fast` was unset: transformers 5 defaults to the
  torchvision one); `encode_image` is `get_image_features` (the vision tower's post-layernorm
  CLS token through `visual_projection`), L2-normalised;
- texts: `processor(text=texts, return_tensors="pt", padding=True, truncation=True,
  max_length=<text config's max_position_embeddings>)` (the reference's own call, not
  `encode(text=...)`, which would not truncate), then `encode_text`: `get_text_features`
  (the final-layer-norm state at the first end-of-text token through `text_projection`),
  L2-normalised;
- float16 weights on a GPU (pixels go to the device in float32 and the patch embedding casts
  them, as in the published code). The published code normalises in the weights' dtype and
  the reference normalises again; EmbeddingModel normalises in float32 here.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor

from marseval.retrieval.mllm.building import in_batches, load_complete
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel

JPEG_QUALITY = 95  # bgevl_image_encoder.py: save(buf, format="JPEG", quality=95)
DEFAULT_TEXT_MAX_LENGTH = 77  # models/bgevl.py's fallback when the config names none


def jpeg_round_trip(image: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """The reference's in-memory JPEG re-encoding, then the published code's reopening:
    `img.convert("RGB").save(buf, format="JPEG", quality=q)`, `Image.open(buf).convert("RGB")`."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    reopened = Image.open(buf).convert("RGB")
    reopened.load()
    return reopened


def text_max_length(config) -> int:
    """models/bgevl.py: the text config's max_position_embeddings, else the config's, else 77."""
    text_config = getattr(config, "text_config", None)
    found = getattr(text_config, "max_position_embeddings", None)
    if found is None:
        found = getattr(config, "max_position_embeddings", DEFAULT_TEXT_MAX_LENGTH)
    return int(found)


def load_processor(source: str, revision: str | None):
    """CLIPProcessor (`set_processor`) with the PIL image processor transformers 4.x gave."""
    from transformers import AutoImageProcessor, CLIPProcessor

    try:
        image_processor = AutoImageProcessor.from_pretrained(source, revision=revision,
                                                             backend="pil")
    except TypeError:  # transformers 4.x: no backends, use_fast=False is the PIL processor
        image_processor = AutoImageProcessor.from_pretrained(source, revision=revision,
                                                             use_fast=False)
    return CLIPProcessor.from_pretrained(source, revision=revision,
                                         image_processor=image_processor)


def load_model(name: str, source: str, revision: str | None, dtype: torch.dtype):
    """transformers' CLIPModel on the checkpoint, refusing one that leaves weights unloaded
    (they would be random)."""
    from transformers import CLIPModel

    return load_complete(CLIPModel, name, source, revision, dtype)


def _features(output) -> Tensor:
    """get_*_features: a tensor in transformers 4.x, the pooled output in 5.x."""
    return output if isinstance(output, Tensor) else output.pooler_output


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    model = load_model(name, source, revision, weights_dtype(spec, device))
    model = model.to(device).eval()
    processor = load_processor(source, revision)
    quality = int(spec.extra.get("jpeg_quality", JPEG_QUALITY))
    max_length = text_max_length(model.config)

    def encode_images(images: list[Image.Image]) -> Tensor:
        def batch(part: list[Image.Image]) -> Tensor:
            reopened = [jpeg_round_trip(im, quality) for im in part]
            pixels = processor(images=reopened, return_tensors="pt")["pixel_values"]
            return _features(model.get_image_features(pixel_values=pixels.to(device)))
        return in_batches(images, spec.batch_size, batch)

    def encode_texts(texts: list[str]) -> Tensor:
        def batch(part: list[str]) -> Tensor:
            tokens = processor(text=part, return_tensors="pt", padding=True, truncation=True,
                               max_length=max_length).to(device)
            return _features(model.get_text_features(**tokens))
        return in_batches(texts, spec.batch_size, batch)

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
