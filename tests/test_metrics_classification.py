"""Tests for medbundle.metrics.classification / roc / calibration: values against scikit-learn and by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from medbundle.metrics.calibration import expected_calibration_error, reliability_diagram
from medbundle.metrics.classification import (
    binary_confusion,
    binary_rates,
    cohen_kappa_quadratic,
    multilabel_classification_report,
    multilabel_rates,
)
from medbundle.metrics.roc import (
    _resampled_aucs,
    _roc_table,
    average_precision,
    average_precision_per_class,
    bootstrap_auc_ci,
    delong_auc_ci,
    delong_auc_variance,
    delong_test,
    roc_auc,
    roc_auc_per_class,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    threshold_at_sensitivity,
    threshold_at_specificity,
    threshold_youden,
    youden_thresholds,
)


def _binary_data(n: int, seed: int, separation: float = 1.0, decimals: int | None = 1):
    """Labels and scores with a learnable signal; rounding the scores creates many ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = rng.normal(size=n) + separation * y
    if decimals is not None:
        s = np.round(s, decimals)
    return y, s


def _delong_direct(y, *score_vectors):
    """Textbook O(m n) DeLong: structural components by explicit pairwise comparison (ties = 1/2)."""
    y = np.asarray(y).astype(bool)
    v10s, v01s, aucs = [], [], []
    for s in score_vectors:
        s = np.asarray(s, dtype=float)
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = len(v10s[0]), len(v01s[0])
    cov = np.atleast_2d(np.cov(np.array(v10s))) / m + np.atleast_2d(np.cov(np.array(v01s))) / n
    return np.array(aucs), cov


# --------------------------------------------------------------------------------------------------------
# confusion / rates
# --------------------------------------------------------------------------------------------------------


def test_binary_confusion_and_rates_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.75, y, 1 - y)
    counts = binary_confusion(y, p)
    tn, fp, fn, tp = confusion_matrix(y, p, labels=[0, 1]).ravel()
    assert counts == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert all(type(v) is int for v in counts.values())

    r = binary_rates(y, p)
    assert r["sensitivity"] == pytest.approx(recall_score(y, p))
    assert r["specificity"] == pytest.approx(recall_score(y, p, pos_label=0))
    assert r["ppv"] == pytest.approx(precision_score(y, p))
    assert r["npv"] == pytest.approx(precision_score(y, p, pos_label=0))
    assert r["f1"] == pytest.approx(f1_score(y, p))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert r["accuracy"] == pytest.approx(np.mean(y == p))
    assert r["tp"] == tp and r["fn"] == fn


def test_binary_rates_hand_case_and_undefined_ratios_are_nan():
    # tp=2 (idx 0,1), fn=1 (idx 2), fp=1 (idx 3), tn=2 (idx 4,5)
    r = binary_rates([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 1, 2)
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["ppv"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(4 / 6)

    # no positives and nothing predicted positive: sensitivity, PPV, F1 are 0/0
    r = binary_rates([0, 0, 0], [0, 0, 0])
    assert math.isnan(r["sensitivity"]) and math.isnan(r["ppv"]) and math.isnan(r["f1"])
    assert math.isnan(r["balanced_accuracy"])
    assert r["specificity"] == 1.0 and r["npv"] == 1.0 and r["accuracy"] == 1.0
    r = binary_rates([], [])
    assert all(math.isnan(r[k]) for k in ("sensitivity", "specificity", "accuracy"))


def test_binary_inputs_are_checked_and_torch_accepted():
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_rates([0, 2, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="must match"):
        binary_rates([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1, np.nan], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1, 1], [0.1, np.nan, 0.3])
    torch = pytest.importorskip("torch")
    y = torch.tensor([0, 1, 1, 0, 1])
    s = torch.tensor([0.2, 0.9, 0.4, 0.5, 0.7], requires_grad=True)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y.numpy(), s.detach().numpy()))
    assert binary_rates(y, s > 0.45)["sensitivity"] == pytest.approx(2 / 3)
    assert roc_auc(y, s.to(torch.bfloat16)) == pytest.approx(roc_auc_score(y.numpy(), s.detach().numpy()))


