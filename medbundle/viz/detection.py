"""Plots of 2D detection results: precision-recall curves per class and boxes drawn on an image.

Matplotlib's Agg canvas is used directly (no pyplot, no global backend switch), as in :mod:`medbundle.viz.froc`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_pr_curves", "save_box_overlay"]


def _figure(width: float = 6.4, height: float = 4.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def plot_pr_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    ap: Mapping[str, Mapping[str, float]] | None,
    path: str | os.PathLike,
    iou: float = 0.5,
) -> str:
    """Draw one precision-recall curve per class (the interpolated envelope COCO averages) and save it.

    Args:
        curves: ``{class: {"recall": (M,), "precision": (M,)}}``, as ``coco_detection_metrics(...,
            return_curves=True)["curves"][class][iou_key]`` gives them.
        ap: ``{class: {"ap50": float, ...}}`` for the legend, or None.
        path: Output file; the format follows the extension.
        iou: The IoU threshold of the curves (title).

    Returns:
        str: ``path``.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        rc = np.asarray(c["recall"], dtype=np.float64)
        pr = np.asarray(c["precision"], dtype=np.float64)
        value = (ap or {}).get(name, {}).get("ap50", math.nan)
        label = f"{name} (AP {value:.3f})" if math.isfinite(value) else name
        ax.step(np.concatenate([[0.0], rc]), np.concatenate([[pr[0] if pr.size else 0.0], pr]), where="post",
                lw=1.5, label=label)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title(f"Precision-recall at IoU {iou:g}")
    ax.grid(True, alpha=0.4)
    if curves:
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return str(path)


def save_box_overlay(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: Sequence[float],
    labels: Sequence[str],
    path: str | os.PathLike,
) -> str:
    """Save a radiograph with its detected boxes drawn on it.

    Args:
        image: ``(X, Y)`` array in MONAI's layout (first axis = image column x, as MONAI readers give it); shown with
            x horizontal, as the image is displayed.
        boxes: ``(K, 4)`` ``[x_min, y_min, x_max, y_max]`` in pixels of ``image`` (pixel ``i`` covers ``[i, i + 1)``).
        scores, labels: ``(K,)`` score and class name of each box.
        path: Output PNG.

    Returns:
        str: ``path``.
    """
    from matplotlib.patches import Rectangle

    img = np.asarray(image, dtype=np.float32).T  # rows = y
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    h, w = img.shape
    fig = _figure(6.0, 6.0 * h / max(w, 1))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, extent=(0, w, h, 0), interpolation="nearest")
    for box, score, label in zip(np.asarray(boxes).reshape(-1, 4), scores, labels):
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2))
        ax.text(x0, max(y0 - 1, 0), f"{label} {float(score):.2f}", color="yellow", fontsize=6, va="bottom")
    ax.set_axis_off()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return str(path)
