"""FROC plot for the result of :func:`medbundle.metrics.froc.luna16_froc` (per scan) or
:func:`medbundle.metrics.froc.image_froc` (per image).

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is safe in servers,
tests and headless jobs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["plot_froc"]


def _rate_label(r: float) -> str:
    if r < 1 and abs(1 / r - round(1 / r)) < 1e-9:
        return f"1/{round(1 / r)}"
    return f"{r:g}"


def plot_froc(result: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> str:
    """Draw a FROC curve (sensitivity against FPs per scan on a log2 axis) and save it as an image.

    Args:
        result (mapping): Output of :func:`~medbundle.metrics.froc.luna16_froc` (or the ``froc.json`` it was saved to):
            needs ``fps_per_scan``, ``sensitivity``, ``fp_rates``, ``sensitivities`` and ``cpm``; or of
            :func:`~medbundle.metrics.froc.image_froc`: ``fps_per_image`` and ``mean_sensitivity`` instead of
            ``fps_per_scan`` and ``cpm``. Draws the bootstrap band and interval bars when ``bootstrap_curve`` /
            ``sensitivities_ci`` are present.
        path (str or path-like): Output file; the format follows the extension (``.png``, ``.pdf``, ``.svg``).
        title (str, optional): Plot title; default "FROC (CPM = ...)".

    Returns:
        str: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    unit = "image" if "fps_per_image" in result else "scan"
    summary, summary_name = ("mean_sensitivity", "mean sensitivity") if unit == "image" else ("cpm", "CPM")
    for key in (f"fps_per_{unit}", "sensitivity", "fp_rates", "sensitivities", summary):
        if key not in result:
            raise ValueError(f"plot_froc: result has no {key!r}; pass the dict returned by luna16_froc or image_froc.")
    fps = np.asarray(result[f"fps_per_{unit}"], dtype=np.float64)
    sens = np.asarray(result["sensitivity"], dtype=np.float64)
    rates = np.asarray(result["fp_rates"], dtype=np.float64)
    at = np.asarray(result["sensitivities"], dtype=np.float64)
    lo_x = min(0.125, float(rates.min()))
    hi_x = max(8.0, float(rates.max()))

    fig = Figure(figsize=(6.4, 4.8), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.geomspace(lo_x / 1.1, hi_x * 1.1, 400)
    ax.plot(x, np.interp(x, fps, sens), color="tab:blue", lw=2, label="FROC")
    band = result.get("bootstrap_curve")
    ci = result.get("sensitivities_ci")
    if band:
        bx = np.asarray(band[f"fps_per_{unit}"], dtype=np.float64)
        low = np.asarray([np.nan if v is None else v for v in band["sensitivity_low"]], dtype=np.float64)
        high = np.asarray([np.nan if v is None else v for v in band["sensitivity_high"]], dtype=np.float64)
        level = 100 * float(result.get("confidence", 0.95))
        ax.fill_between(bx, low, high, color="tab:blue", alpha=0.15, lw=0, label=f"{level:g}% bootstrap CI")
    if ci:
        err = np.array([[np.nan if v is None else v for v in pair] for pair in ci], dtype=np.float64)
        yerr = np.vstack([at - err[:, 0], err[:, 1] - at])
        ax.errorbar(rates, at, yerr=np.clip(yerr, 0, None), fmt="o", color="tab:red", capsize=3,
                    label="operating points")
    else:
        ax.plot(rates, at, "o", color="tab:red", label="operating points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo_x / 1.1, hi_x * 1.1)  # a margin so the end markers show whole
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(rates)
    ax.set_xticklabels([_rate_label(r) for r in rates])
    ax.minorticks_off()
    ax.set_yticks(np.linspace(0.0, 1.0, 11))
    ax.grid(True, which="both", alpha=0.4)
    ax.set_xlabel(f"Average number of false positives per {unit}")
    ax.set_ylabel("Sensitivity")
    if title is None:
        title = f"FROC ({summary_name} = {float(result[summary]):.3f}"
        cpm_ci = result.get(f"{summary}_ci")
        if cpm_ci and all(v is not None and np.isfinite(v) for v in cpm_ci):
            title += f", CI {cpm_ci[0]:.3f}-{cpm_ci[1]:.3f}"
        title += ")"
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path)
    return path
