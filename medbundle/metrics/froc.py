"""LUNA16 FROC analysis and competition performance metric (CPM), and the same FROC for 2D boxes, with numpy.

MONAI has no FROC metric for point detections; the LUNA16 challenge's own evaluation script loops over
every scan, nodule and mark in Python. This module implements the same protocol (see ``luna16_froc`` for
each rule), reads the challenge CSV files without pandas, bootstraps scans for confidence intervals and
runs a full LUNA16 evaluation (888 scans x 100 marks) in well under a second. :func:`image_froc` applies
the same curve, read-out and bootstrap to 2D box detections on images (chest X-ray nodules, NODE21's IoU
hit rule), so both report sensitivity at fixed FP rates the same way.

The ``medbundle froc`` command wraps :func:`evaluate_luna16_files`::

    medbundle froc --annotations annotations.csv --excluded annotations_excluded.csv \\
        --seriesuids seriesuids.csv --results results.csv --out eval_dir --bootstrap 1000
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medbundle.io.luna16_csv import (
    ANNOTATION_COLUMNS,
    RESULT_COLUMNS,
    Table,
    read_luna16_annotations,
    read_luna16_results,
    read_seriesuids,
)
from medbundle.metrics.detection import box_iou
from medbundle.metrics.validation import check_corner_boxes_2d
from medbundle.utils import to_jsonable, to_numpy

__all__ = [
    "DEFAULT_FP_RATES",
    "NODE21_IOU_THRESHOLD",
    "image_froc",
    "luna16_froc",
    "froc_sensitivity_by_size",
    "luna16_froc_by_size",
    "size_stratum_names",
    "evaluate_luna16_files",
    "summary",
]

DEFAULT_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_GRID_MIN, _GRID_MAX, _GRID_NUM = 0.125, 8.0, 10001  # the published script's interpolation grid
_BAND_POINTS = 121  # log-spaced FP rates at which the bootstrap band is stored for plotting
_CURVE_KEYS = ("fps_per_scan", "fps_per_image", "sensitivity", "thresholds", "bootstrap_curve")





# ------------------------------------------------------------------------------------------ validation
def _check_table(table: Mapping[str, Any], columns: Sequence[str], name: str) -> Table:
    if not isinstance(table, Mapping):
        raise TypeError(
            f"{name} must be a mapping of columns {', '.join(columns)} to arrays (as returned by "
            f"read_luna16_*), got {type(table).__name__}."
        )
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"{name} is missing column(s) {', '.join(missing)}; it needs {', '.join(columns)}.")
    out: Table = {columns[0]: np.asarray(table[columns[0]]).astype(str).reshape(-1)}
    n = out[columns[0]].size
    for c in columns[1:]:
        col = np.asarray(table[c], dtype=np.float64).reshape(-1)
        if col.size != n:
            raise ValueError(f"{name}: column {c} has {col.size} values but {columns[0]} has {n}.")
        if not np.all(np.isfinite(col)):
            raise ValueError(f"{name}: column {c} contains NaN or infinite values.")
        out[c] = col
    return out


def _coords(table: Table) -> np.ndarray:
    return np.stack([table["coordX"], table["coordY"], table["coordZ"]], axis=1)


def _scan_index(uids: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
    """Scan number of each row (-1 for unlisted scans); one dict lookup per run of equal UIDs."""
    if uids.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
    run_scan = np.fromiter((index.get(u, -1) for u in uids[starts].tolist()), dtype=np.int64, count=starts.size)
    return np.repeat(run_scan, np.diff(np.r_[starts, uids.size]))


def _hits(
    point_scan: np.ndarray,
    point_xyz: np.ndarray,
    point_r2: np.ndarray,
    mark_xyz: np.ndarray,
    mark_starts: np.ndarray,
    mark_counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """All (point, mark) pairs in the same scan with squared distance < r^2; marks sorted by scan."""
    per_point = mark_counts[point_scan]
    total = int(per_point.sum())
    pair_point = np.repeat(np.arange(point_scan.size), per_point)
    offsets = np.arange(total) - np.repeat(np.cumsum(per_point) - per_point, per_point)
    pair_mark = np.repeat(mark_starts[point_scan], per_point) + offsets
    a = point_xyz[pair_point]
    b = mark_xyz[pair_mark]
    # same operation order as the published script: dx^2 + dy^2 + dz^2, strict '<'
    d2 = (a[:, 0] - b[:, 0]) ** 2 + (a[:, 1] - b[:, 1]) ** 2 + (a[:, 2] - b[:, 2]) ** 2
    hit = d2 < point_r2[pair_point]
    return pair_point[hit], pair_mark[hit]


def _froc_curve(
    tp_cum: np.ndarray, fp_cum: np.ndarray, n_det: float, n_fp: float, n_nodules: float, n_scans: int
) -> tuple[np.ndarray, np.ndarray]:
    """FROC points (with the ROC origin first) from cumulative TP/FP counts at each distinct threshold.

    Written as the published script scales ``sklearn.metrics.roc_curve``: FPs/scan = FPR * n_FP / n_scans
    (all zeros when there is no FP) and sensitivity = TPR * n_detected / n_nodules (zeros when nothing is
    detected). ``n_det`` and ``n_fp`` are the totals (the counts may stop early, see ``_bootstrap``).
    """
    fps = np.zeros(tp_cum.size + 1)
    sens = np.zeros(tp_cum.size + 1)
    if n_fp > 0:
        fps[1:] = (fp_cum / n_fp) * n_fp / n_scans
    if n_det > 0:
        sens[1:] = (tp_cum / n_det) * n_det / n_nodules
    return fps, sens


def _thin(tp_cum: np.ndarray, fp_cum: np.ndarray) -> np.ndarray:
    """Indices of the points kept by ``roc_curve(drop_intermediate=True)``: drop collinear interior points.

    Removing them leaves every linearly interpolated value unchanged; it only shortens the stored curve.
    """
    if tp_cum.size <= 2:
        return np.arange(tp_cum.size)
    keep = np.r_[True, (np.diff(tp_cum, 2) != 0) | (np.diff(fp_cum, 2) != 0), True]
    return np.flatnonzero(keep)


def _order_stat_ci(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval as the published script takes it: sorted[floor(a*B)], sorted[floor((1-a)*B)]."""
    b = values.shape[0]
    tail = (1.0 - confidence) / 2.0
    s = np.sort(values, axis=0)
    lo = s[min(int(math.floor(tail * b)), b - 1)]
    hi = s[min(int(math.floor((1.0 - tail) * b)), b - 1)]
    return lo, hi


