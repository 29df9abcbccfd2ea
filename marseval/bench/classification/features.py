"""The feature cache: a frozen backbone runs once per (model, dataset); heads train on the result.

Layout of a cache folder (written as a whole through `atomic_directory`):
    meta.json                 model, display name, feature dims, input size, dtype, counts
    <split>.ids.json          sample ids, in row order
    <split>.<key>.npy         float16 (N, D) features per key ("main", "aux" for InceptionV3)
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from marseval import __version__
from marseval.atomic import atomic_directory, atomic_write_json, atomic_writer
from marseval.bench.classification.data import ImageDataset
from marseval.bench.classification.models import Backbone, build_backbone
from marseval.bench.samples import SPLITS, load_samples, split_frame
from marseval.errors import MarsevalError

CACHE_DTYPE = np.float16
FLOAT16_MAX = float(np.finfo(np.float16).max)


def extract(
    backbone: Backbone,
    dataset: ImageDataset,
    batch_size: int,
    device: str,
    num_workers: int = 0,
    desc: str | None = None,
) -> dict[str, np.ndarray]:
    """Float32 (N, D) features per key of every item of `dataset`, in its order."""
    module = backbone.module
    was_training = module.training
    module.to(device).eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
    )
    on_cuda = device.startswith("cuda")
    features: dict[str, np.ndarray] = {}
    start = 0
    try:
        with torch.no_grad():
            for images, _ in tqdm(
                loader,
                desc=desc or f"features {backbone.display_name}",
                unit="batch",
                file=sys.stderr,
                mininterval=5.0,
            ):
                images = images.to(device, non_blocking=True)
                autocast = torch.autocast("cuda") if on_cuda else contextlib.nullcontext()
                with autocast:
                    out = module(images)
                n = images.shape[0]
                for key, value in out.items():
                    if key not in features:
                        features[key] = np.empty((len(dataset), value.shape[1]), np.float32)
                    features[key][start : start + n] = value.float().cpu().numpy()
                start += n
    finally:
        module.train(was_training)
    if not features:  # an empty split still has one array per key
        features = {
            key: np.empty((0, dim), np.float32) for key, dim in backbone.feature_dims.items()
        }
    return features


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file in the same folder, then rename."""
    with atomic_writer(path) as handle:
        np.save(handle, array, allow_pickle=False)


def write_cache(out_dir: Path, split: str, ids: list[str], features: dict[str, np.ndarray]) -> None:
    """Write one split's features as float16 `<split>.<key>.npy` and its ids."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, values in features.items():
        if values.shape[0] != len(ids):
            raise MarsevalError(f"{split}.{key}: {values.shape[0]} feature rows for {len(ids)} ids")
        # float16 overflows past 65504: an inf in the cache would silently poison every trial
        if values.size and not np.isfinite(values).all():
            raise MarsevalError(f"{split}.{key}: the backbone produced non-finite features")
        peak = float(np.abs(values).max()) if values.size else 0.0
        if peak > FLOAT16_MAX:
            raise MarsevalError(
                f"{split}.{key}: features reach {peak:.3g}, beyond float16's "
                f"range ({FLOAT16_MAX:g}); they cannot be cached as float16"
            )
        _save_npy(out_dir / f"{split}.{key}.npy", np.ascontiguousarray(values, CACHE_DTYPE))
    atomic_write_json(out_dir / f"{split}.ids.json", list(ids))


def read_cache(out_dir: Path, split: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """(ids, {key: read-only float16 memmap (N, D)}) of one split of a cache folder."""
    out_dir = Path(out_dir)
    ids_path = out_dir / f"{split}.ids.json"
    if not ids_path.is_file():
        raise MarsevalError(f"feature cache {out_dir} has no split {split} ({ids_path} missing)")
    ids = json.loads(ids_path.read_text())
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        keys = sorted(json.loads(meta_path.read_text())["feature_dims"])
    else:  # a folder written by write_cache alone
        keys = sorted(p.name[len(split) + 1 : -len(".npy")] for p in out_dir.glob(f"{split}.*.npy"))
    features: dict[str, np.ndarray] = {}
    for key in keys:
        path = out_dir / f"{split}.{key}.npy"
        if not path.is_file():
            raise MarsevalError(f"feature cache {out_dir}: {path.name} is missing")
        values = np.load(path, mmap_mode="r", allow_pickle=False)
        if values.shape[0] != len(ids):
            raise MarsevalError(
                f"feature cache {out_dir}: {path.name} has {values.shape[0]} "
                f"rows for {len(ids)} ids"
            )
        features[key] = values
    return ids, features


def cache_features(
    dataset_dir: Path,
    model_name: str,
    out_dir: Path,
    pretrained: bool,
    batch_size: int = 64,
    device: str = "cpu",
    num_workers: int = 0,
) -> None:
    """Run `model_name`'s frozen backbone over every split of a standardized dataset.

    Random-init backbones (`pretrained=False`) use `build_backbone`'s fixed seed, the same
    backbone online training builds. The whole folder appears at once, or not at all.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    meta, frame, _ = load_samples(dataset_dir)
    backbone = build_backbone(model_name, pretrained=pretrained)
    counts: dict[str, int] = {}
    with atomic_directory(out_dir) as tmp:
        for split in SPLITS:
            rows = split_frame(frame, split)
            dataset = ImageDataset(
                dataset_dir,
                rows,
                meta,
                backbone.input_size,
                backbone.mean,
                backbone.std,
                augment=False,
            )
            features = extract(
                backbone,
                dataset,
                batch_size,
                device,
                num_workers,
                desc=f"features {backbone.display_name} {split}",
            )
            write_cache(tmp, split, dataset.ids, features)
            counts[split] = len(dataset)
        info: dict[str, Any] = {
            "model": model_name,
            "display_name": backbone.display_name,
            "dataset": meta.get("name", dataset_dir.name),
            "pretrained": pretrained,
            "feature_dims": dict(backbone.feature_dims),
            "input_size": backbone.input_size,
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "dtype": "float16",
            "counts": counts,
            "marseval_version": __version__,
            "torch_version": torch.__version__,
        }
        atomic_write_json(tmp / "meta.json", info)
