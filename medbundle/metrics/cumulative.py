"""MONAI ``CumulativeIterationMetric`` wrappers around :mod:`medbundle.metrics`.

They buffer predictions and labels over an epoch (gathered across ranks under DDP by MONAI's
``Cumulative``) and compute the metric once at the end, so bundle configs use our checked metric
functions through the same interface as MONAI's own ``ROCAUCMetric``.

What they add over ``monai.metrics.ROCAUCMetric``: labels that are NaN (missing or uncertain, e.g.
CheXpert's -1 under the "ignore" policy) are masked per class instead of being taken as values, and a
class whose labels in the set are all one value gives NaN for that class, not an error, and is left out
of the macro mean.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

__all__ = ["MultiLabelAUROCMetric"]


class MultiLabelAUROCMetric(CumulativeIterationMetric):
    """Per-class AUROC over multi-label (or one-vs-rest multi-class) outputs, NaN-masked.

    ``y_pred``: (B, C) scores (probabilities or logits; AUROC depends only on their order).
    ``y``: (B, C) labels in {0, 1}, NaN where unknown.

    Args:
        average: ``"macro"`` returns the NaN-ignoring mean over classes (a float); ``"none"`` returns
            the (C,) array of per-class values.
    """

    def __init__(self, average: str = "macro") -> None:
        super().__init__()
        if average not in ("macro", "none"):
            raise ValueError(f"average must be 'macro' or 'none', got {average!r}")
        self.average = average

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        if y_pred.shape != y.shape:
            raise ValueError(
                f"prediction shape {tuple(y_pred.shape)} differs from label shape {tuple(y.shape)}; "
                "labels must be multi-hot vectors with one column per class"
            )
        return y_pred, y

    def aggregate(self) -> float | np.ndarray:  # type: ignore[override]
        from medbundle.metrics.roc import roc_auc_per_class

        y_pred, y = self.get_buffer()
        per_class = roc_auc_per_class(y.float().cpu().numpy(), y_pred.float().cpu().numpy())
        if self.average == "none":
            return per_class
        valid = per_class[~np.isnan(per_class)]
        return float(valid.mean()) if valid.size else float("nan")
