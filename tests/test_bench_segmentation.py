"""Segmentation models, losses and scores (CPU, random init, tiny inputs, no downloads)."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marseval.bench.model_building import trainable_parameters
from marseval.bench.segmentation.losses import SEGMENTATION_LOSSES, segmentation_loss
from marseval.bench.segmentation.metrics import SegmentationScorer
from marseval.bench.segmentation.models import (
    DPT_DEFAULT_ENCODER,
    SEGMENTATION_ARCHS,
    Segmenter,
    build_segmenter,
    parse_segmenter_name,
)
from marseval.bench.training import train_mode
from marseval.errors import MarsevalError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_VIT = "dpt:tu-test_vit"  # timm's test ViT: patch 16, width 64, a few blocks


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty weight caches and offline mode: a test that tried to download would fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("MARSEVAL_OFFLINE", "1")
    from huggingface_hub import constants

    # huggingface_hub read HF_HOME at import; point the already-imported module at the tmp cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- models

# name -> input size for the training-step test (the smallest each encoder takes comfortably)
TINY_MODELS = {
    "unet:resnet18": 64,
    "deeplabv3plus:resnet18": 64,
    "segformer:resnet18": 64,
    "segformer:mit_b0": 64,
    TINY_VIT: 64,
}


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_feature_extraction_trains_decoder_and_head_only(name: str) -> None:
    size, classes = TINY_MODELS[name], 3
    torch.manual_seed(0)
    segmenter = build_segmenter(name, classes, pretrained=False,
                                training_type="feature_extraction", input_size=size)
    model = segmenter.module
    assert isinstance(segmenter, Segmenter) and segmenter.input_size == size
    # the encoder is a direct child with every parameter frozen, in eval mode from the start
    assert any(child is model.encoder for child in model.children())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training
    encoder_state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    if "resnet" in name:  # the BatchNorm running statistics are part of what must not move
        assert any(k.endswith("running_mean") for k in encoder_state)
    decoder_params = {k: p.detach().clone() for k, p in model.decoder.named_parameters()}

    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    train_mode(model)  # the training loop's model.train(): frozen children go back to eval
    assert model.training and model.decoder.training and not model.encoder.training
    assert not any(m.training for m in model.encoder.modules())
    images = torch.randn(2, 3, size, size)
    masks = torch.randint(0, classes, (2, size, size))
    loss = segmentation_loss("cross_entropy", classes)(model(images), masks)
    assert torch.isfinite(loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_state[key]), key
    assert any(not torch.equal(p, decoder_params[k]) for k, p in model.decoder.named_parameters())

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 3, size, size))
    assert logits.shape == (3, classes, size, size)
    assert torch.isfinite(logits).all()


def test_transfer_learning_trains_the_encoder_too() -> None:
    model = build_segmenter("unet:resnet18", 2, pretrained=False,
                            training_type="transfer_learning", input_size=64).module
    assert all(p.requires_grad for p in model.parameters())
    train_mode(model)
    assert model.encoder.training


def _build(seed: int, training_type: str = "feature_extraction", **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_segmenter("unet:resnet18", 3, pretrained=False, training_type=training_type,
                           input_size=64, **kwargs).module


def test_random_encoder_comes_from_a_fixed_seed_and_the_rest_from_the_callers() -> None:
    a, b, a_again = _build(1), _build(2), _build(1)
    assert _states_equal(a.encoder, b.encoder)  # every run seed shares the frozen encoder
    assert not _states_equal(a.decoder, b.decoder)
    assert not _states_equal(a.segmentation_head, b.segmentation_head)
    assert _states_equal(a, a_again)
    assert not _states_equal(a.encoder, _build(1, init_seed=7).encoder)
    # transfer learning from a random init shares the same encoder
    assert _states_equal(a.encoder, _build(3, "transfer_learning").encoder)
    # scratch (and init_seed=None) draw the encoder from the caller's RNG as well
    assert not _states_equal(_build(1, "scratch").encoder, _build(2, "scratch").encoder)
    assert _states_equal(_build(1, "scratch"), _build(1, "scratch"))
    assert not _states_equal(_build(1, init_seed=None).encoder, _build(2, init_seed=None).encoder)


@pytest.mark.parametrize(
    ("name", "display", "mean", "std"),
    [
        ("unet:resnet34", "U-Net (ResNet34)", IMAGENET_MEAN, IMAGENET_STD),
        ("deeplabv3plus:resnet34", "DeepLabV3+ (ResNet34)", IMAGENET_MEAN, IMAGENET_STD),
        ("segformer:resnet34", "SegFormer (ResNet34)", IMAGENET_MEAN, IMAGENET_STD),
        ("segformer:mit_b0", "SegFormer (MiT-B0)", IMAGENET_MEAN, IMAGENET_STD),
        ("dpt:vit_base_patch16_224", "DPT (ViT-B/16)", (0.5,) * 3, (0.5,) * 3),
    ],
)
def test_paper_models_default_to_224_and_their_encoders_statistics(
    name: str, display: str, mean: tuple, std: tuple
) -> None:
    # ViT-B/16 on the meta device: shapes without arithmetic (MiT's init needs real tensors)
    device = torch.device("meta" if name.startswith("dpt") else "cpu")
    with device:
        segmenter = build_segmenter(name, 5, pretrained=False, training_type="scratch")
        with torch.no_grad():
            logits = segmenter.module.eval()(torch.zeros(1, 3, 224, 224))
    assert segmenter.display_name == display
    assert segmenter.input_size == 224
    assert segmenter.mean == pytest.approx(mean) and segmenter.std == pytest.approx(std)
    assert logits.shape == (1, 5, 224, 224)


def test_dpt_names_resolve_to_timm_vits() -> None:
    assert parse_segmenter_name("dpt:vit_base_patch16_224") == ("dpt", DPT_DEFAULT_ENCODER)
    assert parse_segmenter_name("dpt:" + DPT_DEFAULT_ENCODER) == ("dpt", DPT_DEFAULT_ENCODER)
    assert parse_segmenter_name("dpt:test_vit") == ("dpt", "tu-test_vit")
    assert parse_segmenter_name("DeepLabV3Plus:resnet34") == ("deeplabv3plus", "resnet34")
    assert set(SEGMENTATION_ARCHS) == {"unet", "deeplabv3plus", "segformer", "dpt"}


@pytest.mark.parametrize(
    "name",
    ["unet", "unet:", "pspnet:resnet18", "unet:resnet_9000", "unet:tu-not_a_model_xyz",
     "dpt:resnet18"],
)
def test_bad_model_names_are_clear_errors(name: str) -> None:
    with pytest.raises(MarsevalError) as info:
        build_segmenter(name, 3, pretrained=False, training_type="scratch", input_size=64)
    message = str(info.value)
    assert repr(name) in message
    if name == "unet:resnet_9000":
        assert "close matches" in message and "resnet18" in message
    if name.startswith("pspnet"):
        assert "deeplabv3plus" in message


def test_bad_sizes_and_training_types_are_clear_errors() -> None:
    with pytest.raises(MarsevalError, match="multiple of 32"):
        build_segmenter("unet:resnet18", 3, False, "scratch", input_size=100)
    with pytest.raises(MarsevalError, match="multiple of 16"):
        build_segmenter(TINY_VIT, 3, False, "scratch", input_size=72)
    with pytest.raises(MarsevalError, match="fine_tuning"):
        build_segmenter("unet:resnet18", 3, False, "fine_tuning")


@pytest.mark.parametrize("var", ["MARSEVAL_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize(
    ("name", "repo"),
    [("unet:resnet18", "smp-hub/resnet18.imagenet"), (TINY_VIT, "timm/test_vit.r160_in1k")],
)
def test_offline_missing_weights_name_the_repo_and_the_variable(
    var: str, name: str, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MARSEVAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(MarsevalError) as info:
        build_segmenter(name, 3, pretrained=True, training_type="feature_extraction",
                        input_size=64)
    message = str(info.value)
    assert repr(name) in message and repo in message and var in message


# --------------------------------------------------------------------------- losses


def _generalized_dice_by_hand(logits: torch.Tensor, mask: torch.Tensor, weighting: str) -> float:
    """Generalized Dice as MONAI computes it (batch=True), written out per class."""
    x = logits.double().numpy()
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)  # softmax over classes
    classes = x.shape[1]
    g = np.stack([mask.numpy() == k for k in range(classes)], axis=1).astype(np.float64)
    weights, inter, total = [], [], []
    for k in range(classes):
        volume = g[:, k].sum()  # over the batch and the pixels
        if weighting == "square":
            weights.append(1 / volume**2 if volume else np.inf)
        elif weighting == "simple":
            weights.append(1 / volume if volume else np.inf)
        else:
            weights.append(1.0)
        inter.append((p[:, k] * g[:, k]).sum())
        total.append(p[:, k].sum() + g[:, k].sum())
    # MONAI: a class absent from the batch (infinite weight) gets the largest finite weight
    largest = max(w for w in weights if np.isfinite(w))
    weights = [w if np.isfinite(w) else largest for w in weights]
    numerator = 2 * sum(w * i for w, i in zip(weights, inter, strict=True)) + 1e-5
    denominator = sum(w * t for w, t in zip(weights, total, strict=True)) + 1e-5
    return 1 - numerator / denominator


def test_generalized_dice_on_a_hand_computed_example() -> None:
    # zero logits: p = 1/3 everywhere; 6 pixels, true class 0 on 4, class 1 on 2, class 2 absent
    # per class: intersections 4/3, 2/3, 0; sum p = 2 each; sum g = 4, 2, 0
    # square: w = 1/16, 1/4, (inf ->) 1/4: 1 - 2(4/3/16 + 2/3/4) / (6/16 + 4/4 + 2/4)
    #   = 1 - (1/2) / (15/8) = 11/15
    # simple: w = 1/4, 1/2, 1/2: 1 - 2(1/3 + 1/3) / (6/4 + 4/2 + 2/2) = 1 - (4/3) / (9/2) = 19/27
    # linear: w = 1: 1 - 2(4/3 + 2/3) / (6 + 4 + 2) = 1 - 4/12 = 2/3
    logits = torch.zeros(2, 3, 1, 3)
    mask = torch.tensor([[[0, 0, 1]], [[0, 1, 0]]])
    expected = {"square": (Fraction(1, 2), Fraction(15, 8)),
                "simple": (Fraction(4, 3), Fraction(9, 2)),
                "linear": (Fraction(4), Fraction(12))}
    for weighting, (numerator, denominator) in expected.items():
        loss = segmentation_loss(f"generalized_dice_{weighting}", 3)(logits, mask)
        value = 1 - (float(numerator) + 1e-5) / (float(denominator) + 1e-5)
        assert loss.item() == pytest.approx(value, abs=1e-6), weighting
        assert value == pytest.approx(_generalized_dice_by_hand(logits, mask, weighting))

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    mask = torch.randint(0, 3, (2, 3, 5))  # class 3 absent: MONAI's infinite-weight path
    for weighting in ("square", "simple", "linear"):
        loss = segmentation_loss(f"generalized_dice_{weighting}", 4)(logits, mask)
        assert loss.item() == pytest.approx(
            _generalized_dice_by_hand(logits, mask, weighting), abs=1e-6
        ), weighting


def test_every_loss_is_finite_and_combined_is_the_sum_of_its_parts() -> None:
    from segmentation_models_pytorch.losses import DiceLoss

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    mask = torch.randint(0, 4, (3, 8, 8))
    values = {name: segmentation_loss(name, 4)(logits, mask) for name in SEGMENTATION_LOSSES}
    for name, value in values.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert values["cross_entropy"].item() == pytest.approx(F.cross_entropy(logits, mask).item())
    expected_dice = DiceLoss("multiclass", from_logits=True)(logits, mask)
    assert values["dice"].item() == pytest.approx(expected_dice.item())
    assert values["combined"].item() == pytest.approx(
        values["cross_entropy"].item() + values["generalized_dice_square"].item(), abs=1e-6
    )
    values["combined"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_losses_without_monai_do_not_import_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # any `import monai...` now fails, also where an earlier test imported it already
    for module in [m for m in sys.modules if m == "monai" or m.startswith("monai.")] + ["monai"]:
        monkeypatch.setitem(sys.modules, module, None)
    segmentation_loss("cross_entropy", 3)
    segmentation_loss("dice", 3)
    with pytest.raises(ImportError):
        segmentation_loss("generalized_dice_square", 3)


def test_unknown_loss_is_a_clear_error() -> None:
    with pytest.raises(MarsevalError) as info:
        segmentation_loss("focal", 3)
    assert "'focal'" in str(info.value) and "generalized_dice_linear" in str(info.value)


# --------------------------------------------------------------------------- scores


def test_scores_on_a_hand_computed_example() -> None:
    scorer = SegmentationScorer(3)
    truth = torch.tensor([[[0, 0, 1], [0, 1, 1]], [[0, 0, 0], [0, 0, 0]]])
    preds = torch.tensor([[[0, 1, 1], [0, 0, 1]], [[0, 0, 0], [0, 0, 1]]])
    scorer.update(preds[:1], truth[:1])
    scorer.update(preds[1], truth[1])  # a single (H, W) image
    result = scorer.compute()
    # image 1: class 0 |P∩G| = 2, |P∪G| = 4 -> 1/2; class 1: 2 / 4 -> 1/2
    # image 2: class 0: 5 / 6; class 1: 0 / 1 (predicted only) -> 0; class 2 never appears
    # per class: (1/2 + 5/6) / 2 = 2/3, (1/2 + 0) / 2 = 1/4; iou = (2/3 + 1/4) / 2 = 11/24
    assert result["iou_per_class"] == pytest.approx([2 / 3, 1 / 4, None])
    assert result["iou"] == pytest.approx(11 / 24)
    # all pixels: class 0 TP 7, FP 1, FN 2 -> 7/10; class 1 TP 2, FP 2, FN 1 -> 2/5
    assert result["miou_per_class"] == pytest.approx([7 / 10, 2 / 5, None])
    assert result["miou"] == pytest.approx(11 / 20)
    # Dice: 14 / 17 and 4 / 7 -> mean 83 / 119
    assert result["dice"] == pytest.approx(83 / 119)
    assert result["pixel_accuracy"] == pytest.approx(9 / 12)
    assert result["n_images"] == 2
    json.dumps(result)  # plain Python values only


def _reference_scores(images: list[tuple[np.ndarray, np.ndarray]], classes: int) -> dict:
    """Straightforward per-image, per-class loops."""
    per_class: list[list[float]] = [[] for _ in range(classes)]
    tp, fp, fn = np.zeros(classes), np.zeros(classes), np.zeros(classes)
    for pred, true in images:
        for k in range(classes):
            p, g = pred == k, true == k
            union = np.logical_or(p, g).sum()
            if union:
                per_class[k].append(np.logical_and(p, g).sum() / union)
            tp[k] += np.logical_and(p, g).sum()
            fp[k] += np.logical_and(p, ~g).sum()
            fn[k] += np.logical_and(~p, g).sum()
    iou = [float(np.mean(v)) for v in per_class if v]
    present = [k for k in range(classes) if tp[k] + fp[k] + fn[k] > 0]
    return {
        "iou": float(np.mean(iou)),
        "miou": float(np.mean([tp[k] / (tp[k] + fp[k] + fn[k]) for k in present])),
        "dice": float(np.mean([2 * tp[k] / (2 * tp[k] + fp[k] + fn[k]) for k in present])),
        "present": present,
    }


def test_scores_match_a_reference_implementation_and_scikit_learn() -> None:
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(0)
    classes = 6  # class 5 never drawn: dropped
    images = []
    for _ in range(10):
        true = rng.choice(5, size=(7, 9), p=[0.6, 0.2, 0.1, 0.07, 0.03])
        pred = np.where(rng.random((7, 9)) < 0.7, true, rng.integers(0, 5, (7, 9)))
        images.append((pred, true))
    images.append((rng.integers(0, 3, (5, 4)), rng.integers(0, 2, (5, 4))))  # another size
    scorer = SegmentationScorer(classes)
    start = 0
    for size in (1, 3, 2, 4):  # batched updates of different sizes
        batch = images[start : start + size]
        scorer.update(torch.as_tensor(np.stack([p for p, _ in batch])),
                      torch.as_tensor(np.stack([t for _, t in batch])))
        start += size
    scorer.update(torch.as_tensor(images[-1][0]), torch.as_tensor(images[-1][1]))
    result = scorer.compute()

    reference = _reference_scores(images, classes)
    for key in ("iou", "miou", "dice"):
        assert abs(result[key] - reference[key]) < 1e-9, key
    assert result["iou_per_class"][5] is None and result["miou_per_class"][5] is None
    assert result["n_images"] == 11

    all_pred = np.concatenate([p.ravel() for p, _ in images])
    all_true = np.concatenate([t.ravel() for _, t in images])
    labels = reference["present"]
    jaccard = jaccard_score(all_true, all_pred, labels=labels, average=None)
    f1 = f1_score(all_true, all_pred, labels=labels, average=None)
    assert abs(result["miou"] - float(np.mean(jaccard))) < 1e-9
    assert abs(result["dice"] - float(np.mean(f1))) < 1e-9
    assert result["pixel_accuracy"] == pytest.approx(float(np.mean(all_pred == all_true)))


def test_scorer_rejects_bad_input() -> None:
    scorer = SegmentationScorer(3)
    with pytest.raises(MarsevalError, match="no images"):
        scorer.compute()
    with pytest.raises(MarsevalError, match="class id 3"):
        scorer.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(MarsevalError, match="class id -1"):
        scorer.update(torch.tensor([[0, 1]]), torch.tensor([[0, -1]]))
    ids = torch.zeros(1, 2, 2, dtype=torch.int64)
    with pytest.raises(MarsevalError, match="differ in shape"):
        scorer.update(ids, torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(MarsevalError, match="integer class ids"):
        scorer.update(ids.float(), ids)
    assert scorer.n_images == 0  # nothing half-counted
