"""ROC analysis: AUROC, DeLong variance / CIs / paired test, bootstrap CIs and operating points.

All functions follow scikit-learn's ``(y_true, y_score)`` convention: ``y_true`` holds 0/1 labels,
``y_score`` continuous scores where higher means "more likely positive"; numpy arrays, lists and torch
tensors are accepted. A sample is *predicted positive* when ``y_score >= threshold``.

What this module adds over :mod:`sklearn.metrics`:

- NaN-masked multi-label AUROC / AP (:func:`roc_auc_per_class`, :func:`average_precision_per_class`): a NaN
  label is ignored for its class only, and a class with a single label value gives ``nan`` rather than
  an exception, so one rare class cannot abort an evaluation.
- DeLong's nonparametric AUC variance with the O(N log N) midrank algorithm of Sun & Xu (2014), giving
  confidence intervals (:func:`delong_auc_ci`) and the paired test of two correlated ROC curves
  (:func:`delong_test`) - what radiology papers report and scikit-learn does not provide.
- A vectorised (stratified) percentile bootstrap CI (:func:`bootstrap_auc_ci`).
- Operating points: Youden threshold, threshold at a target sensitivity or specificity.

References:
    E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, "Comparing the areas under two or more correlated
    receiver operating characteristic curves: a nonparametric approach", Biometrics 44(3), 1988.

    X. Sun, W. Xu, "Fast implementation of DeLong's algorithm for comparing the areas under correlated
    receiver operating characteristic curves", IEEE Signal Processing Letters 21(11), 2014.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata
from sklearn.metrics import average_precision_score

from medbundle.metrics.validation import (
    check_binary_labels,
    check_multilabel_targets,
    check_same_shape,
    check_scores,
)

__all__ = [
    "roc_auc",
    "roc_auc_per_class",
    "average_precision",
    "average_precision_per_class",
    "delong_auc_variance",
    "delong_auc_ci",
    "delong_test",
    "bootstrap_auc_ci",
    "threshold_youden",
    "threshold_at_sensitivity",
    "threshold_at_specificity",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "youden_thresholds",
    "midgap_youden_thresholds",
]

_NAN = float("nan")
# elements per vectorised bootstrap chunk (bounds memory to a few tens of MB)
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _binary_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = check_binary_labels(y_true, "y_true")
    s = check_scores(y_score, y.shape[0], "y_score")
    return y, s


def _class_counts(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Checked labels and scores with the number of positives ``m`` and negatives ``n``."""
    y, s = _binary_inputs(y_true, y_score)
    m = int(y.sum())
    return y, s, m, y.size - m


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}.")
    return confidence


def _check_target(target: float, name: str) -> float:
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1] (e.g. 0.9 for 90%), got {target}.")
    return target


# ----------------------------------------------------------------------------------------------------------
# AUROC and average precision
# ----------------------------------------------------------------------------------------------------------


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve of a binary classifier (Mann-Whitney statistic, ties count 1/2).

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score (array-like of shape (N,)): Finite scores; higher means more likely positive.

    Returns:
        float: AUROC in [0, 1], equal to ``sklearn.metrics.roc_auc_score``; ``nan`` when only one class is present
            (scikit-learn raises), so per-subgroup evaluations do not abort.
    """
    y, s, m, n = _class_counts(y_true, y_score)
    if m == 0 or n == 0:
        return _NAN
    ranks = rankdata(s)  # midranks: ties share the average rank
    return float((ranks[y].sum() - m * (m + 1) / 2.0) / (m * n))


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise) of a binary classifier.

    Equal to ``sklearn.metrics.average_precision_score``; ``nan`` when there is no positive sample
    (scikit-learn returns 0 with a warning). With no negatives AP is 1.
    """
    y, s = _binary_inputs(y_true, y_score)
    if not y.any():
        return _NAN
    return float(average_precision_score(y, s))


def _per_class(fn: Any, y_true: ArrayLike, y_score: ArrayLike) -> np.ndarray:
    t = check_multilabel_targets(y_true, "y_true")
    s = check_scores(y_score, t.shape[0], "y_score", ndim=2)
    check_same_shape(t, s, "y_true", "y_score")
    out = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        known = ~np.isnan(t[:, c])
        out[c] = fn(t[known, c].astype(bool), s[known, c])
    return out


