"""Tissue detection on a low-resolution RGB view of a slide (numpy + scipy only).

MONAI has no tissue detector for whole-slide thumbnails, so this module adds one:

1. foreground by **saturation** (HSV ``S = (max - min) / max``): glass is grey-white (low saturation),
   stained tissue is pink/purple. ``method="otsu"`` thresholds at Otsu's value of the slide's saturation
   histogram, but never below ``min_saturation`` (on a slide with no tissue Otsu would split the glass
   noise); ``method="saturation"`` uses ``saturation_threshold`` as is.
2. **ink and dirt** are removed: pixels darker than ``dark_value`` (black pen, dust, folds), grey pixels
   (value below ``grey_value`` with saturation below ``grey_saturation``: the edges of black ink and dust,
   shadows; stained tissue that dark is strongly coloured) and, when ``exclude_ink``, blue and green pen
   (in H&E red exceeds green everywhere; in blue and green ink it does not: ``G > R + ink_margin``).
3. **specks** smaller than ``min_area_um2`` are dropped and **holes** smaller than ``max_hole_um2``
   (lumens, fat, a nucleus-free spot) are filled; both areas are physical, so the result does not
   depend on the thumbnail's resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["TissueMaskResult", "TissueParams", "otsu_threshold", "rgb_saturation", "tissue_mask"]


def rgb_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an ``(H, W, 3)`` RGB image (uint8 or float in [0, 255])."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    c = rgb[..., :3].astype(np.float32)
    mx, mn = c.max(-1), c.min(-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Otsu's threshold: the cut of the histogram that maximises the between-class variance.

    Returns the upper edge of the last bin of the lower class, so ``values > t`` is the upper class.
    A constant input returns its value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("otsu_threshold of an empty array")
    hist, edges = np.histogram(v, bins=bins, range=value_range)
    w = hist.astype(np.float64)
    if np.count_nonzero(w) < 2:
        return float(v.mean())
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(w)
    w1 = w0[-1] - w0
    m0 = np.cumsum(w * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1.0
    k = int(np.argmax(between))
    return float(edges[k + 1])


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    if min_px <= 1 or not mask.any():
        return mask
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    if max_px <= 0 or not mask.any():
        return mask
    holes = ~mask
    lab, n = ndimage.label(holes)  # 4-connected background, so diagonal gaps do not join holes
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False  # glass touching the image border is not a hole
    return mask | fill[lab]


@dataclass
class TissueMaskResult:
    """The tissue mask and how it was made."""

    mask: np.ndarray
    threshold: float
    method: str
    saturation_range: tuple[float, float]
    removed_ink_px: int

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class TissueParams:
    """How tissue is told from glass, pen and dust on a low-resolution view of a slide.

    One object that :func:`tissue_mask`, :func:`medbundle.pathology.reader.build_slide_grid` and
    :class:`medbundle.pathology.transforms.TissueGridd` pass along; a bundle config gives it as a mapping
    (``"tissue": {"method": "otsu"}``), unnamed fields keep their defaults.

    Attributes:
        method: ``"otsu"`` or ``"saturation"`` (see the module docstring).
        saturation_threshold: the threshold of ``method="saturation"``.
        min_saturation: lower bound of the Otsu threshold.
        dark_value: pixels whose HSV value (max channel / 255) is below this are ink or dirt, not tissue.
        grey_value: with ``grey_saturation``: pixels darker than ``grey_value`` and less saturated than
            ``grey_saturation`` are grey (ink edges, dust), not tissue.
        grey_saturation: see ``grey_value``.
        exclude_ink: drop blue/green pen (``G > R + ink_margin``).
        ink_margin: see ``exclude_ink`` (grey levels).
        min_area_um2: connected tissue pieces smaller than this (square micrometres) are removed.
        max_hole_um2: holes inside tissue up to this area (square micrometres) are filled.
    """

    method: str = "otsu"
    saturation_threshold: float = 0.08
    min_saturation: float = 0.07
    dark_value: float = 0.3
    grey_value: float = 0.8
    grey_saturation: float = 0.15
    exclude_ink: bool = True
    ink_margin: float = 6.0
    min_area_um2: float = 20000.0
    max_hole_um2: float = 20000.0

    def __post_init__(self) -> None:
        if self.method not in ("otsu", "saturation"):
            raise ValueError(f"tissue method must be 'otsu' or 'saturation', got {self.method!r}")

    @classmethod
    def of(cls, value: TissueParams | Mapping[str, Any] | None) -> TissueParams:
        """``value`` as :class:`TissueParams` (None: the defaults; a mapping: its fields, others default).

        Raises:
            ValueError: a mapping names a field that does not exist (the message lists the valid ones).
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown tissue parameters {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        return cls(**dict(value))


def tissue_mask(rgb: np.ndarray, pixel_um: float, params: TissueParams | Mapping[str, Any] | None = None
                ) -> TissueMaskResult:
    """Tissue mask of a low-resolution RGB view of a slide.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB (a thumbnail or a low pyramid level).
        pixel_um: micrometres per pixel of ``rgb`` (sets the physical speck and hole sizes).
        params: :class:`TissueParams` (or a mapping of its fields; None: the defaults).

    Returns:
        :class:`TissueMaskResult` with the boolean mask (True = tissue) and the threshold used.
    """
    p = TissueParams.of(params)
    if pixel_um <= 0:
        raise ValueError(f"pixel_um must be positive, got {pixel_um}")
    rgb = np.asarray(rgb)
    sat = rgb_saturation(rgb)
    c = rgb[..., :3].astype(np.float32)
    value = c.max(-1) / 255.0
    if p.method == "otsu":
        thr = max(otsu_threshold(sat), float(p.min_saturation))
    else:
        thr = float(p.saturation_threshold)
    fg = sat > thr
    bad = (value < p.dark_value) | ((value < p.grey_value) & (sat < p.grey_saturation))
    if p.exclude_ink:
        bad |= c[..., 1] > c[..., 0] + p.ink_margin
    removed = int((fg & bad).sum())
    fg &= ~bad
    px_area = pixel_um * pixel_um
    fg = _remove_small(fg, p.min_area_um2 / px_area)
    fg = _fill_small_holes(fg, p.max_hole_um2 / px_area)
    return TissueMaskResult(mask=fg, threshold=float(thr), method=p.method,
                            saturation_range=(float(sat.min()), float(sat.max())), removed_ink_px=removed)
