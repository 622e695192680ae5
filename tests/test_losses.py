"""Value tests for medbundle.losses against hand-computed cases, torchvision, MONAI, PyTorch and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import FocalLoss as MonaiFocalLoss
from sklearn.utils.class_weight import compute_class_weight
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from medbundle.losses import (
    LOSS_NAMES,
    ClassBalancedLoss,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    WeightedBCEWithLogitsLoss,
    WeightedCrossEntropyLoss,
    build_loss,
    class_weights_from_counts,
    effective_number_weights,
)

NAN = float("nan")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------- SigmoidFocalLoss


def test_sigmoid_focal_hand_computed() -> None:
    # x=0 -> p=0.5, t=1: p_t=0.5, alpha_t=0.25: FL = 0.25 * 0.5**2 * ln 2
    # x=ln 3 -> p=0.75, t=0: p_t=0.25, alpha_t=0.75: FL = 0.75 * 0.75**2 * ln 4
    x = torch.tensor([[0.0, math.log(3.0)]])
    t = torch.tensor([[1.0, 0.0]])
    expected = torch.tensor([[0.25 * 0.25 * math.log(2.0), 0.75 * 0.5625 * math.log(4.0)]])
    out = SigmoidFocalLoss(gamma=2.0, alpha=0.25, reduction="none")(x, t)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(SigmoidFocalLoss(reduction="sum")(x, t), expected.sum())
    torch.testing.assert_close(SigmoidFocalLoss(reduction="mean")(x, t), expected.mean())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sigmoid_focal_matches_torchvision(gen: torch.Generator, gamma: float, reduction: str) -> None:
    x = torch.randn(3, 4, 5, 6, generator=gen) * 3
    t = (torch.rand(3, 4, 5, 6, generator=gen) > 0.7).float()
    ours = SigmoidFocalLoss(gamma=gamma, alpha=0.3, reduction=reduction)(x, t)
    ref = tv_sigmoid_focal_loss(x, t, alpha=0.3, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_sigmoid_focal_soft_targets_and_no_alpha_match_torchvision(gen: torch.Generator) -> None:
    x = torch.randn(8, 5, generator=gen) * 2
    t = torch.rand(8, 5, generator=gen)
    ours = SigmoidFocalLoss(gamma=1.5, alpha=None, reduction="none")(x, t)
    torch.testing.assert_close(ours, tv_sigmoid_focal_loss(x, t, alpha=-1, gamma=1.5))
    ours = SigmoidFocalLoss(gamma=2.0, alpha=0.25, reduction="none")(x, t)
    torch.testing.assert_close(ours, tv_sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0))


def test_sigmoid_focal_gamma0_no_alpha_is_bce(gen: torch.Generator) -> None:
    x = torch.randn(6, 3, generator=gen)
    t = (torch.rand(6, 3, generator=gen) > 0.5).float()
    ours = SigmoidFocalLoss(gamma=0.0, alpha=None)(x, t)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, t))


def test_sigmoid_focal_matches_monai_for_scalar_alpha(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 4, generator=gen)
    t = (torch.rand(2, 3, 4, 4, generator=gen) > 0.5).float()
    ours = SigmoidFocalLoss(gamma=2.0, alpha=0.25)(x, t)
    ref = MonaiFocalLoss(gamma=2.0, alpha=0.25, reduction="mean")(x, t)
    torch.testing.assert_close(ours, ref)


def test_sigmoid_focal_per_class_alpha(gen: torch.Generator) -> None:
    alpha = [0.1, 0.5, 0.9]
    x = torch.randn(5, 3, 4, generator=gen)
    t = (torch.rand(5, 3, 4, generator=gen) > 0.5).float()
    ours = SigmoidFocalLoss(gamma=2.0, alpha=alpha, reduction="none")(x, t)
    for c, a in enumerate(alpha):
        torch.testing.assert_close(ours[:, c], tv_sigmoid_focal_loss(x[:, c], t[:, c], alpha=a, gamma=2.0))


def test_sigmoid_focal_nan_targets_are_ignored(gen: torch.Generator) -> None:
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    t = torch.tensor([[1.0, NAN, 0.0], [NAN, NAN, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, NAN]])
    valid = ~torch.isnan(t)
    loss = SigmoidFocalLoss(gamma=2.0, alpha=0.25)(x, t)
    ref = tv_sigmoid_focal_loss(x.detach()[valid], t[valid], alpha=0.25, gamma=2.0).sum() / valid.sum()
    torch.testing.assert_close(loss.detach(), ref)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~valid] == 0).all()
    assert (x.grad[valid] != 0).all()
    out = SigmoidFocalLoss(reduction="none")(x.detach(), t)
    assert (out[~valid] == 0).all()
    torch.testing.assert_close(SigmoidFocalLoss(reduction="sum")(x.detach(), t), out.sum())


def test_sigmoid_focal_all_nan_gives_zero_with_grad() -> None:
    x = torch.zeros(2, 2, requires_grad=True)
    loss = SigmoidFocalLoss()(x, torch.full((2, 2), NAN))
    assert loss.item() == 0.0
    loss.backward()
    assert (x.grad == 0).all()


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_sigmoid_focal_stable_for_large_logits(gamma: float) -> None:
    x = torch.tensor([[-100.0, 100.0, 100.0, -100.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    loss = SigmoidFocalLoss(gamma=gamma, alpha=0.25, reduction="none")(x, t)
    assert torch.isfinite(loss).all()
    # confidently wrong entries: p_t = sigmoid(-100), -log p_t = 100, (1 - p_t)**gamma = 1
    torch.testing.assert_close(loss[0, 2], torch.tensor(0.75 * 100.0))
    torch.testing.assert_close(loss[0, 3], torch.tensor(0.25 * 100.0))
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_sigmoid_focal_bad_arguments() -> None:
    with pytest.raises(ValueError, match="reduction"):
        SigmoidFocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        SigmoidFocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="same shape"):
        SigmoidFocalLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha has 2 entries"):
        SigmoidFocalLoss(alpha=[0.2, 0.3])(torch.zeros(2, 3), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- SoftmaxFocalLoss


def test_softmax_focal_hand_computed() -> None:
    # logits (0, ln 2, 0) -> p = (0.25, 0.5, 0.25)
    logits = torch.tensor([[0.0, math.log(2.0), 0.0], [0.0, math.log(2.0), 0.0]])
    target = torch.tensor([1, 0])
    alpha = [1.0, 2.0, 3.0]
    # sample 0: y=1, p=0.5:  2 * 0.5**2 * ln 2; sample 1: y=0, p=0.25: 1 * 0.75**2 * ln 4
    expected = torch.tensor([2.0 * 0.25 * math.log(2.0), 0.5625 * math.log(4.0)])
    out = SoftmaxFocalLoss(gamma=2.0, alpha=alpha, reduction="none")(logits, target)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(SoftmaxFocalLoss(alpha=alpha)(logits, target), expected.mean())
    torch.testing.assert_close(SoftmaxFocalLoss(alpha=alpha, reduction="sum")(logits, target), expected.sum())


def test_softmax_focal_gamma0_is_cross_entropy(gen: torch.Generator) -> None:
    x = torch.randn(6, 4, 3, 3, generator=gen)
    y = torch.randint(0, 4, (6, 3, 3), generator=gen)
    torch.testing.assert_close(SoftmaxFocalLoss(gamma=0.0)(x, y), F.cross_entropy(x, y))


@pytest.mark.parametrize("spatial", [(), (5, 7)])
def test_softmax_focal_relation_to_monai(gen: torch.Generator, spatial: tuple[int, ...]) -> None:
    c = 4
    alpha = [0.1, 0.2, 0.3, 0.4]
    x = torch.randn(3, c, *spatial, generator=gen) * 2
    y = torch.randint(0, c, (3, 1, *spatial), generator=gen)
    kwargs = {"use_softmax": True, "to_onehot_y": True, "gamma": 2.0, "alpha": alpha}
    n_spatial = int(np.prod(spatial)) if spatial else 1
    ours_none = SoftmaxFocalLoss(gamma=2.0, alpha=alpha, reduction="none")(x, y)
    monai_none = MonaiFocalLoss(reduction="none", **kwargs)(x, y)
    torch.testing.assert_close(ours_none, monai_none.sum(1))
    ours_mean = SoftmaxFocalLoss(gamma=2.0, alpha=alpha)(x, y)
    torch.testing.assert_close(ours_mean, c * MonaiFocalLoss(reduction="mean", **kwargs)(x, y))
    if spatial:  # MONAI's "sum" averages over the spatial dims first
        ours_sum = SoftmaxFocalLoss(gamma=2.0, alpha=alpha, reduction="sum")(x, y)
        torch.testing.assert_close(ours_sum, n_spatial * MonaiFocalLoss(reduction="sum", **kwargs)(x, y))


def test_softmax_focal_ignore_index_matches_monai_mean(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 4, generator=gen)
    y = torch.randint(0, 3, (2, 1, 4, 4), generator=gen)
    y[0, 0, :2] = -100
    ours = SoftmaxFocalLoss(gamma=2.0, alpha=[0.2, 0.3, 0.5])(x, y)
    ref = MonaiFocalLoss(use_softmax=True, to_onehot_y=True, alpha=[0.2, 0.3, 0.5], ignore_index=-100)(x, y)
    torch.testing.assert_close(ours, ref)
    # and by hand: mean over the 24 valid positions of the per-element terms
    none = SoftmaxFocalLoss(gamma=2.0, alpha=[0.2, 0.3, 0.5], reduction="none")(x, y)
    assert (none[0, :2] == 0).all()
    torch.testing.assert_close(ours, none.sum() / 24)


def test_softmax_focal_ignored_gets_no_gradient(gen: torch.Generator) -> None:
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    y = torch.tensor([0, -100, 2, 1])
    SoftmaxFocalLoss()(x, y).backward()
    assert (x.grad[1] == 0).all()
    assert (x.grad[[0, 2, 3]].abs().sum(1) > 0).all()


def test_softmax_focal_target_forms(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, generator=gen)
    y = torch.randint(0, 3, (2, 4), generator=gen)
    loss = SoftmaxFocalLoss()
    ref = loss(x, y)
    torch.testing.assert_close(loss(x, y[:, None]), ref)
    torch.testing.assert_close(loss(x, y.float()), ref)
    with pytest.raises(ValueError, match="outside"):
        loss(x, torch.full((2, 4), 3))
    with pytest.raises(ValueError, match="non-integer"):
        loss(x, y.float() + 0.5)
    with pytest.raises(ValueError, match="does not fit"):
        loss(x, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="per-class"):
        SoftmaxFocalLoss(alpha=0.25)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- class weights


def test_effective_number_weights_hand_computed() -> None:
    # beta=0.5, counts (1, 2): w = 0.5/0.5 = 1 and 0.5/0.75 = 2/3; normalised to sum 2: (1.2, 0.8)
    torch.testing.assert_close(effective_number_weights([1, 2], beta=0.5), torch.tensor([1.2, 0.8]))
    raw = effective_number_weights([1, 2], beta=0.5, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([1.0, 2.0 / 3.0]))
    torch.testing.assert_close(effective_number_weights([5, 50, 500], beta=0.0), torch.ones(3))


def test_effective_number_weights_limits() -> None:
    counts = np.array([10.0, 100.0, 1000.0])
    w = effective_number_weights(counts, beta=0.9999999)
    inv = (1 / counts) / (1 / counts).sum() * 3
    torch.testing.assert_close(w, torch.tensor(inv, dtype=torch.float32), rtol=1e-4, atol=1e-5)
    # Cui et al. value: E_n = (1 - beta**n) / (1 - beta), for n=1e6 and beta=0.9999 E_n ~ 1e4
    raw = effective_number_weights([1e6], beta=0.9999, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([1e-4 / (1 - 0.9999**1e6)]))
    assert w.sum().item() == pytest.approx(3.0)


def test_class_weights_balanced_matches_sklearn() -> None:
    counts = [50, 7, 3, 140]
    y = np.repeat(np.arange(4), counts)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=y)
    torch.testing.assert_close(
        class_weights_from_counts(counts, method="balanced"), torch.tensor(expected, dtype=torch.float32)
    )


def test_class_weights_inverse_and_effective() -> None:
    torch.testing.assert_close(class_weights_from_counts([1, 3], method="inverse"), torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(
        class_weights_from_counts([1, 2], method="effective", beta=0.5), torch.tensor([1.2, 0.8])
    )


def test_class_weights_zero_and_bad_counts() -> None:
    with pytest.warns(UserWarning, match="zero entries at classes \\[1\\]"):
        w = class_weights_from_counts([2, 0, 6], method="balanced")
    # zero class left out: K = 2 present classes, N = 8 -> 8/(2*2) = 2, 8/(2*6) = 2/3
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0, 2.0 / 3.0]))
    with pytest.warns(UserWarning):
        w = effective_number_weights([0, 4, 4], beta=0.9)
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="all counts are zero"):
        class_weights_from_counts([0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        class_weights_from_counts([3, -1])
    with pytest.raises(ValueError, match="Unknown method"):
        class_weights_from_counts([3, 1], method="sqrt")
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights([3, 1], beta=1.0)


# ----------------------------------------------------------------------------- ClassBalancedLoss


def test_class_balanced_ce_by_hand(gen: torch.Generator) -> None:
    counts = [1, 2]
    w = torch.tensor([1.2, 0.8])  # effective-number weights for beta=0.5 (see above)
    x = torch.randn(5, 2, generator=gen)
    y = torch.tensor([0, 1, 1, 0, 1])
    ce = F.cross_entropy(x, y, reduction="none")
    loss = ClassBalancedLoss(counts, beta=0.5, loss_type="ce")
    torch.testing.assert_close(loss(x, y), (w[y] * ce).mean())
    torch.testing.assert_close(ClassBalancedLoss(counts, 0.5, "ce", reduction="sum")(x, y), (w[y] * ce).sum())
    focal = ClassBalancedLoss(counts, beta=0.5, loss_type="softmax_focal", gamma=2.0, reduction="none")(x, y)
    p_t = torch.softmax(x, 1)[torch.arange(5), y]
    torch.testing.assert_close(focal, w[y] * (1 - p_t) ** 2 * ce)


def test_class_balanced_multilabel_without_negative_counts(gen: torch.Generator) -> None:
    x = torch.randn(4, 2, generator=gen)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [NAN, 1.0], [0.0, 0.0]])
    valid = ~torch.isnan(t)
    w_pos = torch.tensor([1.2, 0.8])  # positive counts (1, 2), beta=0.5
    bce = F.binary_cross_entropy_with_logits(x, torch.nan_to_num(t), reduction="none")
    weights = torch.where(torch.nan_to_num(t) == 1, w_pos.expand(4, 2), torch.ones(4, 2))
    expected = (weights * bce)[valid].sum() / valid.sum()
    torch.testing.assert_close(ClassBalancedLoss([1, 2], beta=0.5, loss_type="bce")(x, t), expected)


def test_class_balanced_multilabel_with_negative_counts(gen: torch.Generator) -> None:
    # pos=1, neg=3, beta=0.5: raw weights 1 and 0.5/(1-0.125) = 4/7; normalised to sum 2: 14/11, 8/11
    x = torch.randn(6, 1, generator=gen)
    t = torch.tensor([[1.0], [0.0], [0.0], [0.0], [1.0], [NAN]])
    loss = ClassBalancedLoss([1], beta=0.5, loss_type="focal", gamma=2.0, neg_samples_per_class=[3])
    torch.testing.assert_close(loss.pos_weight, torch.tensor([14 / 11]))
    torch.testing.assert_close(loss.neg_weight, torch.tensor([8 / 11]))
    valid = ~torch.isnan(t)
    tt = torch.nan_to_num(t)
    focal = tv_sigmoid_focal_loss(x, tt, alpha=-1, gamma=2.0)
    w = torch.where(tt == 1, torch.tensor(14 / 11), torch.tensor(8 / 11))
    torch.testing.assert_close(loss(x, t), (w * focal)[valid].sum() / 5)


def test_class_balanced_errors() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        ClassBalancedLoss([1, 2], loss_type="dice")
    with pytest.raises(ValueError, match="multi-label loss types only"):
        ClassBalancedLoss([1, 2], loss_type="ce", neg_samples_per_class=[3, 3])
    with pytest.raises(ValueError, match="C == 2"):
        ClassBalancedLoss([1, 2], loss_type="bce")(torch.zeros(2, 3), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- weighted BCE / CE


def test_weighted_bce_matches_torch(gen: torch.Generator) -> None:
    pw = [0.5, 2.0, 4.0]
    x = torch.randn(6, 3, generator=gen)
    t = (torch.rand(6, 3, generator=gen) > 0.5).float()
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw))
    torch.testing.assert_close(WeightedBCEWithLogitsLoss(pos_weight=pw)(x, t), ref(x, t))
    # dense input: our (C,) pos_weight acts on dim 1; torch needs it shaped (C, 1, 1)
    x = torch.randn(2, 3, 4, 5, generator=gen)
    t = (torch.rand(2, 3, 4, 5, generator=gen) > 0.5).float()
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw).view(3, 1, 1), reduction="sum")
    torch.testing.assert_close(WeightedBCEWithLogitsLoss(pos_weight=pw, reduction="sum")(x, t), ref(x, t))


def test_weighted_bce_nan_and_from_counts(gen: torch.Generator) -> None:
    loss = WeightedBCEWithLogitsLoss.from_counts(pos_counts=[10, 40], neg_counts=[90, 60])
    torch.testing.assert_close(loss.pos_weight, torch.tensor([9.0, 1.5]))
    x = torch.randn(3, 2, generator=gen, requires_grad=True)
    t = torch.tensor([[1.0, NAN], [0.0, 1.0], [NAN, 0.0]])
    valid = ~torch.isnan(t)
    value = loss(x, t)
    ref = F.binary_cross_entropy_with_logits(
        x.detach()[valid], t[valid], pos_weight=torch.tensor([9.0, 1.5]).expand(3, 2)[valid], reduction="sum"
    )
    torch.testing.assert_close(value.detach(), ref / 4)
    value.backward()
    assert (x.grad[~valid] == 0).all() and torch.isfinite(x.grad).all()
    with pytest.warns(UserWarning, match="classes \\[1\\]"):
        loss = WeightedBCEWithLogitsLoss.from_counts([5, 0], [5, 10])
    torch.testing.assert_close(loss.pos_weight, torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_ce_matches_torch(gen: torch.Generator, reduction: str) -> None:
    w = torch.tensor([0.2, 1.0, 3.0])
    x = torch.randn(4, 3, 5, generator=gen)
    y = torch.randint(0, 3, (4, 5), generator=gen)
    y[0, 0] = -100
    ref = torch.nn.CrossEntropyLoss(weight=w, reduction=reduction)(x, y)
    ours = WeightedCrossEntropyLoss(weight=w, reduction=reduction)(x, y[:, None])
    torch.testing.assert_close(ours, ref)


def test_weighted_ce_label_smoothing_and_all_ignored(gen: torch.Generator) -> None:
    x = torch.randn(5, 3, generator=gen)
    y = torch.randint(0, 3, (5,), generator=gen)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, y)
    torch.testing.assert_close(WeightedCrossEntropyLoss(label_smoothing=0.1)(x, y), ref)
    out = WeightedCrossEntropyLoss(weight=[1.0, 2.0, 3.0])(x, torch.full((5,), -100))
    assert out.item() == 0.0


def test_weighted_ce_from_counts_balanced_matches_sklearn() -> None:
    counts = [30, 5, 15]
    loss = WeightedCrossEntropyLoss.from_counts(counts, method="balanced")
    y = np.repeat(np.arange(3), counts)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    torch.testing.assert_close(loss.weight, torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(
        WeightedCrossEntropyLoss.from_counts([1, 3], method="inverse").weight, torch.tensor([1.5, 0.5])
    )


# ----------------------------------------------------------------------------- factory


def test_build_loss_names_and_values(gen: torch.Generator) -> None:
    assert set(LOSS_NAMES) == {
        "bce",
        "weighted_bce",
        "focal",
        "class_balanced",
        "ce",
        "weighted_ce",
        "softmax_focal",
        "class_balanced_ce",
        "ohem_bce",
        "ohem_ce",
    }
    x = torch.randn(4, 2, generator=gen)
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(build_loss("bce")(x, t), F.binary_cross_entropy_with_logits(x, t))
    wb = build_loss("weighted_bce", pos_counts=[2, 1], neg_counts=[2, 3])
    torch.testing.assert_close(wb.pos_weight, torch.tensor([1.0, 3.0]))
    focal = build_loss("focal", gamma=1.0, alpha=0.5)
    torch.testing.assert_close(focal(x, t), tv_sigmoid_focal_loss(x, t, 0.5, 1.0, "mean"))
    cb = build_loss("class_balanced", pos_counts=[2, 1], neg_counts=[2, 3], beta=0.9, loss_type="focal")
    assert isinstance(cb, ClassBalancedLoss) and cb.loss_type == "focal" and cb.neg_weight.shape == (2,)

    y = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(build_loss("ce")(x, y), F.cross_entropy(x, y))
    wce = build_loss("weighted_ce", counts=[3, 1])
    torch.testing.assert_close(wce.weight, torch.tensor([4 / 6, 4 / 2]))
    sf = build_loss("softmax_focal", gamma=0.0)
    torch.testing.assert_close(sf(x, y), F.cross_entropy(x, y))
    cbce = build_loss("class_balanced_ce", counts=[1, 2], beta=0.5)
    torch.testing.assert_close(
        cbce(x, y), (torch.tensor([1.2, 0.8])[y] * F.cross_entropy(x, y, reduction="none")).mean()
    )


def test_build_loss_aliases_and_errors() -> None:
    assert isinstance(build_loss("focal", multilabel=False), SoftmaxFocalLoss)
    assert build_loss("class_balanced", counts=None, pos_counts=[1, 2], multilabel=True).multilabel
    assert not build_loss("class_balanced", counts=[1, 2], pos_counts=[1, 2], multilabel=False).multilabel
    with pytest.raises(ValueError, match="valid names: bce, weighted_bce"):
        build_loss("dice")
    with pytest.raises(ValueError, match="pass pos_counts, neg_counts"):
        build_loss("weighted_bce")
    with pytest.raises(ValueError, match="pass counts"):
        build_loss("class_balanced_ce")
    with pytest.raises(ValueError, match="loss_type must be 'bce' or 'focal'"):
        build_loss("class_balanced", pos_counts=[1, 2], loss_type="ce")


def test_build_loss_from_monai_bundle_config() -> None:
    from monai.bundle import ConfigParser

    config = {
        "loss": {
            "_target_": "medbundle.losses.build_loss",
            "name": "weighted_bce",
            "pos_counts": [10, 40],
            "neg_counts": [90, 60],
        }
    }
    loss = ConfigParser(config).get_parsed_content("loss")
    assert isinstance(loss, WeightedBCEWithLogitsLoss)
    torch.testing.assert_close(loss.pos_weight, torch.tensor([9.0, 1.5]))
