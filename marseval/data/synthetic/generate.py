"""Synthetic stand-ins for every registry dataset, in memory, deterministic per seed.

Each benchmark dataset becomes a `RawDataset` whose images follow its task (labels follow
visible motifs); `writers` serialise it in the Zenodo or Hugging Face layout, so the same
parsers that read real downloads read the synthetic ones.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from marseval.data.records import ImageRef, RawDataset, RawSample
from marseval.data.subsets import make_subsets
from marseval.data.synthetic import scenes
from marseval.registry import SPLITS, DatasetSpec

# The upstream subsets a synthetic download ships, so the upstream-partition path runs too.
UPSTREAM_FRACTIONS = (0.5,)
UPSTREAM_FEWSHOT = (5,)

# Real landform names drawn with the motif that looks most like them.
GEO_LANDFORM_MOTIFS = {
    "alluvial_fans": "channel",
    "glacier-like_form": "frost",
    "landslides": "layered",
    "pitted_cones": "cone",
    "yardangs": "ridge",
}
LANDFORM_MOTIFS = {
    "impact_crater": "crater",
    "dunes": "dune",
    "channels": "channel",
    "pitted_cones": "cone",
    "yardangs": "ridge",
    "layered_deposits": "layered",
    "boulder_fields": "boulder",
    "dust_devil_tracks": "dust_devil",
}


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """An independent stream per (seed, dataset, part): adding a dataset changes no other."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # fixed compression settings: identical pixels give identical bytes
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def synthetic_bands(spec: DatasetSpec) -> int:
    return 3 if (spec.bands or 1) >= 3 else 1


def generate_benchmark(spec: DatasetSpec, seed: int, size: int,
                       samples: dict[str, int]) -> RawDataset:
    """A small learnable dataset with the task, subtask and classes of `spec`."""
    bands = synthetic_bands(spec)
    n_classes = spec.num_classes or 2
    rows: list[RawSample] = []
    for split in SPLITS:
        rng = rng_for(seed, spec.name, split)
        count = samples[split]
        # balanced single labels, shuffled
        labels = rng.permutation(np.arange(count) % n_classes)
        for i in range(count):
            name = f"{split}_{i:05d}"
            rows.append(_sample(spec, split, name, int(labels[i]), n_classes, rng, size, bands))
    classes_of = None
    if spec.task == "classification":
        classes_of = {r.stem: (r.labels if r.labels is not None else [r.label])
                      for r in rows if r.split == "train"}
    train = [r.stem for r in rows if r.split == "train"]
    fewshot = UPSTREAM_FEWSHOT if spec.task == "classification" else ()
    upstream, _ = make_subsets(train, classes_of, UPSTREAM_FRACTIONS, fewshot, seed + 1)
    return RawDataset(rows, classes=spec.class_names(), subsets=upstream, layout="synthetic")


def _sample(spec: DatasetSpec, split: str, name: str, label: int, n_classes: int,
            rng: np.random.Generator, size: int, bands: int) -> RawSample:
    if spec.task == "classification" and spec.pairs:
        before, after = scenes.change_pair(label, rng, size=size, bands=bands)
        return RawSample(split, ImageRef(f"{name}_before.png", data=encode_png(before)),
                         label=label,
                         image_after=ImageRef(f"{name}_after.png", data=encode_png(after)))
    if spec.task == "classification" and spec.subtask == "multilabel":
        # two or three labels per image, as in the MER multi-label set
        present = sorted({label, *rng.choice(n_classes, size=int(rng.integers(1, 3)))})
        pixels = scenes.classification_image([int(c) for c in present], n_classes, rng,
                                             size=size, bands=bands)
        return RawSample(split, ImageRef(f"{name}.png", data=encode_png(pixels)),
                         labels=[int(c) for c in present])
    if spec.task == "classification":
        pixels = scenes.classification_image(label, n_classes, rng, size=size, bands=bands)
        return RawSample(split, ImageRef(f"{name}.png", data=encode_png(pixels)), label=label)
    if spec.task == "segmentation":
        pixels, mask = scenes.segmentation_sample(n_classes, rng, size=size, bands=bands)
        return RawSample(split, ImageRef(f"{name}.png", data=encode_png(pixels)),
                         mask=ImageRef(f"{name}.png", data=encode_png(mask)))
    pixels, boxes = scenes.detection_sample(n_classes, rng, size=size, bands=bands)
    return RawSample(split, ImageRef(f"{name}.png", data=encode_png(pixels)),
                     boxes=[[float(v) for v in b[:4]] + [int(b[4])] for b in boxes])
