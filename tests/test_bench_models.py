"""Backbones, heads, image preprocessing and the feature cache (CPU, random init, tiny inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from marseval.bench.classification.data import ImageDataset, targets
from marseval.bench.classification.features import cache_features, read_cache, write_cache
from marseval.bench.classification.models import (
    Backbone,
    Classifier,
    build_backbone,
    build_classifier,
)
from marseval.bench.model_building import torch_hub_checkpoint, trainable_parameters
from marseval.bench.samples import load_samples, split_frame
from marseval.errors import MarsevalError

TINY = "timm:resnet10t"


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty weight caches and offline mode: a test that tried to download would fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("MARSEVAL_OFFLINE", "1")
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    # huggingface_hub read HF_HOME at import; point the already-imported module at the tmp cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}"))


# --------------------------------------------------------------------------- backbones

PAPER = {
    # name: (display name, feature dims, input size)
    "resnet101": ("ResNet101", {"main": 2048}, 224),
    "squeezenet1_1": ("SqueezeNet1.1", {"main": 512}, 224),
    "inception_v3": ("InceptionV3", {"main": 2048, "aux": 768}, 299),
    "swin_v2_b": ("SwinV2-B", {"main": 1024}, 256),
    "vit_l_16": ("ViT-L/16", {"main": 1024}, 224),
}
# run for real on these; the big transformers only on the meta device (shapes, no arithmetic)
REAL_FORWARD = {"resnet101": 64, "squeezenet1_1": 64, "inception_v3": 299}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_backbones_build_with_their_feature_dims(name: str) -> None:
    display, dims, size = PAPER[name]
    backbone = build_backbone(name, pretrained=False)
    assert isinstance(backbone, Backbone)
    assert backbone.display_name == display
    assert backbone.feature_dims == dims
    assert backbone.input_size == size
    assert backbone.mean == pytest.approx((0.485, 0.456, 0.406))
    assert backbone.std == pytest.approx((0.229, 0.224, 0.225))
    module = backbone.module.eval()
    if name in REAL_FORWARD:
        x = torch.randn(2, 3, REAL_FORWARD[name], REAL_FORWARD[name])
        with torch.no_grad():
            out = module(x)
        assert all(torch.isfinite(v).all() for v in out.values())
    else:
        module.to("meta")
        out = module(torch.empty(2, 3, size, size, device="meta"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, d) for k, d in dims.items()}


@pytest.mark.parametrize("name", ["resnet10t", "test_vit"])
def test_timm_backbones_report_their_real_output_size(name: str) -> None:
    backbone = build_backbone(f"timm:{name}", pretrained=False)
    assert backbone.display_name == name
    with torch.no_grad():
        out = backbone.module.eval()(torch.randn(2, 3, backbone.input_size, backbone.input_size))
    assert set(out) == {"main"}
    assert out["main"].shape == (2, backbone.feature_dims["main"])


def test_random_init_is_fixed_and_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(1)
    a = build_backbone(TINY, pretrained=False)
    after_a = torch.rand(1)
    torch.manual_seed(2)
    b = build_backbone(TINY, pretrained=False)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_a)  # building drew nothing from the global RNG
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # scratch training draws its init from the caller's (seeded) RNG
    torch.manual_seed(1)
    s1 = build_classifier(TINY, 2, pretrained=True, training_type="scratch")
    torch.manual_seed(2)
    s2 = build_classifier(TINY, 2, pretrained=True, training_type="scratch")
    first = next(s1.backbone.parameters())
    assert not torch.equal(first, next(s2.backbone.parameters()))


@pytest.mark.parametrize("name", ["resnet_9000", "timm:not_a_model_xyz", "timm:", "ResNet101"])
def test_unknown_model_names_are_clear_errors(name: str) -> None:
    with pytest.raises(MarsevalError) as info:
        build_backbone(name, pretrained=False)
    message = str(info.value)
    if name.startswith("timm:"):
        assert "unknown timm model" in message
    else:
        assert "resnet101" in message and "timm:<name>" in message


def test_unknown_training_type() -> None:
    with pytest.raises(MarsevalError, match="training type"):
        build_classifier(TINY, 2, pretrained=False, training_type="linear_probe")


# --------------------------------------------------------------------------- pretrained loading


def test_pretrained_torchvision_weights_load_from_the_local_cache() -> None:
    from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

    path = torch_hub_checkpoint(SqueezeNet1_1_Weights.IMAGENET1K_V1.url)
    assert path.name == "squeezenet1_1-b8a52dc0.pth"
    assert path.parent == Path(torch.hub.get_dir()) / "checkpoints"

    # offline and nothing cached: an error naming the model and the file, no download
    with pytest.raises(MarsevalError) as info:
        build_backbone("squeezenet1_1", pretrained=True)
    assert str(path) in str(info.value) and "squeezenet1_1" in str(info.value)

    torch.manual_seed(123)
    reference = squeezenet1_1(weights=None).state_dict()
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    backbone = build_backbone("squeezenet1_1", pretrained=True)
    loaded = backbone.module.net.state_dict()
    features = {k: v for k, v in reference.items() if k.startswith("features.")}
    assert features and all(torch.equal(loaded[k], v) for k, v in features.items())
    # the classifier of the checkpoint was dropped: the head is ours
    assert not any(k.startswith("classifier.") and k in loaded for k in reference)


class _Payload:
    """A pickle that runs code when loaded: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pretrained_loading_refuses_pickled_code(tmp_path: Path) -> None:
    from torchvision.models import SqueezeNet1_1_Weights

    path = torch_hub_checkpoint(SqueezeNet1_1_Weights.IMAGENET1K_V1.url)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    torch.save({"features.0.weight": _Payload(marker)}, path)
    with pytest.raises(MarsevalError, match="squeezenet1_1"):
        build_backbone("squeezenet1_1", pretrained=True)
    assert not marker.exists()


