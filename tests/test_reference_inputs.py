"""Issue 14, items 7 and 8: the Mars-Bench reference's inputs (sizes, ImageNet mean/std, resize
without antialias) and classifier heads (SqueezeNet's conv head, InceptionV3's frozen auxiliary
head) in the `marsbench` protocol, and today's behaviour in `probe`. Random-init backbones only:
nothing downloads. Each test fails when its item is reverted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from marseval.bench.classification.data import ImageDataset
from marseval.bench.classification.experiment import ClassificationExperiment
from marseval.bench.classification.models import build_backbone
from marseval.bench.experiment import Setup
from marseval.bench.segmentation.experiment import SegmentationExperiment
from marseval.bench.square_images import SquareImages, resize_square
from marseval.bench.training import HParams, train_mode, training_loss
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.registry import get_dataset

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HP = HParams(lr=0.5, weight_decay=0.0, batch_size=4, optimizer="sgd", lr_schedule="none",
             max_epochs=1, patience=1, loss="cross_entropy")


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty weight caches and offline mode: a test that tried to download would fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("MARSEVAL_OFFLINE", "1")


def _standardized(root: Path, name: str, samples: dict[str, int]) -> Path:
    spec = get_dataset(name)
    write_zenodo(generate_benchmark(spec, seed=0, size=32, samples=samples), spec,
                 root / f"raw-{name}")
    standardize(root / f"raw-{name}", root / name, name, "synthetic", [1.0], [])
    return root / name


@pytest.fixture(scope="module")
def domars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 classes, 32 px grayscale images."""
    return _standardized(tmp_path_factory.mktemp("cls"), "mb-domars16k",
                         {"train": 4, "val": 2, "test": 2})


@pytest.fixture(scope="module")
def craters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _standardized(tmp_path_factory.mktemp("seg"), "mb-crater_binary_seg",
                         {"train": 2, "val": 2, "test": 2})


# ------------------------------------------------------------------ 7. sizes and mean/std


@pytest.mark.parametrize(("name", "marsbench", "probe"), [
    ("inception_v3", 299, 299),  # configs/model/classification/inceptionv3.yaml
    ("swin_v2_b", 224, 256),  # swin_transformer.yaml 224; its weights' transforms crop 256
    ("vit_l_16", 224, 224),
    ("resnet101", 224, 224),
    ("squeezenet1_1", 224, 224),
])
def test_reference_classifier_sizes(name: str, marsbench: int, probe: int) -> None:
    from torchvision.models import get_model_weights

    from marseval.bench.classification.models import TORCHVISION_MODELS

    # the probe's size is what the weights' own transforms crop to
    weights = get_model_weights(name)[TORCHVISION_MODELS[name].weights]
    assert int(weights.transforms().crop_size[0]) == probe
    with torch.device("meta"):  # shapes without arithmetic: ViT-L and SwinV2-B stay cheap
        reference = build_backbone(name, pretrained=False, inputs="marsbench")
        own = build_backbone(name, pretrained=False, inputs="weights")
        assert (reference.input_size, own.input_size) == (marsbench, probe)
        assert (reference.mean, reference.std) == IMAGENET
        assert (reference.antialias, own.antialias) == (False, True)
        features = reference.module.eval()(torch.empty(1, 3, marsbench, marsbench))
    assert features["main"].shape[0] == 1  # the backbone runs at the reference's size


@pytest.mark.parametrize(("protocol", "size"), [("marsbench", 224), ("probe", 256)])
def test_a_reference_swin_experiment_feeds_224_pixels(domars: Path, protocol: str,
                                                      size: int) -> None:
    experiment = ClassificationExperiment(Setup(domars, "swin_v2_b", pretrained=False,
                                                protocol=protocol))
    images = experiment.split("test").images
    image, _ = images[0]
    assert images.input_size == size and image.shape == (3, size, size)
    assert images.antialias is (protocol == "probe")


def test_timm_classifiers_keep_their_size_under_imagenet_statistics() -> None:
    # timm's test_vit declares 160 px and mean/std 0.5: the reference's rule is ImageNet
    # mean/std for every model; a fixed-size ViT takes no other size, so its own stays
    reference = build_backbone("timm:test_vit", pretrained=False, inputs="marsbench")
    own = build_backbone("timm:test_vit", pretrained=False, inputs="weights")
    assert reference.input_size == own.input_size == 160
    assert (reference.mean, reference.std) == IMAGENET
    assert own.mean == pytest.approx((0.5, 0.5, 0.5)) and own.std == pytest.approx((0.5,) * 3)


