"""Input checks shared by the classification, ranking and calibration metrics.

Each check takes an array-like or a torch tensor, returns a numpy array, and raises ``ValueError`` (or
``TypeError``) with a message that names the argument and says what a valid input looks like.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from medbundle.utils import to_numpy

__all__ = [
    "check_binary_labels",
    "check_corner_boxes_2d",
    "check_multilabel_targets",
    "check_same_shape",
    "check_scores",
]


def check_binary_labels(y: ArrayLike, name: str = "y_true", ndim: int = 1) -> np.ndarray:
    """Return ``y`` as a boolean array after checking that it holds only 0/1 (or False/True)."""
    arr = to_numpy(y, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric 0/1 labels, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN. Binary metrics need every label; for missing labels use the "
                         "multi-label (N, C) functions, which ignore NaN entries, or drop those samples.")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1; found {np.unique(arr[bad])[:5].tolist()}. "
                         "Binarise the labels first (e.g. y == positive_class).")
    return arr.astype(bool)


def check_scores(y_score: ArrayLike, n: int, name: str = "y_score", ndim: int = 1) -> np.ndarray:
    """Return ``y_score`` as finite float64 of the expected dimensionality and length ``n``."""
    arr = to_numpy(y_score, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}.")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} samples but y_true has {n}; they must match.")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; scores must be finite. Check the model "
                         "output (a NaN often means a diverged network or an empty input).")
    return arr


def check_multilabel_targets(y_true: ArrayLike, name: str = "y_true") -> np.ndarray:
    """Return (N, C) float64 labels in {0, 1, NaN}; NaN marks a missing/uncertain label."""
    arr = to_numpy(y_true, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N samples, C classes), got shape {arr.shape}. For a single "
                         "binary task use the binary function, or reshape to (N, 1).")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be numeric 0/1/NaN labels, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    known = ~np.isnan(arr)
    bad = known & (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(f"{name} must contain only 0, 1 or NaN (missing); found "
                         f"{np.unique(arr[bad])[:5].tolist()}. Map uncertain labels (e.g. CheXpert -1) to "
                         "NaN to ignore them, or to 0/1.")
    return arr


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match.")


def check_corner_boxes_2d(boxes: ArrayLike, name: str = "boxes") -> np.ndarray:
    """``(K, 4)`` float64 corner boxes ``(x_min, y_min, x_max, y_max)`` of one image; any empty input (``[]``,
    ``np.zeros((0, 4))``) is ``(0, 4)``.

    Raises:
        ValueError: Another shape, NaN or infinite coordinates, or a max corner below its min corner (the message
            names ``name`` and the box, and suggests the ``(x, y, width, height)`` mix-up).
    """
    arr = to_numpy(boxes, name)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(
            f"{name} must have shape (K, 4) with corner boxes (x_min, y_min, x_max, y_max) in pixels; "
            f"got shape {arr.shape}."
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite coordinates.")
    bad = np.flatnonzero(np.any(arr[:, 2:] < arr[:, :2], axis=1))
    if bad.size:
        raise ValueError(
            f"{name}: box {int(bad[0])} is {arr[bad[0]].tolist()}, whose max corner lies below its min corner; "
            "boxes must be (x_min, y_min, x_max, y_max), not (x, y, width, height)."
        )
    return arr
