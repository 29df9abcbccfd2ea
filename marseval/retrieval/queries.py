"""The `queries` stage: query embeddings of the landform and geo-localization tasks.

- Text: one query per class from the three MarsRetrieval prompt templates, the template
  embeddings averaged and re-normalised.
- Image (geo-localization): the mean of the query images' embeddings, re-normalised.
- Hybrid: the query images weighted by the softmax of their similarity to the text query at
  temperature 0.1, then 0.3 x image + 0.7 x text, re-normalised.

A vision-only model gets image queries only (none at all for landform retrieval: its file
then holds no mode, and evaluation reports the model as not applicable). The output is one
.npz (no pickles): for each mode an array `<mode>` of shape (classes, dim), plus `classes`
and `modes`.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from marseval.atomic import atomic_write_bytes
from marseval.errors import MarsevalError
from marseval.retrieval.embed import embed_images, embed_texts, read_meta, sample_images

if TYPE_CHECKING:  # torch loads only in the jobs that embed: evaluate reads files
    from marseval.retrieval.models import EmbeddingModel

log = logging.getLogger(__name__)
PROMPT_TEMPLATES = (
    "a photo of {}, a type of martian terrain",
    "a satellite photo of {}.",
    "a high-resolution remote sensing image of {} on Mars.",
)
HYBRID_TEMPERATURE = 0.1
HYBRID_IMAGE_WEIGHT = 0.3
MODES = ("text", "image", "hybrid")


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def class_phrase(name: str) -> str:
    """Class names as the templates want them: `pitted_cones` -> `pitted cones`."""
    return name.replace("_", " ")


def text_query(model: EmbeddingModel, class_name: str) -> np.ndarray:
    prompts = [t.format(class_phrase(class_name)) for t in PROMPT_TEMPLATES]
    return _unit(embed_texts(model, prompts, len(prompts)).mean(axis=0))


def image_query(image_embeddings: np.ndarray) -> np.ndarray:
    return _unit(image_embeddings.mean(axis=0))


def hybrid_query(image_embeddings: np.ndarray, text: np.ndarray,
                 temperature: float = HYBRID_TEMPERATURE,
                 image_weight: float = HYBRID_IMAGE_WEIGHT) -> np.ndarray:
    logits = image_embeddings.astype(np.float64) @ text / temperature
    weights = np.exp(logits - logits.max())
    weighted = _unit((weights / weights.sum()) @ image_embeddings)
    return _unit(image_weight * weighted + (1 - image_weight) * text)


def build_queries(dataset_dir: Path, model_name: str, out: Path, *, device: str = "cpu",
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir)
    if meta["subtask"] not in ("landform", "geolocalization"):
        raise MarsevalError(f"{meta['name']}: task {meta['subtask']!r} needs no query stage "
                            "(paired queries are the captions embedded with the images)")
    classes = list(meta["classes"])
    from marseval.retrieval.models import load_model

    model = load_model(model_name, device)
    arrays: dict[str, np.ndarray] = {}
    if model.has_text:
        arrays["text"] = np.stack([text_query(model, c) for c in classes])
    if meta["subtask"] == "geolocalization":
        arrays.update(_image_modes(dataset_dir, model, classes, arrays.get("text"),
                                   batch_size))
    if not arrays:
        # landform queries are text only: evaluation reports the model as not applicable
        log.warning("model %s is vision-only: %s has no query it can embed", model_name,
                    meta["name"])
    write_queries(out, arrays, classes)
    return arrays


def _image_modes(dataset_dir: Path, model: EmbeddingModel, classes: list[str],
                 text: np.ndarray | None, batch_size: int) -> dict[str, np.ndarray]:
    samples = pd.read_parquet(dataset_dir / "samples.parquet")
    image, hybrid = [], []
    for label, name in enumerate(classes):
        rows = samples[samples["label"] == label]
        if rows.empty:
            raise MarsevalError(f"{dataset_dir}/samples.parquet: landform {name!r} has no "
                                "query images (image_queries/<landform>/)")
        embedded = embed_images(model, rows, batch_size, lambda b: sample_images(dataset_dir, b))
        image.append(image_query(embedded))
        if text is not None:
            hybrid.append(hybrid_query(embedded, text[label]))
    modes = {"image": np.stack(image)}
    if text is not None:
        modes["hybrid"] = np.stack(hybrid)
    return modes


def write_queries(out: Path, arrays: dict[str, np.ndarray], classes: list[str]) -> Path:
    buffer = io.BytesIO()
    modes = [m for m in MODES if m in arrays]
    np.savez(buffer, classes=np.array(classes, dtype=str), modes=np.array(modes, dtype=str),
             **{m: arrays[m].astype(np.float32) for m in modes})
    return atomic_write_bytes(out, buffer.getvalue())


def read_queries(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            classes = [str(c) for c in data["classes"]]
            return {str(m): data[str(m)] for m in data["modes"]}, classes
    except (OSError, KeyError, ValueError) as exc:
        raise MarsevalError(f"{path}: not a queries file ({exc})") from None
