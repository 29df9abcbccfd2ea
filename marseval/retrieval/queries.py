"""The `queries` stage: query embeddings of the landform and geo-localization tasks.

- Text: one query per class from the three MarsRetrieval prompt templates, the template
  embeddings averaged and re-normalised. The class name becomes a phrase as the reference
  writes it: landform retrieval replaces `_` and `-` with spaces (`queries/landform_retrieval.py`),
  geo-localization only `_` (`queries/geolocalization.py`: "glacier-like_form" reads
  "glacier-like form"). Ablations: `prompts="single"` embeds the bare phrase; a class listed in
  `landform_prompts` gets its own prompt strings in place of the templates.
- Image (geo-localization): the mean of the query images' embeddings, re-normalised.
- Hybrid: the query images weighted by the softmax of their similarity to the text query at
  temperature 0.1, then 0.3 x image + 0.7 x text, re-normalised.

Geo-localization scores the registry entry's landforms only (the five of the reference's
scripts): a ground-truth file of another landform is left out with a warning.

A vision-only model gets image queries only (none at all for landform retrieval: its file
then holds no mode, and evaluation reports the model as not applicable). The output is one
.npz (no pickles): for each mode an array `<mode>` of shape (classes, dim), plus `classes`
and `modes`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
PROMPT_STYLES = ("templates", "single")
HYBRID_TEMPERATURE = 0.1
HYBRID_IMAGE_WEIGHT = 0.3
MODES = ("text", "image", "hybrid")


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def class_phrase(name: str, subtask: str = "landform") -> str:
    """A class name as the templates want it. Landform retrieval replaces `_` and `-`
    (`glacier-like_form` -> `glacier like form`), geo-localization only `_`
    (`glacier-like form`), as the reference's two query builders do."""
    if subtask == "landform":
        return name.replace("_", " ").replace("-", " ")
    if subtask == "geolocalization":
        return name.replace("_", " ")
    raise MarsevalError(f"no text queries for task {subtask!r}")


def text_prompts(class_name: str, subtask: str = "landform", *, prompts: str = "templates",
                 landform_prompts: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The strings whose embeddings make a class's text query: the class's own prompts when
    `landform_prompts` lists it, else its phrase in the three templates ("templates") or
    alone ("single")."""
    own = (landform_prompts or {}).get(class_name)
    if own is not None:
        own = [str(p) for p in own]
        if not own or not all(p.strip() for p in own):
            raise MarsevalError(f"landform_prompts[{class_name!r}]: needs one or more "
                                "non-empty prompt strings")
        return own
    phrase = class_phrase(class_name, subtask)
    if prompts == "templates":
        return [t.format(phrase) for t in PROMPT_TEMPLATES]
    if prompts == "single":
        return [phrase]
    raise MarsevalError(f"prompts must be one of {', '.join(PROMPT_STYLES)}; got {prompts!r}")


def text_query(model: EmbeddingModel, class_name: str, subtask: str = "landform", *,
               prompts: str = "templates",
               landform_prompts: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """The mean of the prompts' (L2-normalised) embeddings, re-normalised."""
    texts = text_prompts(class_name, subtask, prompts=prompts, landform_prompts=landform_prompts)
    return _unit(embed_texts(model, texts, len(texts)).mean(axis=0))


def scored_landforms(meta: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """The geo-localization landforms of `classes` that are scored: those in the registry
    entry's class list (the reference's five), in the order of `classes`. Others are left out
    with a warning, as are registry landforms missing from `classes`. A dataset without a
    registry class list scores every class."""
    from marseval.registry import load_registry

    spec = load_registry().get(str(meta.get("name")))
    if spec is None or not spec.classes:
        return list(classes)
    kept = [c for c in classes if c in spec.classes]
    ignored = [c for c in classes if c not in spec.classes]
    missing = [c for c in spec.classes if c not in classes]
    if ignored:
        log.warning("%s: ground truth of %s is ignored: not a landform of the registry (%s)",
                    spec.name, ", ".join(ignored), ", ".join(spec.classes))
    if missing:
        log.warning("%s: registry landform(s) %s have no ground truth: not scored", spec.name,
                    ", ".join(missing))
    if not kept:
        raise MarsevalError(f"{spec.name}: none of the landforms {', '.join(classes)} is in "
                            f"the registry's list ({', '.join(spec.classes)})")
    return kept


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
                  batch_size: int = 64, prompts: str = "templates",
                  landform_prompts: Mapping[str, Sequence[str]] | None = None
                  ) -> dict[str, np.ndarray]:
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir)
    subtask = meta["subtask"]
    if subtask not in ("landform", "geolocalization"):
        raise MarsevalError(f"{meta['name']}: task {subtask!r} needs no query stage "
                            "(paired queries are the captions embedded with the images)")
    if prompts not in PROMPT_STYLES:
        raise MarsevalError(f"prompts must be one of {', '.join(PROMPT_STYLES)}; "
                            f"got {prompts!r}")
    all_classes = list(meta["classes"])
    classes = (scored_landforms(meta, all_classes) if subtask == "geolocalization"
               else all_classes)
    unknown = sorted(set(landform_prompts or {}) - set(classes))
    if unknown:
        log.warning("landform_prompts for %s: no such class of %s (classes: %s)",
                    ", ".join(unknown), meta["name"], ", ".join(classes))
    from marseval.retrieval.models import load_model

    model = load_model(model_name, device)
    arrays: dict[str, np.ndarray] = {}
    if model.has_text:
        arrays["text"] = np.stack([
            text_query(model, c, subtask, prompts=prompts, landform_prompts=landform_prompts)
            for c in classes])
    if subtask == "geolocalization":
        labels = [all_classes.index(c) for c in classes]
        arrays.update(_image_modes(dataset_dir, model, classes, labels, arrays.get("text"),
                                   batch_size))
    if not arrays:
        # landform queries are text only: evaluation reports the model as not applicable
        log.warning("model %s is vision-only: %s has no query it can embed", model_name,
                    meta["name"])
    write_queries(out, arrays, classes)
    return arrays


def _image_modes(dataset_dir: Path, model: EmbeddingModel, classes: list[str],
                 labels: list[int], text: np.ndarray | None,
                 batch_size: int) -> dict[str, np.ndarray]:
    """Image and hybrid queries of `classes`, whose query images carry `labels` (their
    positions in the dataset's class list); row i of `text` is the text query of classes[i]."""
    samples = pd.read_parquet(dataset_dir / "samples.parquet")
    image, hybrid = [], []
    for row, (name, label) in enumerate(zip(classes, labels, strict=True)):
        rows = samples[samples["label"] == label]
        if rows.empty:
            raise MarsevalError(f"{dataset_dir}/samples.parquet: landform {name!r} has no "
                                "query images (image_queries/<landform>/)")
        embedded = embed_images(model, rows, batch_size, lambda b: sample_images(dataset_dir, b))
        image.append(image_query(embedded))
        if text is not None:
            hybrid.append(hybrid_query(embedded, text[row]))
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
