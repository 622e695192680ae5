"""A plain LUNA16 FROC: per-scan / per-nodule / per-mark loops as in the published evaluation script.

The reference that ``medbundle.metrics.froc.luna16_froc`` is checked against (tests/test_froc.py) and timed
beside (benchmarks/metrics.py). Kept deliberately simple: no vectorisation, sklearn's ``roc_curve``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import roc_curve

#: FP-per-scan grid of the published script.
GRID = np.linspace(0.125, 8, 10001)


def reference_froc(annotations, results, seriesuids, excluded=None, cap=100):
    """Plain per-scan / per-nodule / per-mark loops, as the published script, then sklearn's roc_curve."""
    def by_scan(table):
        groups = {}
        if table is not None:
            for i, uid in enumerate(table["seriesuid"].tolist()):
                groups.setdefault(uid, []).append(i)
        return groups

    res_idx, ann_idx, exc_idx = by_scan(results), by_scan(annotations), by_scan(excluded)
    labels, probs, missed = [], [], 0
    for uid in seriesuids:
        cands = [
            (float(results["coordX"][i]), float(results["coordY"][i]), float(results["coordZ"][i]),
             float(results["probability"][i]))
            for i in res_idx.get(uid, [])
        ]
        if cap and len(cands) > cap:
            cut = sorted((c[3] for c in cands), reverse=True)[cap]
            cands = [c for c in cands if c[3] > cut]
        remaining = set(range(len(cands)))
        findings = []
        for table, groups, included in ((annotations, ann_idx, True), (excluded, exc_idx, False)):
            for i in groups.get(uid, []):
                findings.append((table["coordX"][i], table["coordY"][i], table["coordZ"][i],
                                 table["diameter_mm"][i], included))
        for x, y, z, d, included in findings:
            d = 10.0 if d < 0 else d
            r2 = (d / 2.0) ** 2
            best = None
            for k, (cx, cy, cz, p) in enumerate(cands):
                if math.pow(x - cx, 2) + math.pow(y - cy, 2) + math.pow(z - cz, 2) < r2:
                    if included:
                        best = p if best is None or p > best else best
                    remaining.discard(k)
            if included:
                if best is None:
                    missed += 1
                else:
                    labels.append(1)
                    probs.append(best)
        for k in remaining:
            labels.append(0)
            probs.append(cands[k][3])
    labels, probs = np.array(labels), np.array(probs)
    n_det, n_fp = int(labels.sum()), int((labels == 0).sum())
    n_total = n_det + missed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fpr, tpr, _ = roc_curve(labels, probs) if labels.size else (np.zeros(1), np.zeros(1), None)
    fps = np.zeros_like(fpr) if n_fp == 0 else fpr * n_fp / len(seriesuids)
    sens = np.zeros_like(tpr) if n_det == 0 else tpr * n_det / n_total
    sens_itp = np.interp(GRID, fps, sens)
    # read-out of the widely used copies: first grid point within 3e-4 of 1/8, 1/4, ..., 8
    out, target = [], 0.125
    for fp, s in zip(GRID, sens_itp):
        if abs(fp - target) < 3e-4:
            out.append(s)
            target *= 2
        if abs(target - 16) < 1e-5:
            break
    return np.array(out), n_total, n_det, n_fp
