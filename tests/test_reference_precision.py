"""Mixed precision (issue 14 item 10): the reference trains with Lightning's "16-mixed" on CUDA;
this workflow autocasts to float16 with a loss scaler there and stays float32 on the CPU.

No GPU here: the autocast path runs on the CPU by declaring float16 autocast for "cpu" (torch
supports it), which exercises the same code the CUDA run takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import marseval.bench.precision as precision_module
from marseval.bench.precision import MixedPrecision
from marseval.bench.protocol import MARSBENCH, PROBE
from marseval.bench.training import HParams, evaluate, fit


def _hparams(**changes: object) -> HParams:
    base = dict(lr=0.05, weight_decay=0.0, batch_size=4, optimizer="sgd", lr_schedule="none",
                max_epochs=3, patience=10, loss="cross_entropy")
    return HParams(**{**base, **changes})


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    return [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]


class Recorder(nn.Module):
    """A linear classifier that records whether each forward pass ran under autocast."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 3)
        self.autocast_seen: list[bool] = []
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        out = self.linear(x)
        self.dtypes.append(out.dtype)
        return out


def _fit(model: nn.Module, precision: str, checkpoint: Path | None = None):
    batches = _data()
    return fit(model, lambda m, b: (m(b[0]), b[1]), lambda epoch: batches, lambda: batches,
               nn.functional.cross_entropy, _hparams(), selection="last", precision=precision,
               checkpoint=checkpoint)


def test_the_protocols_name_their_precision() -> None:
    assert MARSBENCH.precision == "16-mixed"  # configs/training/dev.yaml
    assert PROBE.precision == "32"


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA")
def test_sixteen_mixed_autocasts_to_float16_on_cuda_only() -> None:
    assert MixedPrecision("16-mixed", "cuda").dtype == torch.float16
    assert not MixedPrecision("16-mixed", "cpu").active
    assert not MixedPrecision("32", "cuda").active


def test_on_the_cpu_sixteen_mixed_trains_exactly_as_float32() -> None:
    mixed, plain = Recorder(), Recorder()
    a = _fit(mixed, "16-mixed")
    b = _fit(plain, "32")
    assert not any(mixed.autocast_seen)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert torch.equal(mixed.linear.weight, plain.linear.weight)


@pytest.fixture
def cpu_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "AUTOCAST_DTYPES", {"cpu": torch.float16})


def test_sixteen_mixed_runs_training_validation_and_test_steps_under_autocast(
        cpu_float16, tmp_path: Path) -> None:
    model = Recorder()
    result = _fit(model, "16-mixed", checkpoint=tmp_path / "fit.pt")
    # 3 epochs x (4 training + 4 validation batches), every one autocast to float16
    assert model.autocast_seen == [True] * 24
    assert set(model.dtypes) == {torch.float16}
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in result.history)
    # the loss scaler's state travels with the checkpoint, for an exact resume
    saved = torch.load(tmp_path / "fit.pt", weights_only=True)
    assert saved["settings"]["precision"] == "16-mixed"
    assert saved["scaler"]["scale"] == 65536.0  # GradScaler's initial scale, no overflow yet
    model.autocast_seen.clear()
    outputs, _ = evaluate(model, lambda m, b: (m(b[0]), b[1]), _data(), "16-mixed")
    assert model.autocast_seen == [True] * 4
    assert outputs.dtype == torch.float32  # metrics see float32


def test_float16_training_differs_from_float32_but_tracks_it(cpu_float16) -> None:
    mixed, plain = Recorder(), Recorder()
    a = _fit(mixed, "16-mixed")
    b = _fit(plain, "32")
    assert not torch.equal(mixed.linear.weight, plain.linear.weight)  # float16 rounding
    torch.testing.assert_close(mixed.linear.weight, plain.linear.weight, atol=5e-3, rtol=0)
    assert a.history[-1]["val_loss"] == pytest.approx(b.history[-1]["val_loss"], abs=5e-3)


def test_an_experiment_trains_and_scores_with_its_protocols_precision(
        cpu_float16, tmp_path: Path) -> None:
    from test_bench_classify import standardized

    from marseval.bench.classification.experiment import ClassificationExperiment
    from marseval.bench.experiment import Setup

    data = standardized(tmp_path, "mb-frost_cls", {"train": 8, "val": 4, "test": 4})
    seen = {}
    for protocol in (MARSBENCH, PROBE):
        experiment = ClassificationExperiment(Setup(data, "timm:resnet10t", pretrained=False,
                                                    protocol=protocol.name))
        model, result = experiment.fit(_hparams(max_epochs=1, loss="bce"), seed=0)
        head = model.heads["main"]
        calls = []
        head.register_forward_hook(
            lambda module, args, out, calls=calls: calls.append(torch.is_autocast_enabled("cpu")))
        experiment.score(model, experiment.split("test"))
        seen[protocol.name] = calls
    assert seen["marsbench"] and all(seen["marsbench"])  # float16 autocast on "cpu" here
    assert seen["probe"] and not any(seen["probe"])
