"""Benchmark of medbundle's metric fast paths against plain reference implementations in the same run.

Run:  .venv/bin/python benchmarks/metrics.py [--repeats 5] [--no-results-md]

Prints a JSON report and (unless --no-results-md) updates the "## Metrics (benchmarks/metrics.py)"
section of benchmarks/RESULTS.md. Times are medians of several repeats; the figures that travel between
machines are the ratios (reference time / fast time) measured in the same process.

(a) DeLong AUROC with CI: ``delong_auc_ci`` (midrank algorithm, O(N log N)) against the textbook
    structural-component computation (all m x n pairwise comparisons, chunked with numpy) at 20,000
    scores, plus the fast path alone at 1,000,000 scores (the O(m n) reference is infeasible there).
(b) LUNA16 FROC: ``luna16_froc`` on 888 scans x 100 marks (~1,186 nodules, synthetic) against a plain
    per-scan / per-nodule / per-mark Python loop that follows the published script (scikit-learn's
    roc_curve for the curve); both must give the same CPM.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medbundle.metrics.froc import luna16_froc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_MD, machine_info, replace_section  # noqa: E402
from luna16_reference import reference_froc  # noqa: E402

try:  # the DeLong functions live in medbundle.metrics.roc; accept either home
    from medbundle.metrics.classification import delong_auc_ci  # type: ignore[attr-defined]  # noqa: E402
except ImportError:  # pragma: no cover - depends on the other module's layout
    from medbundle.metrics.roc import delong_auc_ci  # noqa: E402

SECTION = "## Metrics (benchmarks/metrics.py)"


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (s) of ``repeats`` calls and the last return value."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ------------------------------------------------------------------------------------------------ DeLong
def delong_reference(y_true: np.ndarray, y_score: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Textbook DeLong (1988): psi over all positive/negative pairs, structural components, normal CI."""
    y = np.asarray(y_true).astype(bool)
    pos, neg = y_score[y], y_score[~y]
    m, n = pos.size, neg.size
    v10 = np.empty(m)
    col_sum = np.zeros(n)
    chunk = max(1, 4_000_000 // max(n, 1))
    for start in range(0, m, chunk):
        p = pos[start:start + chunk, None]
        psi = (p > neg[None, :]) + 0.5 * (p == neg[None, :])
        v10[start:start + chunk] = psi.mean(axis=1)
        col_sum += psi.sum(axis=0)
    v01 = col_sum / m
    auc = float(v10.mean())
    var = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    std = math.sqrt(var)
    z = float(norm.ppf(0.5 + confidence / 2))
    return {"auc": auc, "ci_low": max(0.0, auc - z * std), "ci_high": min(1.0, auc + z * std), "std": std}


def bench_delong(repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.uniform(size=n) < 0.3
        s = rng.normal(size=n) + 1.2 * y
        return y.astype(int), np.round(s, 3)  # rounding adds ties, which both must treat as 1/2

    y, s = data(20_000)
    t_ref, ref = median_time(lambda: delong_reference(y, s), max(1, repeats // 2))
    t_fast, fast = median_time(lambda: delong_auc_ci(y, s), repeats)
    for key in ("auc", "std", "ci_low", "ci_high"):
        if not math.isclose(ref[key], fast[key], rel_tol=1e-9, abs_tol=1e-12):
            raise AssertionError(f"DeLong {key}: reference {ref[key]!r} != fast {fast[key]!r}")
    y_big, s_big = data(1_000_000)
    t_big, big = median_time(lambda: delong_auc_ci(y_big, s_big), repeats)
    return {
        "n_compare": 20_000,
        "reference_s": t_ref,
        "fast_s": t_fast,
        "ratio": t_ref / t_fast,
        "agree": True,
        "n_large": 1_000_000,
        "fast_large_s": t_big,
        "auc_large": big["auc"],
        "fast_function": f"{delong_auc_ci.__module__}.delong_auc_ci",
    }


# -------------------------------------------------------------------------------------------------- FROC
def synthetic_luna16(seed: int = 0, n_scans: int = 888, marks_per_scan: int = 100):
    """888 scans, 1,186 nodules, ~1 excluded finding per scan, exactly ``marks_per_scan`` marks per scan
    (a mark near 85% of nodules, some on excluded findings, the rest random false positives)."""
    rng = np.random.default_rng(seed)
    uids = [f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{seed}{i:06d}" for i in range(n_scans)]
    ann_cols: dict[str, list] = {k: [] for k in ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")}
    exc_cols: dict[str, list] = {k: [] for k in ann_cols}
    res_cols: dict[str, list] = {k: [] for k in ("seriesuid", "coordX", "coordY", "coordZ", "probability")}

    def add(cols, uid, xyz, last_key, last):
        cols["seriesuid"].append(uid)
        cols["coordX"].append(xyz[0])
        cols["coordY"].append(xyz[1])
        cols["coordZ"].append(xyz[2])
        cols[last_key].append(last)

    nodules_per_scan = rng.multinomial(1186, np.full(n_scans, 1.0 / n_scans))
    for uid, n_nodules in zip(uids, nodules_per_scan):
        n_marks = 0
        for _ in range(int(n_nodules)):
            c = rng.uniform(-150, 150, 3)
            d = float(rng.uniform(3, 30)) if rng.uniform() > 0.02 else -1.0
            add(ann_cols, uid, c, "diameter_mm", d)
            if rng.uniform() < 0.85 and n_marks < marks_per_scan:
                r = (10.0 if d < 0 else d) / 2
                add(res_cols, uid, c + rng.uniform(-r, r, 3) / 2, "probability", float(rng.beta(6, 1.5)))
                n_marks += 1
        for _ in range(int(rng.poisson(1.0))):
            c = rng.uniform(-150, 150, 3)
            add(exc_cols, uid, c, "diameter_mm", float(rng.uniform(3, 10)))
            if rng.uniform() < 0.5 and n_marks < marks_per_scan:
                add(res_cols, uid, c, "probability", float(rng.beta(3, 3)))
                n_marks += 1
        for _ in range(marks_per_scan - n_marks):
            add(res_cols, uid, rng.uniform(-150, 150, 3), "probability", float(rng.beta(1.2, 8)))

    def arrays(cols):
        return {k: np.asarray(v, dtype=str if k == "seriesuid" else np.float64) for k, v in cols.items()}

    return uids, arrays(ann_cols), arrays(exc_cols), arrays(res_cols)


def froc_reference(annotations, results, seriesuids, excluded, max_marks=100) -> dict[str, Any]:
    """The plain per-mark loops of ``luna16_reference.py``; returns sensitivities and CPM."""
    sens, *_ = reference_froc(annotations, results, seriesuids, excluded, cap=max_marks)
    return {"sensitivities": sens.tolist(), "cpm": float(sens.mean())}


def _write_csv(path: Path, table: dict[str, np.ndarray]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(table))
        w.writerows(zip(*(table[k].tolist() for k in table)))


def time_froc_command(annotations, excluded, results, uids, repeats: int) -> float:
    """Median wall time of ``medbundle froc`` on these tables written as the LUNA16 CSV files, end to end: a
    new process, CSV reading, the FROC and the printed summary (no bootstrap)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _write_csv(d / "annotations.csv", annotations)
        _write_csv(d / "excluded.csv", excluded)
        _write_csv(d / "results.csv", results)
        (d / "seriesuids.csv").write_text("\n".join(uids) + "\n")
        exe = shutil.which("medbundle")
        cmd = ([exe] if exe else [sys.executable, "-m", "medbundle.cli"]) + [
            "froc", "--annotations", str(d / "annotations.csv"), "--excluded", str(d / "excluded.csv"),
            "--seriesuids", str(d / "seriesuids.csv"), "--results", str(d / "results.csv"), "--bootstrap", "0"]
        t, _ = median_time(lambda: subprocess.run(cmd, check=True, capture_output=True), repeats)
    return t


def bench_froc(repeats: int) -> dict[str, Any]:
    uids, annotations, excluded, results = synthetic_luna16()
    t_ref, ref = median_time(lambda: froc_reference(annotations, results, uids, excluded), repeats)
    t_fast, fast = median_time(lambda: luna16_froc(annotations, results, uids, excluded), repeats)
    if abs(ref["cpm"] - fast["cpm"]) > 1e-12:
        raise AssertionError(f"FROC CPM: reference {ref['cpm']!r} != fast {fast['cpm']!r}")
    t_boot, boot = median_time(
        lambda: luna16_froc(annotations, results, uids, excluded, n_bootstraps=1000), max(1, repeats // 2)
    )
    t_cli = time_froc_command(annotations, excluded, results, uids, repeats)
    return {
        "n_scans": fast["n_scans"],
        "n_marks": int(results["seriesuid"].size),
        "command_s": t_cli,
        "n_nodules": fast["n_nodules"],
        "cpm": fast["cpm"],
        "cpm_agree": True,
        "reference_s": t_ref,
        "fast_s": t_fast,
        "ratio": t_ref / t_fast,
        "fast_bootstrap1000_s": t_boot,
        "cpm_ci": boot["cpm_ci"],
    }


# ------------------------------------------------------------------------------------------- RESULTS.md
def results_section(report: dict[str, Any]) -> str:
    d, f, m = report["delong"], report["froc"], report["machine"]
    lines = [
        SECTION,
        "",
        f"Measured {report['date']} on {m['platform']} ({m['processor']}), {m['cpus_usable']} usable of "
        f"{m['cpu_count']} CPUs, Python {m['python']}, numpy {m['numpy']}; medians of {report['repeats']} "
        "repeats. Ratios compare with a plain reference in the same run.",
        "",
        "| Metric | Size | Reference (s) | medbundle (s) | Speed-up | Check |",
        "|---|---|---|---|---|---|",
        f"| DeLong AUROC + CI (`delong_auc_ci`) vs textbook O(m n) | {d['n_compare']:,} scores | "
        f"{d['reference_s']:.3f} | {d['fast_s']:.4f} | {d['ratio']:.0f}x | AUC, SE, CI equal (rel 1e-9) |",
        f"| DeLong AUROC + CI (`delong_auc_ci`) | {d['n_large']:,} scores | - | {d['fast_large_s']:.3f} "
        "| - | - |",
        f"| LUNA16 FROC (`luna16_froc`) vs per-mark loop | {f['n_scans']} scans x 100 marks, "
        f"{f['n_nodules']:,} nodules | {f['reference_s']:.3f} | {f['fast_s']:.4f} | {f['ratio']:.0f}x | "
        f"CPM equal ({f['cpm']:.4f}) |",
        f"| LUNA16 FROC + 1,000 scan bootstraps | same | - | {f['fast_bootstrap1000_s']:.3f} | - | "
        f"CPM CI {f['cpm_ci'][0]:.4f}-{f['cpm_ci'][1]:.4f} |",
        f"| `medbundle froc` end to end (new process, CSV files in, summary out, no bootstrap) | same | - | "
        f"{f['command_s']:.3f} | - | - |",
        "",
    ]
    return "\n".join(lines)


def update_results_md(report: dict[str, Any], path: str | os.PathLike = RESULTS_MD) -> str:
    """Insert or replace this script's section of ``benchmarks/RESULTS.md``, leaving other sections alone."""
    return str(replace_section(SECTION, results_section(report), path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--no-results-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report: dict[str, Any] = {
            "benchmark": "metrics",
            "date": _dt.date.today().isoformat(),
            "repeats": args.repeats,
            "machine": machine_info(),
            "delong": bench_delong(args.repeats),
            "froc": bench_froc(args.repeats),
        }
    if not args.no_results_md:
        report["results_md"] = update_results_md(report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