def test_pretrained_timm_weights_offline_without_cache_is_an_error() -> None:
    with pytest.raises(MarsevalError) as info:
        build_backbone(TINY, pretrained=True)
    assert "resnet10t" in str(info.value) and "MARSEVAL_OFFLINE" in str(info.value)


# --------------------------------------------------------------------------- classifier


def _first_batchnorm(module: nn.Module) -> nn.modules.batchnorm._BatchNorm:
    return next(m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_feature_extraction_freezes_the_backbone_and_keeps_it_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = build_classifier(TINY, 3, pretrained=False, training_type="feature_extraction")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    heads = {id(p) for p in model.heads.parameters()}
    assert {id(p) for p in trainable_parameters(model)} == heads

    model.train()
    assert model.training and model.heads.training
    assert not any(m.training for m in model.backbone.modules())
    bn = _first_batchnorm(model.backbone)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    batches = bn.num_batches_tracked.clone()
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    for _ in range(2):
        logits = model(torch.randn(4, 3, 32, 32) * 3 + 1)["main"]
        nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, batches)
    model.eval()
    model.train(True)
    assert not model.backbone.training


@pytest.mark.parametrize("training_type", ["transfer_learning", "scratch"])
def test_transfer_learning_and_scratch_train_everything(training_type: str) -> None:
    model = build_classifier(TINY, 2, pretrained=False, training_type=training_type)
    assert all(p.requires_grad for p in model.parameters())
    assert len(trainable_parameters(model)) == len(list(model.parameters()))
    model.train()
    assert model.backbone.training
    bn = _first_batchnorm(model.backbone)
    mean = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) + 1)
    assert not torch.equal(bn.running_mean, mean)  # BN statistics do update here


@pytest.mark.parametrize(
    ("name", "size", "modes"), [(TINY, 32, (False, True)), ("inception_v3", 299, (True,))]
)
def test_forward_equals_head_forward_on_backbone_features(
    name: str, size: int, modes: tuple[bool, ...]
) -> None:
    torch.manual_seed(0)
    model = build_classifier(name, 4, pretrained=False, training_type="feature_extraction")
    dims = model.spec.feature_dims
    assert set(model.heads) == set(dims)
    x = torch.randn(1, 3, size, size)
    for mode in modes:  # frozen: the backbone is in eval mode either way
        model.train(mode)
        with torch.no_grad():
            online = model(x)
            features = model.backbone(x)
            cached_path = model.head_forward(features)
        assert set(online) == set(features) == set(dims)
        for key in online:
            assert online[key].shape == (1, 4)
            assert torch.equal(online[key], cached_path[key])
    # float16 (cached) features go through the float32 heads
    half = {k: v.half() for k, v in features.items()}
    assert model.head_forward(half)["main"].dtype == torch.float32
    if name == TINY:
        # a fresh build is the same random backbone: the cache matches online training
        with torch.no_grad():
            fresh = build_backbone(name, pretrained=False).module.eval()(x)
        assert all(torch.equal(fresh[k], features[k]) for k in fresh)


