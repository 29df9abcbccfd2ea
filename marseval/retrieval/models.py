"""Embedding models of MarsRetrieval: one interface over open_clip, transformers and a tiny CLIP.

Model names (the config's `retrieval.models`):

- `tiny-clip`: a randomly initialised 2-layer CLIP (open_clip, config shipped in
  marseval/registry/open_clip/), seeded, for the embedded default: no download at all.
- `open_clip:<architecture>[@<pretrained>]`: any open_clip model with a pretrained tag
  (`open_clip:ViT-L-14-quickgelu@dfn2b`) or a checkpoint file as the tag (a fine-tuned
  CLIP such as MarScope: `open_clip:ViT-L-14-quickgelu@/path/ckpt.pt`); without a tag the
  first tag open_clip lists for the architecture. A checkpoint's ViT is built at the image
  size its position embeddings were trained at (MarScope: 512 px, as the reference's
  `force_image_size=512`), never resized to the architecture's default.
- `open_clip:hf-hub:<org>/<repo>` and `open_clip:local-dir:<folder>`: a model published in
  open_clip's hub layout (DFN2B, SigLIP, SigLIP 2, PE-Core, Mars fine-tunes).
- `transformers:<repo or folder>[@cls|@mean]`: a transformers model. One with
  `get_text_features` (CLIP, SigLIP, AIMv2-LiT) embeds images and text through its projection
  heads; a vision-only one (DINOv3, AIMv2) embeds images only, pooled as the MarsRetrieval
  code does: the CLS token by default, the token mean for AIMv2 (no CLS token) or with `@mean`.

Every embedding is L2-normalised float32. Hub downloads honour offline mode: with
HF_HUB_OFFLINE (or MARSEVAL_OFFLINE) set, only cached weights load, and a miss is one clear
error naming the model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from marseval.bench.model_building import hf_offline, offline_var
from marseval.errors import MarsevalError
from marseval.registry.model_names import TINY_CLIP

log = logging.getLogger(__name__)
TINY_CLIP_ARCH = "marseval-tiny-clip"
TINY_CLIP_SEED = 0
POOLINGS = ("cls", "mean")


class ModelError(MarsevalError):
    """A retrieval model name that cannot be resolved or loaded."""


@dataclass
class EmbeddingModel:
    """A loaded encoder: images (and, for vision-language models, text) to unit vectors."""

    name: str
    # PIL images -> (N, 3, H, W); None: the image encoder takes the PIL images itself (the
    # multimodal-LLM embedders, whose processors build prompts around them)
    preprocess: Callable[[Sequence[Image.Image]], Tensor] | None
    image_encoder: Callable[[Tensor], Tensor] | Callable[[list[Image.Image]], Tensor]
    text_encoder: Callable[[list[str]], Tensor] | None
    device: str
    # lowered on CUDA out-of-memory: later batches go in pieces of this size at most
    max_batch: int | None = None

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        rgb = [im.convert("RGB") for im in images]
        if self.preprocess is None:
            return self._in_pieces(self.image_encoder, rgb)
        return self._in_pieces(
            lambda part: self.image_encoder(self.preprocess(part).to(self.device)), rgb)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.text_encoder is None:
            raise ModelError(f"model {self.name!r} is vision-only: it cannot embed text "
                             "queries (text and hybrid queries need a vision-language model)")
        return self._in_pieces(self.text_encoder, list(texts))

    def _in_pieces(self, encode: Callable[[list], Tensor], items: list) -> np.ndarray:
        """Unit embeddings of `items`, halving the batch on GPU out-of-memory (logged) down to
        one item, which must fit; later batches keep the lowered size."""
        size = min(len(items), self.max_batch or len(items))
        parts = []
        for start in range(0, len(items), max(size, 1)):
            part = items[start:start + size]
            try:
                parts.append(_unit(encode(part)))
            except torch.OutOfMemoryError:
                if len(part) == 1:
                    raise
                self.max_batch = max(1, len(part) // 2)
                log.warning("%s: out of GPU memory on a batch of %d; going on with batches of "
                            "%d", self.name, len(part), self.max_batch)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                parts.append(self._in_pieces(encode, part))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    @property
    def dim(self) -> int:
        probe = Image.new("RGB", (32, 32))
        return int(self.embed_images([probe]).shape[1])


def _unit(features: Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32)


def load_model(name: str, device: str = "cpu") -> EmbeddingModel:
    """Resolve a model name (module docstring) and load it onto `device`, in eval mode."""
    if name == TINY_CLIP:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_CLIP_SEED)  # the same random CLIP in every job
            return _open_clip(name, _tiny_clip_arch(), None, device)
    if name.startswith("open_clip:"):
        arch, _, tag = name[len("open_clip:"):].partition("@")
        return _open_clip(name, arch, tag or None, device)
    if name.startswith("transformers:"):
        source, _, pooling = name[len("transformers:"):].partition("@")
        return _transformers(name, source, pooling or None, device)
    if name.startswith("mllm:"):
        from marseval.retrieval.mllm.load import load_embedder

        weights = name.partition("@")[2]
        with _loading(name):
            return load_embedder(name, device, source=weights or None)
    raise ModelError(f"unknown retrieval model {name!r}: use {TINY_CLIP!r}, "
                     "'open_clip:<architecture>[@<pretrained tag or checkpoint>]', "
                     "'open_clip:hf-hub:<org>/<repo>', 'transformers:<repo>[@cls|@mean]' or "
                     "'mllm:<registry key>'")


def _tiny_clip_arch() -> str:
    import open_clip

    if TINY_CLIP_ARCH not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).parents[1] / "registry" / "open_clip"
                                   / f"{TINY_CLIP_ARCH}.json")
    return TINY_CLIP_ARCH


@contextlib.contextmanager
def _loading(name: str) -> Iterator[None]:
    """Hub errors come from several libraries: turn them into one line naming the model."""
    offline = offline_var()
    guard = hf_offline() if offline else contextlib.nullcontext()
    try:
        with guard:
            yield
    except MarsevalError:
        raise
    except Exception as exc:
        where = f" ({offline} is set: only cached weights load)" if offline else ""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"loading retrieval model {name!r} failed{where}: {first}") from exc


def _open_clip(name: str, arch: str, tag: str | None, device: str) -> EmbeddingModel:
    import open_clip

    hub = arch.startswith(("hf-hub:", "local-dir:"))
    if not hub and arch not in open_clip.list_models():
        raise ModelError(f"open_clip has no architecture {arch!r} (model {name!r}); "
                         "open_clip.list_models() lists them")
    if not hub and tag is None and name != TINY_CLIP:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:
            raise ModelError(f"open_clip architecture {arch!r} has no pretrained tag; "
                             f"name one as 'open_clip:{arch}@<tag or checkpoint file>'")
        tag = tags[0]
    checkpoint = None if hub or tag is None or not Path(tag).is_file() else Path(tag)
    size = _checkpoint_image_size(name, arch, checkpoint) if checkpoint else None
    with _loading(name):
        model, _, transform = open_clip.create_model_and_transforms(
            arch, pretrained=tag, device=device, weights_only=True, force_image_size=size)
        tokenizer = open_clip.get_tokenizer(arch)
    if checkpoint is not None:
        _check_not_resized(name, model, checkpoint)
    model.eval()

    def preprocess(images: Sequence[Image.Image]) -> Tensor:
        return torch.stack([transform(im) for im in images])

    def encode_text(texts: list[str]) -> Tensor:
        return model.encode_text(tokenizer(texts).to(device))

    return EmbeddingModel(name, preprocess, model.encode_image, encode_text, device)


def _checkpoint_positions(checkpoint: Path) -> Tensor | None:
    """The ViT position embeddings (tokens, width) of an open_clip checkpoint, if it has any."""
    from open_clip.factory import load_state_dict

    state = load_state_dict(str(checkpoint), weights_only=True)
    return state.get("visual.positional_embedding")


def _checkpoint_image_size(name: str, arch: str, checkpoint: Path) -> int | None:
    """The image side the checkpoint's ViT was trained at: its square patch grid (after the
    class token) times the architecture's patch size. None for a checkpoint without ViT
    position embeddings (a ResNet CLIP keeps its architecture's size)."""
    import open_clip

    positions = _checkpoint_positions(checkpoint)
    if positions is None:
        return None
    patch = open_clip.get_model_config(arch)["vision_cfg"].get("patch_size")
    tokens = positions.shape[0] - 1  # the class token
    grid = math.isqrt(max(tokens, 0))
    if patch is None or grid * grid != tokens:
        raise ModelError(f"retrieval model {name!r}: the checkpoint's {positions.shape[0]} "
                         f"position embeddings are no class token plus a square patch grid "
                         f"of {arch!r}; cannot tell the image size it was trained at")
    return grid * int(patch)


def _check_not_resized(name: str, model: nn.Module, checkpoint: Path) -> None:
    """open_clip interpolates position embeddings that do not fit: refuse that."""
    positions = _checkpoint_positions(checkpoint)
    built = getattr(model.visual, "positional_embedding", None)
    if positions is not None and (built is None or tuple(built.shape) != tuple(positions.shape)):
        raise ModelError(f"retrieval model {name!r}: the checkpoint's position embeddings "
                         f"{tuple(positions.shape)} do not fit the model built "
                         f"({None if built is None else tuple(built.shape)}); they would be "
                         "resized, which changes the model")


@functools.cache
def _settings_table() -> dict[str, dict]:
    text = resources.files("marseval.registry").joinpath("retrieval_models.yaml").read_text()
    return yaml.safe_load(text)["models"]


def gpu_weights_dtype(cuda_dtype: str | None, device: str) -> torch.dtype:
    """A registry's `cuda_dtype` (float16, bfloat16) on a GPU; float32 on the CPU, where half
    precision is slow, and wherever the registry names none."""
    if not device.startswith("cuda"):
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cuda_dtype or "",
                                                                      torch.float32)


