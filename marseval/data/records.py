"""In-memory form of a raw dataset, whichever layout it was read from.

Both raw parsers (Zenodo folders, Hugging Face parquet) produce a `RawDataset`; `standardize`
validates it and writes the standardized folder. The synthetic generator produces one too and
the layout writers serialise it, so the two parsers can be checked against each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageRef:
    """An encoded image: a file on disk or bytes from a parquet cell.

    `name` is the original file name; it gives the sample id, the suffix of the copy and
    the file named in error messages.
    """

    name: str
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower() or ".png"

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass
class RawSample:
    split: str
    image: ImageRef
    label: int | None = None
    labels: list[int] | None = None
    mask: ImageRef | None = None
    boxes: list[list[float]] | None = None
    image_after: ImageRef | None = None  # change detection: `image` is "before"
    origin: str = ""  # annotation file the sample was read from, for error messages

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass
class RawDataset:
    samples: list[RawSample]
    classes: list[str] | None = None
    # upstream training subsets by our subset name ("fraction:0.01", "fewshot:5") -> image stems
    subsets: dict[str, list[str]] = field(default_factory=dict)
    layout: str = ""
    notes: list[str] = field(default_factory=list)  # what the reader changed, for meta.json


def fraction_key(fraction: float) -> str:
    return f"fraction:{fraction:.2f}"


def fewshot_key(k: int) -> str:
    return f"fewshot:{int(k)}"
