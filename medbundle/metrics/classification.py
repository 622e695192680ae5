"""Threshold-based classification metrics for medical imaging.

Everything here follows scikit-learn's argument convention: ``y_true`` first, then ``y_pred`` (hard 0/1
decisions) or ``y_score`` (continuous scores, higher means "more likely positive"). Inputs may be numpy
arrays, lists or torch tensors (any device).

What this module adds over :mod:`sklearn.metrics`:

- the rates clinicians ask for, from one confusion matrix: sensitivity, specificity, PPV, NPV, F1,
  balanced and plain accuracy. A ratio whose denominator is zero is ``nan`` (never an exception, never a
  silent 0 as scikit-learn's ``zero_division`` default gives), so "undefined" cannot be read as "zero".
- NaN-masked multi-label input: in ``y_true`` of shape (N, C) a NaN means "label missing or uncertain"
  (e.g. CheXpert's uncertain labels); that entry is ignored for that class only.
- :func:`cohen_kappa_quadratic`, which measures grade distances with the grade values themselves, so a
  grade absent from the data does not change the weights.
- :func:`multilabel_classification_report`, the per-class summary (AUROC with DeLong CIs, AP, rates at
  operating thresholds) that a bundle evaluation writes to ``metrics.json``.

Ranking metrics (AUROC, DeLong, bootstrap, operating points) live in :mod:`medbundle.metrics.roc` and
calibration in :mod:`medbundle.metrics.calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medbundle.metrics.validation import check_binary_labels, check_multilabel_targets, check_same_shape, check_scores
from medbundle.utils import to_numpy

__all__ = [
    "binary_confusion",
    "binary_rates",
    "multilabel_rates",
    "cohen_kappa_quadratic",
    "multilabel_classification_report",
    "multiclass_decision",
    "multiclass_summary",
]

RATE_NAMES = ("sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy", "accuracy")
COUNT_NAMES = ("tp", "fp", "tn", "fn")




def _safe_ratio(num: float, den: float) -> float:
    """``num / den`` as a Python float, or ``nan`` when ``den`` is 0 (undefined, not an error)."""
    return float(num) / float(den) if den != 0 else float("nan")


def _nanmean(values: Any) -> float:
    """Mean ignoring NaN, returning ``nan`` (without a RuntimeWarning) when nothing is finite."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ----------------------------------------------------------------------------------------------------------
# confusion matrix and rates
# ----------------------------------------------------------------------------------------------------------