@pytest.mark.parametrize(("protocol", "mean", "std"), [
    ("marsbench", *IMAGENET),
    ("probe", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # what the AugReg ViT-B/16 weights declare
])
def test_dpt_is_normalised_with_imagenet_statistics_in_marsbench(
        craters: Path, protocol: str, mean: tuple, std: tuple) -> None:
    with torch.device("meta"):  # ViT-B/16: shapes without arithmetic
        experiment = SegmentationExperiment(Setup(craters, "dpt:vit_base_patch16_224",
                                                  pretrained=False, protocol=protocol))
    assert experiment.input_size == 224
    assert experiment.mean == pytest.approx(mean) and experiment.std == pytest.approx(std)
    images = experiment.split("test").images
    assert images.mean.flatten().tolist() == pytest.approx(mean)
    assert images.std.flatten().tolist() == pytest.approx(std)


def test_segmentation_inputs_default_to_224_and_an_explicit_size_wins(craters: Path) -> None:
    setup = {"dataset_dir": craters, "model": "unet:resnet18", "pretrained": False,
             "protocol": "marsbench"}
    assert SegmentationExperiment(Setup(**setup)).input_size == 224
    # bench.input_size.segmentation reaches Setup.input_size: the user's setting wins
    explicit = SegmentationExperiment(Setup(**setup, input_size=160))
    assert explicit.input_size == 160 and (explicit.mean, explicit.std) == IMAGENET
    image, mask = explicit.split("train").images[0]
    assert image.shape == (3, 160, 160) and mask.shape == (160, 160)


# ------------------------------------------------------------------ 7. resizing


def _stripes(path: Path, side: int = 400) -> np.ndarray:
    """Vertical one-pixel stripes, 0 in even columns and 255 in odd ones."""
    pixels = np.zeros((side, side), np.uint8)
    pixels[:, 1::2] = 255
    Image.fromarray(pixels).save(path)
    return pixels


def _bilinear_stripes(side: int) -> np.ndarray:
    """400 -> 160 px (factor 2.5) without antialias, by hand: output column x samples source
    2.5 x + 0.75 (half-pixel centres), i.e. 0.25 of one column and 0.75 of the next: 0.75
    where x // 2 is even (0.25 x 0 + 0.75 x 1, or 0.75 x 1 + 0.25 x 0), 0.25 where odd."""
    row = np.where((np.arange(side) // 2) % 2 == 0, 0.75, 0.25)
    return np.broadcast_to(row, (side, side))


def _first_image(images: ImageDataset | SquareImages) -> Path:
    if isinstance(images, SquareImages):
        return images.dataset_dir / str(images.frame["image"].iloc[0])
    return images.dataset_dir / images.images[0]


@pytest.mark.parametrize("protocol", ["marsbench", "probe"])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_reference_resize_does_not_antialias(domars: Path, craters: Path, tmp_path: Path,
                                            task: str, protocol: str) -> None:
    source = domars if task == "classification" else craters
    data = tmp_path / source.name
    shutil.copytree(source, data)
    if task == "classification":  # timm:test_vit: 160 px in both protocols
        experiment = ClassificationExperiment(Setup(data, "timm:test_vit", pretrained=False,
                                                    protocol=protocol))
    else:
        experiment = SegmentationExperiment(Setup(data, "unet:resnet18", pretrained=False,
                                                  input_size=160, protocol=protocol))
    images = experiment.split("train").images
    _stripes(_first_image(images))
    normalised, _ = images[0]
    mean, std = images.mean, images.std
    pixels = (normalised * std + mean)[0].double().numpy()
    expected = _bilinear_stripes(160)
    if protocol == "marsbench":
        np.testing.assert_allclose(pixels, expected, atol=1e-5)
    else:  # antialias blurs the stripes towards their mean 0.5
        assert np.abs(pixels - expected).max() > 0.1
        assert np.abs(pixels[:, 2:-2] - 0.5).max() < 0.1


def test_reference_resize_agrees_with_opencv_inter_linear() -> None:
    """The albumentations A.Resize of the reference is cv2.resize(INTER_LINEAR) on uint8."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for side, size in ((400, 160), (500, 224), (1024, 224), (250, 299), (100, 224)):
        pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
        opencv = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)
        ours = resize_square(torch.from_numpy(pixels)[None].float() / 255, size, antialias=False)
        diff = np.abs(ours[0].double().numpy() * 255 - opencv)
        # OpenCV's 11-bit fixed-point weights and uint8 rounding, nothing more
        assert diff.max() < 0.85 and diff.mean() < 0.3, (side, size, diff.max())
    stripes = np.zeros((400, 400), np.uint8)
    stripes[:, 1::2] = 255
    opencv = cv2.resize(stripes, (160, 160), interpolation=cv2.INTER_LINEAR)
    assert np.abs(opencv - _bilinear_stripes(160) * 255).max() <= 0.5  # 191 and 64


# ------------------------------------------------------------------ 8. SqueezeNet's head


def test_reference_squeezenet_head_is_dropout_conv_relu_pool(domars: Path) -> None:
    from torchvision.models import squeezenet1_1

    experiment = ClassificationExperiment(Setup(domars, "squeezenet1_1", pretrained=False,
                                                protocol="marsbench"))
    model = experiment.build_model(HP, seed=0)
    head = model.heads["main"]
    assert [type(m) for m in head] == [nn.Dropout, nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d,
                                       nn.Flatten]
    assert head[0].p == 0.5 and head[1].weight.shape == (15, 512, 1, 1)
    assert head[1].kernel_size == (1, 1) and head[3].output_size == (1, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"heads.main.1.weight", "heads.main.1.bias"}

    images = torch.stack([experiment.split("train").images[i][0] for i in range(4)])
    assert images.shape == (4, 3, 224, 224)
    train_mode(model, "train")
    assert (model(images)["main"] >= 0).all()  # the ReLU before pooling: logits >= 0
    model.eval()
    with torch.no_grad():
        logits = model(images)["main"]
    # oracle: torchvision's SqueezeNet with classifier[1] replaced, as the reference does
    reference = squeezenet1_1(weights=None)
    reference.features.load_state_dict(model.backbone.net.state_dict())
    reference.classifier[1] = head[1]
    with torch.no_grad():
        expected = reference.eval()(images)
    torch.testing.assert_close(logits, expected)
    assert (logits >= 0).all() and logits.shape == (4, 15)


def test_probe_squeezenet_keeps_a_linear_head_on_pooled_features(domars: Path) -> None:
    experiment = ClassificationExperiment(Setup(domars, "squeezenet1_1", pretrained=False,
                                                protocol="probe"))
    head = experiment.build_model(HP, seed=0).heads["main"]
    assert isinstance(head, nn.Linear) and head.in_features == 512


# ------------------------------------------------------------------ 8. InceptionV3's aux head


@pytest.mark.parametrize("protocol", ["marsbench", "probe"])
def test_reference_inception_aux_head_stays_frozen_at_its_init(domars: Path,
                                                              protocol: str) -> None:
    experiment = ClassificationExperiment(Setup(domars, "inception_v3", pretrained=False,
                                                protocol=protocol))
    assert experiment.split("train").images.input_size == 299
    initial = experiment.build_model(HP, seed=0)
    aux = initial.heads["aux"]
    assert isinstance(aux, nn.Linear) and (aux.in_features, aux.out_features) == (768, 15)
    reference = protocol == "marsbench"
    # InceptionV3.py: freeze everything, then re-enable `fc` only; AuxLogits.fc stays frozen
    assert all(p.requires_grad is not reference for p in aux.parameters())
    assert all(p.requires_grad for p in initial.heads["main"].parameters())

    # the training loss is main + 0.4 x aux in both; in marsbench the aux logits carry no
    # gradient, so the aux term moves nothing (the reference's _common_step)
    images = torch.stack([experiment.split("train").images[i][0] for i in range(2)])
    targets = torch.tensor([0, 3])
    train_mode(initial, "train")
    outputs = initial(images)
    loss_fn = experiment.loss_fn(HP)
    total = training_loss(loss_fn, outputs, targets)
    by_hand = (F.cross_entropy(outputs["main"], targets)
               + 0.4 * F.cross_entropy(outputs["aux"], targets))
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert outputs["aux"].requires_grad is not reference

    fitted, _ = experiment.fit(HP, seed=0)
    unchanged = torch.equal(fitted.heads["aux"].weight, initial.heads["aux"].weight)
    assert unchanged is reference  # marsbench: still its random init; probe: trained
    assert not torch.equal(fitted.heads["main"].weight, initial.heads["main"].weight)