def roc_auc_per_class(y_true: ArrayLike, y_score: ArrayLike) -> np.ndarray:
    """AUROC of each class of a multi-label (or one-vs-rest) classifier, ignoring missing labels.

    Args:
        y_true (array-like of shape (N, C)): Labels in {0, 1}; NaN means missing/uncertain and removes that sample from
        that class only.
        y_score (array-like of shape (N, C)): Finite scores.

    Returns:
        numpy.ndarray of shape (C,), float64: Per-class AUROC; ``nan`` for a class whose known labels are all 0 or all
        1. ``np.nanmean`` of it is the usual "mean AUROC".
    """
    return _per_class(roc_auc, y_true, y_score)


def average_precision_per_class(y_true: ArrayLike, y_score: ArrayLike) -> np.ndarray:
    """Average precision of each class, ignoring NaN labels; ``nan`` for a class without positives.

    Shapes as in :func:`roc_auc_per_class`; returns float64 of shape (C,).
    """
    return _per_class(average_precision, y_true, y_score)


# ----------------------------------------------------------------------------------------------------------
# DeLong
# ----------------------------------------------------------------------------------------------------------


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components for K score vectors on the same cases (Sun & Xu 2014).

    ``scores`` has shape (K, N). With midranks ``Tz`` over all N cases, ``Tx`` within the m positives
    and ``Ty`` within the n negatives:

    - ``V10[i] = (Tz[x_i] - Tx[i]) / n``: fraction of negatives scored below positive i (ties 1/2);
    - ``V01[j] = 1 - (Tz[y_j] - Ty[j]) / m``: fraction of positives scored above negative j;
    - ``AUC = mean(V10) = mean(V01)``.

    Returns ``(auc (K,), v10 (K, m), v01 (K, n))``.
    """
    pos = scores[:, y]
    neg = scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tz = rankdata(scores, axis=1)
    v10 = (tz[:, y] - rankdata(pos, axis=1)) / n
    v01 = 1.0 - (tz[:, ~y] - rankdata(neg, axis=1)) / m
    return v10.mean(axis=1), v10, v01


def _delong_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """``S = S10 / m + S01 / n`` (K, K), with sample covariances (ddof=1) of the structural components."""
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return np.full((v10.shape[0], v10.shape[0]), np.nan)
    d10 = v10 - v10.mean(axis=1, keepdims=True)
    d01 = v01 - v01.mean(axis=1, keepdims=True)
    return (d10 @ d10.T) / ((m - 1) * m) + (d01 @ d01.T) / ((n - 1) * n)


def delong_auc_variance(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float]:
    """AUROC and its DeLong variance, by the fast midrank algorithm of Sun & Xu (2014).

    Cost is three sorts, O(N log N) time and O(N) memory, instead of the O(m n) pairwise comparisons of
    the textbook formulation; ties are handled exactly (they count 1/2, as in the Mann-Whitney AUC).

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score (array-like of shape (N,)): Finite scores.

    Returns:
        auc (float): Equal to ``sklearn.metrics.roc_auc_score``; ``nan`` with a single class.
        variance (float): DeLong variance of the AUC estimate, ``S10 / m + S01 / n``; ``nan`` with fewer than two
            positives or two negatives.
    """
    y, s = _binary_inputs(y_true, y_score)
    m = int(y.sum())
    if m == 0 or m == y.size:
        return _NAN, _NAN
    auc, v10, v01 = _delong_components(y, s[None, :])
    return float(auc[0]), float(_delong_covariance(v10, v01)[0, 0])


def delong_auc_ci(y_true: ArrayLike, y_score: ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """AUROC with a DeLong confidence interval (normal approximation).

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score (array-like of shape (N,)): Finite scores.
        confidence (float, default 0.95): Two-sided confidence level.

    Returns:
        dict: ``auc``, ``ci_low``, ``ci_high`` (``auc -/+ z * std`` with ``z`` the normal quantile, clipped to [0, 1])
            and ``std`` (DeLong standard error). All ``nan`` where undefined (single class; the interval also with fewer
            than two samples in a class).
    """
    confidence = _check_confidence(confidence)
    auc, var = delong_auc_variance(y_true, y_score)
    std = float(np.sqrt(max(var, 0.0))) if np.isfinite(var) else _NAN
    z = float(norm.ppf(0.5 + confidence / 2.0))
    return {
        "auc": auc,
        "ci_low": float(np.clip(auc - z * std, 0.0, 1.0)) if np.isfinite(std) else _NAN,
        "ci_high": float(np.clip(auc + z * std, 0.0, 1.0)) if np.isfinite(std) else _NAN,
        "std": std,
    }


def delong_test(
    y_true: ArrayLike, y_score_a: ArrayLike, y_score_b: ArrayLike, confidence: float = 0.95
) -> dict[str, float]:
    """DeLong's two-sided test of H0: AUC_a = AUC_b for two models scored on the same cases.

    The two AUC estimates are correlated because the cases are shared; the test uses their DeLong
    covariance: ``z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab)``.

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score_a, y_score_b (array-like of shape (N,)): Finite scores of the two models for the same N cases, in the
        same order.
        confidence (float, default 0.95): Level of the reported CI of the difference ``AUC_a - AUC_b``.

    Returns:
        dict: ``auc_a, auc_b, auc_diff`` (a - b), ``var_a, var_b, covariance`` (DeLong covariance of the two AUC
            estimates), ``z``, ``p_value`` (two-sided, normal), ``diff_ci_low, diff_ci_high``. When the variance of the
            difference is 0 (e.g. identical scores) ``z`` is 0 and ``p_value`` 1 if the AUCs are equal, else ``z =
            +/-inf`` and ``p_value`` 0. ``nan`` where undefined.
    """
    confidence = _check_confidence(confidence)
    y = check_binary_labels(y_true, "y_true")
    sa = check_scores(y_score_a, y.size, "y_score_a")
    sb = check_scores(y_score_b, y.size, "y_score_b")
    m = int(y.sum())
    keys = ("auc_a", "auc_b", "auc_diff", "var_a", "var_b", "covariance", "z", "p_value",
            "diff_ci_low", "diff_ci_high")
    if m == 0 or m == y.size:
        return dict.fromkeys(keys, _NAN)
    auc, v10, v01 = _delong_components(y, np.stack([sa, sb]))
    cov = _delong_covariance(v10, v01)
    diff = float(auc[0] - auc[1])
    # var(a - b) from the components of the difference: equal to var_a + var_b - 2 cov_ab, but exactly 0
    # for identical rankings instead of a rounding residue of the cancellation
    var_diff = float(_delong_covariance(v10[:1] - v10[1:], v01[:1] - v01[1:])[0, 0])
    if not np.isfinite(var_diff):
        z = p = _NAN
    elif var_diff <= 0.0:
        z = 0.0 if diff == 0.0 else float(np.copysign(np.inf, diff))
        p = 1.0 if diff == 0.0 else 0.0
    else:
        z = diff / np.sqrt(var_diff)
        p = float(2.0 * norm.sf(abs(z)))
    half = float(norm.ppf(0.5 + confidence / 2.0) * np.sqrt(var_diff)) if np.isfinite(var_diff) else _NAN
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "auc_diff": diff,
        "var_a": float(cov[0, 0]),
        "var_b": float(cov[1, 1]),
        "covariance": float(cov[0, 1]),
        "z": float(z),
        "p_value": float(p),
        "diff_ci_low": diff - half,
        "diff_ci_high": diff + half,
    }


# ----------------------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------------------


def _resampled_aucs(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of each resample ``(y[idx[b]], s[idx[b]])``, for idx of shape (B, K), without sorting again.

    The scores are grouped once into G distinct values (ascending). For each resample we count positives
    and negatives per group (one ``bincount``), then AUC = sum_g pos_g (neg_below_g + neg_g / 2) / (m n).
    Returns float64 (B,), ``nan`` for a resample with a single class.
    """
    _, group = np.unique(s, return_inverse=True)
    n_groups = int(group.max()) + 1
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n_groups + group.reshape(-1)[idx]).ravel()
    is_pos = y[idx].ravel()
    pos = np.bincount(flat[is_pos], minlength=b * n_groups).reshape(b, n_groups)
    neg = np.bincount(flat[~is_pos], minlength=b * n_groups).reshape(b, n_groups)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (2 * neg_below + neg)).sum(axis=1) / 2.0
    den = pos.sum(axis=1).astype(np.float64) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_auc_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    n_bootstraps: int = 1000,
    confidence: float = 0.95,
    stratified: bool = True,
    seed: int | None = 0,
) -> dict[str, float]:
    """AUROC with a percentile bootstrap confidence interval.

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score (array-like of shape (N,)): Finite scores.
        n_bootstraps (int, default 1000): Number of resamples.
        confidence (float, default 0.95): Two-sided level; the interval is the (1-confidence)/2 and (1+confidence)/2
            percentiles.
        stratified (bool, default True): Resample positives and negatives separately, keeping their counts (m, n) fixed,
            as pROC does. Without it, whole cases are resampled and resamples holding a single class are skipped.
        seed (int or None, default 0): Seed of ``numpy.random.default_rng``; the same seed and data give the same
            interval.

    Returns:
        dict: ``auc`` (on the original data), ``ci_low``, ``ci_high``, and ``n_bootstraps`` (the number of resamples
            used). ``nan`` where undefined (single class).

    Note:
        Each resample costs O(N) (no re-sorting), vectorised over chunks of resamples.
    """
    confidence = _check_confidence(confidence)
    if int(n_bootstraps) < 1:
        raise ValueError(f"n_bootstraps must be a positive integer, got {n_bootstraps}.")
    n_bootstraps = int(n_bootstraps)
    y, s = _binary_inputs(y_true, y_score)
    auc = roc_auc(y, s)
    if not np.isfinite(auc):
        return {"auc": _NAN, "ci_low": _NAN, "ci_high": _NAN, "n_bootstraps": 0}
    rng = np.random.default_rng(seed)
    pos_idx = np.flatnonzero(y)
    neg_idx = np.flatnonzero(~y)
    n_total = y.size
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // (2 * n_total))
    aucs = []
    for start in range(0, n_bootstraps, chunk):
        b = min(chunk, n_bootstraps - start)
        if stratified:
            idx = np.concatenate([pos_idx[rng.integers(0, pos_idx.size, size=(b, pos_idx.size))],
                                  neg_idx[rng.integers(0, neg_idx.size, size=(b, neg_idx.size))]], axis=1)
        else:
            idx = rng.integers(0, n_total, size=(b, n_total))
        aucs.append(_resampled_aucs(y, s, idx))
    all_aucs = np.concatenate(aucs)
    all_aucs = all_aucs[np.isfinite(all_aucs)]
    if all_aucs.size == 0:
        return {"auc": auc, "ci_low": _NAN, "ci_high": _NAN, "n_bootstraps": 0}
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(all_aucs, [alpha, 1.0 - alpha])
    return {"auc": auc, "ci_low": float(low), "ci_high": float(high), "n_bootstraps": int(all_aucs.size)}


