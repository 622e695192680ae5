"""Slide decisions from class probabilities, and the quadratic-kappa metric of graded slides as a MONAI metric.

The metric itself is :func:`medbundle.metrics.classification.cohen_kappa_quadratic`; this module adds the slide
decision it is computed on (ordinal grade or thresholded binary class) and the stateful MONAI wrapper that a
graded bundle's ``key_val_metric`` needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from medbundle.metrics.classification import cohen_kappa_quadratic
from medbundle.pathology.losses import grade_from_class_probabilities

__all__ = ["QuadraticKappaMetric", "check_label_mode", "decide"]


def decide(probs: np.ndarray, label_mode: str, thresholds: Sequence[float] | None = None,
           positive_class: int = 1) -> np.ndarray:
    """Class decision per slide.

    - graded: the ordinal grade (how many cumulative probabilities ``P(grade > k)`` exceed 0.5);
    - binary: ``positive_class`` when its probability reaches its threshold (the other class otherwise);
      arg-max without thresholds.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    if label_mode == "graded":
        return grade_from_class_probabilities(torch.as_tensor(p)).numpy().astype(np.int64)
    if thresholds is None or p.shape[1] != 2:
        return p.argmax(1).astype(np.int64)
    pos = int(positive_class)
    return np.where(p[:, pos] >= float(thresholds[pos]), pos, 1 - pos).astype(np.int64)


def check_label_mode(label_mode: str) -> str:
    """``label_mode`` if it is ``"binary"`` or ``"graded"``; ValueError otherwise."""
    if label_mode not in ("binary", "graded"):
        raise ValueError(f"label_mode must be 'binary' or 'graded', got {label_mode!r}")
    return label_mode


class QuadraticKappaMetric(CumulativeIterationMetric):
    """Quadratic-weighted Cohen's kappa (:func:`medbundle.metrics.cohen_kappa_quadratic`) of the slide
    decision (:func:`decide`) from class probabilities ``(B, K)`` against grades ``(B,)``."""

    def __init__(self, label_mode: str = "graded") -> None:
        super().__init__()
        self.label_mode = check_label_mode(label_mode)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        return y_pred.float(), torch.as_tensor(y).reshape(-1, 1).float().to(y_pred.device)

    def aggregate(self) -> float:  # type: ignore[override]
        y_pred, y = self.get_buffer()
        p = y_pred.cpu().numpy()
        grades = decide(p, self.label_mode)
        return cohen_kappa_quadratic(y.cpu().numpy().reshape(-1).astype(np.int64), grades, num_classes=p.shape[1])
