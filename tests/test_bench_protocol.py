"""bench.protocol: the Mars-Bench reference protocol against the probe protocol (issue 14,
docs/fidelity.md). Each test fails when its item of the reference protocol is reverted."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import validate
from torch import nn

from marseval.bench.experiment import Setup
from marseval.bench.protocol import MARSBENCH, PROBE, get_protocol, resolved
from marseval.bench.training import HParams, fit, make_scheduler, train_mode
from marseval.errors import MarsevalError
from marseval.workflow import (
    ConfigError,
    bench_augment,
    bench_selection,
    check_config,
    setup_flags,
    uses_feature_cache,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def config_with(**bench: object) -> dict:
    config = {"datasets": ["mb-domars16k"], "source": "huggingface",
              "bench": {"models": {"classification": ["resnet101"]}, **bench}}
    validate(config, SCHEMA, set_default=True)
    return config


def hparams(**changes: object) -> HParams:
    base = dict(lr=0.1, weight_decay=0.0, batch_size=4, optimizer="sgd", lr_schedule="none",
                max_epochs=3, patience=10, loss="cross_entropy")
    return HParams(**{**base, **changes})


class FrozenBackboneNet(nn.Module):
    """A frozen backbone with BatchNorm and dropout, and a trainable linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _fit(model: nn.Module, protocol, epochs: int = 2, selection: str = "best"):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g) * 3 + 5, torch.randint(0, 2, (16,), generator=g)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    return fit(model, lambda m, b: (m(b[0]), b[1]), lambda epoch: batches, lambda: batches,
               nn.functional.cross_entropy, hparams(max_epochs=epochs), selection=selection,
               frozen=protocol.frozen_backbone, schedules=protocol.schedules)


# ------------------------------------------------------------------ 1. frozen backbone mode


def test_reference_protocol_lets_frozen_batchnorm_statistics_adapt() -> None:
    model = FrozenBackboneNet()
    before = model.backbone[1].running_mean.clone()
    weights = model.backbone[0].weight.clone()
    _fit(model, MARSBENCH, selection="last")
    # BatchNorm saw the Mars data (inputs around 5): its running mean moved, weights did not
    assert not torch.allclose(model.backbone[1].running_mean, before)
    assert torch.equal(model.backbone[0].weight, weights)
    assert int(model.backbone[1].num_batches_tracked) == 2 * 4  # 2 epochs x 4 batches


def test_probe_protocol_keeps_frozen_batchnorm_statistics_fixed() -> None:
    model = FrozenBackboneNet()
    before = model.backbone[1].running_mean.clone()
    _fit(model, PROBE)
    assert torch.equal(model.backbone[1].running_mean, before)
    assert int(model.backbone[1].num_batches_tracked) == 0


def test_train_mode_reaches_modules_a_model_keeps_in_eval() -> None:
    class KeepsBackboneInEval(FrozenBackboneNet):  # as smp's frozen encoder does
        def train(self, mode: bool = True):
            super().train(mode)
            self.backbone.eval()
            return self

    model = KeepsBackboneInEval()
    train_mode(model, "train")
    assert all(m.training for m in model.modules())  # dropout 0.5 and BatchNorm live
    train_mode(model, "eval")
    assert not model.backbone.training and model.head.training
    with pytest.raises(MarsevalError, match="frozen backbone mode"):
        train_mode(model, "frozen")


# ------------------------------------------------------------------ 3. last epoch tested


def test_reference_protocol_tests_the_last_epoch() -> None:
    assert resolved(MARSBENCH) == (True, "last") and resolved(PROBE) == (False, "best")
    assert resolved(MARSBENCH, augment=False, selection="best") == (False, "best")
    model = FrozenBackboneNet()
    result = _fit(model, MARSBENCH, epochs=3, selection=resolved(MARSBENCH)[1])
    assert result.state_epoch == 3 == result.epochs_run
    assert torch.equal(result.best_state["head.weight"], model.head.weight)


# ------------------------------------------------------------------ 4. scheduler constants


