"""The throughput table (`marseval/registry/throughput.json`, written by
`benchmarks/throughput.py`): how many FLOP/s a device sustains on each model.

A row is a device. A measured row holds images/s per model at an input size, with the FLOPs
of that forward pass: the model's sustained rate is images/s x FLOPs per image, applied to
the workflow's own FLOPs (so a rate measured at another size carries over). An assumed row
(GPUs that could not be measured) holds one effective TFLOP/s for every model. A measured row
that also states an effective TFLOP/s (a GPU measured for some models) uses it for the others;
a measured row without one rates an unmeasured model at the median of its measured ones.
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marseval.errors import PlanError

TABLE = Path(__file__).resolve().parents[1] / "registry" / "throughput.json"


@dataclass(frozen=True)
class Device:
    """One row of the table: a device and its FLOP/s per model."""

    name: str
    kind: str  # "measured" or "assumed"
    description: str
    effective_tflops: float | None = None
    rates: dict[str, float] = field(default_factory=dict)  # model -> measured FLOP/s

    def flops_per_s(self, model: str) -> float:
        """Sustained FLOP/s of this device on `model`."""
        if model in self.rates:
            return self.rates[model]
        if self.effective_tflops:
            return self.effective_tflops * 1e12
        return statistics.median(self.rates.values())

    def basis(self, model: str) -> str:
        """How `flops_per_s(model)` was obtained: measured, assumed or the row's median."""
        if model in self.rates:
            return "measured"
        return "assumed" if self.effective_tflops else "row median"

    def summary(self) -> str:
        if self.kind == "assumed":
            return (f"{self.name}, {self.description}: {self.effective_tflops:g} TFLOP/s "
                    "effective on every model")
        rates = sorted(self.rates.values())
        text = (f"{self.name}, {self.description}: measured on {len(rates)} models "
                f"({rates[0] / 1e9:.3g}-{rates[-1] / 1e9:.3g} GFLOP/s)")
        if self.effective_tflops:
            text += f"; others {self.effective_tflops:g} TFLOP/s (assumed)"
        return text


@dataclass(frozen=True)
class ThroughputTable:
    path: Path
    devices: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]  # model -> FLOPs at the measured size (device-free)

    def device(self, name: str) -> Device:
        if name not in self.devices:
            known = ", ".join(sorted(self.devices)) or "none"
            raise PlanError(f"--device {name!r}: no such row in the throughput table "
                            f"{self.path}; rows: {known}")
        row = self.devices[name]
        rates = {model: r["images_per_s"] * r["gflops"] * 1e9
                 for model, r in row.get("models", {}).items() if "images_per_s" in r}
        tflops = row.get("effective_tflops")
        if not rates and not tflops:
            raise PlanError(f"--device {name!r}: the row of {self.path} holds neither measured "
                            "models nor an effective_tflops")
        return Device(name, row.get("kind", "measured"), row.get("description", name),
                      tflops, rates)

    def decoder_fraction(self, model: str) -> float | None:
        """Share of a segmentation model's forward FLOPs outside its encoder (measured)."""
        found = self.models.get(model, {})
        if "decoder_gflops" in found and found.get("gflops"):
            return found["decoder_gflops"] / found["gflops"]
        return None


@functools.cache
def measured_decoder_fraction(model: str) -> float | None:
    """The decoder share of `model` in the shipped table, where measured (job requests)."""
    if not TABLE.is_file():
        return None
    return load_table(TABLE).decoder_fraction(model)


def load_table(path: Path = TABLE) -> ThroughputTable:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PlanError(f"throughput table {path}: cannot be read ({exc.strerror or exc}); "
                        "write it with `python benchmarks/throughput.py`") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"throughput table {path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise PlanError(f"throughput table {path}: no `devices` mapping")
    return ThroughputTable(Path(path), data["devices"], data.get("models", {}))
