"""jina-embeddings-v4 on transformers' own Qwen2.5-VL classes plus peft (no hub code runs).

The MarsRetrieval reference (models/jina.py, models/image_encoder/jina_image_encoder.py,
models/text_encoder/jina_text_encoder.py) loads `jinaai/jina-embeddings-v4` with
`trust_remote_code=True` (float16 on CUDA) and calls `encode_image(images, task="retrieval")`
and `encode_text(texts, task="retrieval", prompt_name="query")`, then L2-normalises. The hub
code (modeling_jina_embeddings_v4.py, custom_lora_module.py; public copies, see
docs/fidelity.md) computes it as follows, and this module does the same steps:

- the model is Qwen2.5-VL-3B-Instruct (`JinaEmbeddingsV4Model` subclasses the hub's copy of
  `Qwen2_5_VLForConditionalGeneration`; its only extra weights, `multi_vector_projector`,
  serve the multi-vector output, which the reference does not use);
- the task LoRA: `PeftModel.from_pretrained(model, "<repo>/adapters")`, one peft adapter
  whose layers are `MultiAdapterLinear` (custom_lora_module.py): one (lora_A, lora_B) pair
  per task name, stored as `base_model.model.<module>.lora_A.<task>.weight` in
  adapters/adapter_model.safetensors; with a string task label the layer returns
  `base(x) + lora_B(lora_A(x)) * lora_alpha / r` (sqrt(r) under rslora), peft's vanilla LoRA
  forward exactly. So the `retrieval` pairs become a plain peft LoRA adapter here
  (`inject_adapter_in_model`, unmerged, as the hub runs it); query texts and images share
  that one adapter. The LoRA pairs of modules outside the backbone (the projectors) are left
  out: the single-vector output never reaches them;
- texts: `"Query: " + text` (PREFIX_DICT["query"], registry `prompts.text`), padded to the
  longest, truncated at 32,768 tokens (`text_max_length`), no chat template;
- images: each is the fixed string `<|im_start|>user\\n<|vision_start|><|image_pad|>
  <|vision_end|>Describe the image.<|im_end|>\\n` (registry `prompts.image`) with the
  Qwen2-VL image processor of the checkpoint (its preprocessor_config.json pixel limits;
  `use_fast=True`: the torchvision backend); the processor expands the image pad;
- positions: `get_rope_index(input_ids, image_grid_thw, attention_mask)` (M-RoPE for
  images; for texts `cumsum(attention_mask) - 1`), passed to the forward;
- the embedding is the mean of the final-norm hidden states (`hidden_states[-1]`) over the
  tokens from `<|vision_start|>` to `<|vision_end|>` inclusive for an image, over the
  attention mask for a text; truncated to the config's `truncate_dim` if it sets one; then
  L2-normalised (EmbeddingModel normalises in float32 here);
- batches of 8 (`encode_image`/`encode_text` default batch_size; registry `batch_size`),
  each forward under `torch.autocast(bfloat16)`. The workflow runs that autocast on CUDA
  (registry `autocast`), with the reference's float16 weights; on the CPU it runs float32
  without autocast, as every adapter here does (the hub code would autocast there too).

Not pinned from the public copies: the hub repository's own qwen2_5_vl.py (taken to be
transformers' Qwen2.5-VL with the task label threaded to the LoRA layers, as the
`jina-embeddings-v4-vllm-retrieval` checkpoint, a stock Qwen2.5-VL with the retrieval LoRA
merged, implies), the checkpoint's pixel limits, and which module path (pre- or post-
transformers-4.52 naming) the adapter file's keys use: both are read.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from marseval.errors import MarsevalError
from marseval.retrieval.mllm.building import in_batches, load_complete
from marseval.retrieval.mllm.load import weights_dtype
from marseval.retrieval.mllm.pooling import masked_mean
from marseval.retrieval.mllm.registry import EmbedderSpec
from marseval.retrieval.models import EmbeddingModel

ADAPTER_CONFIG = "adapters/adapter_config.json"
ADAPTER_WEIGHTS = "adapters/adapter_model.safetensors"
# JinaEmbeddingsV4Processor.text_max_length and encode_text's max_length default
TEXT_MAX_LENGTH = 32768
_LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\."
                       r"(?P<task>[^.]+)\.(?P<param>weight|bias)")
# modules of JinaEmbeddingsV4Model outside Qwen2.5-VL's backbone: the projectors (LoRA-adapted
# too) feed only the multi-vector output, lm_head only generation
_OFF_PATH = ("multi_vector_projector", "single_vector_projector", "lm_head")


def _adapter_file(name: str, source: str, revision: str | None, filename: str) -> Path:
    """A file of the checkpoint's adapters/ folder: from the local folder, else the hub."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise MarsevalError(f"{name}: the checkpoint at {source} has no {filename} (the "
                                "task LoRA adapters jina-embeddings-v4 needs)")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, revision=revision))
    except Exception as exc:
        raise MarsevalError(f"{name}: {filename} of {source} could not be loaded (the task "
                            f"LoRA adapters jina-embeddings-v4 needs): "
                            f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from exc


def backbone_path(module: str) -> str | None:
    """The Qwen2_5_VLModel module a LoRA key's module path names (either transformers
    naming: `model.layers.*` before 4.52, `model.language_model.layers.*` since), or None for
    the modules outside the backbone (`_OFF_PATH`)."""
    if module.split(".")[0] in _OFF_PATH:
        return None
    for old, new in (("model.language_model.", "language_model."), ("model.visual.", "visual."),
                     ("visual.", "visual."), ("model.", "language_model.")):
        if module.startswith(old):
            return new + module[len(old):]
    return module


def task_lora(name: str, weights: Path, task: str) -> dict[str, dict[str, Tensor]]:
    """{backbone module: {"A", "B"[, "B_bias"]}} of `task` in the adapter file."""
    from safetensors.torch import load_file

    found: dict[str, dict[str, Tensor]] = {}
    for key, value in load_file(str(weights)).items():
        match = _LORA_KEY.fullmatch(key)
        if match is None or match["task"] != task:
            continue
        module = backbone_path(match["module"])
        if module is not None:
            slot = match["part"] + ("_bias" if match["param"] == "bias" else "")
            found.setdefault(module, {})[slot] = value
    if not found:
        raise MarsevalError(f"{name}: {weights} holds no {task!r} LoRA weights (keys "
                            f"base_model.model.<module>.lora_A.{task}.weight)")
    broken = sorted(m for m, parts in found.items() if not {"A", "B"} <= set(parts))
    if broken:
        raise MarsevalError(f"{name}: {weights} has lora_A without lora_B (or the reverse) "
                            f"for {', '.join(broken[:3])}")
    return found


def apply_task_lora(name: str, model, source: str, revision: str | None, task: str):
    """The task's LoRA pairs as a peft LoRA adapter named `task` on the backbone modules
    they adapt (unmerged: the hub's forward, base + B(A(x)) * scaling)."""
    from peft import LoraConfig, inject_adapter_in_model

    settings = json.loads(_adapter_file(name, source, revision, ADAPTER_CONFIG).read_text())
    weights = _adapter_file(name, source, revision, ADAPTER_WEIGHTS)
    pairs = task_lora(name, weights, task)
    modules = dict(model.named_modules())
    unknown = sorted(set(pairs) - set(modules))
    if unknown:
        raise MarsevalError(f"{name}: {weights} adapts modules transformers' Qwen2.5-VL does "
                            f"not have: {', '.join(unknown[:3])}")
    config = LoraConfig(r=int(settings["r"]), lora_alpha=settings["lora_alpha"],
                        use_rslora=bool(settings.get("use_rslora", False)),
                        lora_bias=any("B_bias" in p for p in pairs.values()),
                        rank_pattern=settings.get("rank_pattern") or {},
                        alpha_pattern=settings.get("alpha_pattern") or {},
                        target_modules=sorted(pairs), lora_dropout=0.0)
    model = inject_adapter_in_model(config, model, adapter_name=task)
    with torch.no_grad():
        for module_name, parts in pairs.items():
            layer = model.get_submodule(module_name)
            targets = [(layer.lora_A[task].weight, parts["A"]),
                       (layer.lora_B[task].weight, parts["B"])]
            if "B_bias" in parts:
                targets.append((layer.lora_B[task].bias, parts["B_bias"]))
            for param, value in targets:
                if param.shape != value.shape:
                    raise MarsevalError(f"{name}: {weights}: {module_name} LoRA weight of "
                                        f"shape {tuple(value.shape)}, the layer takes "
                                        f"{tuple(param.shape)} (r or alpha pattern?)")
                param.copy_(value)
    return model


def load_processor(source: str, revision: str | None, padding_side: str):
    """Qwen2.5-VL's processor from the checkpoint's tokenizer and image processor config,
    built from transformers' classes (the checkpoint names the hub's processor class); the
    video processor, which no input here reaches, is Qwen2-VL's default."""
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    image_processor = Qwen2VLImageProcessor.from_pretrained(source, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision,
                                              trust_remote_code=False)
    tokenizer.padding_side = padding_side
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor())