def test_multilabel_rates_match_sklearn_averages():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (80, 3))
    p = np.where(rng.random((80, 3)) < 0.7, y, 1 - y)
    per = multilabel_rates(y, p, average=None)
    np.testing.assert_allclose(per["sensitivity"], recall_score(y, p, average=None))
    np.testing.assert_allclose(per["ppv"], precision_score(y, p, average=None))
    np.testing.assert_allclose(per["f1"], f1_score(y, p, average=None))
    np.testing.assert_allclose(per["specificity"], recall_score(1 - y, 1 - p, average=None))
    assert per["tp"] == [int(v) for v in ((y == 1) & (p == 1)).sum(axis=0)]

    macro = multilabel_rates(y, p, average="macro")
    assert macro["sensitivity"] == pytest.approx(recall_score(y, p, average="macro"))
    assert macro["ppv"] == pytest.approx(precision_score(y, p, average="macro"))
    assert macro["f1"] == pytest.approx(f1_score(y, p, average="macro"))

    micro = multilabel_rates(y, p, average="micro")
    assert micro["sensitivity"] == pytest.approx(recall_score(y, p, average="micro"))
    assert micro["ppv"] == pytest.approx(precision_score(y, p, average="micro"))
    assert micro["f1"] == pytest.approx(f1_score(y, p, average="micro"))
    assert micro["specificity"] == pytest.approx(((y == 0) & (p == 0)).sum() / (y == 0).sum())
    with pytest.raises(ValueError, match="average"):
        multilabel_rates(y, p, average="weighted")


def test_multilabel_rates_ignore_nan_labels_per_class():
    y = np.array([[1, 0], [np.nan, 1], [0, np.nan], [1, 1], [0, 0]], dtype=float)
    p = np.array([[1, 1], [0, 1], [1, 0], [0, 1], [0, 0]])
    per = multilabel_rates(y, p, average=None)
    for c in range(2):
        known = ~np.isnan(y[:, c])
        ref = binary_rates(y[known, c], p[known, c])
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn"):
            assert per[key][c] == pytest.approx(ref[key], nan_ok=True)
    # class 0 known rows 0, 2, 3, 4: y=(1,0,1,0), p=(1,1,0,0) -> tp 1, fp 1, fn 1, tn 1
    assert (per["tp"][0], per["fp"][0], per["fn"][0], per["tn"][0]) == (1, 1, 1, 1)
    # class 1 known rows 0, 1, 3, 4: y=(0,1,1,0), p=(1,1,1,0) -> tp 2, fp 1, tn 1; row 2 (p=0) ignored
    assert (per["tp"][1], per["fp"][1], per["fn"][1], per["tn"][1]) == (2, 1, 0, 1)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        multilabel_rates([[2, 0]], [[1, 0]])


# --------------------------------------------------------------------------------------------------------
# AUROC / AP
# --------------------------------------------------------------------------------------------------------


def test_roc_auc_and_ap_match_sklearn_with_ties():
    y, s = _binary_data(300, seed=3, decimals=1)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_per_class_auc_and_ap_are_nan_aware():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (120, 3)).astype(float)
    s = rng.normal(size=(120, 3)) + y
    y[rng.random((120, 3)) < 0.2] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # class 2: only negatives known -> undefined
    auc = roc_auc_per_class(y, s)
    ap = average_precision_per_class(y, s)
    assert auc.shape == (3,) and ap.shape == (3,)
    for c in range(2):
        known = ~np.isnan(y[:, c])
        assert auc[c] == pytest.approx(roc_auc_score(y[known, c], s[known, c]))
        assert ap[c] == pytest.approx(average_precision_score(y[known, c], s[known, c]))
    assert np.isnan(auc[2]) and np.isnan(ap[2])
    with pytest.raises(ValueError, match="2-D"):
        roc_auc_per_class(y[:, 0], s[:, 0])


