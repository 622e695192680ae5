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

__all__ = ["MultiLabelAUROCMetric", "labels_as_matrix"]


def labels_as_matrix(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as a ``(B, num_classes)`` float matrix.

    Multi-hot ``(B, C)`` labels pass through; class indices ``(B,)`` or ``(B, 1)`` (multi-class) become
    one-hot rows, so one-vs-rest metrics apply to both.
    """
    y = torch.as_tensor(y)
    if y.ndim == 2 and y.shape[1] == num_classes:
        return y.float()
    flat = y.reshape(-1)
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise ValueError(
            f"labels of shape {tuple(y.shape)} are neither multi-hot (B, {num_classes}) nor class indices (B,)"
        )
    idx = flat.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(f"class index out of range [0, {num_classes - 1}]: {flat.tolist()}")
    return torch.nn.functional.one_hot(idx, num_classes).float()


class MultiLabelAUROCMetric(CumulativeIterationMetric):
    """Per-class AUROC over multi-label (or one-vs-rest multi-class) outputs, NaN-masked.

    ``y_pred``: (B, C) scores (probabilities or logits; AUROC depends only on their order).
    ``y``: (B, C) labels in {0, 1}, NaN where unknown; or (B,) class indices (one-vs-rest AUROC).

    Args:
        average: ``"macro"`` returns the NaN-ignoring mean over classes (a float); ``"none"`` returns the (C,) array of
            per-class values.
    """

    def __init__(self, average: str = "macro") -> None:
        super().__init__()
        if average not in ("macro", "none"):
            raise ValueError(f"average must be 'macro' or 'none', got {average!r}")
        self.average = average

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        if y_pred.ndim != 2:
            raise ValueError(f"predictions must be (B, C) scores, got shape {tuple(y_pred.shape)}")
        return y_pred, labels_as_matrix(y, y_pred.shape[1]).to(y_pred.device)

    def aggregate(self) -> float | np.ndarray:  # type: ignore[override]
        from medbundle.metrics.roc import roc_auc_per_class

        y_pred, y = self.get_buffer()
        per_class = roc_auc_per_class(y.float().cpu().numpy(), y_pred.float().cpu().numpy())
        if self.average == "none":
            return per_class
        valid = per_class[~np.isnan(per_class)]
        return float(valid.mean()) if valid.size else float("nan")