@dataclass
class _Matched:
    """Marks matched to nodules and excluded findings by the LUNA16 rules (see :func:`luna16_froc`)."""

    n_scans: int
    n_nodules: int
    nodule_scan: np.ndarray  # (N,) scan index of each nodule of a listed scan
    nodule_diameter: np.ndarray  # (N,) diameter_mm as given
    nodule_score: np.ndarray  # (N,) highest probability among the nodule's hits, -inf when missed
    detected: np.ndarray  # (N,) bool
    mark_scan: np.ndarray  # (M,) scan index of each kept mark
    mark_prob: np.ndarray  # (M,)
    is_fp: np.ndarray  # (M,) bool: hits no nodule and no excluded finding
    n_marks: int
    n_over_cap: int
    n_on_excluded: int
    n_extra_hits: int
    n_several: int
    n_unlisted: int


def _match_marks(
    ann: Table, res: Table, exc: Table | None, seriesuids: Sequence[str] | None, max_marks_per_scan: int | None
) -> _Matched:
    """The scan list, the per-scan cap, hits on nodules and on excluded findings (checked tables in)."""
    # ---- scan list
    if seriesuids is None:
        sources = [ann["seriesuid"], res["seriesuid"]] + ([exc["seriesuid"]] if exc is not None else [])
        scans = list(dict.fromkeys(u for arr in sources for u in arr.tolist()))
    else:
        listed = [str(u) for u in seriesuids]
        scans = list(dict.fromkeys(listed))
        if len(scans) != len(listed):
            warnings.warn(
                f"seriesuids lists {len(listed) - len(scans)} duplicate UID(s); each scan is counted once.",
                stacklevel=3,
            )
    n_scans = len(scans)
    if n_scans == 0:
        raise ValueError("no scans to evaluate: seriesuids is empty and so are annotations and results.")
    index = {u: i for i, u in enumerate(scans)}

    # ---- marks: drop unlisted scans, apply the per-scan cap, sort by scan
    m_scan = _scan_index(res["seriesuid"], index)
    unlisted = int(np.count_nonzero(m_scan < 0))
    if unlisted:
        warnings.warn(
            f"results has {unlisted} mark(s) on scans not in seriesuids; they are ignored.", stacklevel=3
        )
    m_prob_all = res["probability"]
    valid = np.flatnonzero(m_scan >= 0)
    order = valid[np.lexsort((-m_prob_all[valid], m_scan[valid]))]
    m_scan = m_scan[order]
    m_prob = m_prob_all[order]
    counts = np.bincount(m_scan, minlength=n_scans)
    n_over_cap = 0
    if max_marks_per_scan is not None and m_scan.size:
        starts = np.cumsum(counts) - counts
        over = np.flatnonzero(counts > max_marks_per_scan)
        cut = np.full(n_scans, -np.inf)
        cut[over] = m_prob[starts[over] + max_marks_per_scan]
        keep = m_prob > cut[m_scan]
        n_over_cap = int(m_prob.size - np.count_nonzero(keep))
        order, m_scan, m_prob = order[keep], m_scan[keep], m_prob[keep]
        counts = np.bincount(m_scan, minlength=n_scans)
    m_xyz = _coords(res)[order]
    m_starts = np.cumsum(counts) - counts
    n_marks = int(m_scan.size)

    # ---- included nodules of listed scans
    n_scan_all = _scan_index(ann["seriesuid"], index)
    n_keep = n_scan_all >= 0
    n_scan = n_scan_all[n_keep]
    n_xyz = _coords(ann)[n_keep]
    diam = ann["diameter_mm"][n_keep]
    n_r2 = (np.where(diam < 0.0, 10.0, diam) / 2.0) ** 2
    n_nodules = int(n_scan.size)
    if n_nodules == 0:
        raise ValueError(
            "annotations hold no nodule on the evaluated scans, so sensitivity is undefined; check that "
            "annotations and seriesuids use the same series UIDs."
        )

    hit_nod, hit_mark = _hits(n_scan, n_xyz, n_r2, m_xyz, m_starts, counts)
    mark_is_hit = np.zeros(n_marks, dtype=bool)
    mark_is_hit[hit_mark] = True
    hits_per_nodule = np.bincount(hit_nod, minlength=n_nodules)
    nod_score = np.full(n_nodules, -np.inf)
    np.maximum.at(nod_score, hit_nod, m_prob[hit_mark])
    detected = hits_per_nodule > 0
    n_several = int(np.count_nonzero(np.bincount(hit_mark, minlength=n_marks) > 1))
    if n_several:
        warnings.warn(
            f"{n_several} mark(s) lie inside two or more nodules and count as a hit for each (as in the "
            "published script); check for overlapping annotations.",
            stacklevel=3,
        )

    on_excluded = np.zeros(n_marks, dtype=bool)
    if exc is not None and exc["seriesuid"].size:
        e_scan = _scan_index(exc["seriesuid"], index)
        e_keep = e_scan >= 0
        e_diam = exc["diameter_mm"][e_keep]
        e_r2 = (np.where(e_diam < 0.0, 10.0, e_diam) / 2.0) ** 2
        _, e_mark = _hits(e_scan[e_keep], _coords(exc)[e_keep], e_r2, m_xyz, m_starts, counts)
        on_excluded[e_mark] = True
    dropped = on_excluded & ~mark_is_hit
    is_fp = ~mark_is_hit & ~on_excluded

    return _Matched(
        n_scans=n_scans, n_nodules=n_nodules, nodule_scan=n_scan, nodule_diameter=diam, nodule_score=nod_score,
        detected=detected, mark_scan=m_scan, mark_prob=m_prob, is_fp=is_fp, n_marks=n_marks,
        n_over_cap=n_over_cap, n_on_excluded=int(dropped.sum()),
        n_extra_hits=int(np.sum(hits_per_nodule[detected] - 1)), n_several=n_several, n_unlisted=unlisted,
    )


