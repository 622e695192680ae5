"""Anchor sizes and aspect ratios proposed from the training boxes, for the 2D torchvision detectors.

torchvision's ``AnchorGenerator`` places, on FPN level ``l``, anchors of every size in ``anchor_sizes[l]`` (the
square root of the anchor's area, in pixels of the image the network sees) and every aspect ratio ``r =
height / width`` (an anchor of size ``s`` and ratio ``r`` is ``s / sqrt(r)`` wide and ``s * sqrt(r)`` high). The
defaults (32-512 pixels, ratios 0.5, 1, 2) suit natural images; chest X-ray lesions at the training size are
often smaller or differently shaped. :func:`propose_anchors` fits sizes (spread over the FPN levels, smallest on
the finest level) and ratios to the distribution of the training boxes and reports how many boxes an anchor fits
(:func:`anchor_recall`) with the proposal and with the defaults, so the change can be judged before training.

Only numpy is needed; the result pastes into a bundle config::

    "anchor_sizes": [[12.0], [19.5], [27.3], [41.0], [70.2]], "aspect_ratios": [0.72, 1.0, 1.38]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_ANCHOR_SIZES", "DEFAULT_ASPECT_RATIOS", "box_sizes_and_ratios", "anchor_recall",
           "propose_anchors"]

DEFAULT_ANCHOR_SIZES: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
"""torchvision Faster R-CNN's anchor sizes (pixels), one tuple per FPN level P2-P6."""
DEFAULT_ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
"""torchvision's anchor aspect ratios ``height / width``."""


def _as_boxes(boxes: Any, scale: float | Sequence[float] = 1.0) -> np.ndarray:
    arr = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) x_min, y_min, x_max, y_max pixel corners, got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ValueError("no boxes given: anchors are fitted to the training boxes.")
    sx, sy = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    if sx <= 0 or sy <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}.")
    arr = arr * np.array([sx, sy, sx, sy])
    w, h = arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]
    bad = ~((w > 0) & (h > 0) & np.isfinite(w) & np.isfinite(h))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(arr)} boxes have no positive width and height "
                         f"(first: {arr[np.argmax(bad)].tolist()}); boxes are x_min, y_min, x_max, y_max.")
    return arr


def box_sizes_and_ratios(boxes: Any, scale: float | Sequence[float] = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Size ``sqrt(w * h)`` and aspect ratio ``h / w`` of each box.

    Args:
        boxes: ``(N, 4)`` corner boxes ``x_min, y_min, x_max, y_max`` in pixels (numpy array, list or tensor).
        scale: Factor (or ``(sx, sy)`` for x and y) from the boxes' pixels to the training image's, e.g.
            ``training size / original size``.

    Returns:
        ``(sizes, ratios)``, two ``(N,)`` float64 arrays (pixels, unitless).
    """
    arr = _as_boxes(boxes, scale)
    w, h = arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]
    return np.sqrt(w * h), h / w


def _anchor_shapes(anchor_sizes: Sequence[Sequence[float]] | Sequence[float], aspect_ratios: Sequence[float]
                   ) -> np.ndarray:
    """``(M, 2)`` widths and heights of every (size, ratio) anchor, as torchvision's ``AnchorGenerator`` makes them."""
    sizes = np.asarray([float(s) for level in anchor_sizes for s in np.atleast_1d(level)])
    ratios = np.asarray([float(r) for r in np.ravel(aspect_ratios)])
    if sizes.size == 0 or ratios.size == 0 or sizes.min() <= 0 or ratios.min() <= 0:
        raise ValueError(f"anchor sizes and aspect ratios must be non-empty and > 0, got {anchor_sizes} and "
                         f"{aspect_ratios}.")
    w = (sizes[:, None] / np.sqrt(ratios)[None, :]).ravel()
    h = (sizes[:, None] * np.sqrt(ratios)[None, :]).ravel()
    return np.stack([w, h], axis=1)


def anchor_recall(
    boxes: Any,
    anchor_sizes: Sequence[Sequence[float]] | Sequence[float],
    aspect_ratios: Sequence[float],
    iou_threshold: float = 0.5,
    scale: float | Sequence[float] = 1.0,
) -> float:
    """Fraction of boxes whose best-fitting anchor shape has IoU >= ``iou_threshold``.

    The IoU is that of the box and an anchor with the same centre (shape IoU): the best the anchor grid reaches
    when a grid location falls on the box centre. It ignores the grid stride, so it measures how well the sizes
    and ratios fit, not the density of the grid.

    Args:
        boxes: ``(N, 4)`` corner boxes in pixels.
        anchor_sizes: Sizes per FPN level (``[[32], [64], ...]``) or a flat list, pixels.
        aspect_ratios: Ratios ``height / width``.
        iou_threshold: IoU a box needs with its best anchor to count (torchvision's RPN positive threshold is 0.7,
            its RoI and RetinaNet threshold 0.5).
        scale: As :func:`box_sizes_and_ratios`.

    Returns:
        Recall in [0, 1].
    """
    arr = _as_boxes(boxes, scale)
    bw, bh = arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]
    shapes = _anchor_shapes(anchor_sizes, aspect_ratios)
    inter = np.minimum(bw[:, None], shapes[None, :, 0]) * np.minimum(bh[:, None], shapes[None, :, 1])
    union = (bw * bh)[:, None] + (shapes[:, 0] * shapes[:, 1])[None, :] - inter
    best = (inter / union).max(axis=1)
    return float(np.mean(best >= iou_threshold))


