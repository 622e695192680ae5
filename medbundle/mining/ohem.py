"""Online hard example mining (OHEM) on element-wise losses.

Relation to MONAI: :class:`monai.apps.detection.utils.hard_negative_sampler.HardNegativeSampler` (from
nnDetection) serves RetinaNet-style anchor classification. Per image it draws a fixed
``batch_size_per_image`` of anchors with a set ``positive_fraction``: positives at random, and negatives at
random from a pool of the ``num_neg * pool_size`` negatives with the highest foreground probability, then
returns masks that the detector uses to compute its loss. The selection is random, driven by predicted
scores, and needs per-image anchor label lists.

This module is deterministic and works on any element-wise loss (per anchor, per voxel or patch, or per
sample): it ranks elements by their loss value, keeps every positive and the ``neg_pos_ratio * n_pos``
highest-loss negatives (SSD-style hard negative mining), and averages the loss over the kept elements
(:func:`hard_negative_mask`, :class:`OHEMLoss`). For classification without a positive/negative split,
:func:`topk_hard_example_loss` averages the ``k`` largest per-sample losses (Shrivastava et al., "Training
Region-based Object Detectors with Online Hard Example Mining", CVPR 2016); :class:`HardExampleLoss` wraps
it as a loss module, which the classifiers select with ``--loss_name ohem_bce`` / ``ohem_ce``
(:func:`medbundle.losses.build_loss`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["hard_negative_mask", "HardExampleLoss", "OHEMLoss", "topk_hard_example_loss"]


def _select_flat(
    loss: torch.Tensor,
    target: torch.Tensor,
    neg_pos_ratio: float,
    min_negatives: int,
    max_negatives: int | None,
) -> torch.Tensor:
    """Hard-negative selection on 1-D ``loss`` / ``target``; returns a bool mask of the kept elements."""
    positive = target > 0  # NaN compares False: missing labels are neither positive nor negative
    negative = target == 0
    n_pos = int(positive.sum())
    n_neg = max(min_negatives, math.floor(neg_pos_ratio * n_pos))
    if max_negatives is not None:
        n_neg = min(n_neg, max_negatives)
    n_neg = min(n_neg, int(negative.sum()))
    keep = positive.clone()
    if n_neg > 0:
        scores = torch.where(negative, loss.float(), torch.full_like(loss, -math.inf, dtype=torch.float32))
        # stable sort: among equal losses the element with the lower flat index comes first
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[:n_neg]] = True
    return keep


def hard_negative_mask(
    loss: torch.Tensor,
    target: torch.Tensor,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 1,
    max_negatives: int | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """Mask that keeps all positives and the hardest (highest-loss) negatives.

    Elements with ``target > 0`` are positives (a foreground class index, or a positive multi-label
    entry); elements with ``target == 0`` are negatives; anything else (NaN for missing labels, negative
    values such as ``ignore_index=-100``) is neither and never kept. With ``n_pos`` positives, the number of
    negatives kept is::

        n_neg = min(max(min_negatives, floor(neg_pos_ratio * n_pos)), max_negatives, number of negatives)

    and those are the negatives with the largest loss; ties are broken in favour of the lower flat index,
    so the result is deterministic.

    Args:
        loss: element-wise loss, any shape (e.g. ``(B, C, H, W)``, ``(B, A)`` anchors, ``(B,)`` samples). Only its
            values are used (no gradient flows through the mask).
        target: labels with the same number of elements as ``loss`` (reshaped to ``loss.shape``).
        neg_pos_ratio: negatives kept per positive (>= 0).
        min_negatives: negatives kept even when there is no positive (>= 0).
        max_negatives: upper bound on the negatives kept, or None.
        per_sample: if True, select independently for each index of dim 0 (per image, as MONAI's sampler does);
            otherwise over all elements of the batch together.

    Returns:
        bool tensor of ``loss.shape``; True marks the kept elements.
    """
    if neg_pos_ratio < 0 or min_negatives < 0:
        raise ValueError(
            f"neg_pos_ratio and min_negatives must be >= 0, got {neg_pos_ratio}, {min_negatives}."
        )
    if max_negatives is not None and max_negatives < min_negatives:
        raise ValueError(f"max_negatives ({max_negatives}) must be >= min_negatives ({min_negatives}).")
    if target.shape != loss.shape:
        if target.numel() != loss.numel():
            raise ValueError(
                f"target {tuple(target.shape)} does not match the element-wise loss {tuple(loss.shape)}; "
                "pass a loss built with reduction='none' whose output has one value per target element."
            )
        target = target.reshape(loss.shape)
    loss = loss.detach()
    if per_sample:
        if loss.ndim == 0:
            raise ValueError("per_sample=True needs a loss with a batch dimension (dim 0).")
        rows = [
            _select_flat(
                loss[i].reshape(-1), target[i].reshape(-1), neg_pos_ratio, min_negatives, max_negatives
            )
            for i in range(loss.shape[0])
        ]
        if not rows:
            return torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
        return torch.stack(rows).reshape(loss.shape)
    flat = _select_flat(loss.reshape(-1), target.reshape(-1), neg_pos_ratio, min_negatives, max_negatives)
    return flat.reshape(loss.shape)


class OHEMLoss(nn.Module):
    """Wrap an element-wise loss so that it averages over the positives and the hardest negatives only.

    ``forward(input, target)`` computes ``loss(input, target)`` element-wise, selects elements with
    :func:`hard_negative_mask` and returns ``sum(loss[kept]) / n_kept`` (0 when nothing is kept). The
    dropped elements get no gradient. NaN entries of a floating-point target (missing labels) are replaced
    by 0 before the inner loss sees them (so a loss that does not mask NaN, such as
    :class:`torch.nn.BCEWithLogitsLoss`, yields no NaN gradient) and are never kept.

    Suitable inner losses: :class:`medbundle.losses.SigmoidFocalLoss`, ``WeightedBCEWithLogitsLoss``,
    :class:`torch.nn.BCEWithLogitsLoss` (multi-label, positives = entries equal to 1), and
    ``WeightedCrossEntropyLoss`` / :class:`torch.nn.CrossEntropyLoss` for dense class-index targets
    (positives = foreground voxels ``target > 0``, negatives = background ``target == 0``), all with
    ``reduction="none"``. See the module docstring for the relation to MONAI's ``HardNegativeSampler``.

    Args:
        loss: module returning an element-wise loss with one value per target element.
        neg_pos_ratio, min_negatives, max_negatives, per_sample: see :func:`hard_negative_mask`.
    """

    def __init__(
        self,
        loss: nn.Module,
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 1,
        max_negatives: int | None = None,
        per_sample: bool = False,
    ) -> None:
        super().__init__()
        reduction = getattr(loss, "reduction", "none")
        if reduction != "none":
            raise ValueError(
                f"OHEMLoss needs the element-wise loss; build the inner loss with reduction='none' "
                f"(got reduction={reduction!r})."
            )
        self.loss = loss
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.min_negatives = int(min_negatives)
        self.max_negatives = max_negatives
        self.per_sample = per_sample

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean loss over the kept elements (float scalar).

        Args:
            input: whatever the inner loss takes (typically logits ``(B, C, ...)``).
            target: labels; their number of elements must equal that of the element-wise loss.
        """
        inner_target = target
        if target.is_floating_point():
            inner_target = torch.where(torch.isnan(target), torch.zeros_like(target), target)
        elementwise = self.loss(input, inner_target)
        if elementwise.ndim == 0:
            raise ValueError("the inner loss returned a scalar; build it with reduction='none'.")
        keep = hard_negative_mask(
            elementwise,
            target,
            self.neg_pos_ratio,
            self.min_negatives,
            self.max_negatives,
            per_sample=self.per_sample,
        )
        kept = torch.where(
            keep, elementwise, torch.zeros((), dtype=elementwise.dtype, device=elementwise.device)
        )
        return kept.sum() / keep.sum().clamp(min=1).to(kept.dtype)


def topk_hard_example_loss(
    loss_per_sample: torch.Tensor, keep_fraction: float | None = None, k: int | None = None
) -> torch.Tensor:
    """Mean of the ``k`` largest losses (classification OHEM).

    Give exactly one of ``keep_fraction`` (``k = ceil(keep_fraction * N)``, at least 1) and ``k``; ``k``
    larger than the number of elements ``N`` is clipped to ``N`` (e.g. a small last batch). Only the kept
    elements receive gradient.

    Args:
        loss_per_sample: element-wise losses, any shape (flattened), e.g. ``(B,)`` from a loss with
            ``reduction="none"``.
        keep_fraction: fraction of elements to keep, in ``(0, 1]``.
        k: number of elements to keep, >= 1.

    Returns:
        scalar tensor with the dtype of ``loss_per_sample``.
    """
    if (keep_fraction is None) == (k is None):
        raise ValueError("give exactly one of keep_fraction and k.")
    flat = loss_per_sample.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("loss_per_sample is empty; there is nothing to select from.")
    if keep_fraction is not None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}.")
        # round first so that e.g. 0.3 * 10 = 3.0000000000000004 keeps 3, not 4
        k = max(1, math.ceil(round(keep_fraction * n, 9)))
    elif k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    assert k is not None
    return flat.topk(min(k, n)).values.mean()