def test_classifier_accepts_prebuilt_heads() -> None:
    backbone = build_backbone(TINY, pretrained=False)
    heads = nn.ModuleDict({"main": nn.Linear(backbone.feature_dims["main"], 5)})
    model = Classifier(backbone, heads, frozen=True)
    assert model.heads is heads and model.spec is backbone
    assert model(torch.randn(1, 3, 32, 32))["main"].shape == (1, 5)


# --------------------------------------------------------------------------- images to tensors

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x * std + mean).numpy()


def _png(path: Path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path.name


def _pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def test_images_become_three_normalised_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray, rgb, rgba = _pixels(rng, 16, 16), _pixels(rng, 16, 16, 3), _pixels(rng, 16, 16, 4)
    frame = pd.DataFrame(
        {
            "sample_id": ["g", "c", "a"],
            "split": "train",
            "image": [
                f"images/{_png(tmp_path / 'images' / f'{n}.png', p)}"
                for n, p in (("g", gray), ("c", rgb), ("a", rgba))
            ],
            "label": [0, 1, 1],
        }
    )
    meta = {"subtask": "binary", "num_classes": 2}
    dataset = ImageDataset(tmp_path, frame, meta, 16, MEAN, STD, augment=False)
    assert dataset.ids == ["g", "c", "a"] and len(dataset) == 3

    x, y = dataset[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y) == 0
    back = _unnormalise(x)
    for channel in range(3):
        np.testing.assert_allclose(back[channel], gray / 255.0, atol=1e-6)
    np.testing.assert_allclose(
        _unnormalise(dataset[1][0]), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6
    )
    np.testing.assert_allclose(
        _unnormalise(dataset[2][0]), rgba[..., :3].transpose(2, 0, 1) / 255.0, atol=1e-6
    )

    # resizing, and determinism without augmentation
    small = ImageDataset(tmp_path, frame, meta, 7, MEAN, STD, augment=False)
    assert small[0][0].shape == (3, 7, 7)
    assert torch.equal(small[1][0], small[1][0])
    assert torch.equal(dataset[0][0], ImageDataset(tmp_path, frame, meta, 16, MEAN, STD)[0][0])


def test_change_pairs_stack_zeros_after_before(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    before, after = _pixels(rng, 12, 12), _pixels(rng, 12, 12)
    frame = pd.DataFrame(
        {
            "sample_id": ["p"],
            "split": "test",
            "image": [f"images/{_png(tmp_path / 'images' / 'p_before.png', before)}"],
            "image_after": [f"images_after/{_png(tmp_path / 'images_after' / 'p.png', after)}"],
            "label": [1],
        }
    )
    dataset = ImageDataset(tmp_path, frame, {"subtask": "binary", "num_classes": 2}, 12, MEAN, STD)
    back = _unnormalise(dataset[0][0])
    np.testing.assert_allclose(back[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(back[1], after / 255.0, atol=1e-6)
    np.testing.assert_allclose(back[2], before / 255.0, atol=1e-6)


def test_augmentation_changes_images_but_keeps_their_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    name = _png(tmp_path / "images" / "a.png", _pixels(rng, 16, 16, 3))
    frame = pd.DataFrame(
        {"sample_id": ["a"], "split": "train", "label": [0], "image": [f"images/{name}"]}
    )
    meta = {"subtask": "binary", "num_classes": 2}
    plain = ImageDataset(tmp_path, frame, meta, 16, MEAN, STD)[0][0]
    augmented = ImageDataset(tmp_path, frame, meta, 16, MEAN, STD, augment=True)
    torch.manual_seed(0)
    draws = [augmented[0][0] for _ in range(12)]
    assert all(d.shape == (3, 16, 16) for d in draws)
    assert any(not torch.equal(d, plain) for d in draws)
    torch.manual_seed(0)
    assert all(torch.equal(d, augmented[0][0]) for d in draws)  # seeded: reproducible


# --------------------------------------------------------------------------- standardized data


def _standardized(tmp_path: Path, dataset: str) -> Path:
    from marseval.data.standardize import standardize
    from marseval.data.synthetic.generate import generate_benchmark
    from marseval.data.synthetic.writers import write_zenodo
    from marseval.registry import get_dataset

    spec = get_dataset(dataset)
    raw = generate_benchmark(spec, seed=0, size=32, samples={"train": 12, "val": 4, "test": 4})
    write_zenodo(raw, spec, tmp_path / "raw" / dataset)
    out = tmp_path / "std" / dataset
    standardize(tmp_path / "raw" / dataset, out, dataset, "synthetic", [0.5, 1.0], [1])
    return out


def test_multilabel_targets_are_multi_hot(tmp_path: Path) -> None:
    folder = _standardized(tmp_path, "mb-surface_multi_label_cls")
    meta, frame, subsets = load_samples(folder)
    rows = split_frame(frame, "train")
    y = targets(rows, meta)
    assert y.dtype == torch.float32 and y.shape == (12, meta["num_classes"])
    for row, labels in zip(y, rows["labels"], strict=True):
        assert set(torch.nonzero(row).flatten().tolist()) == {int(v) for v in labels}
    dataset = ImageDataset(folder, rows, meta, 32, MEAN, STD)
    assert torch.equal(dataset[3][1], y[3])

    half = split_frame(frame, "train", subsets["fraction:0.50"])
    assert set(half["sample_id"]) == set(subsets["fraction:0.50"])
    assert list(half["sample_id"]) == [i for i in rows["sample_id"] if i in set(half.sample_id)]
    with pytest.raises(MarsevalError, match="not in split val"):
        split_frame(frame, "val", subsets["fraction:0.50"])


def test_feature_cache_round_trip(tmp_path: Path) -> None:
    folder = _standardized(tmp_path, "mb-frost_cls")
    out = tmp_path / "features" / "mb-frost_cls" / "resnet10t"
    cache_features(folder, TINY, out, pretrained=False, batch_size=5)

    info = json.loads((out / "meta.json").read_text())
    assert info["model"] == TINY and info["display_name"] == "resnet10t"
    assert info["feature_dims"] == {"main": 512} and info["dtype"] == "float16"
    assert info["counts"] == {"train": 12, "val": 4, "test": 4}
    assert _leftovers(out) == []

    meta, frame, _ = load_samples(folder)
    backbone = build_backbone(TINY, pretrained=False)
    module = backbone.module.eval()
    for split in ("train", "val", "test"):
        ids, features = read_cache(out, split)
        rows = split_frame(frame, split)
        assert ids == list(rows["sample_id"])
        cached = features["main"]
        assert isinstance(cached, np.memmap) and cached.dtype == np.float16
        assert cached.shape == (len(ids), 512)
        dataset = ImageDataset(folder, rows, meta, backbone.input_size, backbone.mean, backbone.std)
        with torch.no_grad():
            direct = module(torch.stack([dataset[i][0] for i in range(len(dataset))]))["main"]
        np.testing.assert_allclose(cached.astype(np.float32), direct.numpy(), rtol=2e-3, atol=1e-4)

    with pytest.raises(MarsevalError, match="no split"):
        read_cache(out, "extra")


def test_interrupted_cache_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import marseval.bench.classification.features as features

    folder = _standardized(tmp_path, "mb-frost_cls")
    out = tmp_path / "features" / "resnet10t"
    real_write = features.write_cache

    def write_then_fail(out_dir, split, ids, values):
        real_write(out_dir, split, ids, values)
        if split == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(features, "write_cache", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        cache_features(folder, TINY, out, pretrained=False)
    assert not out.exists() and _leftovers(out) == []


def test_write_cache_rejects_float16_overflow(tmp_path: Path) -> None:
    with pytest.raises(MarsevalError, match="float16"):
        write_cache(tmp_path, "train", ["a"], {"main": np.array([[1e6]], np.float32)})
    assert not any(tmp_path.iterdir())