# --------------------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------------------


def test_delong_hand_case():
    # positives x = (0.8, 0.4), negatives z = (0.6, 0.4, 0.2); psi(x, z) = 1 if x > z, 1/2 if tie, else 0
    #   x=0.8: 1, 1, 1      -> V10 = 1
    #   x=0.4: 0, 1/2, 1    -> V10 = 1/2        AUC = mean V10 = 3/4
    #   V01 (per negative, mean over positives): z=0.6 -> 1/2, z=0.4 -> 3/4, z=0.2 -> 1
    #   S10 = var(1, 1/2; ddof=1) = 1/8, S01 = var(1/2, 3/4, 1; ddof=1) = 1/16
    #   Var = S10/m + S01/n = 1/16 + 1/48 = 1/12
    y = [1, 1, 0, 0, 0]
    s = [0.8, 0.4, 0.6, 0.4, 0.2]
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(0.75)
    assert var == pytest.approx(1 / 12)
    ci = delong_auc_ci(y, s, confidence=0.95)
    std = math.sqrt(1 / 12)
    assert ci["std"] == pytest.approx(std)
    assert ci["ci_low"] == pytest.approx(0.75 - 1.959963984540054 * std)
    assert ci["ci_high"] == 1.0  # 0.75 + 0.566 clipped to 1


def test_delong_variance_equals_direct_pairwise_with_ties():
    y, s = _binary_data(60, seed=5, decimals=0)  # heavy ties
    aucs, cov = _delong_direct(y, s)
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc == pytest.approx(aucs[0], abs=1e-12)
    assert var == pytest.approx(cov[0, 0], rel=1e-10)
    # undefined cases: one class -> nan, a single positive -> auc defined, variance nan
    assert all(math.isnan(v) for v in delong_auc_variance([0, 0, 0], [1, 2, 3]))
    auc1, var1 = delong_auc_variance([1, 0, 0], [3, 1, 2])
    assert auc1 == 1.0 and math.isnan(var1)
    with pytest.raises(ValueError, match="confidence"):
        delong_auc_ci(y, s, confidence=95)


def test_delong_and_bootstrap_cis_agree():
    y, s = _binary_data(2000, seed=6, decimals=2)
    d = delong_auc_ci(y, s)
    b = bootstrap_auc_ci(y, s, n_bootstraps=1000, seed=0)
    assert d["auc"] == b["auc"] == pytest.approx(roc_auc_score(y, s))
    wd, wb = d["ci_high"] - d["ci_low"], b["ci_high"] - b["ci_low"]
    assert abs(wb - wd) / wd < 0.2
    assert abs((b["ci_low"] + b["ci_high"]) / 2 - (d["ci_low"] + d["ci_high"]) / 2) < 0.15 * wd
    assert b["ci_low"] < b["auc"] < b["ci_high"]


def test_resampled_aucs_equal_auc_of_each_resample():
    y, s = _binary_data(40, seed=7, decimals=0)
    y = y.astype(bool)
    idx = np.random.default_rng(0).integers(0, y.size, size=(25, y.size))
    got = _resampled_aucs(y, s, idx)
    want = [roc_auc(y[i], s[i]) for i in idx]
    np.testing.assert_allclose(got, want, equal_nan=True)


