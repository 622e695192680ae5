"""Class weights from label counts and the class-balanced loss of Cui et al., CVPR 2019.

Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019:
the effective number of samples of a class with ``n`` samples is ``E_n = (1 - beta**n) / (1 - beta)``, and
the class weight is ``1 / E_n``, normalised so the weights sum to the number of classes.

Neither PyTorch nor MONAI computes such weights; scikit-learn's ``compute_class_weight("balanced")`` works
from a label array and knows no effective number. Here the weights come from counts (as stored in a
bundle config or returned by :func:`medbundle.sampling.label_counts`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from medbundle.losses.terms import (
    CountsLike,
    as_counts,
    check_reduction,
    masked_reduce,
    prepare_class_index_target,
    prepare_multilabel,
    sigmoid_focal_terms,
    softmax_focal_terms,
)

__all__ = ["effective_number_weights", "class_weights_from_counts", "ClassBalancedLoss"]



_METHODS = ("inverse", "balanced", "effective")
_LOSS_TYPES = ("bce", "focal", "ce", "softmax_focal")


def _warn_zero(arr: np.ndarray, name: str) -> np.ndarray:
    """Return the mask of non-zero counts, warning once when some counts are zero."""
    present = arr > 0
    if not present.any():
        raise ValueError(f"all {name} are zero; class weights need at least one class with samples.")
    if not present.all():
        warnings.warn(
            f"{name} has zero entries at classes {np.flatnonzero(~present).tolist()}; those classes get "
            "weight 0 and are left out of the normalisation (they never occur as a target in the data).",
            stacklevel=3,
        )
    return present


def effective_number_weights(
    counts: CountsLike, beta: float = 0.9999, normalize: bool = True
) -> torch.Tensor:
    """Class weights ``w_c = (1 - beta) / (1 - beta ** n_c)`` from the effective number of samples.

    ``beta = 0`` gives equal weights; as ``beta -> 1`` the weights tend to the inverse class frequency
    ``1 / n_c``. Cui et al. use ``beta`` in {0.9, 0.99, 0.999, 0.9999}.

    Zero counts: a class with ``n_c = 0`` never occurs as a target in the counted data, so its weight is
    never used on that data; it gets weight 0 (with a warning) and is left out of the normalisation.

    Args:
        counts: number of samples per class, shape ``(C,)``, non-negative (need not be integers).
        beta: hyper-parameter in ``[0, 1)``.
        normalize: if True, scale the weights so that they sum to the number of classes with a non-zero count (``C``
            when every class has samples), as in Cui et al.

    Returns:
        float32 tensor of shape ``(C,)``.
    """
    arr = as_counts(counts)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}.")
    present = _warn_zero(arr, "counts")
    weights = np.zeros_like(arr)
    n = arr[present]
    if beta == 0.0:
        weights[present] = 1.0
    else:
        # 1 - beta**n computed as -expm1(n log beta): exact even when beta**n is close to 1
        weights[present] = (1.0 - beta) / -np.expm1(n * np.log(beta))
    if normalize:
        weights = weights / weights.sum() * present.sum()
    return torch.as_tensor(weights, dtype=torch.float32)


def class_weights_from_counts(
    counts: CountsLike, method: str = "inverse", beta: float = 0.9999
) -> torch.Tensor:
    """Per-class loss weights from class counts.

    Methods, for counts ``n_c``, ``N = sum(n_c)`` and ``K`` = number of classes with ``n_c > 0``:

    - ``"inverse"``: ``w_c = 1 / n_c``, normalised to sum to ``K`` (the ``beta -> 1`` limit of
      ``"effective"``).
    - ``"balanced"``: ``w_c = N / (K * n_c)``, identical to scikit-learn's
      ``compute_class_weight("balanced", classes=..., y=...)`` for the classes present in ``y``.
    - ``"effective"``: :func:`effective_number_weights` with ``beta`` (normalised to sum to ``K``).

    Zero counts get weight 0 (with a warning), see :func:`effective_number_weights`.

    Args:
        counts: samples per class, shape ``(C,)``.
        method: ``"inverse"``, ``"balanced"`` or ``"effective"``.
        beta: only for ``"effective"``.

    Returns:
        float32 tensor of shape ``(C,)``.
    """
    if method not in _METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {list(_METHODS)}.")
    if method == "effective":
        return effective_number_weights(counts, beta=beta, normalize=True)
    arr = as_counts(counts)
    present = _warn_zero(arr, "counts")
    weights = np.zeros_like(arr)
    weights[present] = 1.0 / arr[present]
    k = present.sum()
    if method == "inverse":
        weights = weights / weights.sum() * k
    else:
        weights = weights * arr.sum() / k
    return torch.as_tensor(weights, dtype=torch.float32)


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss (Cui et al., CVPR 2019): a base loss weighted by effective-number class weights.

    Weights are :func:`effective_number_weights` of the given counts (normalised as stated below); the
    element-wise base loss is multiplied by the weight that belongs to its target.

    Multi-class (``loss_type`` ``"ce"`` or ``"softmax_focal"``; logits ``(B, C, ...)``, class-index targets
    ``(B, ...)`` or ``(B, 1, ...)``): each element is weighted by ``w[y]``, with ``w`` computed from
    ``samples_per_class`` and normalised to sum to C. ``neg_samples_per_class`` must be None.

    Multi-label (``loss_type`` ``"bce"`` or ``"focal"``; logits and float targets ``(B, C, ...)``, NaN =
    missing label, ignored). Rule for entry ``(b, c)`` with target ``t``:

    - ``neg_samples_per_class`` is None: ``samples_per_class`` holds the positive counts per class;
      positive entries of class c get ``w_pos[c]`` (effective-number weights of the positive counts,
      normalised to sum to C) and negative entries get weight 1. This rebalances the rare classes'
      positives against the common classes' positives.
    - ``neg_samples_per_class`` given: the 2C counts (positives of each class, then negatives of each
      class) are weighted together and normalised to sum to 2C, so positives of class c get ``w_pos[c]``
      and negatives ``w_neg[c]``. This also rebalances positives against negatives within each class
      (for ``beta -> 1`` each class's positives and negatives contribute equal totals).

    Soft targets interpolate: weight ``= t * w_pos[c] + (1 - t) * w_neg[c]``. Cui et al. weight the whole
    sigmoid loss of a single-label sample by its class weight; the rule above is the multi-label
    generalisation, where a sample has no single class.

    The focal variants use no alpha (the class weights take its role). ``"mean"`` divides the weighted sum
    by the number of valid (non-NaN / non-ignored) elements, not by the sum of the weights.

    Args:
        samples_per_class: per-class counts, shape ``(C,)`` (positive counts for multi-label).
        beta: effective-number hyper-parameter in ``[0, 1)``.
        loss_type: ``"bce"``, ``"focal"`` (multi-label), ``"ce"`` or ``"softmax_focal"`` (multi-class).
        gamma: focusing exponent for the focal variants.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (element-wise weighted loss; ``(B, C, ...)`` for multi-label,
            ``(B, ...)`` for multi-class; 0 at ignored entries).
        neg_samples_per_class: per-class negative counts ``(C,)``, multi-label only.
        ignore_index: target value ignored by the multi-class variants.
    """

    def __init__(
        self,
        samples_per_class: CountsLike,
        beta: float = 0.9999,
        loss_type: str = "bce",
        gamma: float = 2.0,
        reduction: str = "mean",
        neg_samples_per_class: CountsLike | None = None,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}; use one of {list(_LOSS_TYPES)}.")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.loss_type = loss_type
        self.beta = float(beta)
        self.gamma = float(gamma) if loss_type in ("focal", "softmax_focal") else 0.0
        self.reduction = check_reduction(reduction)
        self.ignore_index = int(ignore_index)
        self.multilabel = loss_type in ("bce", "focal")
        pos = as_counts(samples_per_class, "samples_per_class")
        num_classes = pos.size
        if not self.multilabel:
            if neg_samples_per_class is not None:
                raise ValueError(
                    f"neg_samples_per_class applies to the multi-label loss types only, not {loss_type!r}."
                )
            pos_w = effective_number_weights(pos, beta=beta)
            neg_w = torch.ones(num_classes)
        elif neg_samples_per_class is None:
            pos_w = effective_number_weights(pos, beta=beta)
            neg_w = torch.ones(num_classes)
        else:
            neg = as_counts(neg_samples_per_class, "neg_samples_per_class")
            if neg.size != num_classes:
                raise ValueError(
                    f"neg_samples_per_class has {neg.size} entries, samples_per_class has {num_classes}."
                )
            joint = effective_number_weights(np.concatenate([pos, neg]), beta=beta)
            pos_w, neg_w = joint[:num_classes], joint[num_classes:]
        self.register_buffer("pos_weight", pos_w)
        self.register_buffer("neg_weight", neg_w)
        self.pos_weight: torch.Tensor
        self.neg_weight: torch.Tensor

    @property
    def num_classes(self) -> int:
        """Number of classes C the weights were built for."""
        return int(self.pos_weight.numel())

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits ``(B, C, ...)``.
            target: multi-label: float ``(B, C, ...)`` in [0, 1] with NaN for missing labels; multi-class: class indices
                ``(B, ...)`` or ``(B, 1, ...)``.

        Returns:
            float32 scalar, or the element-wise loss for ``reduction="none"``.
        """
        if input.ndim < 2 or input.shape[1] != self.num_classes:
            raise ValueError(
                f"input must have shape (B, C, ...) with C == {self.num_classes} (the number of counts), "
                f"got {tuple(input.shape)}."
            )
        if self.multilabel:
            target, valid = prepare_multilabel(input, target)
            loss = sigmoid_focal_terms(input, target, self.gamma)
            shape = (1, self.num_classes, *([1] * (input.ndim - 2)))
            pos_w = self.pos_weight.to(loss.device).view(shape)
            neg_w = self.neg_weight.to(loss.device).view(shape)
            loss = (target * pos_w + (1.0 - target) * neg_w) * loss
            return masked_reduce(loss, valid, self.reduction)
        target = prepare_class_index_target(input, target, self.ignore_index)
        loss, valid, safe_target = softmax_focal_terms(input, target, self.gamma, self.ignore_index)
        loss = self.pos_weight.to(loss.device)[safe_target] * loss
        return masked_reduce(loss, valid, self.reduction)