def _rank(cand_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable descending order of the candidate scores and, in that order, the last index of every run of
    equal scores (one curve point per distinct threshold, as ``roc_curve``)."""
    srt = np.argsort(-cand_score, kind="stable")
    ranked = cand_score[srt]
    if ranked.size:
        ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    else:
        ends = np.zeros(0, dtype=np.int64)
    return srt, ends


def _read_out(fps: np.ndarray, sens: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The script's grid, the grid point nearest each rate, and the curve linearly interpolated there."""
    grid = np.linspace(min(_GRID_MIN, float(rates.min())), max(_GRID_MAX, float(rates.max())), _GRID_NUM)
    read_at = grid[np.argmin(np.abs(grid[None, :] - rates[:, None]), axis=1)]
    return grid, read_at, np.interp(read_at, fps, sens)


def _check_rates(fp_rates: Sequence[float]) -> np.ndarray:
    rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
    if rates.size == 0 or np.any(~np.isfinite(rates)) or np.any(rates <= 0):
        raise ValueError(f"fp_rates must be positive FP-per-scan values, got {list(fp_rates)}.")
    return rates


def luna16_froc(
    annotations: Mapping[str, Any],
    results: Mapping[str, Any],
    seriesuids: Sequence[str] | None = None,
    excluded: Mapping[str, Any] | None = None,
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    max_marks_per_scan: int | None = 100,
    n_bootstraps: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """LUNA16 FROC curve, sensitivities at fixed FP rates and CPM, with optional scan-bootstrap CIs.

    Args:
        annotations (mapping): Reference nodules: ``seriesuid`` (N,), ``coordX``, ``coordY``, ``coordZ`` (N,) world mm
            and ``diameter_mm`` (N,), e.g. from :func:`read_luna16_annotations`.
        results (mapping): CAD marks: ``seriesuid`` (K,), ``coordX``, ``coordY``, ``coordZ`` (K,) world mm and
            ``probability`` (K,), e.g. from :func:`read_luna16_results`.
        seriesuids (sequence of str, optional): The evaluated scans (LUNA16: the 888 of ``seriesuids.csv``). Scans
            listed without marks still count in the FPs-per-scan denominator. Marks on scans not listed are ignored with
            a warning (as the published script ignores them), and so are annotations of such scans. If None, the scans
            are those named in ``annotations``, ``excluded`` or ``results`` - pass the full list when some scans have no
            nodule and no mark, or the FP rate is overstated.
        excluded (mapping, optional): Findings (``annotations_excluded.csv``, same columns as ``annotations``) whose
            marks count neither as hits nor as false positives.
        fp_rates (sequence of float, default (1/8, 1/4, 1/2, 1, 2, 4, 8)): Average FPs per scan at which sensitivity is
        read; CPM is the mean of those sensitivities.
        max_marks_per_scan (int or None, default 100): Cap on marks per scan; None keeps all.
        n_bootstraps (int, default 0): Scan-level bootstrap resamples (with replacement) for confidence intervals; 0 for
            none. The published evaluation uses 1000.
        confidence (float, default 0.95): Two-sided level of the bootstrap intervals.
        seed (int, default 0): Seed of the bootstrap resampling (``numpy.random.default_rng``).

    Returns:
        dict: ``fp_rates``, ``sensitivities`` (one per rate), ``cpm``, ``cpm_convention`` ("linear interpolation"),
            ``interpolation_grid`` ([start, stop, num]); the FROC curve ``fps_per_scan``, ``sensitivity``,
            ``thresholds`` (lists; the first point is the origin (0, 0) with threshold None, so that ``np.interp(x,
            fps_per_scan, sensitivity)`` reproduces the figures); counts ``n_scans``, ``n_nodules``, ``n_detected``,
            ``n_false_positives``, ``n_marks`` (after the cap), ``n_marks_over_cap``, ``n_marks_on_excluded``,
            ``n_extra_hits``, ``n_marks_hitting_several_nodules``, ``n_marks_unlisted_scan``; ``max_sensitivity`` and
            ``max_fps_per_scan``. With bootstrapping also ``n_bootstraps``, ``n_bootstraps_valid``, ``confidence``,
            ``seed``, ``sensitivities_ci`` ([low, high] per rate), ``cpm_ci``, ``cpm_bootstrap_mean`` and
            ``bootstrap_curve`` (``fps_per_scan``, ``sensitivity_mean``, ``sensitivity_low``, ``sensitivity_high`` on
            121 log-spaced rates).

    Note:
        The protocol of the published LUNA16 evaluation script (``noduleCADEvaluationLUNA16.py``):

        * Cap: when a scan has more than ``max_marks_per_scan`` marks, only marks with probability strictly
          above the (cap+1)-th highest are kept - marks tied with that value are all dropped, so a scan keeps
          at most ``cap`` marks, and fewer when the scores tie at the cut.
        * A mark hits a finding when its squared distance to the centre is < (diameter/2)^2; a negative
          diameter is read as 10 mm.
        * A nodule hit by several marks is detected once, with the highest probability among its hits; the
          other hits are neither TP nor FP (``n_extra_hits``). A mark inside two nodules counts as a hit for
          both (the script does the same and prints a warning; so do we).
        * A mark that hits no nodule but an excluded finding is dropped; any other mark is a false positive.
        * Missed nodules stay in the sensitivity denominator. FPs per scan divide by the number of scans.
        * The curve is the ROC of (detected nodules' best probabilities, FP probabilities), with the FP rate
          scaled to FPs per scan and the TPR by detected / total, starting at (0, 0). Sensitivity at rate
          ``r`` is ``np.interp`` of the curve at the point of ``linspace(0.125, 8, 10001)`` nearest to ``r``
          (the script's grid and read-out; the grid widens to cover rates outside [0.125, 8]). CPM is the
          mean ("linear interpolation" convention; some copies of the script take the curve point at the
          nearest FP rate above each target instead, which gives a different CPM).
        * Bootstrap: scans are drawn with replacement (n_scans per resample), the FROC is recomputed (the
          FP denominator stays n_scans), and the interval is the order statistic
          ``sorted[floor(a*B)], sorted[floor((1-a)*B)]`` with ``a = (1 - confidence) / 2`` as in the script.
          A resample that holds no nodule is skipped (``n_bootstraps_valid``).
    """
    ann = _check_table(annotations, ANNOTATION_COLUMNS, "annotations")
    res = _check_table(results, RESULT_COLUMNS, "results")
    exc = _check_table(excluded, ANNOTATION_COLUMNS, "excluded") if excluded is not None else None
    rates = _check_rates(fp_rates)
    if max_marks_per_scan is not None and max_marks_per_scan < 1:
        raise ValueError(f"max_marks_per_scan must be >= 1 or None, got {max_marks_per_scan}.")
    if n_bootstraps < 0:
        raise ValueError(f"n_bootstraps must be >= 0, got {n_bootstraps}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")

    m = _match_marks(ann, res, exc, seriesuids, max_marks_per_scan)
    n_scans, n_nodules, n_scan, m_scan, m_prob = m.n_scans, m.n_nodules, m.nodule_scan, m.mark_scan, m.mark_prob
    nod_score, detected, is_fp = m.nodule_score, m.detected, m.is_fp

    # ---- candidates for the FROC: detected nodules (label 1) and false positives (label 0)
    cand_score = np.concatenate([nod_score[detected], m_prob[is_fp]])
    cand_tp = np.concatenate([np.ones(int(detected.sum())), np.zeros(int(is_fp.sum()))])
    cand_scan = np.concatenate([n_scan[detected], m_scan[is_fp]])
    srt, ends = _rank(cand_score)
    cand_score, cand_tp, cand_scan = cand_score[srt], cand_tp[srt], cand_scan[srt]
    cand_fp = 1.0 - cand_tp
    tp_cum = np.cumsum(cand_tp)[ends]
    fp_cum = np.cumsum(cand_fp)[ends]
    fps, sens = _froc_curve(tp_cum, fp_cum, float(tp_cum[-1]) if tp_cum.size else 0.0,
                            float(fp_cum[-1]) if fp_cum.size else 0.0, n_nodules, n_scans)
    grid, read_at, sens_at = _read_out(fps, sens, rates)

    kept = _thin(tp_cum, fp_cum)
    curve_idx = np.r_[0, kept + 1]
    thresholds: list[float | None] = [None] + [float(t) for t in cand_score[ends][kept]]

    out: dict[str, Any] = {
        "fp_rates": [float(r) for r in rates],
        "sensitivities": [float(s) for s in sens_at],
        "cpm": float(np.mean(sens_at)),
        "cpm_convention": "linear interpolation",
        "interpolation_grid": [float(grid[0]), float(grid[-1]), _GRID_NUM],
        "n_scans": n_scans,
        "n_nodules": n_nodules,
        "n_detected": int(detected.sum()),
        "n_false_positives": int(is_fp.sum()),
        "n_marks": m.n_marks,
        "n_marks_over_cap": m.n_over_cap,
        "n_marks_on_excluded": m.n_on_excluded,
        "n_extra_hits": m.n_extra_hits,
        "n_marks_hitting_several_nodules": m.n_several,
        "n_marks_unlisted_scan": m.n_unlisted,
        "max_marks_per_scan": max_marks_per_scan,
        "max_sensitivity": float(sens[-1]),
        "max_fps_per_scan": float(fps[-1]),
        "fps_per_scan": [float(x) for x in fps[curve_idx]],
        "sensitivity": [float(x) for x in sens[curve_idx]],
        "thresholds": thresholds,
    }
    if n_bootstraps > 0:
        out.update(
            _bootstrap(cand_tp, cand_fp, cand_scan, ends, n_scan, n_scans, rates, read_at, grid,
                       n_bootstraps, confidence, seed)
        )
    return out


def size_stratum_names(size_edges: Sequence[float]) -> list[str]:
    """Names of the strata cut by ``size_edges`` (mm, ascending): ``(10,)`` gives ``["under_10mm",
    "10mm_or_more"]``, ``(6, 10)`` gives ``["under_6mm", "6_to_10mm", "10mm_or_more"]``."""
    edges = [float(e) for e in size_edges]
    if not edges:
        return ["all"]
    names = [f"under_{edges[0]:g}mm"]
    names += [f"{a:g}_to_{b:g}mm" for a, b in zip(edges[:-1], edges[1:])]
    return names + [f"{edges[-1]:g}mm_or_more"]


def froc_sensitivity_by_size(
    nodule_scores: Sequence[float] | np.ndarray,
    nodule_diameters: Sequence[float] | np.ndarray,
    fp_scores: Sequence[float] | np.ndarray,
    n_scans: int,
    size_edges: Sequence[float] = (10.0,),
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
) -> dict[str, Any]:
    """FROC sensitivity of each nodule-size stratum at fixed false-positive rates, on a shared FP axis.

    The reference nodules are split by diameter into strata ``[0, e1), [e1, e2), ..., [ek, inf)``. Each
    stratum gets its own FROC: the ROC of (its detected nodules' scores, *all* false-positive scores), with
    FPs per scan = FPs / ``n_scans`` and sensitivity = detected / the stratum's nodules, read out as
    :func:`luna16_froc` does (linear interpolation at the point of ``linspace(0.125, 8, 10001)`` nearest
    each rate). The false positives are the same for every stratum, so "sensitivity at 1 FP/scan" of each
    stratum is read at the same operating point as the overall figure. This equals :func:`luna16_froc` run
    on one stratum's nodules with the other strata's nodules added to the excluded findings (a mark on a
    nodule of another size is neither a hit nor a false positive).

    Args:
        nodule_scores: ``(N,)`` per reference nodule, the highest score among the marks that hit it; NaN or ``-inf`` for
            a nodule no mark hit (it stays in its stratum's denominator).
        nodule_diameters: ``(N,)`` diameter of each nodule in mm (finite), the stratification variable.
        fp_scores: ``(K,)`` scores of the false-positive marks (marks that hit no nodule and no excluded finding), over
            all scans.
        n_scans: number of scans evaluated (the FP-rate denominator), >= 1.
        size_edges: ascending cut points in mm; ``(10.0,)`` gives nodules under 10 mm and of 10 mm or more.
        fp_rates: FPs per scan at which sensitivity is read.

    Returns:
        dict with ``size_edges_mm``, ``fp_rates``, ``n_scans``, ``n_false_positives``,
        ``cpm_convention`` and ``strata``: ``{name: {"min_mm", "max_mm" (None when unbounded),
        "n_nodules", "n_detected", "sensitivities" (one per rate; NaN for an empty stratum), "cpm"}}``,
        names from :func:`size_stratum_names` (``under_10mm``, ``10mm_or_more``).

    Raises:
        ValueError: mismatched or non-finite inputs, ``n_scans < 1``, bad rates or unsorted edges.
    """
    scores = np.asarray(nodule_scores, dtype=np.float64).reshape(-1)
    diam = np.asarray(nodule_diameters, dtype=np.float64).reshape(-1)
    fp = np.asarray(fp_scores, dtype=np.float64).reshape(-1)
    edges = np.asarray(size_edges, dtype=np.float64).reshape(-1)
    rates = _check_rates(fp_rates)
    if scores.size != diam.size:
        raise ValueError(f"nodule_scores has {scores.size} values but nodule_diameters has {diam.size}.")
    if not np.all(np.isfinite(diam)):
        raise ValueError("nodule_diameters must be finite.")
    if np.any(np.isnan(fp)) or np.any(np.isinf(fp)):
        raise ValueError("fp_scores must be finite.")
    if np.any(np.isposinf(scores)):
        raise ValueError("nodule_scores must be finite, NaN or -inf (missed).")
    if int(n_scans) < 1:
        raise ValueError(f"n_scans must be >= 1, got {n_scans}.")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"size_edges must be finite and strictly increasing, got {list(size_edges)}.")
    hit = np.isfinite(scores)
    stratum = np.searchsorted(edges, diam, side="right")  # d < e1 -> 0, e1 <= d < e2 -> 1, ...
    bounds = [None, *edges.tolist(), None]
    strata: dict[str, Any] = {}
    for k, name in enumerate(size_stratum_names(edges.tolist())):
        members = stratum == k
        n_nod = int(members.sum())
        det = members & hit
        entry: dict[str, Any] = {"min_mm": bounds[k], "max_mm": bounds[k + 1], "n_nodules": n_nod,
                                 "n_detected": int(det.sum())}
        if n_nod == 0:
            entry.update(sensitivities=[math.nan] * rates.size, cpm=math.nan)
        else:
            cand = np.concatenate([scores[det], fp])
            cand_tp = np.concatenate([np.ones(int(det.sum())), np.zeros(fp.size)])
            srt, ends = _rank(cand)
            tp_cum = np.cumsum(cand_tp[srt])[ends]
            fp_cum = np.cumsum(1.0 - cand_tp[srt])[ends]
            fps, sens = _froc_curve(tp_cum, fp_cum, float(tp_cum[-1]) if tp_cum.size else 0.0,
                                    float(fp_cum[-1]) if fp_cum.size else 0.0, n_nod, int(n_scans))
            sens_at = _read_out(fps, sens, rates)[2]
            entry.update(sensitivities=[float(v) for v in sens_at], cpm=float(np.mean(sens_at)))
        strata[name] = entry
    return {
        "size_edges_mm": [float(e) for e in edges],
        "fp_rates": [float(r) for r in rates],
        "n_scans": int(n_scans),
        "n_false_positives": int(fp.size),
        "cpm_convention": "linear interpolation",
        "strata": strata,
    }


def luna16_froc_by_size(
    annotations: Mapping[str, Any],
    results: Mapping[str, Any],
    seriesuids: Sequence[str] | None = None,
    excluded: Mapping[str, Any] | None = None,
    size_edges: Sequence[float] = (10.0,),
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    max_marks_per_scan: int | None = 100,
) -> dict[str, Any]:
    """LUNA16 FROC sensitivity per nodule-size stratum (e.g. under 10 mm and 10 mm or more).

    Marks are matched to nodules and excluded findings exactly as in :func:`luna16_froc` (same cap, hit
    rule, excluded findings and scan list); the matched scores then go through
    :func:`froc_sensitivity_by_size`, stratified by each nodule's ``diameter_mm`` (a negative diameter is
    read as 10 mm, as in the hit rule).

    Args:
        annotations, results, seriesuids, excluded, fp_rates, max_marks_per_scan: as :func:`luna16_froc`.
        size_edges: ascending cut points in mm.

    Returns:
        The dict of :func:`froc_sensitivity_by_size`.
    """
    ann = _check_table(annotations, ANNOTATION_COLUMNS, "annotations")
    res = _check_table(results, RESULT_COLUMNS, "results")
    exc = _check_table(excluded, ANNOTATION_COLUMNS, "excluded") if excluded is not None else None
    if max_marks_per_scan is not None and max_marks_per_scan < 1:
        raise ValueError(f"max_marks_per_scan must be >= 1 or None, got {max_marks_per_scan}.")
    m = _match_marks(ann, res, exc, seriesuids, max_marks_per_scan)
    diam = np.where(m.nodule_diameter < 0.0, 10.0, m.nodule_diameter)
    return froc_sensitivity_by_size(m.nodule_score, diam, m.mark_prob[m.is_fp], m.n_scans, size_edges, fp_rates)


# ------------------------------------------------------------------------------------------ 2D images

#: NODE21's hit criterion: a predicted box hits a nodule when their IoU is > 0.2 (see :func:`image_froc`).
NODE21_IOU_THRESHOLD = 0.2
_EXTRA_HITS = ("ignore", "false_positive")


def _match_image(
    boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou_threshold: float, extra_hits: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """One image: each lesion's score (-inf when missed), which detections are FPs, and the extra hits."""
    n_det, n_gt = boxes.shape[0], gt.shape[0]
    lesion_score = np.full(n_gt, -np.inf)
    if n_gt == 0 or n_det == 0:
        return lesion_score, np.ones(n_det, dtype=bool), 0
    iou = box_iou(boxes, gt)
    hit = iou > iou_threshold
    hits_any = hit.any(axis=1)
    if extra_hits == "ignore":
        # LUNA16 / evalutils: a lesion takes its best hit; every hit is no FP, extra ones are not counted.
        np.maximum.at(lesion_score, np.nonzero(hit)[1], np.broadcast_to(scores[:, None], hit.shape)[hit])
        n_extra = int(hit.sum() - np.count_nonzero(hit.any(axis=0)))
        return lesion_score, ~hits_any, n_extra
    # one-to-one: from the highest score down, a detection takes the free lesion it overlaps most
    is_fp = ~hits_any
    taken = np.zeros(n_gt, dtype=bool)
    n_extra = 0
    for k in np.flatnonzero(hits_any)[np.argsort(-scores[hits_any], kind="stable")]:
        cand = np.where(hit[k] & ~taken, iou[k], -np.inf)
        g = int(np.argmax(cand))
        if cand[g] == -np.inf:
            is_fp[k] = True
            n_extra += 1
            continue
        taken[g] = True
        lesion_score[g] = scores[k]
    return lesion_score, is_fp, n_extra


def image_froc(
    pred_boxes: Sequence[Any],
    pred_scores: Sequence[Any],
    gt_boxes: Sequence[Any],
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    iou_threshold: float = NODE21_IOU_THRESHOLD,
    extra_hits: str = "ignore",
    n_bootstraps: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """FROC of 2D box detections over images: sensitivity at fixed false positives per image, with image-bootstrap CIs.

    Class-agnostic: every box is a lesion of the one class evaluated (filter boxes by label to evaluate one
    class of a multi-class detector, e.g. VinDr-CXR). The curve, read-out and bootstrap are those of
    :func:`luna16_froc` with images in place of scans, so the two functions give the same figures for the same
    hits (``tests/test_cxr_detection_metrics.py`` checks this).

    Args:
        pred_boxes (sequence of array-like, one per image, shape (K_i, 4)): Predicted corner boxes ``(x_min, y_min,
            x_max, y_max)`` in pixels, numpy or torch; ``np.zeros((0, 4))`` (or ``[]``) for an image without
            detections.
        pred_scores (sequence of array-like, one per image, shape (K_i,)): Finite confidence of each box.
        gt_boxes (sequence of array-like, one per image, shape (G_i, 4)): Reference lesion boxes, same format and unit;
            ``np.zeros((0, 4))`` for an image without lesions (it still counts in the FPs-per-image denominator, and
            all its detections are false positives).
        fp_rates (sequence of float, default (1/8, 1/4, 1/2, 1, 2, 4, 8)): Average false positives per image at which
            sensitivity is read; ``mean_sensitivity`` is the mean of those sensitivities.
        iou_threshold (float, default 0.2): A detection hits a lesion when their IoU is strictly greater than this
            (NODE21's criterion, see Note).
        extra_hits (str, default "ignore"): What a second detection on an already hit lesion is. ``"ignore"``:
            neither TP nor FP, the lesion takes its best-scoring hit (LUNA16's rule and grand-challenge evalutils'
            ``score_detection``). ``"false_positive"``: one-to-one matching; from the highest score down, a detection
            takes the still-free lesion it overlaps most (IoU > ``iou_threshold``), and one that finds none is a
            false positive (the COCO rule, and that of the NODE21 winning team's re-implementation).
        n_bootstraps (int, default 1000): Image-level bootstrap resamples (with replacement) for confidence intervals;
            0 for none.
        confidence (float, default 0.95): Two-sided level of the bootstrap intervals.
        seed (int, default 0): Seed of the bootstrap resampling (``numpy.random.default_rng``).

    Returns:
        dict: ``fp_rates``, ``sensitivities`` (one per rate), ``sensitivity_by_rate`` (``{"0.25": s, ...}``, rates
        written with ``:g``), ``mean_sensitivity``, ``iou_threshold``, ``hit_criterion`` (e.g. ``"IoU > 0.2"``),
        ``extra_hits``, ``interpolation_grid`` ([start, stop, num]); the FROC curve ``fps_per_image``,
        ``sensitivity``, ``thresholds`` (thinned lists; the first point is (0, 0) with threshold None, so that
        ``np.interp(x, fps_per_image, sensitivity)`` reproduces the figures); counts ``n_images``,
        ``n_images_with_lesions``, ``n_lesions``, ``n_detected``, ``n_detections``, ``n_false_positives``,
        ``n_extra_hits`` (detections on a lesion already hit: ignored, or false positives with
        ``extra_hits="false_positive"``); ``max_sensitivity`` and ``max_fps_per_image``. With bootstrapping also
        ``n_bootstraps``, ``n_bootstraps_valid``, ``confidence``, ``seed``, ``sensitivities_ci`` ([low, high] per
        rate), ``mean_sensitivity_ci``, ``mean_sensitivity_bootstrap_mean`` and ``bootstrap_curve``
        (``fps_per_image``, ``sensitivity_mean``, ``sensitivity_low``, ``sensitivity_high`` on 121 log-spaced
        rates). When there is no lesion at all, sensitivities and their intervals are NaN (a class absent from
        the test set), and the curve is empty.

    Raises:
        ValueError: Lists of different lengths, no image, malformed boxes (wrong shape, NaN, max below min
            corner), scores that are not one finite value per box, bad rates, ``iou_threshold`` outside [0, 1),
            an unknown ``extra_hits``, ``n_bootstraps < 0`` or ``confidence`` outside (0, 1).

    Note:
        NODE21 (Sogancioglu et al., "Nodule Detection and Generation on Chest X-Rays: NODE21 Challenge", IEEE TMI
        43(8), 2024) scores detectors by 0.75 x image-level AUC + 0.25 x sensitivity at 1/4 FP per image. Its
        public evaluation container (github.com/DIAGNijmegen/node21, ``evaluation/evaluation_detection``, built
        on grand-challenge ``evalutils``) holds only the AUC part (each image's highest box score). The hit
        rule used here, IoU > 0.2 (strict), is the one of the challenge-winning solution published by the
        organisers (github.com/node21challenge/rank1_node21_detection, ``src/utils/custom_metrics.py``, which
        scores ``0.75 * AUROC + 0.25 * froc_025``). The sources differ on extra hits: evalutils'
        ``score_detection`` counts no hit as a false positive (our default, as LUNA16), the rank-1 code counts a
        lesion's lower-scoring hits as false positives (``extra_hits="false_positive"``, matched one-to-one).

        Protocol, as :func:`luna16_froc`: a lesion hit by several detections is detected once, with the
        highest score among its hits (``"ignore"``) or the score of the detection matched to it
        (``"false_positive"``); with ``"ignore"`` a detection overlapping two lesions hits both. Missed lesions
        stay in the denominator; FPs per image divide by all images, lesion-free ones included. The curve is
        the ROC of (detected lesions' scores, false-positive scores) scaled to FPs per image and sensitivity,
        one point per distinct score, starting at (0, 0); sensitivity at rate r is ``np.interp`` of the curve
        at the point of ``linspace(0.125, 8, 10001)`` nearest r (the grid widens for rates outside [1/8, 8]);
        beyond the largest FP rate reached the curve stays at its last sensitivity. Bootstrap: images are
        drawn with replacement (n_images per resample, the FP denominator stays n_images), the interval is the
        order statistic ``sorted[floor(a*B)], sorted[floor((1-a)*B)]`` with ``a = (1 - confidence) / 2``; a
        resample without lesions is skipped (``n_bootstraps_valid``).
    """
    n_images = len(pred_boxes)
    for name, n in (("pred_scores", len(pred_scores)), ("gt_boxes", len(gt_boxes))):
        if n != n_images:
            raise ValueError(f"pred_boxes has {n_images} images but {name} has {n}; pass one entry per image in each.")
    if n_images == 0:
        raise ValueError("no images: pred_boxes, pred_scores and gt_boxes are empty.")
    rates = _check_rates(fp_rates)
    iou_threshold = float(iou_threshold)
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1) (a hit needs IoU > threshold), got {iou_threshold}.")
    if extra_hits not in _EXTRA_HITS:
        raise ValueError(f"extra_hits must be one of {', '.join(_EXTRA_HITS)}, got {extra_hits!r}.")
    if n_bootstraps < 0:
        raise ValueError(f"n_bootstraps must be >= 0, got {n_bootstraps}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")

    lesion_score_parts, lesion_image_parts, fp_score_parts, fp_image_parts = [], [], [], []
    n_detections = n_extra = 0
    for i in range(n_images):
        boxes = check_corner_boxes_2d(pred_boxes[i], f"pred_boxes[{i}]")
        gt = check_corner_boxes_2d(gt_boxes[i], f"gt_boxes[{i}]")
        scores = to_numpy(pred_scores[i], f"pred_scores[{i}]").astype(np.float64).reshape(-1)
        if scores.size != boxes.shape[0]:
            raise ValueError(
                f"pred_scores[{i}] has {scores.size} scores but pred_boxes[{i}] has {boxes.shape[0]} boxes."
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"pred_scores[{i}] contains NaN or infinite scores.")
        lesion_score, is_fp, extra = _match_image(boxes, scores, gt, iou_threshold, extra_hits)
        lesion_score_parts.append(lesion_score)
        lesion_image_parts.append(np.full(gt.shape[0], i, dtype=np.int64))
        fp_score_parts.append(scores[is_fp])
        fp_image_parts.append(np.full(int(is_fp.sum()), i, dtype=np.int64))
        n_detections += boxes.shape[0]
        n_extra += extra
    lesion_score = np.concatenate(lesion_score_parts)
    lesion_image = np.concatenate(lesion_image_parts)
    fp_score = np.concatenate(fp_score_parts)
    fp_image = np.concatenate(fp_image_parts)
    detected = np.isfinite(lesion_score)
    n_lesions = int(lesion_score.size)

    out: dict[str, Any] = {
        "fp_rates": [float(r) for r in rates],
        "iou_threshold": iou_threshold,
        "hit_criterion": f"IoU > {iou_threshold:g}",
        "extra_hits": extra_hits,
        "n_images": n_images,
        "n_images_with_lesions": int(np.unique(lesion_image).size),
        "n_lesions": n_lesions,
        "n_detected": int(detected.sum()),
        "n_detections": int(n_detections),
        "n_false_positives": int(fp_score.size),
        "n_extra_hits": int(n_extra),
        "max_fps_per_image": float(fp_score.size / n_images),
    }
    if n_lesions == 0:
        nan = float("nan")
        grid = _read_out(np.zeros(1), np.zeros(1), rates)[0]
        out.update(
            sensitivities=[nan] * rates.size, sensitivity_by_rate={f"{r:g}": nan for r in rates},
            mean_sensitivity=nan, interpolation_grid=[float(grid[0]), float(grid[-1]), _GRID_NUM],
            max_sensitivity=nan, fps_per_image=[], sensitivity=[], thresholds=[],
        )
        if n_bootstraps > 0:
            out.update(n_bootstraps=int(n_bootstraps), n_bootstraps_valid=0, confidence=float(confidence),
                       seed=int(seed), sensitivities_ci=[[nan, nan] for _ in rates], mean_sensitivity_ci=[nan, nan],
                       mean_sensitivity_bootstrap_mean=nan)
        return out

    # candidates for the FROC: detected lesions (label 1) and false positives (label 0), as luna16_froc
    cand_score = np.concatenate([lesion_score[detected], fp_score])
    cand_tp = np.concatenate([np.ones(int(detected.sum())), np.zeros(fp_score.size)])
    cand_image = np.concatenate([lesion_image[detected], fp_image])
    srt, ends = _rank(cand_score)
    cand_score, cand_tp, cand_image = cand_score[srt], cand_tp[srt], cand_image[srt]
    cand_fp = 1.0 - cand_tp
    tp_cum = np.cumsum(cand_tp)[ends]
    fp_cum = np.cumsum(cand_fp)[ends]
    fps, sens = _froc_curve(tp_cum, fp_cum, float(tp_cum[-1]) if tp_cum.size else 0.0,
                            float(fp_cum[-1]) if fp_cum.size else 0.0, n_lesions, n_images)
    grid, read_at, sens_at = _read_out(fps, sens, rates)
    kept = _thin(tp_cum, fp_cum)
    curve_idx = np.r_[0, kept + 1]
    out.update(
        sensitivities=[float(s) for s in sens_at],
        sensitivity_by_rate={f"{r:g}": float(s) for r, s in zip(rates, sens_at)},
        mean_sensitivity=float(np.mean(sens_at)),
        interpolation_grid=[float(grid[0]), float(grid[-1]), _GRID_NUM],
        max_sensitivity=float(sens[-1]),
        fps_per_image=[float(x) for x in fps[curve_idx]],
        sensitivity=[float(x) for x in sens[curve_idx]],
        thresholds=[None] + [float(t) for t in cand_score[ends][kept]],
    )
    if n_bootstraps > 0:
        boot = _bootstrap(cand_tp, cand_fp, cand_image, ends, lesion_image, n_images, rates, read_at, grid,
                          n_bootstraps, confidence, seed)
        boot["mean_sensitivity_ci"] = boot.pop("cpm_ci")
        boot["mean_sensitivity_bootstrap_mean"] = boot.pop("cpm_bootstrap_mean")
        if "bootstrap_curve" in boot:
            boot["bootstrap_curve"]["fps_per_image"] = boot["bootstrap_curve"].pop("fps_per_scan")
        out.update(boot)
    return out


def _bootstrap(
    cand_tp: np.ndarray,
    cand_fp: np.ndarray,
    cand_scan: np.ndarray,
    ends: np.ndarray,
    nod_scan: np.ndarray,
    n_scans: int,
    rates: np.ndarray,
    read_at: np.ndarray,
    grid: np.ndarray,
    n_bootstraps: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Scan bootstrap: a resample weights each scan by how often it was drawn, over the same sort order."""
    rng = np.random.default_rng(seed)
    nodules_per_scan = np.bincount(nod_scan, minlength=n_scans).astype(np.float64)
    tp_per_scan = np.bincount(cand_scan, weights=cand_tp, minlength=n_scans)
    fp_per_scan = np.bincount(cand_scan, weights=cand_fp, minlength=n_scans)
    band_x = np.geomspace(grid[0], grid[-1], _BAND_POINTS)
    x_eval = np.concatenate([read_at, band_x])
    # Points past the first one beyond the largest evaluated FP rate do not change any interpolated value,
    # so each resample first works on a prefix of the ranking that (unweighted) runs well past that rate,
    # and falls back to the full ranking in the rare resample whose weighted FP count stays short of it.
    need = float(x_eval.max()) * n_scans + 1.0
    n_groups = int(np.searchsorted(np.cumsum(cand_fp)[ends], 2.0 * need + 50.0, side="right")) + 1
    short_ends = ends[: min(n_groups, ends.size)]
    short_len = int(short_ends[-1]) + 1 if short_ends.size else 0
    sens_at = np.full((n_bootstraps, rates.size), np.nan)
    band = np.full((n_bootstraps, band_x.size), np.nan)
    for b in range(n_bootstraps):
        weight = np.bincount(rng.integers(0, n_scans, size=n_scans), minlength=n_scans).astype(np.float64)
        n_nod = float(weight @ nodules_per_scan)
        if n_nod == 0:
            continue
        n_det, n_fp = float(weight @ tp_per_scan), float(weight @ fp_per_scan)
        stop, use_ends = short_len, short_ends
        while True:
            w = weight[cand_scan[:stop]]
            tp_c = np.cumsum(w * cand_tp[:stop])[use_ends]
            fp_c = np.cumsum(w)[use_ends] - tp_c
            if use_ends.size == ends.size or (fp_c.size and fp_c[-1] > need):
                break
            stop, use_ends = cand_scan.size, ends
        fps, sens = _froc_curve(tp_c, fp_c, n_det, n_fp, n_nod, n_scans)
        values = np.interp(x_eval, fps, sens)
        sens_at[b] = values[: rates.size]
        band[b] = values[rates.size :]
    ok = ~np.isnan(sens_at[:, 0])
    n_valid = int(ok.sum())
    result: dict[str, Any] = {
        "n_bootstraps": int(n_bootstraps),
        "n_bootstraps_valid": n_valid,
        "confidence": float(confidence),
        "seed": int(seed),
    }
    if n_valid == 0:
        nan = float("nan")
        result.update(sensitivities_ci=[[nan, nan] for _ in rates], cpm_ci=[nan, nan], cpm_bootstrap_mean=nan)
        return result
    sens_at, band = sens_at[ok], band[ok]
    cpm = sens_at.mean(axis=1)
    s_lo, s_hi = _order_stat_ci(sens_at, confidence)
    c_lo, c_hi = _order_stat_ci(cpm[:, None], confidence)
    b_lo, b_hi = _order_stat_ci(band, confidence)
    result.update(
        sensitivities_ci=[[float(lo), float(hi)] for lo, hi in zip(s_lo, s_hi)],
        cpm_ci=[float(c_lo[0]), float(c_hi[0])],
        cpm_bootstrap_mean=float(cpm.mean()),
        bootstrap_curve={
            "fps_per_scan": [float(x) for x in band_x],
            "sensitivity_mean": [float(x) for x in band.mean(axis=0)],
            "sensitivity_low": [float(x) for x in b_lo],
            "sensitivity_high": [float(x) for x in b_hi],
        },
    )
    return result


# ------------------------------------------------------------------------------------------ files / CLI


def evaluate_luna16_files(
    annotations_csv: str | os.PathLike,
    results_csv: str | os.PathLike,
    seriesuids_csv: str | os.PathLike | None = None,
    excluded_csv: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    n_bootstraps: int = 1000,
    seed: int = 0,
    max_marks_per_scan: int | None = 100,
) -> dict[str, Any]:
    """Read LUNA16 CSV files, run :func:`luna16_froc`, and optionally write ``froc.json`` and ``froc.png``.

    Args:
        annotations_csv, results_csv (path): ``annotations.csv`` and the CAD submission (see
            :func:`read_luna16_annotations`, :func:`read_luna16_results`).
        seriesuids_csv, excluded_csv (path, optional): ``seriesuids.csv`` and ``annotations_excluded.csv``.
        out_dir (path, optional): Folder (created if needed) for ``froc.json`` (the full result, strict JSON) and
            ``froc.png`` (FROC curve on a log2 axis, with the bootstrap band when bootstrapped).
        n_bootstraps (int, default 1000): Scan bootstrap resamples for the confidence intervals (0 for none).
        seed (int, default 0): Bootstrap seed.
        max_marks_per_scan (int or None, default 100): Cap on marks per scan.

    Returns:
        dict: The result of :func:`luna16_froc` plus ``inputs`` (the file paths) and, with ``out_dir``, ``outputs`` (the
            written paths).
    """
    annotations = read_luna16_annotations(annotations_csv)
    results = read_luna16_results(results_csv)
    seriesuids = read_seriesuids(seriesuids_csv) if seriesuids_csv is not None else None
    excluded = read_luna16_annotations(excluded_csv) if excluded_csv is not None else None
    result = luna16_froc(
        annotations, results, seriesuids=seriesuids, excluded=excluded,
        max_marks_per_scan=max_marks_per_scan, n_bootstraps=n_bootstraps, seed=seed,
    )
    result["inputs"] = {
        "annotations": os.fspath(annotations_csv),
        "results": os.fspath(results_csv),
        "seriesuids": None if seriesuids_csv is None else os.fspath(seriesuids_csv),
        "excluded": None if excluded_csv is None else os.fspath(excluded_csv),
    }
    if out_dir is not None:
        from medbundle.viz.froc import plot_froc

        os.makedirs(out_dir, exist_ok=True)
        json_path = os.path.join(out_dir, "froc.json")
        png_path = os.path.join(out_dir, "froc.png")
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(to_jsonable(result), handle, indent=2, allow_nan=False)
        plot_froc(result, png_path)
        result["outputs"] = {"json": json_path, "png": png_path}
    return result


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without its long curve arrays (what ``medbundle froc`` prints)."""
    return {k: v for k, v in result.items() if k not in _CURVE_KEYS}