def binary_confusion(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, int]:
    """Count true/false positives/negatives of hard binary decisions.

    Args:
        y_true (array-like of shape (N,)): Reference labels, 0 (negative) or 1 (positive); bool is accepted.
        y_pred (array-like of shape (N,)): Predicted labels, 0 or 1. To threshold scores use ``y_score >= threshold``.

    Returns:
        dict: ``{"tp", "fp", "tn", "fn"}`` as Python ints. Equal to scikit-learn's ``confusion_matrix(y_true, y_pred,
            labels=[0, 1]).ravel()`` read as (tn, fp, fn, tp).
    """
    t = check_binary_labels(y_true, "y_true")
    p = check_binary_labels(y_pred, "y_pred")
    check_same_shape(t, p, "y_true", "y_pred")
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(~t & p))
    fn = int(np.count_nonzero(t & ~p))
    tn = int(t.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _rates_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, F1, balanced accuracy and accuracy from confusion counts.

    A ratio with a zero denominator is ``nan``. Balanced accuracy is ``nan`` when sensitivity or
    specificity is (scikit-learn instead averages the defined one alone, with a warning).
    """
    sens = _safe_ratio(tp, tp + fn)
    spec = _safe_ratio(tn, tn + fp)
    return {
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _safe_ratio(tp, tp + fp),
        "npv": _safe_ratio(tn, tn + fn),
        "f1": _safe_ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2.0,  # nan propagates
        "accuracy": _safe_ratio(tp + tn, tp + fp + tn + fn),
    }


def binary_rates(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float | int]:
    """Clinical rates of hard binary decisions.

    Args:
        y_true (array-like of shape (N,)): Reference labels in {0, 1}.
        y_pred (array-like of shape (N,)): Predicted labels in {0, 1} (e.g. ``y_score >= threshold``).

    Returns:
        dict: ``sensitivity`` (recall, TPR), ``specificity`` (TNR), ``ppv`` (precision), ``npv``, ``f1``,
            ``balanced_accuracy``, ``accuracy`` as floats in [0, 1], plus the counts ``tp, fp, tn, fn`` as ints. Any
            ratio whose denominator is 0 is ``nan`` (e.g. sensitivity with no positives); nothing raises. scikit-learn's
            ``recall_score``/``precision_score`` would return 0 with a warning instead, which reads like a failure of
            the model rather than of the data.
    """
    counts = binary_confusion(y_true, y_pred)
    out: dict[str, float | int] = dict(_rates_from_counts(**counts))
    out.update(counts)
    return out


def multilabel_rates(y_true: ArrayLike, y_pred: ArrayLike, average: str | None = "macro") -> dict[str, Any]:
    """Clinical rates per class of multi-label hard decisions, ignoring missing labels.

    Args:
        y_true (array-like of shape (N, C)): Labels in {0, 1}; NaN means "missing/uncertain" and drops that (sample,
        class) entry from that class's counts only.
        y_pred (array-like of shape (N, C)): Predicted labels in {0, 1}.
        average ({"macro", "micro", None}, default "macro"): ``None``: per-class lists. ``"macro"``: unweighted mean
            over classes of each per-class rate, skipping classes where that rate is undefined (scikit-learn counts them
            as 0). ``"micro"``: rates of the confusion counts summed over classes.

    Returns:
        dict: Keys ``sensitivity, specificity, ppv, npv, f1, balanced_accuracy, accuracy`` and the counts ``tp, fp, tn,
            fn``. With ``average=None`` each value is a list of length C (floats, ``nan`` where undefined; counts as
            ints); otherwise a float, with counts summed over classes.
    """
    if average not in ("macro", "micro", None):
        raise ValueError(f"average must be 'macro', 'micro' or None, got {average!r}.")
    t = check_multilabel_targets(y_true, "y_true")
    p = check_binary_labels(y_pred, "y_pred", ndim=2)
    check_same_shape(t, p, "y_true", "y_pred")
    known = ~np.isnan(t)
    pos = known & (t == 1)
    neg = known & (t == 0)
    tp = np.count_nonzero(pos & p, axis=0)
    fn = np.count_nonzero(pos & ~p, axis=0)
    fp = np.count_nonzero(neg & p, axis=0)
    tn = np.count_nonzero(neg & ~p, axis=0)

    if average == "micro":
        totals = {"tp": int(tp.sum()), "fp": int(fp.sum()), "tn": int(tn.sum()), "fn": int(fn.sum())}
        out: dict[str, Any] = dict(_rates_from_counts(**totals))
        out.update(totals)
        return out

    per_class = [_rates_from_counts(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(tp, fp, tn, fn)]
    if average is None:
        out = {name: [r[name] for r in per_class] for name in RATE_NAMES}
        out.update(tp=[int(v) for v in tp], fp=[int(v) for v in fp], tn=[int(v) for v in tn],
                   fn=[int(v) for v in fn])
        return out
    out = {name: _nanmean([r[name] for r in per_class]) for name in RATE_NAMES}
    out.update(tp=int(tp.sum()), fp=int(fp.sum()), tn=int(tn.sum()), fn=int(fn.sum()))
    return out


# ----------------------------------------------------------------------------------------------------------
# ordinal agreement
# ----------------------------------------------------------------------------------------------------------


def _check_grades(y: ArrayLike, name: str) -> np.ndarray:
    arr = to_numpy(y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer grades, got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integer grades 0..K-1, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError(f"{name} must hold integer grades 0..K-1; found non-integer or NaN values. "
                             "Take the argmax of probabilities first.")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must hold grades 0..K-1; found negative value {int(arr.min())}.")
    return arr


def multiclass_decision(y_score: ArrayLike, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """One class per sample from multi-class scores, using per-class operating points when given.

    Arg-max is a poor decision for scores aggregated per class (e.g. the per-class maximum over a
    volume's windows, where a background class is near 1 everywhere). With ``thresholds`` (one per
    class, e.g. Youden thresholds chosen on validation), the decision is the class whose score exceeds
    its threshold by the largest margin ``score - threshold``; a sample that reaches no threshold falls
    back to the arg-max. Without thresholds it is the arg-max.

    Args:
        y_score (array-like of shape (N, C)):
        thresholds (sequence of C floats, optional):

    Returns:
        np.ndarray of shape (N,), int class indices.
    """
    s = to_numpy(y_score, "y_score", dtype=float)
    if s.ndim != 2:
        raise ValueError(f"y_score must be (N, C), got shape {s.shape}")
    best = s.argmax(1)
    if thresholds is None:
        return best
    t = np.asarray(thresholds, dtype=float).reshape(-1)
    if t.shape[0] != s.shape[1]:
        raise ValueError(f"{t.shape[0]} thresholds for {s.shape[1]} classes")
    margin = s - t
    passed = (margin >= 0).any(1)
    return np.where(passed, np.where(margin >= 0, margin, -np.inf).argmax(1), best)


def multiclass_summary(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> dict[str, Any]:
    """Confusion matrix, accuracy and balanced accuracy of multi-class decisions.

    Args:
        y_true, y_pred (array-like of shape (N,)): Class indices in ``[0, num_classes)``.
        num_classes (int): Size of the (square) confusion matrix; classes absent from both inputs give zero
            rows/columns.

    Returns:
        dict: ``confusion_matrix`` (list of lists, rows = true class, columns = predicted class), ``accuracy``,
            ``balanced_accuracy`` (mean per-class recall over classes present in ``y_true``), ``recall`` per class (NaN
            for a class absent from ``y_true``). Same values as scikit-learn's ``confusion_matrix`` (with
            ``labels=range(num_classes)``), ``accuracy_score`` and ``balanced_accuracy_score``.
    """
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has class indices outside [0, {num_classes - 1}]")
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    present = support > 0
    return {
        "confusion_matrix": cm.tolist(),
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "recall": [float(r) for r in recall],
    }


def cohen_kappa_quadratic(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights, for ordinal grades (e.g. ISUP / Gleason, DR grading).

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with observed confusion ``O``, expected ``E`` (outer product
    of the marginals divided by N) and ``W[i, j] = (i - j)**2 / (K - 1)**2``.

    Args:
        y_true, y_pred (array-like of shape (N,)): Integer grades in ``0..K-1``.
        num_classes (int, optional): K. Defaults to ``max(y_true.max(), y_pred.max()) + 1``.

    Returns:
        float: Kappa in [-1, 1]; ``nan`` when undefined (empty input, or both raters constant and equal). Equals
            scikit-learn's ``cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=range(K))``. Unlike
            scikit-learn's default (``labels=None``), the weight of a disagreement is the distance between grade values,
            not between positions among the grades that happen to occur, so an absent grade does not change the result.
    """
    t = _check_grades(y_true, "y_true")
    p = _check_grades(y_pred, "y_pred")
    check_same_shape(t, p, "y_true", "y_pred")
    if t.size == 0:
        return float("nan")
    observed_max = int(max(t.max(), p.max()))
    k = observed_max + 1 if num_classes is None else int(num_classes)
    if k <= observed_max:
        raise ValueError(f"num_classes={num_classes} but a grade {observed_max} occurs; grades must be in "
                         f"0..num_classes-1.")
    if k < 2:
        return float("nan")
    conf = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.float64)
    expected = np.outer(conf.sum(axis=1), conf.sum(axis=0)) / t.size
    grades = np.arange(k, dtype=np.float64)
    weights = (grades[:, None] - grades[None, :]) ** 2 / (k - 1) ** 2
    den = float((weights * expected).sum())
    if den == 0.0:
        return float("nan")
    return float(1.0 - (weights * conf).sum() / den)


