"""Build a loss by name from a bundle config.

A bundle config names its loss and passes the label counts it needs, e.g.::

    "loss": {"_target_": "medbundle.losses.build_loss", "name": "weighted_bce",
             "pos_counts": [120, 30, 7], "neg_counts": [880, 970, 993]}

MONAI's ``ConfigParser`` can instantiate every class directly; the factory adds one place that turns
counts into weights, checks that the counts a loss needs are present, and lists the valid names.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medbundle.mining.ohem import HardExampleLoss

from .class_balanced import ClassBalancedLoss
from .focal import SigmoidFocalLoss, SoftmaxFocalLoss
from .terms import CountsLike
from .weighted import WeightedBCEWithLogitsLoss, WeightedCrossEntropyLoss

__all__ = ["build_loss", "LOSS_NAMES"]

MULTILABEL_LOSSES = ("bce", "weighted_bce", "focal", "class_balanced", "ohem_bce")
MULTICLASS_LOSSES = ("ce", "weighted_ce", "softmax_focal", "class_balanced_ce", "ohem_ce")
LOSS_NAMES = MULTILABEL_LOSSES + MULTICLASS_LOSSES

# generic names that mean the multi-class loss when ``multilabel=False``
_MULTICLASS_ALIASES = {"focal": "softmax_focal", "class_balanced": "class_balanced_ce"}


def _require(name: str, **counts: CountsLike | None) -> None:
    missing = [key for key, value in counts.items() if value is None]
    if missing:
        raise ValueError(f"loss {name!r} is built from label counts; pass {', '.join(missing)}.")


def build_loss(
    name: str,
    pos_counts: CountsLike | None = None,
    neg_counts: CountsLike | None = None,
    counts: CountsLike | None = None,
    multilabel: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Return the loss module called ``name``.

    Multi-label (logits and float targets ``(B, C, ...)``, NaN = missing label):

    - ``"bce"``: :class:`WeightedBCEWithLogitsLoss` without weights (NaN-aware BCE).
    - ``"weighted_bce"``: :meth:`WeightedBCEWithLogitsLoss.from_counts` (``pos_counts``, ``neg_counts``).
    - ``"focal"``: :class:`SigmoidFocalLoss` (``gamma``, ``alpha`` from ``kwargs``).
    - ``"class_balanced"``: :class:`ClassBalancedLoss` with ``samples_per_class=pos_counts`` and
      ``neg_samples_per_class=neg_counts`` (optional); ``loss_type`` ``"bce"`` (default) or ``"focal"``.
    - ``"ohem_bce"``: online hard example mining, :class:`~medbundle.mining.HardExampleLoss` over the
      (sample, class) BCE terms: only the hardest ``keep_fraction`` (kwargs, default 0.5) give the gradient.

    Multi-class (logits ``(B, C, ...)``, class-index targets):

    - ``"ce"``: :class:`WeightedCrossEntropyLoss` without weights.
    - ``"weighted_ce"``: :meth:`WeightedCrossEntropyLoss.from_counts` (``counts``; ``method`` from
      ``kwargs``, default ``"balanced"``).
    - ``"softmax_focal"``: :class:`SoftmaxFocalLoss`.
    - ``"class_balanced_ce"``: :class:`ClassBalancedLoss` with ``samples_per_class=counts``;
      ``loss_type`` ``"ce"`` (default) or ``"softmax_focal"``.
    - ``"ohem_ce"``: :class:`~medbundle.mining.HardExampleLoss` over the per-sample cross-entropy: only the
      hardest ``keep_fraction`` (kwargs, default 0.5) of each batch's samples give the gradient.

    ``multilabel`` only resolves the generic names: with ``multilabel=False``, ``"focal"`` means
    ``"softmax_focal"`` and ``"class_balanced"`` means ``"class_balanced_ce"``. Names that belong to one
    task are used as given.

    Args:
        name: one of :data:`LOSS_NAMES` (case-insensitive).
        pos_counts: positive labels per class ``(C,)`` (multi-label).
        neg_counts: negative labels per class ``(C,)`` (multi-label).
        counts: samples per class ``(C,)`` (multi-class).
        multilabel: the task, used for the generic names.
        kwargs: passed on to the loss (e.g. ``gamma``, ``alpha``, ``beta``, ``reduction``).

    Raises:
        ValueError: unknown name (the message lists the valid ones) or missing counts.
    """
    key = str(name).lower().strip()
    if key not in LOSS_NAMES:
        raise ValueError(f"Unknown loss name {name!r}; valid names: {', '.join(LOSS_NAMES)}.")
    if not multilabel:
        key = _MULTICLASS_ALIASES.get(key, key)

    if key == "bce":
        return WeightedBCEWithLogitsLoss(**kwargs)
    if key == "weighted_bce":
        _require(key, pos_counts=pos_counts, neg_counts=neg_counts)
        return WeightedBCEWithLogitsLoss.from_counts(pos_counts, neg_counts, **kwargs)
    if key == "focal":
        return SigmoidFocalLoss(**kwargs)
    if key == "class_balanced":
        _require(key, pos_counts=pos_counts)
        kwargs.setdefault("loss_type", "bce")
        if kwargs["loss_type"] not in ("bce", "focal"):
            raise ValueError(
                "'class_balanced' is multi-label: loss_type must be 'bce' or 'focal', "
                f"got {kwargs['loss_type']!r}."
            )
        return ClassBalancedLoss(pos_counts, neg_samples_per_class=neg_counts, **kwargs)
    if key in ("ohem_bce", "ohem_ce"):
        keep_fraction = kwargs.pop("keep_fraction", 0.5)
        inner = WeightedBCEWithLogitsLoss if key == "ohem_bce" else WeightedCrossEntropyLoss
        return HardExampleLoss(inner(**{**kwargs, "reduction": "none"}), keep_fraction=keep_fraction)
    if key == "ce":
        return WeightedCrossEntropyLoss(**kwargs)
    if key == "weighted_ce":
        _require(key, counts=counts)
        return WeightedCrossEntropyLoss.from_counts(counts, **kwargs)
    if key == "softmax_focal":
        return SoftmaxFocalLoss(**kwargs)
    # class_balanced_ce
    _require(key, counts=counts)
    kwargs.setdefault("loss_type", "ce")
    if kwargs["loss_type"] not in ("ce", "softmax_focal"):
        raise ValueError(
            "'class_balanced_ce' is multi-class: loss_type must be 'ce' or 'softmax_focal', "
            f"got {kwargs['loss_type']!r}."
        )
    return ClassBalancedLoss(counts, **kwargs)
