"""Tests for medbundle.metrics.froc (LUNA16 FROC / CPM) and medbundle.viz.froc.

Every protocol rule has a hand-computed case; random cases are checked against a plain per-mark loop
that follows the published LUNA16 script step by step (with scikit-learn's roc_curve).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from medbundle.cli import main as cli_main
from medbundle.io.luna16_csv import read_luna16_annotations, read_luna16_results, read_seriesuids
from medbundle.metrics.froc import evaluate_luna16_files, froc_sensitivity_by_size, luna16_froc, luna16_froc_by_size
from medbundle.viz.froc import plot_froc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from luna16_reference import reference_froc  # noqa: E402  (the plain reference the benchmark times too)

RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _table(rows, last):
    rows = list(rows)
    return {
        "seriesuid": np.array([r[0] for r in rows], dtype=str),
        "coordX": np.array([r[1] for r in rows], dtype=float),
        "coordY": np.array([r[2] for r in rows], dtype=float),
        "coordZ": np.array([r[3] for r in rows], dtype=float),
        last: np.array([r[4] for r in rows], dtype=float),
    }


def ann(rows):
    return _table(rows, "diameter_mm")


def marks(rows):
    return _table(rows, "probability")


def synthetic_luna(seed, n_scans=40, marks_per_scan=30, tie_levels=None):
    """Random scans with nodules (some overlapping, some with negative diameter), excluded findings and
    marks near nodules, near excluded findings and at random."""
    rng = np.random.default_rng(seed)
    uids = [f"1.3.6.1.{seed}.{i}" for i in range(n_scans)]
    a_rows, e_rows, m_rows = [], [], []
    for uid in uids:
        for _ in range(int(rng.poisson(1.4))):
            c = rng.uniform(-150, 150, 3)
            d = float(rng.choice([-1.0, rng.uniform(3, 30)], p=[0.1, 0.9]))
            a_rows.append((uid, *c, d))
            if rng.uniform() < 0.2:  # an overlapping second annotation
                a_rows.append((uid, *(c + rng.normal(0, 2, 3)), float(rng.uniform(4, 12))))
            for _ in range(int(rng.integers(0, 3))):
                m_rows.append((uid, *(c + rng.normal(0, 3, 3)), float(rng.uniform(0.2, 1.0))))
        for _ in range(int(rng.poisson(0.7))):
            c = rng.uniform(-150, 150, 3)
            e_rows.append((uid, *c, float(rng.uniform(3, 10))))
            if rng.uniform() < 0.7:
                m_rows.append((uid, *(c + rng.normal(0, 1, 3)), float(rng.uniform(0, 1))))
        for _ in range(int(rng.integers(0, marks_per_scan))):
            m_rows.append((uid, *rng.uniform(-150, 150, 3), float(rng.uniform(0, 0.8))))
    results = marks(m_rows)
    if tie_levels:
        results["probability"] = np.round(results["probability"] * tie_levels) / tie_levels
    return uids, ann(a_rows), marks(e_rows) | {"diameter_mm": ann(e_rows)["diameter_mm"]}, results


# ------------------------------------------------------------------------------------------ hand cases
def _hand_case():
    annotations = ann([
        ("A", 0, 0, 0, 10.0),     # n1: r^2 = 25
        ("A", 100, 0, 0, -1.0),   # n2: negative diameter -> 10 mm
        ("B", 0, 0, 0, 6.0),      # n3: r^2 = 9
        ("C", 0, 0, 0, 8.0),      # n4: no marks on C -> missed, stays in the denominator
        ("Z", 0, 0, 0, 8.0),      # scan not listed: ignored
    ])
    excluded = ann([("B", 200, 0, 0, 4.0)])
    results = marks([
        ("A", 3, 0, 0, 0.9),      # hits n1 (d^2 = 9)
        ("A", 0, 4, 0, 0.5),      # second hit on n1: neither TP nor FP
        ("A", 100, 4.9, 0, 0.7),  # hits n2 (24.01 < 25)
        ("A", 50, 50, 50, 0.8),   # FP
        ("B", 3, 0, 0, 0.7),      # d^2 = 9 = r^2: NOT a hit (strict '<') -> FP, tied with n2's 0.7
        ("B", 200, 1, 0, 0.4),    # on the excluded finding: dropped
        ("B", 0, 0, 1, 0.3),      # hits n3
    ])
    return annotations, excluded, results


def test_hand_case_every_rule():
    annotations, excluded, results = _hand_case()
    res = luna16_froc(annotations, results, seriesuids=["A", "B", "C", "D"], excluded=excluded)
    assert (res["n_scans"], res["n_nodules"], res["n_detected"], res["n_false_positives"]) == (4, 4, 3, 2)
    assert res["n_extra_hits"] == 1 and res["n_marks_on_excluded"] == 1 and res["n_marks"] == 7
    # candidates: 0.9 T | 0.8 F | 0.7 T+F (tie: one diagonal step) | 0.3 T ; 4 scans, 4 nodules
    assert res["fps_per_scan"] == pytest.approx([0, 0, 0.25, 0.5, 0.5])
    assert res["sensitivity"] == pytest.approx([0, 0.25, 0.25, 0.5, 0.75])
    assert res["thresholds"] == [None, 0.9, 0.8, 0.7, 0.3]
    # read-out at the nearest point of linspace(0.125, 8, 10001): 0.25 -> 0.2502125, 0.5 -> 0.49985,
    # both on the diagonal where sensitivity == FPs/scan; from 1 FP/scan on the curve is flat at 3/4
    expected = [0.25, 0.2502125, 0.49985, 0.75, 0.75, 0.75, 0.75]
    assert res["sensitivities"] == pytest.approx(expected, abs=1e-12)
    assert res["cpm"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert res["cpm_convention"] == "linear interpolation"
    assert res["max_sensitivity"] == 0.75 and res["max_fps_per_scan"] == 0.5


def test_scans_without_marks_count_in_fp_denominator():
    annotations, excluded, results = _hand_case()
    with_d = luna16_froc(annotations, results, seriesuids=["A", "B", "C", "D"], excluded=excluded)
    # without seriesuids the scans are those named in the inputs: A, B, C, Z (Z holds a nodule, no mark)
    inferred = luna16_froc(annotations, results, excluded=excluded)
    assert inferred["n_scans"] == 4 and inferred["n_nodules"] == 5
    only_abc = luna16_froc(annotations, results, seriesuids=["A", "B", "C"], excluded=excluded)
    assert only_abc["n_scans"] == 3
    assert only_abc["fps_per_scan"] == pytest.approx(np.array(with_d["fps_per_scan"]) * 4 / 3)


def test_excluded_marks_dropped_not_fp():
    annotations, excluded, results = _hand_case()
    without = luna16_froc(annotations, results, seriesuids=["A", "B", "C", "D"])
    assert without["n_false_positives"] == 3 and without["n_marks_on_excluded"] == 0
    # a mark inside both a nodule and an excluded finding is a hit, not dropped
    both = luna16_froc(
        ann([("A", 0, 0, 0, 10.0)]), marks([("A", 1, 0, 0, 0.6)]), ["A"], excluded=ann([("A", 2, 0, 0, 10.0)])
    )
    assert both["n_detected"] == 1 and both["n_marks_on_excluded"] == 0


def test_nodule_keeps_highest_probability_of_its_hits():
    annotations = ann([("A", 0, 0, 0, 10.0)])
    # hits at 0.2 and 0.6; FP at 0.4. With max prob 0.6 the nodule ranks above the FP -> sensitivity 1
    # at 0 FP; using 0.2 would put it below the FP.
    res = luna16_froc(annotations, marks([("A", 1, 0, 0, 0.2), ("A", 9, 9, 9, 0.4), ("A", 0, 1, 0, 0.6)]),
                      ["A"])
    assert res["fps_per_scan"] == pytest.approx([0, 0, 1]) and res["sensitivity"] == pytest.approx([0, 1, 1])
    assert res["thresholds"] == [None, 0.6, 0.4] and res["n_extra_hits"] == 1


def test_mark_inside_two_nodules_hits_both_with_warning():
    annotations = ann([("A", 0, 0, 0, 10.0), ("A", 6, 0, 0, 10.0)])
    with pytest.warns(UserWarning, match="inside two or more nodules"):
        res = luna16_froc(annotations, marks([("A", 3, 0, 0, 0.5)]), ["A"])
    assert res["n_detected"] == 2 and res["n_false_positives"] == 0
    assert res["n_marks_hitting_several_nodules"] == 1 and res["cpm"] == 1.0


def test_cap_keeps_highest_marks_and_drops_ties_at_the_cut():
    annotations = ann([("A", 0, 0, 0, 10.0)])
    far = [("A", 100 + i, 100, 100, p) for i, p in enumerate([0.9, 0.8, 0.7])]
    res = luna16_froc(annotations, marks(far + [("A", 0, 0, 0, 0.6)]), ["A"], max_marks_per_scan=3)
    assert res["n_marks_over_cap"] == 1 and res["n_detected"] == 0 and res["n_nodules"] == 1
    assert res["cpm"] == 0.0  # the only hit fell under the cap: a missed nodule stays in the denominator
    uncapped = luna16_froc(annotations, marks(far + [("A", 0, 0, 0, 0.6)]), ["A"], max_marks_per_scan=None)
    assert uncapped["n_detected"] == 1 and uncapped["n_marks_over_cap"] == 0
    # published rule: keep probability > the (cap+1)-th highest, so ties at the cut all go
    tied = [("A", 100 + i, 100, 100, p) for i, p in enumerate([0.9, 0.7, 0.7, 0.7, 0.1])]
    res = luna16_froc(annotations, marks(tied), ["A"], max_marks_per_scan=3)
    assert res["n_marks"] == 1 and res["n_marks_over_cap"] == 4


def test_unlisted_scan_marks_ignored_with_warning_and_duplicates():
    annotations, excluded, results = _hand_case()
    base = luna16_froc(annotations, results, seriesuids=["A", "B", "C", "D"], excluded=excluded)
    extra = {k: np.concatenate([v, v[:1]]) for k, v in results.items()}
    extra["seriesuid"][-1] = "NOT-LISTED"
    with pytest.warns(UserWarning, match="1 mark"):
        res = luna16_froc(annotations, extra, seriesuids=["A", "B", "C", "D"], excluded=excluded)
    assert res["n_marks_unlisted_scan"] == 1 and res["cpm"] == base["cpm"]
    with pytest.warns(UserWarning, match="duplicate"):
        dup = luna16_froc(annotations, results, seriesuids=["A", "B", "B", "C", "D"], excluded=excluded)
    assert dup["n_scans"] == 4 and dup["cpm"] == base["cpm"]


def test_edge_cases_no_fp_no_detection_and_errors():
    annotations = ann([("A", 0, 0, 0, 10.0), ("B", 0, 0, 0, 10.0)])
    perfect = luna16_froc(annotations, marks([("A", 0, 0, 0, 0.5)]), ["A", "B"])
    assert perfect["sensitivities"] == [0.5] * 7 and perfect["n_false_positives"] == 0
    nothing = luna16_froc(annotations, marks([("A", 50, 0, 0, 0.5)]), ["A", "B"])
    assert nothing["cpm"] == 0.0 and nothing["n_false_positives"] == 1
    empty = luna16_froc(annotations, marks([]), ["A", "B"])
    assert empty["cpm"] == 0.0 and empty["n_marks"] == 0
    with pytest.raises(ValueError, match="no nodule"):
        luna16_froc(annotations, marks([]), ["X"])
    with pytest.raises(ValueError, match="missing column"):
        luna16_froc({"seriesuid": ["A"]}, marks([]), ["A"])
    with pytest.raises(ValueError, match="NaN"):
        luna16_froc(annotations, marks([("A", 0, 0, 0, float("nan"))]), ["A"])


@pytest.mark.parametrize("seed,tie_levels,cap", [(0, None, 100), (1, 10, 100), (2, None, 8), (3, 5, 12)])
def test_matches_plain_loop_reference(seed, tie_levels, cap):
    uids, annotations, excluded, results = synthetic_luna(seed, tie_levels=tie_levels)
    uids = uids + ["no-marks-1", "no-marks-2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = luna16_froc(annotations, results, uids, excluded, max_marks_per_scan=cap)
    ref_sens, n_total, n_det, n_fp = reference_froc(annotations, results, uids, excluded, cap=cap)
    assert (res["n_nodules"], res["n_detected"], res["n_false_positives"]) == (n_total, n_det, n_fp)
    np.testing.assert_allclose(res["sensitivities"], ref_sens, atol=1e-12)
    assert res["cpm"] == pytest.approx(float(np.mean(ref_sens)), abs=1e-12)
    assert 0.05 < res["cpm"] < 0.95  # a non-degenerate curve
    # row order of the inputs does not matter
    perm = np.random.default_rng(seed).permutation(results["seriesuid"].size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shuffled = luna16_froc(annotations, {k: v[perm] for k, v in results.items()}, uids, excluded,
                               max_marks_per_scan=cap)
    assert shuffled["sensitivities"] == res["sensitivities"]
    # the stored (thinned) curve reproduces the interpolated values
    np.testing.assert_allclose(np.interp(0.7, res["fps_per_scan"], res["sensitivity"]),
                               np.interp(0.7, *_full_curve(annotations, results, uids, excluded, cap)))


def _full_curve(annotations, results, uids, excluded, cap):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = luna16_froc(annotations, results, uids, excluded, max_marks_per_scan=cap)
    return np.array(res["fps_per_scan"]), np.array(res["sensitivity"])


# ------------------------------------------------------------------------------------- by nodule size
def test_sensitivity_by_size_hand_case():
    # 2 scans; nodules of 4 and 6 mm (under 10) and 12 and 20 mm; the 20 mm nodule is never hit
    res = froc_sensitivity_by_size([0.9, 0.45, 0.6, -np.inf], [4.0, 6.0, 12.0, 20.0], [0.8, 0.5, 0.4, 0.2], 2)
    small, large = res["strata"]["under_10mm"], res["strata"]["10mm_or_more"]
    assert list(res["strata"]) == ["under_10mm", "10mm_or_more"] and res["n_false_positives"] == 4
    assert (small["min_mm"], small["max_mm"], large["min_mm"], large["max_mm"]) == (None, 10.0, 10.0, None)
    assert (small["n_nodules"], small["n_detected"], large["n_nodules"], large["n_detected"]) == (2, 2, 2, 1)
    # under 10 mm: 0.9 T | 0.8 F | 0.5 F | 0.45 T | 0.4 F | 0.2 F -> (0, .5) (.5, .5) (1, .5) (1, 1) (1.5, 1) (2, 1);
    # 1 FP/scan is read at the grid point 0.9999125, just before the step at 1.0 -> 0.5; 2 FP/scan at 2.0000375
    assert small["sensitivities"] == pytest.approx([0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0], abs=1e-12)
    assert small["cpm"] == pytest.approx(5 / 7, abs=1e-12)
    # 10 mm or more: 0.8 F | 0.6 T | 0.5 F | 0.4 F | 0.2 F -> (.5, 0) (.5, .5) (1, .5) (1.5, .5) (2, .5)
    assert large["sensitivities"] == pytest.approx([0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5], abs=1e-12)
    assert large["cpm"] == pytest.approx(2 / 7, abs=1e-12)
    # a missed nodule may be NaN as well as -inf; a diameter on an edge belongs to the stratum above it
    nan = froc_sensitivity_by_size([0.9, 0.45, 0.6, np.nan], [4.0, 6.0, 10.0, 20.0], [0.8, 0.5, 0.4, 0.2], 2,
                                   size_edges=(6.0, 10.0), fp_rates=(1.0,))
    assert list(nan["strata"]) == ["under_6mm", "6_to_10mm", "10mm_or_more"]
    assert [v["n_nodules"] for v in nan["strata"].values()] == [1, 1, 2]
    assert [v["sensitivities"][0] for v in nan["strata"].values()] == pytest.approx([1.0, 0.0, 0.5])


def test_sensitivity_by_size_empty_stratum_and_errors():
    res = froc_sensitivity_by_size([0.9], [5.0], [], 1)
    assert res["strata"]["under_10mm"]["sensitivities"] == [1.0] * 7
    assert res["strata"]["10mm_or_more"]["n_nodules"] == 0
    assert all(math.isnan(v) for v in res["strata"]["10mm_or_more"]["sensitivities"])
    with pytest.raises(ValueError, match="nodule_diameters has"):
        froc_sensitivity_by_size([0.9, 0.1], [5.0], [], 1)
    with pytest.raises(ValueError, match="n_scans"):
        froc_sensitivity_by_size([0.9], [5.0], [], 0)
    with pytest.raises(ValueError, match="size_edges"):
        froc_sensitivity_by_size([0.9], [5.0], [], 1, size_edges=(10.0, 6.0))
    with pytest.raises(ValueError, match="fp_scores"):
        froc_sensitivity_by_size([0.9], [5.0], [np.nan], 1)


def test_luna16_by_size_hand_case():
    annotations, excluded, results = _hand_case()
    res = luna16_froc_by_size(annotations, results, ["A", "B", "C", "D"], excluded)
    small, large = res["strata"]["under_10mm"], res["strata"]["10mm_or_more"]
    # under 10 mm: n3 (6 mm, hit at 0.3) and n4 (8 mm, missed); 10 mm or more: n1 (10 mm, 0.9) and n2 (-1 -> 10 mm,
    # 0.7); the two false positives (0.8 on A, 0.7 on B) are shared, over 4 scans
    assert (small["n_nodules"], small["n_detected"], large["n_nodules"], large["n_detected"]) == (2, 1, 2, 2)
    assert res["n_false_positives"] == 2 and res["n_scans"] == 4
    # small: 0.8 F | 0.7 F | 0.3 T -> (.25, 0) (.5, 0) (.5, .5)
    assert small["sensitivities"] == pytest.approx([0, 0, 0, 0.5, 0.5, 0.5, 0.5], abs=1e-12)
    # large: 0.9 T | 0.8 F | 0.7 T+F -> (0, .5) (.25, .5) (.5, 1); read at 0.2502125 and 0.49985 on the diagonal
    expected = [0.5, 0.5 + 0.0002125 / 0.25 * 0.5, 0.5 + 0.24985 / 0.25 * 0.5, 1.0, 1.0, 1.0, 1.0]
    assert large["sensitivities"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed,tie_levels,cap,edges", [(0, None, 100, (10.0,)), (1, 10, 100, (6.0, 10.0)),
                                                        (2, None, 8, (10.0,)), (3, 5, 12, (5.0, 8.0, 12.0))])
def test_luna16_by_size_equals_froc_on_each_stratum_alone(seed, tie_levels, cap, edges):
    """Each stratum = luna16_froc on its nodules, the other strata's nodules added to the excluded findings."""
    uids, annotations, excluded, results = synthetic_luna(seed, tie_levels=tie_levels)
    uids = uids + ["no-marks"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_size = luna16_froc_by_size(annotations, results, uids, excluded, edges, max_marks_per_scan=cap)
        overall = luna16_froc(annotations, results, uids, excluded, max_marks_per_scan=cap)
        d = np.where(annotations["diameter_mm"] < 0, 10.0, annotations["diameter_mm"])
        stratum = np.searchsorted(edges, d, side="right")
        assert by_size["n_false_positives"] == overall["n_false_positives"]
        assert sum(v["n_nodules"] for v in by_size["strata"].values()) == overall["n_nodules"]
        assert sum(v["n_detected"] for v in by_size["strata"].values()) == overall["n_detected"]
        for k, entry in enumerate(by_size["strata"].values()):
            inside = stratum == k
            alone = luna16_froc({c: v[inside] for c, v in annotations.items()}, results, uids,
                                {c: np.concatenate([excluded[c], annotations[c][~inside]]) for c in annotations},
                                max_marks_per_scan=cap)
            assert (entry["n_nodules"], entry["n_detected"]) == (alone["n_nodules"], alone["n_detected"])
            assert alone["n_false_positives"] == overall["n_false_positives"]
            np.testing.assert_allclose(entry["sensitivities"], alone["sensitivities"], atol=1e-12)
            assert entry["cpm"] == pytest.approx(alone["cpm"], abs=1e-12)
        # one stratum holding every nodule is the overall FROC
        one = luna16_froc_by_size(annotations, results, uids, excluded, (1000.0,), max_marks_per_scan=cap)
    np.testing.assert_allclose(one["strata"]["under_1000mm"]["sensitivities"], overall["sensitivities"], atol=1e-12)


@pytest.mark.parametrize("marks_per_scan", [30, 120])  # 120: the prefix shortcut in the resamples is used
def test_bootstrap_matches_explicit_resampling(marks_per_scan):
    uids, annotations, excluded, results = synthetic_luna(7, n_scans=25, marks_per_scan=marks_per_scan)
    n_boot, seed = 25, 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = luna16_froc(annotations, results, uids, excluded, n_bootstraps=n_boot, seed=seed)
    # same draws as the implementation: rng.integers(0, n_scans, n_scans) per resample
    rng = np.random.default_rng(seed)
    per_boot = []
    for _ in range(n_boot):
        draw = rng.integers(0, len(uids), size=len(uids))
        new_uids, a_parts, e_parts, m_parts = [], [], [], []
        for k, i in enumerate(draw):
            new = f"{uids[i]}#{k}"
            new_uids.append(new)
            for table, parts in ((annotations, a_parts), (excluded, e_parts), (results, m_parts)):
                sel = table["seriesuid"] == uids[i]
                part = {c: v[sel] for c, v in table.items()}
                part["seriesuid"] = np.full(int(sel.sum()), new)
                parts.append(part)

        def cat(parts):
            return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

        sens, *_ = reference_froc(cat(a_parts), cat(m_parts), new_uids, cat(e_parts))
        per_boot.append(sens)
    per_boot = np.array(per_boot)
    lo_i, hi_i = math.floor(0.025 * n_boot), math.floor(0.975 * n_boot)
    expected_ci = np.sort(per_boot, axis=0)[[lo_i, hi_i]].T
    np.testing.assert_allclose(res["sensitivities_ci"], expected_ci, atol=1e-12)
    cpm_sorted = np.sort(per_boot.mean(axis=1))
    np.testing.assert_allclose(res["cpm_ci"], [cpm_sorted[lo_i], cpm_sorted[hi_i]], atol=1e-12)
    assert res["cpm_bootstrap_mean"] == pytest.approx(per_boot.mean(), abs=1e-12)
    assert res["cpm_ci"][0] < res["cpm"] < res["cpm_ci"][1]
    assert res["n_bootstraps_valid"] == n_boot
    band = res["bootstrap_curve"]
    assert len(band["fps_per_scan"]) == len(band["sensitivity_low"]) == 121
    assert np.all(np.array(band["sensitivity_low"]) <= np.array(band["sensitivity_high"]))


def test_bootstrap_of_identical_scans_has_zero_width():
    # every scan identical -> every resample equals the data -> interval collapses onto the estimate
    rows_a, rows_m = [], []
    for s in range(6):
        rows_a += [(f"S{s}", 0, 0, 0, 10.0), (f"S{s}", 50, 0, 0, 10.0)]
        rows_m += [(f"S{s}", 0, 0, 0, 0.9), (f"S{s}", 90, 0, 0, 0.6), (f"S{s}", 51, 0, 0, 0.3)]
    res = luna16_froc(ann(rows_a), marks(rows_m), n_bootstraps=30, seed=1)
    assert res["cpm_ci"] == pytest.approx([res["cpm"], res["cpm"]], abs=1e-12)
    np.testing.assert_allclose(res["sensitivities_ci"], [[s, s] for s in res["sensitivities"]], atol=1e-12)


# ------------------------------------------------------------------------------------------ files / CLI
def _write(path, header, rows):
    with open(path, "w") as handle:
        if header:
            handle.write(header + "\n")
        for row in rows:
            handle.write(",".join(str(v) for v in row) + "\n")
    return str(path)


def _hand_files(tmp_path):
    annotations, excluded, results = _hand_case()

    def rows(t, last):
        return list(zip(t["seriesuid"], t["coordX"], t["coordY"], t["coordZ"], t[last]))

    a = _write(tmp_path / "annotations.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm",
               rows(annotations, "diameter_mm"))
    e = _write(tmp_path / "annotations_excluded.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm",
               rows(excluded, "diameter_mm"))
    r = _write(tmp_path / "results.csv", "seriesuid,coordX,coordY,coordZ,probability",
               rows(results, "probability"))
    s = _write(tmp_path / "seriesuids.csv", None, [("A",), ("B",), ("C",), ("D",)])
    return a, e, r, s


def test_readers_and_errors(tmp_path):
    a, e, r, s = _hand_files(tmp_path)
    table = read_luna16_annotations(a)
    assert table["seriesuid"].tolist() == ["A", "A", "B", "C", "Z"]
    assert table["diameter_mm"].tolist() == [10.0, -1.0, 6.0, 8.0, 8.0]
    assert read_luna16_results(r)["probability"][0] == 0.9
    assert read_seriesuids(s) == ["A", "B", "C", "D"]
    with_header = _write(tmp_path / "s2.csv", "seriesuid", [("A",), ("B",)])
    assert read_seriesuids(with_header) == ["A", "B"]
    bad = _write(tmp_path / "bad.csv", "seriesuid,coordX,coordY,diameter_mm", [("A", 1, 2, 3)])
    with pytest.raises(ValueError, match=r"bad\.csv is missing column\(s\) coordZ"):
        read_luna16_annotations(bad)
    header = "seriesuid,coordX,coordY,coordZ,probability"
    bad2 = _write(tmp_path / "bad2.csv", header, [("A", 1, 2, "x", 0.5)])
    with pytest.raises(ValueError, match=r"bad2\.csv: column coordZ holds 'x' in data row 1"):
        read_luna16_results(bad2)
    with pytest.raises(OSError, match="nope.csv"):
        read_luna16_results(tmp_path / "nope.csv")


def test_evaluate_files_writes_json_and_png(tmp_path):
    a, e, r, s = _hand_files(tmp_path)
    res = evaluate_luna16_files(a, r, s, e, out_dir=tmp_path / "out", n_bootstraps=20)
    assert res["cpm"] == pytest.approx(np.mean([0.25, 0.2502125, 0.49985, 0.75, 0.75, 0.75, 0.75]))
    saved = json.loads((tmp_path / "out" / "froc.json").read_text())
    assert saved["cpm"] == res["cpm"] and saved["thresholds"][0] is None and "cpm_ci" in saved
    png = (tmp_path / "out" / "froc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the plot also works from the reloaded JSON, without bootstrap keys
    no_boot = {k: v for k, v in saved.items() if "bootstrap" not in k and k != "sensitivities_ci"}
    assert plot_froc(no_boot, tmp_path / "again.png").endswith("again.png")


def test_froc_command_end_to_end(tmp_path, capsys):
    a, e, r, s = _hand_files(tmp_path)
    out = tmp_path / "cli"
    rc = cli_main(["froc", "--annotations", a, "--excluded", e, "--seriesuids", s, "--results", r,
                       "--out", str(out), "--bootstrap", "10"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cpm"] == pytest.approx(np.mean([0.25, 0.2502125, 0.49985, 0.75, 0.75, 0.75, 0.75]))
    assert "fps_per_scan" not in printed and "bootstrap_curve" not in printed
    assert printed["n_scans"] == 4 and printed["n_bootstraps"] == 10
    assert (out / "froc.json").exists() and (out / "froc.png").exists()
    # no bootstrap, no output folder
    assert cli_main(["froc", "--annotations", a, "--results", r, "--bootstrap", "0"]) == 0
    assert "cpm_ci" not in json.loads(capsys.readouterr().out)
    # a broken file: exit code 1 and a message naming the file and the column
    bad = _write(tmp_path / "broken.csv", "seriesuid,coordX,coordY,coordZ", [("A", 1, 2, 3)])
    assert cli_main(["froc", "--annotations", a, "--results", bad, "--bootstrap", "0"]) == 1
    err = capsys.readouterr().err
    assert "broken.csv" in err and "probability" in err
