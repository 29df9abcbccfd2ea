"""Earth-observation backbones (SatMAE, CROMA, Prithvi): band handling, feature widths, frozen
training, the embedded default's classification sets end to end, and pretrained loading from
checkpoints written locally in each publisher's layout (CPU, offline, tiny configurations of
the same architecture classes)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from marseval.bench.classification import eo_backbones as eo
from marseval.bench.classification.features import cache_features
from marseval.bench.classification.models import build_backbone, build_classifier
from marseval.bench.experiment import Setup
from marseval.bench.grid import expand
from marseval.bench.model_building import torch_hub_checkpoint
from marseval.bench.runs import train_runs
from marseval.bench.selection import select_best
from marseval.bench.tune import run_shard
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.errors import MarsevalError
from marseval.registry import get_dataset
from marseval.registry.model_names import EO_BACKBONES, model_name_problem

NAMES = ("satmae_vit_l16", "croma_vit_l16", "prithvi_eo_v1_100")
PUBLISHED = {"satmae_vit_l16": "SatMAE_ViT-L/16", "croma_vit_l16": "CROMA_ViT-L/16",
             "prithvi_eo_v1_100": "prithvi_eo_v1_100"}  # earth_data.csv's model column
FULL = {"satmae_vit_l16": (1024, 224, 3), "croma_vit_l16": (1024, 120, 12),
        "prithvi_eo_v1_100": (768, 224, 6)}  # width, input size, bands
TINY_SIZE = 32
TINY = {  # same classes, small: ViT (SatMAE, Prithvi) and torchgeo's CROMA
    "satmae_vit_l16": {"img_size": TINY_SIZE, "patch_size": 16, "embed_dim": 32, "depth": 2,
                       "num_heads": 2},
    "croma_vit_l16": {"encoder_dim": 32, "encoder_depth": 2, "num_heads": 16, "patch_size": 8},
    "prithvi_eo_v1_100": {"img_size": TINY_SIZE, "patch_size": 16, "embed_dim": 32, "depth": 2,
                          "num_heads": 2, "num_frames": 3},
}


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty weight caches and offline mode: a download attempt would fail the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("MARSEVAL_OFFLINE", "1")
    from huggingface_hub import constants

    hub = tmp_path / "hf_home" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, arch in TINY.items():
        monkeypatch.setitem(eo.EO_MODELS, key,
                            replace(eo.EO_MODELS[key], arch=arch, input_size=TINY_SIZE))


def test_names_are_accepted_and_display_as_the_published_runs() -> None:
    assert tuple(f"eo:{n}" for n in NAMES) == EO_BACKBONES
    for name in EO_BACKBONES:
        assert model_name_problem("classification", name) is None
    assert "eo:satmae_vit_l16" in (model_name_problem("classification", "eo:satmae") or "")
    for key, published in PUBLISHED.items():
        assert eo.EO_MODELS[key].display_name == published


@pytest.mark.parametrize("key", NAMES)
def test_full_size_architectures_declare_their_real_width(key: str) -> None:
    """The published sizes, built on the meta device (shapes only, no arithmetic)."""
    width, size, bands = FULL[key]
    with torch.device("meta"):
        backbone = build_backbone(f"eo:{key}", pretrained=False, init_seed=None)
        out = backbone.module.eval()(torch.zeros(2, 3, size, size))
    assert backbone.feature_dims == {"main": width} and backbone.input_size == size
    assert out["main"].shape == (2, width)
    assert len(eo.EO_MODELS[key].bands) == bands


def test_band_mapping_puts_rgb_in_the_matching_bands() -> None:
    rgb = torch.stack([torch.full((4, 4), v) for v in (1.0, 2.0, 3.0)])[None]
    croma = eo.EO_MODELS["croma_vit_l16"]  # Sentinel-2: B04 red, B03 green, B02 blue
    out = eo.map_bands(rgb, len(croma.bands), croma.rgb, "gray")
    assert out.shape == (1, 12, 4, 4)
    assert [croma.bands[i] for i in croma.rgb] == ["B04", "B03", "B02"]
    assert out[0, 3, 0, 0] == 1.0 and out[0, 2, 0, 0] == 2.0 and out[0, 1, 0, 0] == 3.0
    others = [i for i in range(12) if i not in croma.rgb]
    assert torch.all(out[0, others] == 2.0)  # the mean of the three
    assert torch.all(eo.map_bands(rgb, 12, croma.rgb, "zeros")[0, others] == 0)
    # a grayscale image (repeated to 3 channels by the loader, or 1 channel) fills every band
    gray = torch.rand(2, 1, 4, 4)
    prithvi = eo.EO_MODELS["prithvi_eo_v1_100"]
    for image in (gray, gray.expand(-1, 3, -1, -1)):
        bands = eo.map_bands(image, 6, prithvi.rgb, prithvi.fill)
        assert torch.allclose(bands, gray.expand(-1, 6, -1, -1))
    with pytest.raises(MarsevalError, match="fill"):
        eo.map_bands(rgb, 6, prithvi.rgb, "noise")


@pytest.mark.parametrize("key", NAMES)
def test_tiny_backbones_give_declared_features_and_stay_frozen(key: str, tiny: None) -> None:
    backbone = build_backbone(f"eo:{key}", pretrained=False)
    width = backbone.feature_dims["main"]
    module = backbone.module.eval()
    with torch.no_grad():
        gray = module(torch.rand(2, 1, TINY_SIZE, TINY_SIZE))["main"]
        rgb = module(torch.rand(2, 3, TINY_SIZE, TINY_SIZE))["main"]
    assert gray.shape == rgb.shape == (2, width) and torch.isfinite(rgb).all()
    model = build_classifier(f"eo:{key}", 3, pretrained=False,
                             training_type="feature_extraction")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not any(m.training for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.heads.parameters())


# --------------------------------------------------------------------------- end to end

EMBEDDED_CLASSIFICATION = ("mb-change_cls_hirise", "mb-domars16k",
                           "mb-surface_multi_label_cls")  # config/embedded.yaml


def test_embedded_classification_sets_end_to_end(tiny: None, tmp_path: Path) -> None:
    """features -> tune -> select -> train for each EO model on the embedded default's three
    classification sets (binary change pairs, multiclass, multilabel)."""
    grid = {"lr_schedule": ["none"], "lr": [0.01], "weight_decay": [0.05],
            "batch_size": [16], "optimizer": ["adamw"], "max_epochs": [3], "patience": [5],
            "classification_loss": ["cross_entropy"]}
    for dataset in EMBEDDED_CLASSIFICATION:
        spec = get_dataset(dataset)
        raw = tmp_path / f"raw-{dataset}"
        write_zenodo(generate_benchmark(spec, seed=0, size=TINY_SIZE,
                                        samples={"train": 24, "val": 8, "test": 8}), spec, raw)
        data = tmp_path / dataset
        standardize(raw, data, dataset, "synthetic", [0.5, 1.0], [2])
        for key in NAMES:
            model = f"eo:{key}"
            out = tmp_path / "work" / dataset / key
            features = out / "features"
            cache_features(data, model, features, pretrained=False, batch_size=32)
            setup = Setup(data, model, features, pretrained=False, head="batchnorm_linear")
            trials = expand(grid, "classification", spec.subtask)
            frame = run_shard(setup, trials, out / "shard0.parquet")
            assert len(frame) == len(trials)
            best = out / "best.json"
            select_best([out / "shard0.parquet"], best)
            record = train_runs(setup, best, "fraction_0.50", [0], [out / "run.json"])[0]
            assert record["model_display"] == PUBLISHED[key]
            assert 0.0 <= record["test"]["primary"] <= 1.0, record
            assert json.loads((out / "run.json").read_text())["model"] == model


# --------------------------------------------------------------------------- pretrained


def _tiny_vit_state(key: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return eo._vit(replace(eo.EO_MODELS[key], arch=TINY[key], input_size=TINY_SIZE)).state_dict()


def _weights(backbone) -> dict[str, torch.Tensor]:
    return backbone.module.net.state_dict()


def test_satmae_loads_its_published_checkpoint_layout(tiny: None) -> None:
    path = torch_hub_checkpoint(eo.SATMAE_URL)
    assert path.name == "fmow_pretrain.pth"
    with pytest.raises(MarsevalError) as info:
        build_backbone("eo:satmae_vit_l16", pretrained=True)
    assert str(path) in str(info.value) and "MARSEVAL_OFFLINE" in str(info.value)

    encoder = _tiny_vit_state("satmae_vit_l16")
    mae = {**encoder, "mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight":
           torch.zeros(16, 32), "decoder_pos_embed": torch.zeros(1, 5, 16)}
    path.parent.mkdir(parents=True)
    # SatMAE's main_pretrain saves the model beside the epoch and its argparse arguments
    torch.save({"model": mae, "epoch": 799, "args": argparse.Namespace(model="mae")}, path)
    loaded = _weights(build_backbone("eo:satmae_vit_l16", pretrained=True))
    assert loaded.keys() == encoder.keys()
    assert all(torch.equal(loaded[k], v) for k, v in encoder.items())

    torch.save({"model": {**mae, "blocks.9.extra": torch.zeros(1)}}, path)
    with pytest.raises(MarsevalError, match=r"unexpected keys: blocks\.9\.extra") as info:
        build_backbone("eo:satmae_vit_l16", pretrained=True)
    assert str(path) in str(info.value)


def test_croma_loads_torchgeos_checkpoint_through_torchgeo(tiny: None) -> None:
    from torchgeo.models import CROMA, CROMALarge_Weights

    path = torch_hub_checkpoint(CROMALarge_Weights.CROMA_VIT.url)
    assert path.name == "CROMA_large-921e69ad.pt"
    with pytest.raises(MarsevalError, match="not cached") as info:
        build_backbone("eo:croma_vit_l16", pretrained=True)
    assert str(path) in str(info.value)

    torch.manual_seed(7)
    full = CROMA(modalities=["sar", "optical"], image_size=TINY_SIZE, **TINY["croma_vit_l16"])
    published = {part: getattr(full, part).state_dict() for part in
                 ("s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN", "joint_encoder")}
    path.parent.mkdir(parents=True)
    torch.save(published, path)
    net = build_backbone("eo:croma_vit_l16", pretrained=True).module.net
    for part in ("s2_encoder", "s2_GAP_FFN"):
        mine = getattr(net, part).state_dict()
        assert all(torch.equal(mine[k], v) for k, v in published[part].items())


def _write_hub_file(hub: Path, repo: str, filename: str, obj: object) -> Path:
    """A file in the Hugging Face cache layout, as hf_hub_download leaves it."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    torch.save(obj, target)
    return target


def test_prithvi_loads_its_hub_checkpoint(tiny: None, _offline: Path) -> None:
    with pytest.raises(MarsevalError) as info:
        build_backbone("eo:prithvi_eo_v1_100", pretrained=True)
    assert eo.PRITHVI_FILE in str(info.value) and eo.PRITHVI_REPO in str(info.value)

    vit = _tiny_vit_state("prithvi_eo_v1_100")
    # Prithvi's MAE layout: a 3-D patch kernel (tubelet 1) and a 3-frame position table
    frames = 3
    n = (TINY_SIZE // 16) ** 2
    published = {**vit, "patch_embed.proj.weight": vit["patch_embed.proj.weight"][:, :, None],
                 "pos_embed": torch.cat([vit["pos_embed"]]
                                        + [torch.randn(1, n, 32)] * (frames - 1), 1),
                 "mask_token": torch.zeros(1, 1, 16), "decoder_pred.weight": torch.zeros(4, 16)}
    _write_hub_file(_offline, eo.PRITHVI_REPO, eo.PRITHVI_FILE, published)
    loaded = _weights(build_backbone("eo:prithvi_eo_v1_100", pretrained=True))
    assert all(torch.equal(loaded[k], v) for k, v in vit.items())