def test_bootstrap_properties():
    y, s = _binary_data(100, seed=8)
    a = bootstrap_auc_ci(y, s, n_bootstraps=200, seed=1)
    assert a == bootstrap_auc_ci(y, s, n_bootstraps=200, seed=1)  # reproducible
    assert a != bootstrap_auc_ci(y, s, n_bootstraps=200, seed=2)
    # perfect separation: every stratified resample keeps both classes and has AUC 1
    perfect = bootstrap_auc_ci([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9], n_bootstraps=300)
    assert (perfect["ci_low"], perfect["ci_high"], perfect["n_bootstraps"]) == (1.0, 1.0, 300)
    # unstratified resampling of a single positive loses it often; those resamples are skipped
    few = bootstrap_auc_ci([0, 0, 0, 1], [0.1, 0.5, 0.3, 0.4], n_bootstraps=300, stratified=False)
    assert 0 < few["n_bootstraps"] < 300 and 0.0 <= few["ci_low"] <= few["ci_high"] <= 1.0


def test_delong_test_identical_better_and_direct_covariance():
    y, s = _binary_data(400, seed=9, decimals=2)
    same = delong_test(y, s, 2 * s + 1)  # same ranking -> same AUC, zero variance of the difference
    assert same["auc_diff"] == 0.0 and same["p_value"] == 1.0 and same["z"] == 0.0

    rng = np.random.default_rng(9)
    good = s + 3.0 * np.asarray(y)  # clearly better
    weak = s + rng.normal(scale=3.0, size=s.size)  # much noisier
    res = delong_test(y, good, weak)
    assert res["auc_a"] > res["auc_b"] and res["p_value"] < 1e-6 and res["z"] > 0

    ys, sa = _binary_data(30, seed=10, decimals=1)
    sb = np.round(sa + np.random.default_rng(10).normal(size=30), 1)
    aucs, cov = _delong_direct(ys, sa, sb)
    r = delong_test(ys, sa, sb)
    assert (r["auc_a"], r["auc_b"]) == (pytest.approx(aucs[0]), pytest.approx(aucs[1]))
    assert r["var_a"] == pytest.approx(cov[0, 0])
    assert r["var_b"] == pytest.approx(cov[1, 1])
    assert r["covariance"] == pytest.approx(cov[0, 1])
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert r["z"] == pytest.approx(z)
    assert r["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))


# --------------------------------------------------------------------------------------------------------
# operating points
# --------------------------------------------------------------------------------------------------------

# m = 3 positives, n = 3 negatives. Predicted positive = score >= t:
#   t     0.9   0.8   0.7   0.6   0.55  0.2
#   sens  1/3   2/3   2/3   1     1     1
#   spec  1     1     2/3   2/3   1/3   0
#   J     1/3   2/3   1/3   2/3   1/3   0
Y_HAND = [1, 1, 0, 1, 0, 0]
S_HAND = [0.9, 0.8, 0.7, 0.6, 0.55, 0.2]


def _rates_at(y, s, t):
    r = binary_rates(y, np.asarray(s) >= t)
    return r["sensitivity"], r["specificity"]


def test_operating_points_hand_case():
    yd = threshold_youden(Y_HAND, S_HAND)
    assert yd["threshold"] == 0.8  # tie with 0.6 resolved to the higher threshold
    assert (yd["sensitivity"], yd["specificity"], yd["j"]) == pytest.approx((2 / 3, 1.0, 2 / 3))

    assert threshold_at_sensitivity(Y_HAND, S_HAND, 0.9)["threshold"] == 0.6
    assert threshold_at_sensitivity(Y_HAND, S_HAND, 0.5)["threshold"] == 0.8
    assert threshold_at_specificity(Y_HAND, S_HAND, 0.6)["threshold"] == 0.6
    assert threshold_at_specificity(Y_HAND, S_HAND, 1.0)["threshold"] == 0.8
    assert sensitivity_at_specificity(Y_HAND, S_HAND, 1.0) == pytest.approx(2 / 3)
    assert sensitivity_at_specificity(Y_HAND, S_HAND, 0.5) == 1.0
    assert specificity_at_sensitivity(Y_HAND, S_HAND, 1.0) == pytest.approx(2 / 3)

    # highest score is a negative: specificity 1 needs a threshold above every score
    r = threshold_at_specificity([0, 1, 0], [0.9, 0.5, 0.1], 1.0)
    assert r["threshold"] > 0.9 and (r["sensitivity"], r["specificity"]) == (0.0, 1.0)
    assert math.isnan(threshold_youden([1, 1], [0.2, 0.3])["threshold"])
    with pytest.raises(ValueError, match="target"):
        threshold_at_sensitivity(Y_HAND, S_HAND, 90)


@pytest.mark.parametrize("target", [0.0, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_operating_points_are_extreme_and_achieved_with_ge(target):
    y, s = _binary_data(150, seed=11, decimals=1)
    candidates = np.unique(s)
    for fn, idx in ((threshold_at_sensitivity, 0), (threshold_at_specificity, 1)):
        r = fn(y, s, target)
        sens, spec = _rates_at(y, s, r["threshold"])
        assert (sens, spec) == pytest.approx((r["sensitivity"], r["specificity"]))
        assert (sens, spec)[idx] >= target
        ok = [t for t in candidates if _rates_at(y, s, t)[idx] >= target]
        if fn is threshold_at_sensitivity:
            assert r["threshold"] == max(ok)  # highest threshold reaching the sensitivity
        elif ok:
            assert r["threshold"] == min(ok)  # lowest threshold reaching the specificity

    yd = threshold_youden(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    assert yd["j"] == pytest.approx(np.max(tpr - fpr))
    sens, spec = _rates_at(y, s, yd["threshold"])
    assert sens + spec - 1 == pytest.approx(yd["j"])


def test_roc_table_matches_sklearn_roc_curve():
    y, s = _binary_data(200, seed=12, decimals=1)
    thr, tps, fps = _roc_table(y.astype(bool), s)
    fpr, tpr, sk_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(thr, sk_thr[1:])
    np.testing.assert_allclose(tps / y.sum(), tpr[1:])
    np.testing.assert_allclose(fps / (y.size - y.sum()), fpr[1:])


def test_youden_thresholds_per_class_with_default():
    y = np.array(Y_HAND, dtype=float)[:, None].repeat(3, axis=1)
    s = np.array(S_HAND)[:, None].repeat(3, axis=1)
    y[:, 1] = [1, np.nan, np.nan, 1, 0, 0]  # known: s 0.9(+), 0.6(+), 0.55(-), 0.2(-) -> best 0.6
    y[:, 2] = [1, 1, np.nan, 1, np.nan, np.nan]  # no negatives -> default
    out = youden_thresholds(y, s)
    assert out == [0.8, 0.6, 0.5] and all(type(v) is float for v in out)


# --------------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_diagram_matches_sklearn(strategy):
    rng = np.random.default_rng(13)
    p = np.round(rng.random(500), 2)  # rounded: some probabilities sit exactly on bin edges
    y = (rng.random(500) < p**1.5).astype(int)
    d = reliability_diagram(y, p, n_bins=7, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=7, strategy=strategy)
    used = d["bin_count"] > 0
    np.testing.assert_allclose(d["bin_accuracy"][used], prob_true)
    np.testing.assert_allclose(d["bin_confidence"][used], prob_pred)
    assert d["bin_edges"].shape == (8,) and d["bin_count"].sum() == 500
    ece = np.sum(d["bin_count"][used] * np.abs(prob_true - prob_pred)) / 500
    assert expected_calibration_error(y, p, n_bins=7, strategy=strategy) == pytest.approx(ece)


def test_ece_hand_case_and_edges():
    # 2 uniform bins [0, 0.5], (0.5, 1]
    #   bin 0: p = 0.1, 0.2 (y = 0, 1): confidence 0.15, accuracy 0.5, gap 0.35, n = 2
    #   bin 1: p = 0.7, 0.8, 0.9 (y = 1, 0, 1): confidence 0.8, accuracy 2/3, gap 2/15, n = 3
    #   ECE = (2 * 0.35 + 3 * 2/15) / 5 = (0.7 + 0.4) / 5 = 0.22
    y = [0, 1, 1, 0, 1]
    p = [0.1, 0.2, 0.7, 0.8, 0.9]
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.22)
    d = reliability_diagram([1, 0], [0.5, 0.0], n_bins=2)
    assert d["bin_count"].tolist() == [2, 0]  # 0.5 belongs to the right-closed first bin
    assert np.isnan(d["bin_accuracy"][1]) and np.isnan(d["bin_confidence"][1])
    # multi-label: NaN labels are skipped, all other entries pooled
    ym = np.array([[0, 1], [1, np.nan], [0, 1], [np.nan, 1]])
    pm = np.array([[0.1, 0.7], [0.2, 0.3], [0.8, 0.9], [0.6, 0.4]])
    ref = expected_calibration_error([0, 1, 1, 0, 1, 1], [0.1, 0.7, 0.2, 0.8, 0.9, 0.4], n_bins=2)
    assert expected_calibration_error(ym, pm, n_bins=2) == pytest.approx(ref)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="strategy"):
        reliability_diagram([0, 1], [0.2, 0.5], strategy="equal")


# --------------------------------------------------------------------------------------------------------
# kappa
# --------------------------------------------------------------------------------------------------------


def test_cohen_kappa_quadratic_matches_sklearn():
    rng = np.random.default_rng(14)
    t = rng.integers(0, 6, 300)
    p = np.clip(t + rng.integers(-1, 2, 300), 0, 5)
    assert cohen_kappa_quadratic(t, p) == pytest.approx(cohen_kappa_score(t, p, weights="quadratic"))
    # grade 2 never occurs: distances use grade values (sklearn's default uses positions of present labels)
    t = np.array([0, 1, 3, 3, 1, 0, 3, 4])
    p = np.array([0, 3, 3, 4, 1, 1, 1, 4])
    ours = cohen_kappa_quadratic(t, p, num_classes=5)
    assert ours == pytest.approx(cohen_kappa_score(t, p, weights="quadratic", labels=list(range(5))))
    assert ours != pytest.approx(cohen_kappa_score(t, p, weights="quadratic"))
    # hand: perfect agreement -> 1; constant equal raters -> undefined
    assert cohen_kappa_quadratic([0, 1, 2], [0, 1, 2]) == 1.0
    assert math.isnan(cohen_kappa_quadratic([1, 1], [1, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        cohen_kappa_quadratic([0, 3], [0, 1], num_classes=3)


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------


def test_multilabel_classification_report_values_and_json():
    rng = np.random.default_rng(15)
    y = rng.integers(0, 2, (150, 3)).astype(float)
    s = rng.normal(size=(150, 3)) + 1.5 * y
    y[rng.random(150) < 0.1, 0] = np.nan
    y[:, 2] = 0.0  # no positives: AUROC undefined
    names = ["effusion", "nodule", "hernia"]
    thresholds = [0.5, 0.7, 1.0]
    rep = multilabel_classification_report(y, s, names, thresholds=thresholds)
    text = json.dumps(rep)  # plain Python types only
    assert "NaN" in text
    assert rep["ci_method"] == "DeLong (Sun & Xu 2014 fast algorithm)"
    auc = roc_auc_per_class(y, s)
    for c, name in enumerate(names):
        e = rep["per_class"][name]
        known = ~np.isnan(y[:, c])
        assert e["n_pos"] == int(np.nansum(y[:, c])) and e["n_missing"] == int((~known).sum())
        assert e["n_pos"] + e["n_neg"] + e["n_missing"] == 150
        assert e["auroc"] == pytest.approx(auc[c], nan_ok=True)
        ci = delong_auc_ci(y[known, c], s[known, c])
        assert (e["auroc_ci_low"], e["auroc_ci_high"]) == (
            pytest.approx(ci["ci_low"], nan_ok=True), pytest.approx(ci["ci_high"], nan_ok=True))
        r = binary_rates(y[known, c], s[known, c] >= thresholds[c])
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn"):
            assert e[key] == pytest.approx(r[key], nan_ok=True)
        assert type(e["n_pos"]) is int and type(e["auroc"]) is float
    effusion = rep["per_class"]["effusion"]
    assert effusion["auroc_ci_low"] < auc[0] < effusion["auroc_ci_high"]
    assert math.isnan(rep["per_class"]["hernia"]["auroc"])
    assert rep["mean_auroc"] == pytest.approx(np.nanmean(auc))
    assert rep["macro"]["sensitivity"] == pytest.approx(
        np.mean([rep["per_class"][n]["sensitivity"] for n in names[:2]]))  # hernia's is nan: skipped

    no_thr = multilabel_classification_report(y, s, names)
    assert "sensitivity" not in no_thr["per_class"]["nodule"] and "sensitivity" not in no_thr["macro"]
    with pytest.raises(ValueError, match="class_names"):
        multilabel_classification_report(y, s, names[:2])
    with pytest.raises(ValueError, match="thresholds"):
        multilabel_classification_report(y, s, names, thresholds=[0.5, 0.5])


def test_multiclass_decision_by_margin_over_thresholds():
    from medbundle.metrics.classification import multiclass_decision

    scores = np.array([
        [0.99, 0.40, 0.10],  # class 1 beats its threshold by 0.10, class 0 by 0.005 -> 1
        [0.999, 0.20, 0.05],  # only class 0 passes -> 0
        [0.50, 0.25, 0.25],  # nothing passes -> arg-max 0
        [0.90, 0.10, 0.60],  # class 2 passes by 0.3 -> 2
    ])
    thr = [0.985, 0.30, 0.30]
    np.testing.assert_array_equal(multiclass_decision(scores, thr), [1, 0, 0, 2])
    np.testing.assert_array_equal(multiclass_decision(scores), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="thresholds"):
        multiclass_decision(scores, [0.5, 0.5])


def test_multiclass_summary_matches_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

    from medbundle.metrics.classification import multiclass_summary

    rng = np.random.default_rng(4)
    t = rng.integers(0, 3, 200)
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 4, 200))  # class 3 is only ever predicted
    s = multiclass_summary(t, p, 4)
    np.testing.assert_array_equal(s["confusion_matrix"], confusion_matrix(t, p, labels=range(4)))
    assert s["accuracy"] == pytest.approx(accuracy_score(t, p))
    with pytest.warns(UserWarning):  # sklearn warns about the class with no true samples
        expected = balanced_accuracy_score(t, p)
    assert s["balanced_accuracy"] == pytest.approx(expected)
    assert math.isnan(s["recall"][3])
    # by hand: 2 classes, rows true
    h = multiclass_summary([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 2)
    assert h["confusion_matrix"] == [[1, 1], [1, 2]]
    assert h["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="outside"):
        multiclass_summary([0, 5], [0, 1], 3)


def test_midgap_youden_thresholds_by_hand():
    from medbundle.metrics.roc import midgap_youden_thresholds

    y = np.array([[0, 1], [0, 1], [1, 0], [1, np.nan]], dtype=float)
    s = np.array([[0.1, 0.9], [0.2, 0.7], [0.8, 0.3], [0.9, 0.5]])
    # class 0: Youden's threshold is 0.8 (sens 1, spec 1); the next lower score is 0.2 -> 0.5
    # class 1: known labels 1, 1, 0 with scores 0.9, 0.7, 0.3: threshold 0.7, next lower 0.3 -> 0.5
    assert midgap_youden_thresholds(y, s) == pytest.approx([0.5, 0.5])
    # one class only: the default
    assert midgap_youden_thresholds(np.ones((3, 1)), np.array([[0.2], [0.4], [0.6]]), default=0.3) == [0.3]
