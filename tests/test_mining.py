"""Tests for medbundle.mining: exactly which elements are kept, and where gradients flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medbundle.losses import SigmoidFocalLoss, WeightedCrossEntropyLoss
from medbundle.mining import OHEMLoss, hard_negative_mask, topk_hard_example_loss

NAN = float("nan")


def _idx(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()


def test_keeps_positives_and_hardest_negatives() -> None:
    loss = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7])
    target = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])
    mask = hard_negative_mask(loss, target, neg_pos_ratio=3.0)
    assert mask.dtype == torch.bool and mask.shape == loss.shape
    assert _idx(mask) == [0, 1, 4, 6]
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=1.0)) == [0, 1]
    # floor(1.5 * 1) = 1 negative
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=1.5)) == [0, 1]


def test_negative_count_rules() -> None:
    loss = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4])
    target = torch.tensor([1.0, 0, 1, 0, 0, 0, 0, 0])  # 2 positives, 6 negatives
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=2.0)) == [0, 1, 2, 4, 6, 7]
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=2.0, max_negatives=2)) == [0, 1, 2, 4]
    # more requested than available: all negatives
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=10.0)) == list(range(8))
    # no positive: min_negatives hardest negatives
    no_pos = torch.zeros(8)
    assert _idx(hard_negative_mask(loss, no_pos, min_negatives=2)) == [1, 4]
    assert _idx(hard_negative_mask(loss, no_pos, min_negatives=0)) == []
    # min_negatives wins over a small ratio
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=0.0, min_negatives=3)) == [0, 1, 2, 4, 6]


def test_missing_and_ignored_targets_are_never_kept() -> None:
    loss = torch.tensor([5.0, 9.0, 0.5, 0.3, 8.0])
    target = torch.tensor([1.0, NAN, 0.0, 0.0, NAN])
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=1.0)) == [0, 2]
    class_target = torch.tensor([2, -100, 0, 0, -100])
    assert _idx(hard_negative_mask(loss, class_target, neg_pos_ratio=1.0)) == [0, 2]


def test_ties_prefer_lower_index() -> None:
    loss = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])
    target = torch.tensor([0.0, 0, 1, 0, 0])
    assert _idx(hard_negative_mask(loss, target, neg_pos_ratio=2.0)) == [0, 1, 2]


def test_per_sample_selection_differs_from_global() -> None:
    loss = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.2, 0.3, 0.05, 0.6]])
    target = torch.tensor([[0.0, 0, 0, 1], [0.0, 0, 1, 0]])
    glob = hard_negative_mask(loss, target, neg_pos_ratio=1.0)
    assert glob.tolist() == [[True, True, False, True], [False, False, True, False]]
    per = hard_negative_mask(loss, target, neg_pos_ratio=1.0, per_sample=True)
    assert per.tolist() == [[True, False, False, True], [False, False, True, True]]


def test_target_reshaped_and_bad_arguments() -> None:
    loss = torch.tensor([[0.2, 0.9], [0.4, 0.1]])
    target = torch.tensor([[[1, 0]], [[0, 0]]])  # (B, 1, N) vs loss (B, N)
    assert hard_negative_mask(loss, target, neg_pos_ratio=1.0).tolist() == [[True, True], [False, False]]
    with pytest.raises(ValueError, match="does not match"):
        hard_negative_mask(loss, torch.zeros(3))
    with pytest.raises(ValueError, match="max_negatives"):
        hard_negative_mask(loss, target, min_negatives=3, max_negatives=2)
    with pytest.raises(ValueError, match=">= 0"):
        hard_negative_mask(loss, target, neg_pos_ratio=-1.0)


def test_ohem_loss_value_and_gradients() -> None:
    x = torch.tensor([[2.0, -1.0, 3.0, 0.5, -4.0, 1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, NAN]])
    ohem = OHEMLoss(nn.BCEWithLogitsLoss(reduction="none"), neg_pos_ratio=2.0)
    value = ohem(x, t)
    # negative losses: softplus(x) at indices 1..4 -> the two hardest are x=3.0 (idx 2) and x=0.5 (idx 3)
    xd = x.detach()[0]
    expected = (F.softplus(-xd[0]) + F.softplus(xd[2]) + F.softplus(xd[3])) / 3
    torch.testing.assert_close(value.detach(), expected)
    value.backward()
    grad = x.grad[0]
    assert torch.isfinite(grad).all()
    assert (grad[[1, 4, 5]] == 0).all()
    assert (grad[[0, 2, 3]] != 0).all()
    torch.testing.assert_close(grad[2], torch.sigmoid(xd[2]) / 3)


def test_ohem_with_dense_cross_entropy() -> None:
    # (B=1, C=3, H=2, W=2) logits, background = class 0
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    with torch.no_grad():
        logits[0, 0] = torch.tensor([[3.0, -2.0], [0.0, 1.0]])  # background confidence per pixel
    target = torch.tensor([[[[0, 0], [2, 0]]]])  # (B, 1, H, W); one foreground pixel
    inner = WeightedCrossEntropyLoss(reduction="none")
    ohem = OHEMLoss(inner, neg_pos_ratio=1.0)
    value = ohem(logits, target)
    per_pixel = inner(logits.detach(), target)[0]
    # hardest background pixel is (0, 1) with the lowest background logit
    expected = (per_pixel[1, 0] + per_pixel[0, 1]) / 2
    torch.testing.assert_close(value.detach(), expected)
    value.backward()
    pixel_grad = logits.grad[0].abs().sum(0)
    assert (pixel_grad[0, 0] == 0) and (pixel_grad[1, 1] == 0)
    assert (pixel_grad[0, 1] > 0) and (pixel_grad[1, 0] > 0)


def test_ohem_per_sample_with_focal() -> None:
    x = torch.tensor([[0.0, 4.0, -4.0], [3.0, -3.0, 0.5]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    inner = SigmoidFocalLoss(reduction="none")
    elem = inner(x, t)
    value = OHEMLoss(inner, neg_pos_ratio=1.0, min_negatives=1, per_sample=True)(x, t)
    # row 0: positive (0,0) + hardest negative (0,1); row 1: no positive, hardest negative (1,0)
    torch.testing.assert_close(value, (elem[0, 0] + elem[0, 1] + elem[1, 0]) / 3)


def test_ohem_rejects_reduced_inner_loss() -> None:
    with pytest.raises(ValueError, match="reduction='none'"):
        OHEMLoss(nn.BCEWithLogitsLoss())
    with pytest.raises(ValueError, match="scalar"):
        OHEMLoss(lambda a, b: (a - b).sum())(torch.zeros(2), torch.zeros(2))  # type: ignore[arg-type]


def test_topk_hard_example_loss() -> None:
    loss = torch.tensor([1.0, 5.0, 3.0, 2.0], requires_grad=True)
    torch.testing.assert_close(topk_hard_example_loss(loss, keep_fraction=0.5), torch.tensor(4.0))
    torch.testing.assert_close(topk_hard_example_loss(loss, k=1), torch.tensor(5.0))
    torch.testing.assert_close(topk_hard_example_loss(loss, k=10), torch.tensor(2.75))
    # ceil(0.3 * 4) = 2; keep_fraction * N is rounded first: 0.3 * 10 keeps exactly 3
    torch.testing.assert_close(topk_hard_example_loss(loss, keep_fraction=0.3), torch.tensor(4.0))
    ten = torch.arange(10, dtype=torch.float32)
    torch.testing.assert_close(topk_hard_example_loss(ten, keep_fraction=0.3), torch.tensor(8.0))
    topk_hard_example_loss(loss, keep_fraction=0.5).backward()
    assert loss.grad.tolist() == [0.0, 0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="exactly one"):
        topk_hard_example_loss(loss)
    with pytest.raises(ValueError, match="exactly one"):
        topk_hard_example_loss(loss, keep_fraction=0.5, k=2)
    with pytest.raises(ValueError, match="keep_fraction"):
        topk_hard_example_loss(loss, keep_fraction=0.0)
    with pytest.raises(ValueError, match="empty"):
        topk_hard_example_loss(torch.zeros(0), k=1)


# ------------------------------------------------------------------- OHEM selectable in the classifiers' losses
def test_ohem_bce_takes_the_gradient_from_the_hardest_terms_only() -> None:
    """``build_loss("ohem_bce", keep_fraction=0.25)``: the value is the mean of the 25 % largest BCE terms (NaN
    labels left out), and only those terms' logits get a gradient; plain BCE spreads it over every term."""
    from medbundle.losses import build_loss

    torch.manual_seed(0)
    logits = torch.randn(8, 3, requires_grad=True)
    target = (torch.rand(8, 3) > 0.5).float()
    target[0, 0] = float("nan")
    terms = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), reduction="none")
    valid = ~torch.isnan(target)
    k = math.ceil(0.25 * int(valid.sum()))  # 23 labelled terms -> 6 kept
    hardest = terms[valid].topk(k).values
    loss = build_loss("ohem_bce", keep_fraction=0.25)(logits, target)
    torch.testing.assert_close(loss, hardest.mean())
    loss.backward()
    with_grad = logits.grad != 0
    assert int(with_grad.sum()) == k
    assert (terms[with_grad] >= hardest.min() - 1e-6).all()  # the rows and classes that got gradient are the hardest
    assert not with_grad[0, 0]  # the missing label never does

    logits.grad = None
    build_loss("bce")(logits, target).backward()
    assert int((logits.grad != 0).sum()) == int(valid.sum())


def test_ohem_ce_keeps_the_hardest_samples_of_the_batch() -> None:
    from medbundle.losses import build_loss

    torch.manual_seed(1)
    logits = torch.randn(10, 4, requires_grad=True)
    target = torch.randint(0, 4, (10,))
    per_sample = F.cross_entropy(logits, target, reduction="none")
    loss = build_loss("ohem_ce", multilabel=False, keep_fraction=0.3)(logits, target)
    torch.testing.assert_close(loss, per_sample.topk(3).values.mean())
    loss.backward()
    rows = (logits.grad != 0).any(dim=1)
    assert set(torch.nonzero(rows).flatten().tolist()) == set(per_sample.topk(3).indices.tolist())


def test_ohem_loss_names_check_their_argument() -> None:
    from medbundle.losses import LOSS_NAMES, build_loss

    assert {"ohem_bce", "ohem_ce"} <= set(LOSS_NAMES)
    with pytest.raises(ValueError, match="keep_fraction"):
        build_loss("ohem_bce", keep_fraction=0.0)