def rope_positions(model, input_ids: Tensor, attention_mask: Tensor,
                   image_grid_thw: Tensor | None, mm_token_type_ids: Tensor | None) -> Tensor:
    """The (3, batch, length) M-RoPE positions of the hub's get_rope_index call: the image
    grid's positions for image prompts, `cumsum(attention_mask) - 1` (pads at 1) for texts."""
    if image_grid_thw is None:
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)
        return positions.unsqueeze(0).expand(3, -1, -1)
    if mm_token_type_ids is None:
        mm_token_type_ids = (input_ids == model.config.image_token_id).int()
    return model.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids,
                                image_grid_thw=image_grid_thw, attention_mask=attention_mask)[0]


def vision_span(input_ids: Tensor, start_id: int, end_id: int) -> Tensor:
    """(batch, length) mask of each row's `<|vision_start|>` .. `<|vision_end|>` tokens."""
    starts, ends = input_ids == start_id, input_ids == end_id
    if not ((starts.sum(dim=1) == 1) & (ends.sum(dim=1) == 1)).all():
        raise MarsevalError("an image prompt without exactly one <|vision_start|> and one "
                            "<|vision_end|> token")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return ((positions >= starts.int().argmax(dim=1, keepdim=True))
            & (positions <= ends.int().argmax(dim=1, keepdim=True)))


