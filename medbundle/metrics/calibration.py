"""Calibration of predicted probabilities: reliability-diagram data and expected calibration error.

Follows scikit-learn's ``(y_true, y_prob)`` convention, with ``y_prob`` the predicted probability of the
positive class. What this module adds over :func:`sklearn.calibration.calibration_curve`:

- every bin is returned, with its edges and sample count (empty bins as ``nan``), which is what a
  reliability diagram with a count histogram needs; scikit-learn drops empty bins and the counts;
- :func:`expected_calibration_error`, absent from scikit-learn;
- multi-label input: arrays of any shape are flattened ("per-probability" calibration, every
  (sample, class) probability is one binary prediction), and NaN labels (missing/uncertain) are skipped.

Bins are closed on the right, ``[e0, e1], (e1, e2], ..., (e_{B-1}, e_B]``, exactly as in
``calibration_curve``, so the non-empty bins agree with it value for value.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from medbundle.metrics.validation import check_same_shape
from medbundle.utils import to_numpy

__all__ = ["reliability_diagram", "expected_calibration_error"]


def _calibration_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = to_numpy(y_true, "y_true")
    p = to_numpy(y_prob, "y_prob")
    check_same_shape(t, p, "y_true", "y_prob")
    t = t.astype(np.float64).reshape(-1)
    p = p.astype(np.float64).reshape(-1)
    if not np.isfinite(p).all():
        raise ValueError("y_prob contains NaN or infinite values; probabilities must be finite.")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"y_prob must be probabilities in [0, 1], found range [{p.min()}, {p.max()}]. "
                         "Apply a sigmoid/softmax to logits first.")
    known = ~np.isnan(t)
    t, p = t[known], p[known]
    bad = (t != 0) & (t != 1)
    if bad.any():
        raise ValueError("y_true must contain only 0, 1 or NaN (missing); found "
                         f"{np.unique(t[bad])[:5].tolist()}.")
    return t, p


def reliability_diagram(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, np.ndarray]:
    """Per-bin mean confidence, observed frequency and count, for a reliability diagram.

    Args:
        y_true (array-like, any shape): Labels in {0, 1}; NaN entries (missing labels) are ignored.
        y_prob (array-like, same shape as ``y_true``): Predicted probabilities of the positive class, in [0, 1].
        n_bins (int, default 10): Number of bins.
        strategy ({"uniform", "quantile"}, default "uniform"): ``"uniform"``: equal-width bins on [0, 1].
            ``"quantile"``: edges at the quantiles of ``y_prob`` so bins hold about equal counts (ties can leave some
            bins empty).

    Returns:
        dict: ``bin_edges`` float64 (n_bins + 1,); ``bin_confidence`` (mean predicted probability), ``bin_accuracy``
            (fraction of positives) as float64 (n_bins,), ``nan`` for empty bins; ``bin_count`` int64 (n_bins,).
            Non-empty bins equal scikit-learn's ``calibration_curve`` ``(prob_true, prob_pred)`` with the same
            ``n_bins`` and ``strategy``.
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}.")
    n_bins = int(n_bins)
    t, p = _calibration_inputs(y_true, y_prob)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        if p.size == 0:
            raise ValueError("strategy='quantile' needs at least one labelled probability.")
        edges = np.percentile(p, np.linspace(0.0, 100.0, n_bins + 1))
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}.")
    bin_id = np.searchsorted(edges[1:-1], p, side="left")  # right-closed bins
    count = np.bincount(bin_id, minlength=n_bins)
    conf_sum = np.bincount(bin_id, weights=p, minlength=n_bins)
    pos_sum = np.bincount(bin_id, weights=t, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, pos_sum / count, np.nan)
    return {
        "bin_edges": edges,
        "bin_confidence": confidence,
        "bin_accuracy": accuracy,
        "bin_count": count.astype(np.int64),
    }


def expected_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> float:
    """Expected calibration error, ``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|``.

    This is the binary ("per-probability") ECE: each probability is compared with the frequency of
    positives among predictions in its bin. For multi-label data pass (N, C) arrays; all known entries
    are pooled. Parameters and binning are those of :func:`reliability_diagram`.

    Returns:
        float: ECE in [0, 1]; ``nan`` when there is no labelled probability.
    """
    bins = reliability_diagram(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    count = bins["bin_count"]
    total = int(count.sum())
    if total == 0:
        return float("nan")
    used = count > 0
    gap = np.abs(bins["bin_accuracy"][used] - bins["bin_confidence"][used])
    return float((count[used] * gap).sum() / total)
