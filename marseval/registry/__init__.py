"""The dataset registry shipped with the package (marseval/registry/datasets.yaml).

Reading it is cheap and touches no data, so the Snakefile may use it while it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

TASKS = ("classification", "segmentation", "detection", "retrieval")
SUBTASKS = {
    "classification": ("binary", "multiclass", "multilabel"),
    "segmentation": ("semantic",),
    "detection": ("detection",),
    "retrieval": ("paired", "landform", "geolocalization"),
}
SPLITS = ("train", "val", "test")


class RegistryError(KeyError):
    """A dataset name that is not in the registry, or a malformed registry entry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: what a dataset is and where its raw data lives."""

    name: str
    task: str
    subtask: str
    classes: tuple[str, ...] | None = None
    declared_num_classes: int | None = None
    image_size: tuple[int, int] | None = None
    bands: int | None = None
    splits: dict[str, int | None] = field(default_factory=dict)
    huggingface: str | None = None
    zenodo_record: str | None = None
    instrument: str | None = None
    description: str | None = None
    pairs: bool = False  # change detection: each sample is a before/after image pair
    keep_bands: tuple[int, ...] | None = None  # multi-band TIFFs: bands that become RGB
    reference_num_classes: int | None = None  # the reference config's, where it differs

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else self.declared_num_classes

    def class_names(self) -> list[str]:
        """Registry class names, or placeholders `class_<i>` where the names are unknown."""
        if self.classes:
            return list(self.classes)
        return [f"class_{i}" for i in range(self.num_classes or 0)]


def _spec(name: str, entry: dict[str, Any]) -> DatasetSpec:
    task, subtask = entry.get("task"), entry.get("subtask")
    if task not in TASKS or subtask not in SUBTASKS[task]:
        raise RegistryError(f"registry entry {name!r}: bad task/subtask {task!r}/{subtask!r}")
    size = entry.get("image_size")
    zenodo = entry.get("zenodo") or {}
    classes = entry.get("classes")
    return DatasetSpec(
        name=name,
        task=task,
        subtask=subtask,
        classes=tuple(str(c) for c in classes) if classes else None,
        declared_num_classes=entry.get("num_classes"),
        image_size=tuple(size) if size else None,
        bands=entry.get("bands"),
        splits=dict(entry.get("splits") or {}),
        huggingface=entry.get("huggingface"),
        zenodo_record=str(zenodo["record"]) if zenodo.get("record") else None,
        instrument=entry.get("instrument"),
        description=entry.get("description"),
        pairs=name.startswith("mb-change_cls"),
        keep_bands=tuple(int(b) for b in entry["keep_bands"]) if entry.get("keep_bands") else None,
        reference_num_classes=entry.get("reference_num_classes"),
    )


@cache
def load_registry() -> dict[str, DatasetSpec]:
    """All registry entries by name, Mars-Bench and MarsRetrieval together."""
    text = resources.files(__package__).joinpath("datasets.yaml").read_text()
    raw = yaml.safe_load(text)
    specs: dict[str, DatasetSpec] = {}
    for group in ("benchmark", "retrieval"):
        for name, entry in (raw.get(group) or {}).items():
            specs[name] = _spec(name, entry)
    return specs


def get_dataset(name: str) -> DatasetSpec:
    """The registry entry for `name`, or an error listing the known names."""
    specs = load_registry()
    if name not in specs:
        known = ", ".join(sorted(specs))
        raise RegistryError(f"dataset {name!r} is not in the registry; known datasets: {known}")
    return specs[name]
