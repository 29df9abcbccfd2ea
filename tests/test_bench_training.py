"""Classification metrics, losses and the generic training loop (CPU, toy tensors)."""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from marseval.bench.classification.losses import classification_loss, num_outputs
from marseval.bench.classification.metrics import classification_metrics, primary_metric_name
from marseval.bench.training import (
    OPTIMIZERS,
    SCHEDULES,
    FitResult,
    HParams,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    seed_everything,
    trainable_state,
    training_loss,
)
from marseval.errors import MarsevalError

SEEDS = [0, 1, 2, 3, 4]


def sk_f1(y, p, **kw) -> np.ndarray | float:
    """scikit-learn's F1 with its default zero-division convention (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f1_score(y, p, **kw)


def assert_close(a, b) -> None:
    assert np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("width", [None, 1, 2])
def test_binary_f1_matches_sklearn(seed: int, width: int | None) -> None:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (60,), generator=g)
    shape = (60,) if width is None else (60, width)
    logits = torch.randn(shape, generator=g)
    pred = (logits.reshape(-1) > 0).long() if width != 2 else logits.argmax(1)
    m = classification_metrics("binary", logits, y, 2)
    assert_close(m["f1"], sk_f1(y, pred, average="binary"))
    assert_close(m["macro_f1"], sk_f1(y, pred, average="macro"))
    assert_close(m["per_class_f1"], sk_f1(y, pred, average=None, labels=[0, 1]))
    assert_close(m["accuracy"], accuracy_score(y, pred))


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_f1_matches_sklearn_with_an_absent_class(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    classes = 5
    y = torch.randint(0, classes - 1, (80,), generator=g)  # class 4 never a target ...
    logits = torch.randn(80, classes, generator=g)
    logits[:, 4] = -1e9  # ... and never predicted
    pred = logits.argmax(1)
    m = classification_metrics("multiclass", logits, y, classes)
    assert_close(m["f1"], sk_f1(y, pred, average="weighted"))
    # sklearn infers labels from targets and predictions, so the absent class is not averaged
    assert_close(m["macro_f1"], sk_f1(y, pred, average="macro"))
    assert_close(m["per_class_f1"], sk_f1(y, pred, average=None, labels=list(range(classes))))
    assert m["per_class_f1"][4] == 0.0
    assert_close(m["accuracy"], accuracy_score(y, pred))


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_f1_matches_sklearn_with_an_absent_label(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = 4
    y = torch.randint(0, 2, (70, labels), generator=g)
    logits = torch.randn(70, labels, generator=g)
    y[:, 3], logits[:, 3] = 0, -5.0  # label 3: no positives, never predicted
    pred = (torch.sigmoid(logits) > 0.5).long()
    m = classification_metrics("multilabel", logits, y, labels)
    assert_close(m["f1"], sk_f1(y, pred, average="weighted"))
    assert_close(m["macro_f1"], sk_f1(y, pred, average="macro"))
    assert_close(m["per_class_f1"], sk_f1(y, pred, average=None))
    # documented: multilabel accuracy is the micro (per decision) accuracy, not exact match
    assert_close(m["accuracy"], (pred == y).float().mean())


def test_binary_f1_by_hand() -> None:
    y = torch.tensor([1, 1, 1, 0, 0])
    logits = torch.tensor([2.0, 1.0, -1.0, 3.0, -2.0])  # TP=2, FN=1, FP=1, TN=1
    m = classification_metrics("binary", logits, y, 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class_f1"] == pytest.approx([1 / 2, 2 / 3])
    assert m["macro_f1"] == pytest.approx(7 / 12)


def test_logits_inside_unit_interval_are_still_logits() -> None:
    # torchmetrics would threshold such float inputs at 0.5 without a sigmoid
    y = torch.tensor([1, 1, 1])
    m = classification_metrics("binary", torch.tensor([0.3, 0.2, 0.1]), y, 2)
    assert m["f1"] == 1.0
    ml = classification_metrics(
        "multilabel", torch.tensor([[0.3, -0.1]]), torch.tensor([[1, 0]]), 2
    )
    assert ml["f1"] == 1.0


def test_primary_metric_names_and_bad_input() -> None:
    assert primary_metric_name("binary") == "f1_positive_class"
    assert primary_metric_name("multiclass") == primary_metric_name("multilabel") == "f1_weighted"
    with pytest.raises(MarsevalError, match="semantic"):
        primary_metric_name("semantic")
    with pytest.raises(MarsevalError):
        classification_metrics("multilabel", torch.zeros(3, 2), torch.zeros(3, 3), 3)
    with pytest.raises(MarsevalError):
        classification_metrics("binary", torch.zeros(3), torch.zeros(2), 2)


# ---------------------------------------------------------------------------------------------
# losses


def test_num_outputs_table_and_bad_combinations() -> None:
    assert num_outputs("binary", 2, "cross_entropy") == 2
    assert num_outputs("binary", 2, "bce") == 1
    assert num_outputs("multiclass", 7, "cross_entropy") == 7
    assert num_outputs("multilabel", 5, "bce") == 5
    for subtask, loss in [("multiclass", "bce"), ("multilabel", "cross_entropy")]:
        with pytest.raises(MarsevalError, match=f"{loss}.*{subtask}"):
            num_outputs(subtask, 3, loss)
        with pytest.raises(MarsevalError, match=f"{loss}.*{subtask}"):
            classification_loss(subtask, loss)
    with pytest.raises(MarsevalError, match="focal"):
        classification_loss("binary", "focal")


def test_binary_bce_by_hand() -> None:
    logits, y = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1, 0, 0])

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = -(math.log(sig(0.5)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(2.0))) / 3
    loss = classification_loss("binary", "bce")
    assert loss(logits, y).item() == pytest.approx(expected, abs=1e-6)
    assert loss(logits[:, None], y).item() == pytest.approx(expected, abs=1e-6)


def test_cross_entropy_and_multilabel_bce_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g)
    ce = classification_loss("multiclass", "cross_entropy")(logits, y)
    assert torch.equal(ce, F.cross_entropy(logits, y))
    hot = torch.randint(0, 2, (6, 3), generator=g)
    bce = classification_loss("multilabel", "bce")(logits, hot)
    assert torch.equal(bce, F.binary_cross_entropy_with_logits(logits, hot.float()))


# ---------------------------------------------------------------------------------------------
# training: helpers


def hparams(**kw) -> HParams:
    base = dict(
        lr=0.05,
        weight_decay=0.0,
        batch_size=16,
        optimizer="adam",
        lr_schedule="none",
        max_epochs=30,
        patience=5,
        loss="cross_entropy",
    )
    return HParams(**{**base, **kw})


def separable(seed: int = 0, n: int = 240, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, generator=g) > 0).long()
    cut = n * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def batches(data, size: int, shuffle: bool):
    x, y = data
    # the global RNG on purpose: resuming must restore it
    order = torch.randperm(len(x)) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), size):
        yield x[order[i : i + size]], y[order[i : i + size]]


def xy_step(model: nn.Module, batch):
    x, y = batch
    return model(x), y


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def run(hp: HParams, data=None, seed: int = 0, fail_at: int | None = None, **kw) -> FitResult:
    """Seed, build the MLP, fit on the separable problem; raise from train_batches at `fail_at`."""
    train, val = data or separable()
    seed_everything(seed)
    model = mlp()

    def train_batches(epoch: int):
        if epoch == fail_at:
            raise KeyboardInterrupt
        return batches(train, hp.batch_size, shuffle=True)

    return fit(
        model,
        xy_step,
        train_batches,
        lambda: batches(val, 64, shuffle=False),
        classification_loss("binary", hp.loss),
        hp,
        **kw,
    )


def assert_same(a: FitResult, b: FitResult) -> None:
    assert (a.best_epoch, a.epochs_run, a.state_epoch) == (
        b.best_epoch,
        b.epochs_run,
        b.state_epoch,
    )
    assert a.best_val_loss == b.best_val_loss
    assert a.history == b.history  # exact floats
    assert a.best_state.keys() == b.best_state.keys()
    for key in a.best_state:
        assert torch.equal(a.best_state[key], b.best_state[key]), key


class Scripted:
    """A one-weight model whose validation loss per epoch is given; SGD moves the weight."""

    def __init__(self, val_losses: list[float]) -> None:
        self.val_losses = val_losses
        self.model = nn.Linear(1, 1, bias=False)
        self.weights: dict[int, torch.Tensor] = {}  # weight seen at each epoch's validation
        self.epoch = 0

    def train_batches(self, epoch: int):
        self.epoch = epoch
        return [("train", torch.zeros(1))]

    def val_batches(self):
        return [("val", torch.zeros(1))]

    def step(self, model: nn.Module, batch):
        kind, y = batch
        if kind == "train":
            return model(torch.ones(1, 1)).reshape(1), y
        self.weights[self.epoch] = model.weight.detach().clone()
        return torch.tensor([self.val_losses[self.epoch - 1]]), y

    def fit(self, hp: HParams, **kw) -> FitResult:
        return fit(
            self.model,
            self.step,
            self.train_batches,
            self.val_batches,
            lambda out, y: out.mean(),
            hp,
            **kw,
        )


def scripted_hp(**kw) -> HParams:
    return hparams(**{"lr": 0.1, "optimizer": "sgd", "max_epochs": 20, "patience": 2, **kw})


# ---------------------------------------------------------------------------------------------
# training: behaviour


def test_fit_learns_a_separable_problem() -> None:
    train, val = separable()
    result = run(hparams(), (train, val))
    seed_everything(0)
    model = mlp()
    model.load_state_dict(result.best_state)
    outputs, y = evaluate(model, xy_step, batches(val, 64, shuffle=False))
    assert classification_metrics("binary", outputs, y, 2)["accuracy"] > 0.95
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert [h["epoch"] for h in result.history] == list(range(1, result.epochs_run + 1))
    assert result.seconds > 0


def test_constant_validation_loss_stops_after_patience() -> None:
    result = run(hparams(lr=0.0, patience=2))  # lr 0: weights and val loss never change
    assert (result.epochs_run, result.best_epoch) == (3, 1)
    assert len({h["val_loss"] for h in result.history}) == 1


def test_min_delta_resets_patience_but_best_state_is_strict_minimum() -> None:
    s = Scripted([1.0, 1 - 1 / 256, 1 - 2 / 256, 0.5])  # exact in float32
    result = s.fit(scripted_hp(patience=2))
    # neither beats 1.0 by 0.01: stop at epoch 3; epoch 3 still has the lowest loss
    assert (result.epochs_run, result.best_epoch, result.best_val_loss) == (3, 3, 1 - 2 / 256)
    assert torch.equal(result.best_state["weight"], s.weights[3])


def test_selection_last_versus_best() -> None:
    losses = [1.0, 0.5, 0.8, 0.9]
    best, last = Scripted(losses), Scripted(losses)
    rb = best.fit(scripted_hp())
    rl = last.fit(scripted_hp(), selection="last")
    assert rb.best_epoch == rl.best_epoch == 2 and rb.epochs_run == rl.epochs_run == 4
    assert (rb.state_epoch, rl.state_epoch) == (2, 4)
    assert torch.equal(rb.best_state["weight"], best.weights[2])
    assert torch.equal(rl.best_state["weight"], last.weights[4])
    assert not torch.equal(rb.best_state["weight"], rl.best_state["weight"])
    assert torch.equal(best.model.weight.detach(), best.weights[2])  # the model holds it too
    with pytest.raises(MarsevalError, match="selection"):
        Scripted(losses).fit(scripted_hp(), selection="middle")


@pytest.mark.parametrize(
    ("losses", "patience", "expected"),
    [
        ([1.0, float("nan"), 0.1], 5, (2, 1, 1.0)),  # a non-finite loss stops training
        ([float("nan")], 5, (1, 0, math.inf)),  # never finite: no best epoch
        ([1.0, 1.0, 0.1], 0, (2, 1, 1.0)),  # patience 0: first non-improving epoch stops
        ([1.0, 0.5, 0.25], 5, (3, 3, 0.25)),  # max_epochs
    ],
)
def test_stopping_rules(losses, patience, expected) -> None:
    result = Scripted(losses).fit(scripted_hp(patience=patience, max_epochs=3))
    assert (result.epochs_run, result.best_epoch, result.best_val_loss) == expected


@pytest.mark.parametrize(("optimizer", "schedule"), list(itertools.product(OPTIMIZERS, SCHEDULES)))
def test_every_optimizer_and_schedule_runs(optimizer: str, schedule: str) -> None:
    result = run(hparams(optimizer=optimizer, lr_schedule=schedule, max_epochs=1))
    assert result.epochs_run == 1 and math.isfinite(result.best_val_loss)


def lrs(result: FitResult) -> list[float]:
    return [h["lr"] for h in result.history]


def test_schedules_follow_their_formulas() -> None:
    falling = [1.0 - 0.1 * i for i in range(6)]
    cosine = Scripted(falling).fit(scripted_hp(lr_schedule="cosine", max_epochs=6))
    expected = [0.1 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)]
    assert lrs(cosine) == pytest.approx(expected)
    step = Scripted(falling).fit(scripted_hp(lr_schedule="step", max_epochs=6))
    assert lrs(step) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # plateau: patience 4 // 2 = 2 on the validation loss; the 4th flat epoch cuts the rate
    plateau = Scripted([1.0] * 6).fit(scripted_hp(lr_schedule="plateau", patience=4))
    assert plateau.epochs_run == 5
    assert lrs(plateau) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01])


def test_make_optimizer_and_scheduler() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt = make_optimizer(model.parameters(), hparams(optimizer="sgd", weight_decay=0.1))
    group = opt.param_groups[0]
    assert len(group["params"]) == 2 and group["momentum"] == 0.9 and group["weight_decay"] == 0.1
    assert make_scheduler(opt, hparams(lr_schedule="none")) is None
    plateau = make_scheduler(opt, hparams(lr_schedule="plateau", patience=1))
    assert plateau.patience == 1 and plateau.factor == 0.1
    step = make_scheduler(opt, hparams(lr_schedule="step", max_epochs=2))
    assert step.step_size == 1
    model.requires_grad_(False)
    with pytest.raises(MarsevalError, match="no trainable"):
        make_optimizer(model.parameters(), hparams())


def test_hparams_validate_and_coerce() -> None:
    hp = hparams(lr=1, batch_size=np.int64(8), max_epochs=3.0, optimizer=np.str_("sgd"))
    assert isinstance(hp.lr, float) and type(hp.batch_size) is int and type(hp.max_epochs) is int
    assert type(hp.optimizer) is str
    for bad in [dict(optimizer="rmsprop"), dict(lr_schedule="linear"), dict(loss="focal"),
                dict(batch_size=0), dict(max_epochs=2.5), dict(lr=-1.0)]:  # fmt: skip
        with pytest.raises(MarsevalError):
            hparams(**bad)


def test_frozen_submodules_stay_in_eval_mode() -> None:
    backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Dropout(0.1), nn.Linear(4, 2))
    stats = backbone[1].running_mean.clone()
    modes = []

    def step(m: nn.Module, batch):
        modes.append((backbone.training, m[1].training))
        return xy_step(m, batch)

    train, val = separable()
    result = fit(
        model,
        step,
        lambda e: batches(train, 16, True),
        lambda: batches(val, 64, False),
        classification_loss("binary", "cross_entropy"),
        hparams(max_epochs=2),
    )
    assert (False, True) in modes  # training batches: backbone eval, head dropout on
    assert torch.equal(backbone[1].running_mean, stats)
    # the state holds trainable parameters and buffers, not frozen weights
    assert set(result.best_state) == {"0.1.running_mean", "0.1.running_var",
                                      "0.1.num_batches_tracked", "2.weight", "2.bias"}  # fmt: skip
    assert set(trainable_state(model)) == set(result.best_state)


def test_inception_aux_loss() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return {"main": self.main(x), "aux": self.aux(x)}

    torch.manual_seed(0)
    model = TwoHeads()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss_fn = classification_loss("multiclass", "cross_entropy")
    with torch.no_grad():
        main, aux = model.main(x), model.aux(x)
    by_hand = F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y)
    assert training_loss(loss_fn, model(x), y).item() == pytest.approx(by_hand.item(), abs=1e-6)

    result = fit(model, xy_step, lambda e: [(x, y)], lambda: [(x, y)], loss_fn,
                 hparams(lr=0.0, max_epochs=1))  # fmt: skip
    assert result.history[0]["train_loss"] == pytest.approx(by_hand.item(), abs=1e-6)
    assert result.history[0]["val_loss"] == pytest.approx(F.cross_entropy(main, y).item(), abs=1e-6)
    outputs, targets = evaluate(model, xy_step, [(x[:5], y[:5]), (x[5:], y[5:])])
    assert torch.allclose(outputs, main) and torch.equal(targets, y) and not model.training


# ---------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize(
    ("optimizer", "schedule"), [("adam", "cosine"), ("sgd", "plateau"), ("adamw", "step")]
)
def test_resume_after_interruption_gives_the_same_result(tmp_path: Path, optimizer, schedule):
    hp = hparams(optimizer=optimizer, lr_schedule=schedule, lr=0.01, max_epochs=8, patience=3)
    reference = run(hp, checkpoint=tmp_path / "reference.ckpt")
    assert reference.epochs_run > 3
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(hp, checkpoint=ckpt, fail_at=3)
    assert ckpt.exists() and not list(tmp_path.glob(".*.tmp"))
    resumed = run(hp, checkpoint=ckpt, seed=99)  # the checkpoint's RNG state wins over the seed
    assert_same(resumed, reference)
    assert ckpt.exists()  # kept for the caller to remove
    # a finished checkpoint returns its result without training again
    again = run(hp, checkpoint=ckpt, seed=7, fail_at=reference.epochs_run + 1)
    assert_same(again, reference)


def test_corrupt_checkpoint_is_discarded(tmp_path: Path, caplog) -> None:
    hp = hparams(max_epochs=6)
    fresh = run(hp)
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"\x00garbage, not a torch file")
    with caplog.at_level(logging.WARNING, logger="marseval.bench.training"):
        result = run(hp, checkpoint=ckpt)
    assert "discarding training checkpoint" in caplog.text
    assert_same(result, fresh)

    # truncated file, and a checkpoint written with other hyperparameters
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert_same(run(hp, checkpoint=ckpt), fresh)
    run(hparams(max_epochs=2), checkpoint=ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="marseval.bench.training"):
        assert_same(run(hp, checkpoint=ckpt), fresh)
    assert "other hyperparameters" in caplog.text


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    run(hparams(max_epochs=2, lr_schedule="plateau"), checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 2 and state["finished"] and len(state["history"]) == 2


def test_progress_bar_goes_to_stderr(capsys) -> None:
    run(hparams(max_epochs=2), progress="trial 1/4")
    err = capsys.readouterr().err
    assert "trial 1/4" in err and "2/2" in err


def test_checkpoint_of_another_model_is_discarded(tmp_path: Path, caplog) -> None:
    hp = hparams(max_epochs=3)
    ckpt = tmp_path / "run.ckpt"
    Scripted([1.0, 0.9, 0.8]).fit(hp, checkpoint=ckpt)  # same settings, a one-weight model
    with caplog.at_level(logging.WARNING, logger="marseval.bench.training"):
        assert_same(run(hp, checkpoint=ckpt), run(hp))
    assert "does not fit this model" in caplog.text