def jina_forward(model, inputs, device: str) -> Tensor:
    """One batch through the backbone (LoRA applied) to its pooled single vectors."""
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    grid = inputs.get("image_grid_thw")
    extra = {}
    if grid is not None:
        grid = grid.to(device)
        extra = {"pixel_values": inputs["pixel_values"].to(device), "image_grid_thw": grid}
    types = inputs.get("mm_token_type_ids")
    positions = rope_positions(model, input_ids, attention_mask, grid,
                               None if types is None else types.to(device))
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   use_cache=False, **extra).last_hidden_state
    config = model.config
    if grid is not None:
        mask = vision_span(input_ids, config.vision_start_token_id, config.vision_end_token_id)
    else:
        mask = attention_mask
    pooled = masked_mean(hidden, mask.to(hidden.dtype))  # get_single_vector_embeddings
    truncate = getattr(config, "truncate_dim", None)
    return pooled[:, :truncate] if truncate else pooled


def autocast(spec: EmbedderSpec, device: str):
    """The hub's `torch.autocast(dtype=bfloat16)` around each batch, on CUDA (registry
    `autocast`); no autocast elsewhere (float32 on the CPU)."""
    dtype = spec.extra.get("autocast")
    if dtype and str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def load_model(name: str, spec: EmbedderSpec, device: str, source: str,
               revision: str | None):
    """Qwen2_5_VLModel with the task's LoRA, refusing a checkpoint that leaves backbone
    weights unloaded or lacks the task's adapter."""
    from transformers import Qwen2_5_VLModel

    model = load_complete(Qwen2_5_VLModel, name, source, revision,
                          weights_dtype(spec, device))
    model = apply_task_lora(name, model, source, revision, spec.prompts.get("task", "retrieval"))
    return model.to(device).eval()


def build(name: str, spec: EmbedderSpec, device: str, source: str,
          revision: str | None) -> EmbeddingModel:
    spec.require(prompts=("image", "text", "task"))
    prompts = spec.prompts
    model = load_model(name, spec, device, source, revision)
    processor = load_processor(source, revision, spec.padding_side)
    max_length = int(spec.extra.get("max_length") or TEXT_MAX_LENGTH)

    def run(inputs) -> Tensor:
        with autocast(spec, device):
            return jina_forward(model, inputs, device)

    def encode_images(images: list[Image.Image]) -> Tensor:
        return in_batches(images, spec.batch_size, lambda part: run(processor(
            text=[prompts["image"]] * len(part), images=part, padding="longest",
            return_tensors="pt")))

    def encode_texts(texts: list[str]) -> Tensor:
        return in_batches(texts, spec.batch_size, lambda part: run(processor(
            text=[prompts["text"].format(text=t) for t in part], padding="longest",
            max_length=max_length, truncation=True, return_tensors="pt")))

    return EmbeddingModel(name, None, encode_images, encode_texts, device)