def _centres_1d(values: np.ndarray, k: int, method: str, iterations: int = 100) -> np.ndarray:
    """``k`` sorted cluster centres of 1-D ``values``: quantiles, or k-means (Lloyd) started from the quantiles."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    if method == "quantile":
        return np.sort(centres)
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def propose_anchors(
    boxes: Any,
    n_levels: int = 5,
    n_sizes_per_level: int = 1,
    n_ratios: int = 3,
    method: str = "kmeans",
    scale: float | Sequence[float] = 1.0,
    iou_threshold: float = 0.5,
    default_anchor_sizes: Sequence[Sequence[float]] = DEFAULT_ANCHOR_SIZES,
    default_aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    size_decimals: int = 1,
    ratio_decimals: int = 3,
) -> dict[str, Any]:
    """Anchor sizes per FPN level and aspect ratios fitted to training boxes, with their anchor recall.

    Sizes: ``n_levels * n_sizes_per_level`` cluster centres of the log box sizes, sorted and dealt to the levels
    in order (the finest level, P2 for Faster R-CNN / P3 for RetinaNet, gets the smallest). Ratios: ``n_ratios``
    cluster centres of the log ratios ``h / w``. Clusters are 1-D k-means started from evenly spaced quantiles
    (``method="kmeans"``), or the quantiles themselves (``method="quantile"``); both are deterministic. Boxes with
    fewer distinct scales than requested give repeated sizes, which torchvision accepts.

    Args:
        boxes: ``(N, 4)`` training boxes ``x_min, y_min, x_max, y_max`` in pixels.
        n_levels: FPN levels (5 for :func:`~medbundle.detection.torchvision_detectors.faster_rcnn` and
            ``retinanet``).
        n_sizes_per_level: Sizes per level (1 for Faster R-CNN, 3 in RetinaNet's recipe).
        n_ratios: Aspect ratios (used on every level).
        method: ``"kmeans"`` or ``"quantile"``.
        scale: Factor (or ``(sx, sy)``) from the boxes' pixels to the training image's, when the images are resized
            for training.
        iou_threshold: IoU for the anchor recall (see :func:`anchor_recall`).
        default_anchor_sizes, default_aspect_ratios: The anchors to compare with (torchvision's defaults).
        size_decimals, ratio_decimals: Rounding of the proposed values.

    Returns:
        dict: ``anchor_sizes`` (list of ``n_levels`` lists of ``n_sizes_per_level`` floats, pixels),
        ``aspect_ratios`` (list of ``n_ratios`` floats), ``anchor_recall`` (proposed anchors),
        ``default_anchor_recall`` (the defaults), ``iou_threshold``, ``n_boxes``.
    """
    if min(n_levels, n_sizes_per_level, n_ratios) < 1:
        raise ValueError(f"n_levels, n_sizes_per_level and n_ratios must be >= 1, got {n_levels}, "
                         f"{n_sizes_per_level}, {n_ratios}.")
    if method not in ("kmeans", "quantile"):
        raise ValueError(f"method must be 'kmeans' or 'quantile', got {method!r}.")
    sizes, ratios = box_sizes_and_ratios(boxes, scale)
    size_centres = np.exp(_centres_1d(np.log(sizes), n_levels * n_sizes_per_level, method))
    ratio_centres = np.exp(_centres_1d(np.log(ratios), n_ratios, method))
    size_list = [round(float(s), size_decimals) for s in size_centres]
    anchor_sizes = [size_list[i * n_sizes_per_level:(i + 1) * n_sizes_per_level] for i in range(n_levels)]
    aspect_ratios = [round(float(r), ratio_decimals) for r in ratio_centres]
    return {
        "anchor_sizes": anchor_sizes,
        "aspect_ratios": aspect_ratios,
        "anchor_recall": anchor_recall(boxes, anchor_sizes, aspect_ratios, iou_threshold, scale),
        "default_anchor_recall": anchor_recall(boxes, default_anchor_sizes, default_aspect_ratios, iou_threshold,
                                               scale),
        "iou_threshold": float(iou_threshold),
        "n_boxes": int(len(sizes)),
    }
