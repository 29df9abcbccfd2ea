"""The index settings of a retrieval run: kind, its parameters, and the `auto` rule.

Kept apart from faiss so the workflow can name index folders by their settings (`tag`) while
planning: a changed setting gives a new folder, so an index built with other parameters is
rebuilt, never reused, whatever Snakemake's rerun triggers are.

The `auto` rule, per shard of n rows of dimension d (benchmarks/README.md, "Approximate search
on clustered embeddings", has the measurements behind it):
- exact while the shard's float32 vectors, n * d * 4 bytes, fit in `auto_exact_max_mb`:
  MarsRetrieval searches tens of queries per task with K up to 20,000 (landform retrieval ranks
  the whole database), where a flat scan costs less than building any approximate index and
  IVF or HNSW cannot return K that large without searching most of the shard;
- IVF-PQ above it: the codes take `pq_m` bytes a row instead of 4 d, and the `refine` x K best
  candidates are re-scored exactly from the memory-mapped float shard.
IVF-Flat and HNSW take as much memory as exact and only pay off after thousands of queries
with small K: they are there to be chosen explicitly, never by `auto`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from marseval.errors import MarsevalError

KINDS = ("exact", "ivf", "hnsw", "ivfpq")
CHOICES = (*KINDS, "auto")
# the parameters that change what a kind's index holds or returns
USED_BY = {
    "exact": (),
    "ivf": ("nlist", "nprobe", "seed"),
    "hnsw": ("hnsw_m", "ef_search"),
    "ivfpq": ("nlist", "nprobe", "pq_m", "refine", "seed"),
}


@dataclass(frozen=True)
class IndexParams:
    """Config keys retrieval.index, nlist, nprobe, hnsw_m, ef_search, pq_m, refine,
    auto_exact_max_mb (config/README.md)."""

    kind: str = "exact"
    nlist: int | None = None  # None: about 4 sqrt(n), at most n // 39
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    pq_m: int = 64  # bytes per IVF-PQ code (8-bit sub-quantizers); must divide the dimension
    refine: int = 4  # IVF-PQ: re-score refine * K candidates exactly; 1: PQ scores as they are
    auto_exact_max_mb: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CHOICES:
            raise MarsevalError(f"index kind must be one of {CHOICES}, got {self.kind!r}")
        for name in ("nprobe", "hnsw_m", "ef_search", "pq_m", "refine", "auto_exact_max_mb"):
            if int(getattr(self, name)) < 1:
                raise MarsevalError(f"index parameter {name} must be >= 1, got "
                                    f"{getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise MarsevalError(f"index parameter nlist must be >= 1 or null, got {self.nlist}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IndexParams:
        options = config["retrieval"]
        names = {f.name for f in fields(cls)} - {"kind", "seed"}
        return cls(kind=options["index"], **{n: options[n] for n in names if n in options})

    def resolve(self, n: int, dim: int) -> str:
        """The kind a shard of n rows of dimension `dim` gets (the module's `auto` rule)."""
        if self.kind != "auto":
            return self.kind
        return "exact" if n * dim * 4 <= self.auto_exact_max_mb * 2**20 else "ivfpq"

    def used(self, kind: str | None = None) -> dict[str, Any]:
        """The parameters that matter to `kind` (default: this kind; auto: all of them)."""
        kind = kind or self.kind
        if kind == "auto":
            names = {n for k in KINDS for n in USED_BY[k]} | {"auto_exact_max_mb"}
        else:
            names = set(USED_BY[kind])
        return {name: value for name, value in asdict(self).items() if name in names}

    def tag(self) -> str:
        """A folder name for indexes built with these settings: the kind and a hash of the
        parameters it uses ("exact" alone for exact)."""
        used = self.used()
        if not used:
            return self.kind
        digest = hashlib.sha1(json.dumps(used, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.kind}-{digest}"

    def flags(self) -> str:
        """Command-line flags that give these settings back through `from_args`."""
        parts = [f"--kind {self.kind}"]
        for name, value in asdict(self).items():
            if name != "kind" and value is not None:
                parts.append(f"--{name.replace('_', '-')} {value}")
        return " ".join(parts)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        defaults = cls()
        parser.add_argument("--kind", default="exact", choices=CHOICES)
        parser.add_argument("--nlist", type=int, help="IVF lists (default about 4 sqrt(n))")
        for f in fields(cls):
            if f.name not in ("kind", "nlist"):
                parser.add_argument(f"--{f.name.replace('_', '-')}", type=int,
                                    default=getattr(defaults, f.name))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> IndexParams:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