# ----------------------------------------------------------------------------------------------------------
# operating points
# ----------------------------------------------------------------------------------------------------------


def _roc_table(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in decreasing order and, at each, TP and FP counts of ``s >= threshold``."""
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = last + 1 - tps
    return s_sorted[last], tps, fps


def _undefined_point() -> dict[str, float]:
    return {"threshold": _NAN, "sensitivity": _NAN, "specificity": _NAN}


def _point(threshold: float, tp: int, fp: int, m: int, n: int) -> dict[str, float]:
    return {"threshold": float(threshold), "sensitivity": tp / m, "specificity": (n - fp) / n}


def threshold_youden(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, float]:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Predicted positive means ``y_score >= threshold``. The threshold is one of the observed scores;
    among equally good thresholds the highest (most specific) is returned.

    Returns:
        dict: ``threshold``, ``sensitivity``, ``specificity`` (achieved with ``>=`` on these data) and ``j``. All
            ``nan`` when only one class is present.
    """
    y, s, m, n = _class_counts(y_true, y_score)
    if m == 0 or n == 0:
        return {**_undefined_point(), "j": _NAN}
    thr, tps, fps = _roc_table(y, s)
    j_scaled = tps * n - fps * m  # J * m * n in integers, so ties are exact ties, not rounding-decided
    best = int(np.argmax(j_scaled))  # first maximum = highest threshold
    out = _point(thr[best], int(tps[best]), int(fps[best]), m, n)
    out["j"] = out["sensitivity"] + out["specificity"] - 1.0
    return out


def threshold_at_sensitivity(y_true: ArrayLike, y_score: ArrayLike, target: float) -> dict[str, float]:
    """Highest threshold whose sensitivity is at least ``target`` (so specificity is as high as it can be).

    Predicted positive means ``y_score >= threshold``; the threshold is one of the observed scores.

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score (array-like of shape (N,)): Finite scores.
        target (float): Required sensitivity in [0, 1].

    Returns:
        dict: ``threshold``, ``sensitivity`` (>= target), ``specificity``, as achieved on these data; all ``nan`` when
            only one class is present.
    """
    target = _check_target(target, "target")
    y, s, m, n = _class_counts(y_true, y_score)
    if m == 0 or n == 0:
        return _undefined_point()
    thr, tps, fps = _roc_table(y, s)
    i = int(np.argmax(tps / m >= target))  # sensitivity grows as the threshold falls; the last is 1
    return _point(thr[i], int(tps[i]), int(fps[i]), m, n)


def threshold_at_specificity(y_true: ArrayLike, y_score: ArrayLike, target: float) -> dict[str, float]:
    """Lowest threshold whose specificity is at least ``target`` (so sensitivity is as high as it can be).

    Predicted positive means ``y_score >= threshold``. The threshold is one of the observed scores, or,
    when only "nothing positive" reaches the target, the next float above the largest score.

    Args:
        y_true (array-like of shape (N,)): Labels in {0, 1}.
        y_score (array-like of shape (N,)): Finite scores.
        target (float): Required specificity in [0, 1].

    Returns:
        dict: ``threshold``, ``sensitivity``, ``specificity`` (>= target), as achieved on these data; all ``nan`` when
            only one class is present.
    """
    target = _check_target(target, "target")
    y, s, m, n = _class_counts(y_true, y_score)
    if m == 0 or n == 0:
        return _undefined_point()
    thr, tps, fps = _roc_table(y, s)
    thr = np.r_[np.nextafter(thr[0], np.inf), thr]  # "above every score": nothing predicted positive
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    ok = (n - fps) / n >= target  # True ... True False ... False: specificity falls with the threshold
    i = int(np.flatnonzero(ok)[-1])
    return _point(thr[i], int(tps[i]), int(fps[i]), m, n)


def sensitivity_at_specificity(y_true: ArrayLike, y_score: ArrayLike, specificity: float) -> float:
    """Best sensitivity among thresholds with specificity >= ``specificity`` (``nan`` with one class).

    The threshold is the one of :func:`threshold_at_specificity`.
    """
    return threshold_at_specificity(y_true, y_score, specificity)["sensitivity"]


def specificity_at_sensitivity(y_true: ArrayLike, y_score: ArrayLike, sensitivity: float) -> float:
    """Best specificity among thresholds with sensitivity >= ``sensitivity`` (``nan`` with one class).

    The threshold is the one of :func:`threshold_at_sensitivity`.
    """
    return threshold_at_sensitivity(y_true, y_score, sensitivity)["specificity"]


def youden_thresholds(y_true: ArrayLike, y_score: ArrayLike, default: float = 0.5) -> list[float]:
    """Youden threshold of each class of a multi-label classifier, ignoring NaN labels.

    Args:
        y_true (array-like of shape (N, C)): Labels in {0, 1}; NaN = missing, ignored for that class.
        y_score (array-like of shape (N, C)): Finite scores.
        default (float, default 0.5): Threshold for a class where Youden's J is undefined (single label value or no
            known labels).

    Returns:
        list of float, length C: Plain Python floats, ready to pass as ``thresholds`` to
            :func:`medbundle.metrics.classification.multilabel_classification_report`.
    """
    per_class = _per_class(lambda yc, sc: threshold_youden(yc, sc)["threshold"], y_true, y_score)
    return [float(default) if np.isnan(v) else float(v) for v in per_class]


def midgap_youden_thresholds(y_true: np.ndarray, y_score: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class: Youden's J threshold (:func:`medbundle.metrics.roc.threshold_youden`, the highest of the
    equally good observed scores) moved to the middle of the gap down to the next lower observed score.

    Every threshold in that gap gives the same sensitivity and specificity on the validation slides; the
    middle is less tied to one validation score, which matters for MIL models whose slide probabilities
    are near 0 or 1 (with a handful of validation slides the Youden score is the lowest tumour score).
    """
    out = []
    for c in range(y_score.shape[1]):
        known = ~np.isnan(y_true[:, c])
        yc, sc = y_true[known, c], y_score[known, c]
        t = threshold_youden(yc, sc)["threshold"] if known.any() else float("nan")
        if not np.isfinite(t):
            out.append(float(default))
            continue
        lower = sc[sc < t]
        out.append(float((t + lower.max()) / 2.0) if lower.size else float(t))
    return out
