"""Focal losses for multi-label (sigmoid) and multi-class (softmax) classification.

Both losses follow Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017:

    FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)

They add to :func:`torchvision.ops.sigmoid_focal_loss` and :class:`monai.losses.FocalLoss` what medical
classification data needs: per-class ``alpha`` vectors, missing labels (NaN in multi-label targets,
``ignore_index`` in class-index targets) that are left out of the loss and out of the ``"mean"``
denominator, and class-index targets for the softmax variant without a one-hot step.

The private helpers in this module (reduction with a validity mask, target checks) are shared by the
other loss modules of :mod:`medbundle.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medbundle.losses.terms import (
    channel_vector,
    check_reduction,
    masked_reduce,
    prepare_class_index_target,
    prepare_multilabel,
    sigmoid_focal_terms,
    softmax_focal_terms,
)

__all__ = ["SigmoidFocalLoss", "SoftmaxFocalLoss"]


class SigmoidFocalLoss(nn.Module):
    """Multi-label (sigmoid) focal loss with per-class alpha and NaN-masked missing labels.

    For every element (sample, class, position) with logit ``x``, target ``t`` in [0, 1] and
    ``p = sigmoid(x)``::

        p_t     = p * t + (1 - p) * (1 - t)
        alpha_t = alpha_c * t + (1 - alpha_c) * (1 - t)
        FL      = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    where ``-log(p_t)`` is computed as ``binary_cross_entropy_with_logits(x, t)`` (numerically stable for
    large logits). For scalar ``alpha`` and targets without NaN this equals
    :func:`torchvision.ops.sigmoid_focal_loss` (also for soft targets).

    What it adds over torchvision and MONAI:

    - ``alpha`` may be a per-class vector ``(C,)`` applied along dim 1; a vector alpha keeps the meaning of
      the scalar one (``alpha_c`` on positives, ``1 - alpha_c`` on negatives). Note that
      :class:`monai.losses.FocalLoss` with a vector ``alpha`` instead weights positives by ``alpha_c``
      and negatives by 1, so the two agree only for scalar ``alpha``.
    - Target entries that are NaN (missing or uncertain labels, as in CheXpert or ChestX-ray14 subsets)
      contribute neither loss nor gradient, and ``"mean"`` averages over the valid entries only.

    Args:
        gamma: focusing exponent (>= 0); ``gamma=0`` with ``alpha=None`` is binary cross-entropy.
        alpha: weight of the positive label, in [0, 1]: a scalar, a per-class sequence of length C, or None for no alpha
            weighting (torchvision's ``alpha=-1``). Default 0.25 as in Lin et al.
        reduction: ``"mean"`` (sum over valid entries / number of valid entries), ``"sum"``, or ``"none"`` (element-wise
            loss, 0 at NaN targets, same shape as the input).

    Shapes:
        - input: logits, float, ``(B, C, ...)`` (any shape when ``alpha`` is a scalar or None).
        - target: same shape as input, float in [0, 1]; NaN marks a missing label.
        - output: float32 scalar, or ``(B, C, ...)`` for ``reduction="none"``.

    Example:
        >>> loss = SigmoidFocalLoss(gamma=2.0, alpha=[0.25, 0.5, 0.75])
        >>> logits = torch.randn(4, 3)
        >>> target = torch.tensor([[1.0, 0.0, float("nan")]] * 4)
        >>> value = loss(logits, target)
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | Sequence[float] | None = 0.25, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.reduction = check_reduction(reduction)
        alpha_t: torch.Tensor | None = None
        if alpha is not None:
            alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
            if alpha_t.ndim > 1 or ((alpha_t < 0) | (alpha_t > 1)).any():
                raise ValueError(
                    "alpha must be None, a value in [0, 1] or a per-class sequence of such values, "
                    f"got {alpha}."
                )
        self.register_buffer("alpha", alpha_t)
        self.alpha: torch.Tensor | None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits of shape ``(B, C, ...)``.
            target: labels in [0, 1] of the same shape; NaN entries are ignored.

        Returns:
            The reduced loss (float32 scalar) or the element-wise loss for ``reduction="none"``.
        """
        target, valid = prepare_multilabel(input, target)
        loss = sigmoid_focal_terms(input, target, self.gamma)
        if self.alpha is not None:
            alpha = channel_vector(self.alpha, "alpha", loss)
            loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
        return masked_reduce(loss, valid, self.reduction)


class SoftmaxFocalLoss(nn.Module):
    """Multi-class (softmax) focal loss on class-index targets, with per-class alpha and ignore_index.

    For every element with logits ``s`` (over C classes on dim 1) and true class ``y``::

        p_y = softmax(s)_y
        FL  = -alpha_y * (1 - p_y) ** gamma * log(p_y)

    ``log(p_y)`` comes from ``log_softmax`` (numerically stable). With ``gamma=0`` and ``alpha=None`` this is
    the unweighted cross-entropy.

    Relation to :class:`monai.losses.FocalLoss` with ``use_softmax=True, to_onehot_y=True`` and the same
    per-class ``alpha`` sequence (``weight=None``): MONAI computes the same per-element terms but keeps a
    class channel, ``(B, C, ...)``, that is zero except at the true class. Hence, for targets without
    ignored entries:

    - ``reduction="none"``: ours ``(B, ...)`` equals MONAI's output summed over dim 1;
    - ``reduction="mean"``: MONAI divides by ``B * C * n_positions``, ours by ``B * n_positions``, so
      ours equals C times MONAI's value (with ``ignore_index`` both divide by the valid positions and agree);
    - ``reduction="sum"``: for spatial logits ``(B, C, H, ...)`` MONAI first averages over the spatial
      positions, so ours equals MONAI's value times the number of positions. (For ``(B, C)`` logits
      MONAI 1.6 averages over an empty list of dims, which PyTorch treats as all dims, and returns the
      mean over ``B * C``.)

    A scalar ``alpha`` in MONAI's softmax loss means ``1 - alpha`` for class 0 and ``alpha`` for the others;
    this class only takes an explicit per-class sequence to avoid that implicit background convention.

    What it adds over MONAI and PyTorch: class-index targets without a one-hot step (``(B, ...)`` or
    ``(B, 1, ...)``), an ``ignore_index`` whose entries are left out of the ``"mean"`` denominator, a
    per-class alpha, and clear errors for out-of-range labels.

    Args:
        gamma: focusing exponent (>= 0).
        alpha: per-class weights (sequence of C non-negative floats) or None for no weighting.
        reduction: ``"mean"`` (sum over non-ignored elements / their number; a plain average, not divided by the sum of
            alpha as ``torch.nn.CrossEntropyLoss`` does with ``weight``), ``"sum"``, or ``"none"`` (loss of shape ``(B,
            ...)``, 0 at ignored entries).
        ignore_index: target value to leave out of the loss.

    Shapes:
        - input: logits, float, ``(B, C, ...)``.
        - target: class indices, ``(B, ...)`` or ``(B, 1, ...)``, integer (or integral float) in ``[0, C)``
          or ``ignore_index``.
        - output: float32 scalar, or ``(B, ...)`` for ``reduction="none"``.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.reduction = check_reduction(reduction)
        self.ignore_index = int(ignore_index)
        alpha_t: torch.Tensor | None = None
        if alpha is not None:
            alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
            if alpha_t.ndim != 1:
                raise ValueError(
                    f"alpha must be a per-class sequence of length C (or None), got {alpha!r}; a scalar "
                    "alpha "
                    "has no unambiguous meaning for a softmax loss."
                )
            if (alpha_t < 0).any():
                raise ValueError(f"alpha values must be >= 0, got {alpha!r}.")
        self.register_buffer("alpha", alpha_t)
        self.alpha: torch.Tensor | None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits of shape ``(B, C, ...)``.
            target: class indices of shape ``(B, ...)`` or ``(B, 1, ...)``.

        Returns:
            The reduced loss (float32 scalar) or the per-element loss ``(B, ...)`` for ``reduction="none"``.
        """
        target = prepare_class_index_target(input, target, self.ignore_index)
        loss, valid, safe_target = softmax_focal_terms(input, target, self.gamma, self.ignore_index)
        if self.alpha is not None:
            if self.alpha.numel() != input.shape[1]:
                raise ValueError(
                    f"alpha has {self.alpha.numel()} entries but the logits have {input.shape[1]} classes."
                )
            loss = self.alpha.to(loss.device)[safe_target] * loss
        return masked_reduce(loss, valid, self.reduction)
