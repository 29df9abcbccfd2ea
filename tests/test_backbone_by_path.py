"""Any timm backbone with local weights: `timm:<architecture>@<checkpoint file>` (CPU, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from marseval.bench.classification.models import build_backbone, build_classifier
from marseval.bench.model_building import freeze
from marseval.errors import MarsevalError
from marseval.registry.model_names import model_name_problem, split_timm_checkpoint
from marseval.workflow import ConfigError, _check_models

ARCH = "resnet10t"  # small timm model; fc is its classifier


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("MARSEVAL_OFFLINE", "1")


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor]:
    """A 'researcher's own' model: timm's resnet10t with its own (here: seeded) weights and
    a 5-class head, and a batch of images."""
    import timm

    torch.manual_seed(11)
    net = timm.create_model(ARCH, pretrained=False, num_classes=5).eval()
    with torch.no_grad():  # move BatchNorm statistics away from their init
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net, torch.rand(2, 3, 64, 64)


def _features(name: str, images: torch.Tensor) -> torch.Tensor:
    backbone = build_backbone(name, pretrained=True)
    with torch.no_grad():
        return backbone.module.eval()(images)["main"]


def _reference(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.forward_head(net.forward_features(images), pre_logits=True)


def test_names_split_and_hub_names_keep_their_revision() -> None:
    assert split_timm_checkpoint("timm:vit_small_patch16_224@/x/ckpt.safetensors") == (
        "vit_small_patch16_224", "/x/ckpt.safetensors")
    assert split_timm_checkpoint("timm:resnet50") == ("resnet50", None)
    assert split_timm_checkpoint("timm:hf-hub:org/repo@main") == ("hf-hub:org/repo@main", None)


def test_safetensors_and_weights_only_files_reload_to_identical_features(
        trained, tmp_path: Path) -> None:
    net, images = trained
    expected = _reference(net, images)
    state = net.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "own.safetensors")
    torch.save(state, tmp_path / "own.pt")
    # the classifier head may also be absent (a backbone saved with num_classes=0)
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")},
               tmp_path / "headless.pth")
    for file in ("own.safetensors", "own.pt", "headless.pth"):
        name = f"timm:{ARCH}@{tmp_path / file}"
        assert model_name_problem("classification", name) is None
        assert torch.equal(_features(name, images), expected), file
    backbone = build_backbone(f"timm:{ARCH}@{tmp_path / 'own.pt'}", pretrained=True)
    assert backbone.display_name == f"{ARCH}@own.pt" and backbone.feature_dims == {"main": 512}


def test_wrapped_and_prefixed_checkpoints_load(trained, tmp_path: Path) -> None:
    net, images = trained
    expected = _reference(net, images)
    state = net.state_dict()
    wrapped = {  # DDP, Lightning and plain training-script layouts
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
        "lightning.ckpt": {"state_dict": {f"model.{k}": v for k, v in state.items()},
                           "epoch": 3, "global_step": 10},
        "script.pth": {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 1},
    }
    for file, obj in wrapped.items():
        torch.save(obj, tmp_path / file)
        assert torch.equal(_features(f"timm:{ARCH}@{tmp_path / file}", images), expected), file


def test_a_frozen_classifier_trains_only_its_head(trained, tmp_path: Path) -> None:
    net, _ = trained
    torch.save(net.state_dict(), tmp_path / "own.pt")
    model = build_classifier(f"timm:{ARCH}@{tmp_path / 'own.pt'}", 3, pretrained=True,
                             training_type="feature_extraction")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert torch.equal(model.backbone.net.conv1[0].weight, net.conv1[0].weight)


def test_a_checkpoint_of_another_architecture_is_refused_naming_keys(tmp_path: Path) -> None:
    import timm

    other = timm.create_model("resnet18", pretrained=False, num_classes=0)  # 2 blocks a stage
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in freeze(other).state_dict().items()}, path)
    with pytest.raises(MarsevalError) as info:
        build_backbone(f"timm:{ARCH}@{path}", pretrained=True)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys: conv1.0.weight" in message and "unexpected keys: " in message
    assert "and " in message and " more" in message  # long lists are cut, with a count
    # a truncated state is refused too, naming what is missing
    torch.save({"conv1.0.weight": torch.zeros(24, 3, 3, 3)}, tmp_path / "part.pt")
    with pytest.raises(MarsevalError, match=r"missing keys: .*bn1\.") as info:
        build_backbone(f"timm:{ARCH}@{tmp_path / 'part.pt'}", pretrained=True)
    assert str(tmp_path / "part.pt") in str(info.value)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "code.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": _Callable()}, path)
    with pytest.raises(MarsevalError, match="weights-only"):
        build_backbone(f"timm:{ARCH}@{path}", pretrained=True)


class _Callable:
    pass


def test_a_missing_file_stops_the_config_check_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    config = {"bench": {"models": {"classification": [f"timm:{ARCH}@{missing}"],
                                   "segmentation": [], "detection": []}},
              "retrieval": {"models": [], "remote_code": {}}}
    with pytest.raises(ConfigError) as info:
        _check_models(config)
    message = str(info.value)
    assert "bench.models.classification" in message and str(missing) in message
    with pytest.raises(MarsevalError, match="does not exist"):
        build_backbone(f"timm:{ARCH}@{missing}", pretrained=True)