def _scheduler(protocol, **changes):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    return make_scheduler(optimizer, hparams(**changes), protocol.schedules)


def test_reference_scheduler_constants_of_dev_yaml() -> None:
    cosine = _scheduler(MARSBENCH, lr_schedule="cosine", max_epochs=50)
    assert (cosine.T_max, cosine.eta_min) == (100, 1e-6)
    step = _scheduler(MARSBENCH, lr_schedule="step", max_epochs=200)
    assert (step.step_size, step.gamma) == (10, 0.1)
    plateau = _scheduler(MARSBENCH, lr_schedule="plateau", patience=10)
    assert (plateau.patience, plateau.factor) == (5, 0.1)


def test_probe_scheduler_constants_scale_with_the_trial() -> None:
    cosine = _scheduler(PROBE, lr_schedule="cosine", max_epochs=50)
    assert (cosine.T_max, cosine.eta_min) == (50, 0.0)
    assert _scheduler(PROBE, lr_schedule="step", max_epochs=200).step_size == 66
    assert _scheduler(PROBE, lr_schedule="plateau", patience=10).patience == 5
    assert _scheduler(PROBE, lr_schedule="plateau", patience=1).patience == 1


def test_a_checkpoint_of_another_protocol_is_not_resumed(tmp_path: Path, caplog) -> None:
    checkpoint = tmp_path / "fit.ckpt"
    model = FrozenBackboneNet()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    args = (model, lambda m, b: (m(b[0]), b[1]), lambda e: batches, lambda: batches,
            nn.functional.cross_entropy, hparams(max_epochs=2))
    fit(*args, checkpoint=checkpoint, frozen="eval", schedules=PROBE.schedules)
    resumed = fit(*args, checkpoint=checkpoint, frozen="train", schedules=MARSBENCH.schedules)
    assert resumed.epochs_run == 2 and len(resumed.history) == 2  # trained afresh
    assert "checkpoint" in caplog.text.lower()


# ------------------------------------------------------------------ 5. binary: one logit, BCE


def test_reference_binary_sets_train_one_logit_with_bce() -> None:
    from marseval.bench.classification.losses import effective_loss, num_outputs

    loss = effective_loss("binary", "cross_entropy", MARSBENCH.binary_single_logit)
    assert loss == "bce" and num_outputs("binary", 2, loss) == 1
    kept = effective_loss("binary", "cross_entropy", PROBE.binary_single_logit)
    assert kept == "cross_entropy" and num_outputs("binary", 2, kept) == 2
    for subtask, name in (("multiclass", "cross_entropy"), ("multilabel", "bce")):
        assert effective_loss(subtask, name, MARSBENCH.binary_single_logit) == name


def test_a_reference_binary_experiment_builds_one_logit(tmp_path: Path) -> None:
    from test_bench_classify import standardized

    from marseval.bench.classification.experiment import ClassificationExperiment

    data = standardized(tmp_path, "mb-frost_cls", {"train": 8, "val": 4, "test": 4})
    hp = hparams(loss="cross_entropy")
    widths = {}
    for protocol in (MARSBENCH, PROBE):
        experiment = ClassificationExperiment(Setup(data, "timm:resnet10t", pretrained=False,
                                                    protocol=protocol.name))
        model = experiment.build_model(hp, seed=0)
        widths[protocol.name] = [m.out_features for m in model.modules()
                                 if isinstance(m, nn.Linear)][-1]
        batch = torch.rand(3, 1), torch.tensor([0, 1, 1])
        loss = experiment.loss_fn(hp)(*batch) if protocol is MARSBENCH else None
        assert loss is None or loss.item() == pytest.approx(
            nn.functional.binary_cross_entropy_with_logits(batch[0].reshape(-1),
                                                           batch[1].float()).item())
    assert widths == {"marsbench": 1, "probe": 2}


# ------------------------------------------------------------------ the workflow and bad input