def model_settings(name: str, device: str) -> tuple[str | None, torch.dtype]:
    """The hub revision and weights' dtype a model loads with, as the reference loads it
    (marseval/registry/retrieval_models.yaml)."""
    found = _settings_table().get(name, {})
    return found.get("revision"), gpu_weights_dtype(found.get("cuda_dtype"), device)


def _transformers(name: str, source: str, pooling: str | None, device: str) -> EmbeddingModel:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    if pooling is not None and pooling not in POOLINGS:
        raise ModelError(f"model {name!r}: pooling {pooling!r} is not one of {POOLINGS}")
    revision, dtype = model_settings(name, device)
    with _loading(name):
        model = AutoModel.from_pretrained(source, revision=revision, dtype=dtype)
        model = model.to(device).eval()
        processor = AutoImageProcessor.from_pretrained(source, revision=revision)
        tokenizer = (AutoTokenizer.from_pretrained(source, revision=revision)
                     if hasattr(model, "get_text_features") else None)

    def preprocess(images: Sequence[Image.Image]) -> Tensor:
        return processor(images=list(images), return_tensors="pt")["pixel_values"].to(dtype)

    if tokenizer is not None:
        def encode_image(pixels: Tensor) -> Tensor:
            return _pooled(model.get_image_features(pixel_values=pixels))

        def encode_text(texts: list[str]) -> Tensor:
            tokens = tokenizer(texts, padding="max_length", truncation=True,
                               return_tensors="pt").to(device)
            return _pooled(model.get_text_features(**tokens))

        return EmbeddingModel(name, preprocess, encode_image, encode_text, device)

    # AIMv2's vision tower has no CLS token: the MarsRetrieval code averages its tokens
    pool = pooling or ("mean" if model.config.model_type.startswith("aimv2") else "cls")

    def encode_vision(pixels: Tensor) -> Tensor:
        tokens = model(pixel_values=pixels).last_hidden_state
        return tokens.mean(dim=1) if pool == "mean" else tokens[:, 0]

    return EmbeddingModel(name, preprocess, encode_vision, None, device)


def _pooled(output: Tensor | object) -> Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    return output if isinstance(output, Tensor) else output.pooler_output
