"""Weighted binary and multi-class cross-entropy that build their weights from label counts."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbundle.losses.terms import (
    CountsLike,
    as_counts,
    channel_vector,
    check_reduction,
    masked_reduce,
    prepare_class_index_target,
    prepare_multilabel,
)

from .class_balanced import class_weights_from_counts

__all__ = ["WeightedBCEWithLogitsLoss", "WeightedCrossEntropyLoss"]


class WeightedBCEWithLogitsLoss(nn.Module):
    """Multi-label binary cross-entropy on logits, with a per-class ``pos_weight`` and NaN-masked labels.

    Element-wise, for logit ``x``, target ``t`` and positive weight ``w_c`` of the element's class::

        loss = -(w_c * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))

    computed by :func:`torch.nn.functional.binary_cross_entropy_with_logits` (numerically stable).

    What it adds over :class:`torch.nn.BCEWithLogitsLoss`:

    - NaN target entries (missing labels) give neither loss nor gradient, and ``"mean"`` averages over
      the valid entries only (``BCEWithLogitsLoss`` returns NaN).
    - ``pos_weight`` of shape ``(C,)`` applies along dim 1 for any input ``(B, C, ...)``; PyTorch
      broadcasts it against the last dimension, which is only the class dimension for ``(B, C)`` input.
    - :meth:`from_counts` sets ``pos_weight = neg / pos`` from label counts.

    Args:
        pos_weight: weight of positive entries: None (all 1), a scalar, or a per-class sequence ``(C,)``.
        reduction: ``"mean"`` (over valid entries), ``"sum"`` or ``"none"`` (shape of the input, 0 at NaN targets).

    Shapes:
        - input: logits ``(B, C, ...)``, float.
        - target: same shape, float in [0, 1], NaN for missing.
        - output: float32 scalar or ``(B, C, ...)``.
    """

    def __init__(
        self, pos_weight: float | Sequence[float] | torch.Tensor | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        pw: torch.Tensor | None = None
        if pos_weight is not None:
            pw = torch.as_tensor(pos_weight, dtype=torch.float32).detach().clone()
            if pw.ndim > 1 or not torch.isfinite(pw).all() or (pw < 0).any():
                raise ValueError(
                    "pos_weight must be None, a scalar or a per-class sequence of finite values >= 0, "
                    f"got {pos_weight}."
                )
        self.register_buffer("pos_weight", pw)
        self.pos_weight: torch.Tensor | None

    @classmethod
    def from_counts(
        cls, pos_counts: CountsLike, neg_counts: CountsLike, reduction: str = "mean"
    ) -> WeightedBCEWithLogitsLoss:
        """Build the loss with ``pos_weight[c] = neg_counts[c] / pos_counts[c]``.

        A class whose positive or negative count is 0 gets ``pos_weight = 1`` (with a warning): the ratio is
        undefined (or 0, which would silence that class's positives).

        Args:
            pos_counts: number of positive labels per class ``(C,)``.
            neg_counts: number of negative labels per class ``(C,)``.
            reduction: as in the constructor.
        """
        pos = as_counts(pos_counts, "pos_counts")
        neg = as_counts(neg_counts, "neg_counts")
        if pos.shape != neg.shape:
            raise ValueError(f"pos_counts has {pos.size} classes but neg_counts has {neg.size}.")
        defined = (pos > 0) & (neg > 0)
        if not defined.all():
            warnings.warn(
                f"classes {np.flatnonzero(~defined).tolist()} have no positive or no negative labels; "
                "their pos_weight is set to 1.",
                stacklevel=2,
            )
        pos_weight = np.ones_like(pos)
        pos_weight[defined] = neg[defined] / pos[defined]
        return cls(pos_weight=pos_weight.tolist(), reduction=reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see the class docstring for shapes."""
        target, valid = prepare_multilabel(input, target)
        x = input.float()
        pw = None
        if self.pos_weight is not None:
            pw = channel_vector(self.pos_weight, "pos_weight", x)
        loss = F.binary_cross_entropy_with_logits(x, target.float(), pos_weight=pw, reduction="none")
        return masked_reduce(loss, valid, self.reduction)


class WeightedCrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy with class weights from counts, on ``(B, ...)`` or ``(B, 1, ...)`` targets.

    The element-wise loss is :func:`torch.nn.functional.cross_entropy` with ``weight``,
    ``ignore_index`` and ``label_smoothing``. ``"mean"`` follows PyTorch: the weighted sum divided by the sum
    of the weights of the non-ignored targets (so it equals :class:`torch.nn.CrossEntropyLoss`), except
    that a batch where every target is ignored gives 0 instead of NaN.

    What it adds over :class:`torch.nn.CrossEntropyLoss`: :meth:`from_counts` (``"balanced"`` as in
    scikit-learn, ``"inverse"`` or ``"effective"`` weights), targets with a channel dimension
    ``(B, 1, ...)`` as MONAI transforms produce them, integral float targets, and a clear error for labels
    outside ``[0, C)`` instead of a device-side assertion.

    Args:
        weight: per-class weights ``(C,)`` or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B, ...)``, 0 at ignored entries).
        ignore_index: target value that is left out.
        label_smoothing: as in PyTorch, in [0, 1).

    Shapes:
        - input: logits ``(B, C, ...)``.
        - target: class indices ``(B, ...)`` or ``(B, 1, ...)``.
        - output: float32 scalar or ``(B, ...)``.
    """

    def __init__(
        self,
        weight: Sequence[float] | torch.Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = int(ignore_index)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)
        w: torch.Tensor | None = None
        if weight is not None:
            w = torch.as_tensor(weight, dtype=torch.float32).detach().clone()
            if w.ndim != 1 or not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"weight must be a per-class sequence of finite values >= 0, got {weight}.")
        self.register_buffer("weight", w)
        self.weight: torch.Tensor | None

    @classmethod
    def from_counts(
        cls,
        counts: CountsLike,
        method: str = "balanced",
        beta: float = 0.9999,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> WeightedCrossEntropyLoss:
        """Build the loss with ``weight = class_weights_from_counts(counts, method, beta)``.

        Args:
            counts: samples per class ``(C,)``.
            method: ``"balanced"``, ``"inverse"`` or ``"effective"``; see
                :func:`medbundle.losses.class_weights_from_counts`.
            beta: for ``"effective"`` only.
            reduction, ignore_index, label_smoothing: as in the constructor.
        """
        weight = class_weights_from_counts(counts, method=method, beta=beta)
        return cls(
            weight=weight, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see the class docstring for shapes."""
        target = prepare_class_index_target(input, target, self.ignore_index)
        x = input.float()
        weight = None
        if self.weight is not None:
            if self.weight.numel() != x.shape[1]:
                raise ValueError(
                    f"weight has {self.weight.numel()} entries but the logits have {x.shape[1]} classes."
                )
            weight = self.weight.to(x.device)
        loss = F.cross_entropy(
            x,
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        valid = target != self.ignore_index
        if self.reduction != "mean":
            return masked_reduce(loss, valid, self.reduction)
        loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
        if weight is None:
            denom = valid.sum().to(loss.dtype)
        else:
            safe = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
            denom = (weight[safe] * valid).sum()
        # an all-ignored batch has a zero numerator too: divide by 1 there and return 0
        return loss.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))