def test_paper_config_uses_the_reference_protocol_and_embedded_the_probe() -> None:
    paper = yaml.safe_load((REPO / "config/config.yaml").read_text())
    embedded = yaml.safe_load((REPO / "config/embedded.yaml").read_text())
    assert paper["bench"]["protocol"] == "marsbench"
    assert embedded["bench"]["protocol"] == "probe"


def test_reference_protocol_flags_and_no_feature_cache() -> None:
    config = config_with()  # the schema's default protocol: the reference's
    assert config["bench"]["protocol"] == "marsbench"
    assert not uses_feature_cache(config)
    assert bench_augment(config) and bench_selection(config) == "last"
    flags = setup_flags(config, "classification").split()
    assert flags[:2] == ["--protocol", "marsbench"] and "--augment" in flags
    assert flags[flags.index("--selection") + 1] == "last"
    probe = config_with(protocol="probe")
    assert uses_feature_cache(probe) and not bench_augment(probe)
    assert "--no-augment" in setup_flags(probe, "classification").split()
    assert not uses_feature_cache(config_with(protocol="probe", feature_cache=False))
    assert not uses_feature_cache(config_with(protocol="probe", augment=True))


@pytest.mark.parametrize(("bench", "key"), [
    ({"feature_cache": True}, "bench.feature_cache"),
    ({"head": "batchnorm_linear"}, "bench.head"),
    ({"protocol": "probe", "augment": True, "feature_cache": True}, "bench.feature_cache"),
])
def test_probe_only_options_in_the_reference_protocol_stop_the_run(bench: dict,
                                                                    key: str) -> None:
    with pytest.raises(ConfigError, match=f"config key {key}:"):
        check_config(config_with(**bench))
    check_config(config_with(**{**bench, "protocol": "probe", "augment": False}))


def test_an_unknown_protocol_is_refused() -> None:
    config = {"datasets": ["mb-domars16k"], "bench": {"protocol": "paper"}}
    with pytest.raises(Exception, match="'paper' is not one of"):
        validate(copy.deepcopy(config), SCHEMA, set_default=True)
    with pytest.raises(MarsevalError, match="bench.protocol: unknown protocol 'paper'"):
        get_protocol("paper")


def test_a_feature_cache_in_the_reference_protocol_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MarsevalError, match="cannot be used in the 'marsbench' protocol"):
        Setup(dataset_dir=tmp_path, model="resnet101", features_dir=tmp_path / "features",
              protocol="marsbench")
    Setup(dataset_dir=tmp_path, model="resnet101", features_dir=tmp_path, protocol="probe")


def test_run_records_name_their_protocol() -> None:
    record = MARSBENCH.record()
    assert json.loads(json.dumps(record))["schedules"]["cosine_t_max"] == 100
    assert record["frozen_backbone"] == "train" and record["selection"] == "last"


def test_every_reference_model_starts_from_the_loaded_backbone_statistics(
        tmp_path: Path) -> None:
    """The models of one experiment share its backbone module; in marsbench its BatchNorm
    statistics move while a trial trains, so the next trial (or seed) must start from the
    loaded ones, as each reference run starts from freshly loaded weights."""
    from test_bench_classify import standardized

    from marseval.bench.classification.experiment import ClassificationExperiment

    data = standardized(tmp_path, "mb-frost_cls", {"train": 8, "val": 4, "test": 4})
    experiment = ClassificationExperiment(Setup(data, "timm:resnet10t", pretrained=False,
                                                protocol="marsbench"))
    hp = hparams(loss="bce", max_epochs=1, lr=0.01)
    first_model, first = experiment.fit(hp, seed=0)
    drifted = {k: v.clone() for k, v in first_model.backbone.named_buffers()}
    second_model, second = experiment.fit(hp, seed=0)
    assert any(not torch.equal(drifted[k], v) for k, v in experiment._pristine_buffers.items()
               if v.is_floating_point())  # the first fit did move the statistics
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    for name, buffer in second_model.backbone.named_buffers():
        assert torch.equal(buffer, drifted[name]), name