# ----------------------------------------------------------------------------------------------------------
# evaluation report
# ----------------------------------------------------------------------------------------------------------


def multilabel_classification_report(
    y_true: ArrayLike,
    y_score: ArrayLike,
    class_names: Sequence[str],
    thresholds: Sequence[float] | float | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per-class and averaged metrics of a multi-label (or one-vs-rest) classifier, ready for JSON.

    Args:
        y_true (array-like of shape (N, C)): Labels in {0, 1}; NaN = missing/uncertain, ignored for that class.
        y_score (array-like of shape (N, C)): Finite scores or probabilities; higher means more likely positive.
        class_names (sequence of str, length C): Unique class names; keys of ``per_class``.
        thresholds (sequence of C floats, or one float for all classes, optional): Operating thresholds (predicted
            positive means ``score >= threshold``), e.g. from :func:`medbundle.metrics.roc.youden_thresholds` on a
            validation set. When given, the rates at that threshold are reported per class and macro-averaged.
        confidence (float, default 0.95): Level of the DeLong AUROC confidence intervals.

    Returns:
        dict: ``{"n_samples", "class_names", "confidence", "ci_method", "per_class": {name: {...}}, "mean_auroc",
            "mean_average_precision", "macro": {...}}``. Each ``per_class`` entry has ``n_pos, n_neg, n_missing, auroc,
            auroc_ci_low, auroc_ci_high, average_precision`` and, with thresholds, ``threshold, sensitivity,
            specificity, ppv, npv, f1, tp, fp, tn, fn``. ``mean_auroc`` is the NaN-ignoring mean over classes (classes
            with a single label value have ``auroc = nan``); ``macro`` holds the same NaN-ignoring means of every
            per-class float. All values are plain Python ``int``/``float``/``str``/``list`` (NaN allowed), so
            ``json.dump`` writes them directly.
    """
    from medbundle.metrics.roc import (  # scikit-learn and scipy.stats load here, not at import
        average_precision,
        delong_auc_ci,
    )

    t = check_multilabel_targets(y_true, "y_true")
    s = check_scores(y_score, t.shape[0], "y_score", ndim=2)
    check_same_shape(t, s, "y_true", "y_score")
    n_classes = t.shape[1]
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} entries but the data has {n_classes} classes.")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}.")
    thr: list[float] | None = None
    if thresholds is not None:
        thr_arr = np.asarray(to_numpy(thresholds, "thresholds"), dtype=np.float64).reshape(-1)
        if thr_arr.size == 1:
            thr_arr = np.repeat(thr_arr, n_classes)
        if thr_arr.size != n_classes or not np.isfinite(thr_arr).all():
            raise ValueError(f"thresholds must be one finite float or {n_classes} finite floats (one per "
                             f"class), got {np.asarray(thresholds).tolist()}.")
        thr = [float(v) for v in thr_arr]

    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        known = ~np.isnan(t[:, c])
        yc = t[known, c].astype(bool)
        sc = s[known, c]
        ci = delong_auc_ci(yc, sc, confidence=confidence)
        entry: dict[str, Any] = {
            "n_pos": int(yc.sum()),
            "n_neg": int(yc.size - yc.sum()),
            "n_missing": int((~known).sum()),
            "auroc": ci["auc"],
            "auroc_ci_low": ci["ci_low"],
            "auroc_ci_high": ci["ci_high"],
            "average_precision": average_precision(yc, sc),
        }
        if thr is not None:
            rates = binary_rates(yc, sc >= thr[c])
            entry["threshold"] = thr[c]
            for key in ("sensitivity", "specificity", "ppv", "npv", "f1", *COUNT_NAMES):
                entry[key] = rates[key]
        per_class[name] = entry

    float_keys = ["auroc", "average_precision"]
    if thr is not None:
        float_keys += ["sensitivity", "specificity", "ppv", "npv", "f1"]
    macro = {key: _nanmean([per_class[n][key] for n in names]) for key in float_keys}
    return {
        "n_samples": int(t.shape[0]),
        "class_names": names,
        "confidence": float(confidence),
        "ci_method": "DeLong (Sun & Xu 2014 fast algorithm)",
        "per_class": per_class,
        "mean_auroc": macro["auroc"],
        "mean_average_precision": macro["average_precision"],
        "macro": macro,
    }