class HardExampleLoss(nn.Module):
    """Online hard example mining for classification: the mean of the hardest ``keep_fraction`` of an
    element-wise loss in each batch.

    ``forward(input, target)`` computes ``loss(input, target)`` element-wise (per sample for cross-entropy,
    per sample and class for multi-label BCE), leaves out the elements whose float target is NaN (missing
    labels), and returns :func:`topk_hard_example_loss` of the rest: the easy elements give no gradient at
    all, so each step learns from the examples the network gets most wrong. NaN targets are replaced by 0
    before the inner loss sees them.

    Args:
        loss: module returning an element-wise loss (``reduction="none"``).
        keep_fraction: fraction of the valid elements that give the gradient, in ``(0, 1]`` (``ceil(keep_fraction *
            n)``, at least 1).
    """

    def __init__(self, loss: nn.Module, keep_fraction: float = 0.5) -> None:
        super().__init__()
        if getattr(loss, "reduction", "none") != "none":
            raise ValueError(
                f"HardExampleLoss needs the element-wise loss; build the inner loss with reduction='none' "
                f"(got reduction={loss.reduction!r})."
            )
        if not 0.0 < float(keep_fraction) <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}.")
        self.loss = loss
        self.keep_fraction = float(keep_fraction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean loss over the kept elements (scalar)."""
        inner_target = target
        valid = None
        if target.is_floating_point():
            valid = ~torch.isnan(target)
            inner_target = torch.where(valid, target, torch.zeros_like(target))
        elementwise = self.loss(input, inner_target)
        if elementwise.ndim == 0:
            raise ValueError("the inner loss returned a scalar; build it with reduction='none'.")
        if valid is not None and valid.shape == elementwise.shape:
            elementwise = elementwise[valid]
        if elementwise.numel() == 0:  # every label missing: no gradient, but a graph to call backward() on
            return input.sum() * 0.0
        return topk_hard_example_loss(elementwise, keep_fraction=self.keep_fraction)
