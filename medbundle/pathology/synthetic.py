"""Synthetic whole-slide images written as pyramidal tiled TIFF, in the Camelyon16 and PANDA layouts.

No public slides can be downloaded here, so this generator writes what a slide-classification bundle
reads, in the files' real format:

- one pyramidal **tiled TIFF** per slide (RGB, 8 bit, 256 x 256 tiles, zlib/deflate compression, BigTIFF
  when needed); every pyramid level is a full-resolution-ordered top-level IFD, each level halving the
  previous one exactly, and every level carries ``XResolution``/``YResolution`` in pixels per centimetre
  (``ResolutionUnit = CENTIMETER``), from which OpenSlide reports ``openslide.mpp-x``/``mpp-y`` and
  MONAI's tifffile reader its microns per pixel. OpenSlide opens the files as ``generic-tiff``.
- H&E-like content: near-white background with faint noise; tissue pieces (large sections for the
  Camelyon16 layout, thin needle cores for PANDA) in eosin pink with fibre-like texture, hematoxylin
  nuclei, and small white holes (lumens, fat); dust specks in the background; pen-mark strokes (blue,
  green or black ink) over tissue and glass; on positive slides tumour regions: denser, larger and darker
  nuclei in a more purple cytoplasm.
- Tumour regions are drawn from polygons, which are also written as the ground truth: an ASAP XML
  annotation per tumour slide (Camelyon16 layout) with coordinates in level-0 pixels.

Layouts written by :func:`generate_camelyon16` and :func:`generate_panda` follow the public datasets
(see ``REFERENCES.md``): ``training/normal/normal_NNN.tif``, ``training/tumor/tumor_NNN.tif``,
``training/lesion_annotations/tumor_NNN.xml``, ``testing/images/test_NNN.tif`` with
``testing/reference.csv``; and ``train.csv`` (``image_id,data_provider,isup_grade,gleason_score``) with
``train_images/<image_id>.tiff``.

Slides are rendered tile by tile straight into the TIFF writer, so memory stays bounded for any slide
size (the benchmark writes a 40,000 x 40,000 slide).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from scipy import ndimage

from medbundle.pathology.pyramid import level_tiles, pyramid_downsamples

__all__ = [
    "MICRO_SHARE",
    "SyntheticSlide",
    "generate_camelyon16",
    "generate_panda",
    "make_slide",
    "tumour_fraction_targets",
    "tumour_share",
    "write_asap_xml",
    "write_pyramidal_tiff",
    "write_synthetic_slide",
]

TILE = 256  # tile side of the synthetic writers, px (the pyramid module's default too)

# colours (RGB, 0-255)
_BACKGROUND = np.array([243.0, 242.0, 246.0], np.float32)
_STROMA = np.array([236.0, 168.0, 200.0], np.float32)
_STROMA_VAR = np.array([10.0, 26.0, 14.0], np.float32)
_NUCLEUS = np.array([112.0, 78.0, 165.0], np.float32)
_LYMPH_STROMA = np.array([226.0, 170.0, 206.0], np.float32)
_LYMPH_NUCLEUS = np.array([84.0, 60.0, 140.0], np.float32)
_TUMOUR_CYTO = np.array([232.0, 171.0, 200.0], np.float32)  # about the stroma's
_TUMOUR_NUCLEUS = np.array([96.0, 64.0, 150.0], np.float32)  # chromatin rim and nucleolus
_TUMOUR_NUCLEUS_PALE = np.array([176.0, 140.0, 200.0], np.float32)  # vesicular centre
_INKS = {
    "blue": np.array([40.0, 64.0, 165.0], np.float32),
    "green": np.array([44.0, 128.0, 74.0], np.float32),
    "black": np.array([36.0, 34.0, 40.0], np.float32),
}
_SPECK = np.array([70.0, 62.0, 66.0], np.float32)

# nuclei (in micrometres): cell spacing and radius of normal tissue, lymphoid areas (lymphocytes) and tumour
_NORMAL_CELL_UM, _NORMAL_R_UM = 15.0, 3.2
_LYMPH_CELL_UM, _LYMPH_R_UM = 8.0, 2.5
_TUMOUR_CELL_UM, _TUMOUR_R_UM = 13.0, 4.8

#: Camelyon16 tumour slides whose tumour covers under this share of the tissue are "micro" in the synthetic
#: ``reference.csv`` (a share, because the synthetic sections are a few mm^2, not the real few cm^2).
MICRO_SHARE = 0.01


@dataclass
class SyntheticSlide:
    """A synthetic slide: level-0 size, resolution, and the low-resolution fields it is rendered from.

    Fields are float32 arrays on a *design grid* of ``step`` level-0 pixels per cell (cell centres at
    ``(k + 0.5) * step``); rendering samples them bilinearly at any level.
    """

    height: int
    width: int
    mpp: float
    step: int
    tissue: np.ndarray
    tumour: np.ndarray
    ink_alpha: np.ndarray
    ink_rgb: np.ndarray
    texture: np.ndarray
    seed: int
    atypia: float = 1.0
    tumour_polygons: list[np.ndarray] = field(default_factory=list)
    """Tumour outlines as (K, 2) arrays of level-0 pixel ``(x, y)``."""
    lymphoid: np.ndarray | None = None
    """Weight in [0, 1] of lymphoid tissue (small, dense, dark nuclei) on the design grid; None: none."""
    stain: np.ndarray | None = None
    """Per-channel optical-density gain of the stain (3,), 1 = the reference colours; None: 1."""
    tumour_fraction: float = 0.0
    """Share of the tissue inside the tumour outlines (:func:`tumour_share`)."""

    @property
    def positive(self) -> bool:
        return bool(self.tumour_polygons)

    # ------------------------------------------------------------------------------------------------
    def render(self, downsample: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of the region whose top-left pixel is ``(y0, x0)`` at the level with
        the given ``downsample`` (level pixels, not level-0 pixels)."""
        d = float(downsample)
        uy = (y0 + np.arange(h, dtype=np.float64) + 0.5) * d  # level-0 pixel centres
        ux = (x0 + np.arange(w, dtype=np.float64) + 0.5) * d
        gy, gx = uy / self.step - 0.5, ux / self.step - 0.5
        tissue = _sample(self.tissue, gy, gx)
        ink = _sample(self.ink_alpha, gy, gx)
        noise = _tile_noise(self.seed, downsample, y0, x0, h, w)
        if tissue.max() <= 0.0 and ink.max() <= 0.0:
            out = np.broadcast_to(_BACKGROUND, (h, w, 3)) + noise
            return np.clip(out, 0, 255).astype(np.uint8)
        tumour = _sample(self.tumour, gy, gx) * tissue
        tex = _sample(self.texture, gy, gx)
        px_um = d * self.mpp
        pal = self._palette()
        stroma = pal["stroma"] + tex[..., None] * pal["stroma_var"]
        colour = stroma
        nuc_n = self._nuclei(uy, ux, _NORMAL_CELL_UM, _NORMAL_R_UM, px_um, salt=1)[0]
        colour = colour + nuc_n[..., None] * 0.85 * (pal["nucleus"] - colour)
        if self.lymphoid is not None:
            lym = _sample(self.lymphoid, gy, gx)
            if lym.max() > 0.0:
                # lymphocytes: small, dense, dark, round nuclei on a slightly paler stroma
                nuc_l = self._nuclei(uy, ux, _LYMPH_CELL_UM, _LYMPH_R_UM, px_um, salt=3, spread=0.35, jitter=0.22)[0]
                lym_colour = pal["lymph_stroma"] + tex[..., None] * (0.5 * pal["stroma_var"])
                lym_colour = lym_colour + nuc_l[..., None] * 0.9 * (pal["lymph_nucleus"] - lym_colour)
                colour = colour + lym[..., None] * (lym_colour - colour)
        if tumour.max() > 0.0:
            # tumour cells: large, pleomorphic, vesicular nuclei (pale centre, dark chromatin rim, a nucleolus)
            # in a pale cytoplasm; their mean colour is that of lymphoid tissue, their texture is not
            a = float(np.clip(self.atypia, 0.0, 1.5))
            cov, inner, nucleolus = self._nuclei(
                uy, ux, _TUMOUR_CELL_UM * (1.1 - 0.1 * a), _TUMOUR_R_UM * (0.7 + 0.3 * a), px_um, salt=2,
                spread=0.3 + 0.5 * min(a, 1.0), jitter=0.35, search=1, vesicular=True)
            nuc_colour = pal["tumour_nucleus"] + inner[..., None] * (pal["tumour_nucleus_pale"] - pal["tumour_nucleus"])
            nuc_colour = nuc_colour + nucleolus[..., None] * (pal["tumour_nucleus"] - nuc_colour)
            tum_colour = pal["tumour_cyto"] + tex[..., None] * (0.5 * pal["stroma_var"])
            tum_colour = tum_colour + cov[..., None] * 0.85 * (nuc_colour - tum_colour)
            colour = colour + tumour[..., None] * (tum_colour - colour)
        out = _BACKGROUND + tissue[..., None] * (colour - _BACKGROUND)
        if ink.max() > 0.0:
            ink_rgb = _sample(self.ink_rgb, gy, gx)
            out = out + ink[..., None] * (ink_rgb - out)
        out = out + noise
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _palette(self) -> dict[str, np.ndarray]:
        """The slide's colours: the reference colours with the slide's stain strength (each channel's optical
        density, ``-log(colour / background)``, scaled by ``stain``)."""
        pal = getattr(self, "_pal", None)
        if pal is None:
            ref = {"stroma": _STROMA, "nucleus": _NUCLEUS, "lymph_stroma": _LYMPH_STROMA,
                   "lymph_nucleus": _LYMPH_NUCLEUS, "tumour_cyto": _TUMOUR_CYTO, "tumour_nucleus": _TUMOUR_NUCLEUS,
                   "tumour_nucleus_pale": _TUMOUR_NUCLEUS_PALE}
            gain = np.ones(3, np.float32) if self.stain is None else np.asarray(self.stain, np.float32)
            pal = {k: (_BACKGROUND * np.power(v / _BACKGROUND, gain)).astype(np.float32) for k, v in ref.items()}
            pal["stroma_var"] = _STROMA_VAR * gain
            self._pal = pal
        return pal

    def _nuclei(self, uy: np.ndarray, ux: np.ndarray, cell_um: float, r_um: float, px_um: float, salt: int,
                spread: float = 0.5, jitter: float = 0.3, search: int = 0,
                vesicular: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Nucleus coverage in [0, 1]: one jittered disc per cell of a regular grid (a Worley pattern),
        antialiased by the pixel size; where a pixel is larger than a nucleus, the mean coverage of the cell
        instead (what a downsampled pyramid level shows).

        Args:
            cell_um, r_um: cell spacing and mean nucleus radius in micrometres.
            spread: nucleus radii vary uniformly within ``1 -+ spread / 2`` of ``r_um`` (pleomorphism).
            jitter: nucleus centres lie within ``0.5 -+ jitter`` of their cell.
            search: also look at the nuclei of cells this many cells away (1: the 3 x 3 neighbourhood), so nuclei larger
                than their cell are not cut at the cell border.
            vesicular: also return the pale centre (within 0.6 of the radius) and a nucleolus (0.9 um) of the nuclei, as
                coverages; None otherwise.
        """
        if px_um > 1.2 * r_um:
            mean = min(0.9 * math.pi * r_um**2 * (1.0 + spread**2 / 12.0) / cell_um**2, 0.95)
            cov = np.full((uy.size, ux.size), mean, np.float32)
            if not vesicular:
                return cov, None, None
            return cov, np.full_like(cov, 0.36), np.zeros_like(cov)
        yu, xu = uy * self.mpp, ux * self.mpp  # micrometres
        iy0, ix0 = np.floor(yu / cell_um).astype(np.int64), np.floor(xu / cell_um).astype(np.int64)
        soft = max(px_um, 0.5)
        cov = inner = nucleolus = None
        for oy in range(-search, search + 1):
            for ox in range(-search, search + 1):
                iy, ix = iy0 + oy, ix0 + ox
                h = _hash2(iy[:, None], ix[None, :], self.seed * 7919 + salt)
                jy = 0.5 - jitter + 2.0 * jitter * ((h & 0xFFFF).astype(np.float32) / 65535.0)
                jx = 0.5 - jitter + 2.0 * jitter * (((h >> 16) & 0xFFFF).astype(np.float32) / 65535.0)
                with np.errstate(over="ignore"):
                    size_bits = ((h * np.uint64(2654435761)) >> np.uint64(40)) & np.uint64(0xFF)
                size = 1.0 - spread / 2.0 + spread * size_bits.astype(np.float32) / 255.0
                dy = (yu - iy * cell_um)[:, None] / cell_um - jy
                dx = (xu - ix * cell_um)[None, :] / cell_um - jx
                dist_um = np.sqrt(dy * dy + dx * dx) * cell_um
                r = r_um * size
                c = np.clip((r - dist_um) / soft + 0.5, 0.0, 1.0).astype(np.float32)
                cov = c if cov is None else np.maximum(cov, c)
                if vesicular:
                    i = np.clip((0.6 * r - dist_um) / soft + 0.5, 0.0, 1.0).astype(np.float32)
                    has = (((h >> np.uint64(48)) & np.uint64(0xFF)) < np.uint64(180)).astype(np.float32)  # ~70 %
                    n = np.clip((0.9 - dist_um) / soft + 0.5, 0.0, 1.0).astype(np.float32) * has
                    inner = i if inner is None else np.maximum(inner, i)
                    nucleolus = n if nucleolus is None else np.maximum(nucleolus, n)
        return cov, inner, nucleolus


def _hash2(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit integer hash of two integer arrays (broadcast), deterministic across platforms."""
    with np.errstate(over="ignore"):
        x = a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ b.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        x = x ^ np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x165667B19E3779F9)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(29)
    return x


_NOISE_BANK: dict[int, np.ndarray] = {}


def _tile_noise(seed: int, downsample: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Faint per-pixel noise, +-4 grey levels, from a small bank of patterns chosen by tile position."""
    if not _NOISE_BANK:
        rng = np.random.default_rng(12345)
        for i in range(8):
            _NOISE_BANK[i] = rng.uniform(-4.0, 4.0, (TILE, TILE, 3)).astype(np.float32)
    k = int(_hash2(np.array([y0 // TILE + 31 * downsample]), np.array([x0 // TILE]), seed)[0] % np.uint64(8))
    pat = _NOISE_BANK[k]
    if h <= TILE and w <= TILE:
        return pat[:h, :w]
    reps = (math.ceil(h / TILE), math.ceil(w / TILE), 1)
    return np.tile(pat, reps)[:h, :w]


def _sample(f: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Bilinear sample of a (H, W) or (H, W, C) field at the grid ``gy x gx`` (separable; clamped)."""
    hh, ww = f.shape[:2]
    y = np.clip(gy, 0, hh - 1)
    x = np.clip(gx, 0, ww - 1)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    y1 = np.minimum(y0 + 1, hh - 1)
    x1 = np.minimum(x0 + 1, ww - 1)
    fy = (y - y0).astype(np.float32)
    fx = (x - x0).astype(np.float32)
    xs = slice(int(x0.min()), int(x1.max()) + 1)
    sub = f[:, xs]
    x0l, x1l = x0 - xs.start, x1 - xs.start
    extra = (None,) * (f.ndim - 2)
    rows = sub[y0] * (1 - fy)[(slice(None), None, *extra)] + sub[y1] * fy[(slice(None), None, *extra)]
    return rows[:, x0l] * (1 - fx)[(None, slice(None), *extra)] + rows[:, x1l] * fx[(None, slice(None), *extra)]


# ----------------------------------------------------------------------------------------------------------
# slide layout
# ----------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-6)


def _star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, k: int = 28) -> np.ndarray:
    """A smooth star-shaped polygon (k vertices) around (cx, cy): radius modulated by a few harmonics."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    r = np.ones(k)
    for m in (2, 3, 5):
        r += rng.uniform(0.04, 0.14) * np.cos(m * t + rng.uniform(0, 2 * np.pi))
    r *= radius
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _rasterise(polys: Sequence[np.ndarray], shape: tuple[int, int], step: int) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    hh, ww = shape
    yy, xx = np.mgrid[0:hh, 0:ww]
    pts = np.stack([(xx.ravel() + 0.5) * step, (yy.ravel() + 0.5) * step], axis=1)
    out = np.zeros(hh * ww, bool)
    for p in polys:
        x0, y0 = p.min(0)
        x1, y1 = p.max(0)
        sel = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
        if sel.any():
            out[np.flatnonzero(sel)[MplPath(p).contains_points(pts[sel])]] = True
    return out.reshape(hh, ww)


def tumour_share(polygons: Sequence[np.ndarray], tissue: np.ndarray, step: int) -> float:
    """Share of the tissue that lies inside the tumour outlines.

    Args:
        polygons: tumour outlines, (K, 2) arrays of level-0 pixel ``(x, y)`` (their union counts once).
        tissue: tissue weight in [0, 1] on the design grid (cell centres at ``(k + 0.5) * step``).
        step: level-0 pixels per design cell.

    Returns:
        ``area(tumour and tissue) / area(tissue)``: the tissue weight is summed over the design grid and,
        inside each outline's bounding box, sampled bilinearly on a grid fine enough for the smallest outline
        (at least 8 points across its mean radius), so small tumours are measured as exactly as large ones.
    """
    from matplotlib.path import Path as MplPath

    tissue_area = float(np.asarray(tissue, np.float64).sum()) * step * step
    if not polygons or tissue_area <= 0.0:
        return 0.0
    polys = [np.asarray(p, np.float64) for p in polygons]
    paths = [MplPath(p) for p in polys]
    inside_area = 0.0
    for i, (poly, path) in enumerate(zip(polys, paths)):
        x = poly[:, 0]
        y = poly[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        g = float(min(step, max(math.sqrt(area / math.pi) / 8.0, 0.25)))
        # midpoints of cells that tile the bounding box exactly (about g wide), so no edge strip is lost
        nx = max(1, math.ceil((x.max() - x.min()) / g))
        ny = max(1, math.ceil((y.max() - y.min()) / g))
        gx, gy = (x.max() - x.min()) / nx, (y.max() - y.min()) / ny
        xs = x.min() + (np.arange(nx) + 0.5) * gx
        ys = y.min() + (np.arange(ny) + 0.5) * gy
        pts = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        inside = path.contains_points(pts)
        for earlier in paths[:i]:  # the union: points already counted for an earlier outline
            inside &= ~earlier.contains_points(pts)
        if not inside.any():
            continue
        t = _sample(np.asarray(tissue, np.float32), ys / step - 0.5, xs / step - 0.5).reshape(-1)
        inside_area += float(t[inside].sum()) * gx * gy
    return inside_area / tissue_area


def make_slide(
    height: int,
    width: int,
    mpp: float = 0.5,
    seed: int = 0,
    tumour: bool = False,
    tissue_shape: str = "section",
    n_tumours: int | None = None,
    tumour_radius_um: tuple[float, float] = (250.0, 600.0),
    atypia: float = 1.0,
    pen_marks: int | None = None,
    specks: int | None = None,
    holes: bool = True,
    tissue: bool = True,
    design_um: float = 8.0,
    tumour_fraction: float | None = None,
    lymphoid: float = 0.0,
    stain_jitter: float = 0.0,
) -> SyntheticSlide:
    """Lay out a synthetic slide: tissue pieces, holes, tumour polygons, pen strokes and dust specks.

    Args:
        height, width: level-0 size in pixels.
        mpp: level-0 microns per pixel.
        seed: everything about the slide follows from it.
        tumour: draw tumour regions (a positive slide).
        tissue_shape: ``"section"`` (1-3 large rounded sections, as lymph nodes) or ``"cores"`` (2-4 thin elongated
            needle biopsies, as prostate cores).
        n_tumours: tumour regions on a positive slide (default 1-3).
        tumour_radius_um: range of the tumour regions' mean radii (with ``tumour_fraction``: of their relative sizes
            only).
        atypia: tumour appearance strength (graded slides: higher is denser, darker nuclei).
        pen_marks: number of ink strokes (default 0-2 at random).
        specks: number of dust specks on the glass (default 4-12).
        holes: punch small white holes (lumens, fat) into the tissue.
        tissue: False gives an empty slide (glass, specks and pen marks only).
        design_um: resolution of the layout fields in micrometres per cell.
        tumour_fraction: on a tumour slide, scale the tumour regions together so that they cover this share of the
            tissue (:func:`tumour_share`, to within 1 %; the share reached is ``SyntheticSlide.tumour_fraction``), as
            real metastases cover a few percent of a lymph node section or far less. None: the regions keep their drawn
            radii.
        lymphoid: share of the tissue (about) drawn as lymphoid areas of small, dense, dark nuclei, blobs of a few
            hundred micrometres: normal tissue whose mean colour matches the tumour's, so that telling them apart takes
            nuclear size and texture, not colour.
        stain_jitter: per-slide stain strength: each colour channel's optical density is scaled by a factor drawn from
            ``1 -+ stain_jitter``.

    Raises:
        ValueError: an unknown ``tissue_shape``, or a ``tumour_fraction`` outside (0, 1).
    """
    if tumour_fraction is not None and not 0.0 < float(tumour_fraction) < 1.0:
        raise ValueError(f"tumour_fraction is a share of the tissue in (0, 1), got {tumour_fraction}")
    rng = np.random.default_rng(seed)
    step = max(1, int(round(design_um / mpp)))
    hh, ww = math.ceil(height / step), math.ceil(width / step)
    um = step * mpp  # micrometres per design cell
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    field_t = np.full((hh, ww), -1.0, np.float32)
    if tissue:
        if tissue_shape == "section":
            pieces = int(rng.integers(1, 4))
            for _ in range(pieces):
                cy, cx = rng.uniform(0.3, 0.7) * hh, rng.uniform(0.3, 0.7) * ww
                ay, ax = rng.uniform(0.14, 0.3) * hh, rng.uniform(0.14, 0.3) * ww
                th = rng.uniform(0, np.pi)
                dy, dx = yy - cy, xx - cx
                u = (dx * np.cos(th) + dy * np.sin(th)) / ax
                v = (-dx * np.sin(th) + dy * np.cos(th)) / ay
                field_t = np.maximum(field_t, 1.0 - (u * u + v * v))
        elif tissue_shape == "cores":
            cores = int(rng.integers(2, 5))
            for i in range(cores):
                cy = (i + 0.5 + rng.uniform(-0.15, 0.15)) / cores * hh
                half_w = rng.uniform(0.2, 0.32) * hh / cores
                x0, x1 = rng.uniform(0.05, 0.2) * ww, rng.uniform(0.8, 0.95) * ww
                bend = rng.uniform(-0.3, 0.3) * half_w
                centre = cy + bend * np.sin(np.pi * (xx - x0) / max(x1 - x0, 1.0))
                across = 1.0 - ((yy - centre) / half_w) ** 2
                along = 1.0 - (np.maximum(x0 - xx, 0) + np.maximum(xx - x1, 0)) / (0.5 * half_w)
                field_t = np.maximum(field_t, np.minimum(across, along))
        else:
            raise ValueError(f"tissue_shape must be 'section' or 'cores', got {tissue_shape!r}")
        field_t = field_t + 0.18 * _smooth_noise(rng, (hh, ww), max(2.0, 0.04 * min(hh, ww)))
    tissue_a = np.clip(field_t / 0.04, 0.0, 1.0)
    if tissue and holes:
        inside = np.argwhere(field_t > 0.25)
        n_holes = int(rng.poisson(6.0 * inside.shape[0] * um * um / 1e6))  # ~6 per mm2 of tissue
        hole_mask = np.zeros((hh, ww), bool)
        for _ in range(n_holes if inside.size else 0):
            cy, cx = inside[rng.integers(len(inside))]
            r = rng.uniform(15.0, 55.0) / um
            hole_mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= max(r, 0.8) ** 2
        tissue_a = tissue_a * (1.0 - ndimage.gaussian_filter(hole_mask.astype(np.float32), 0.6))
    tissue_a = tissue_a.astype(np.float32)

    polys: list[np.ndarray] = []
    tumour_a = np.zeros((hh, ww), np.float32)
    if tumour and tissue:
        n_t = int(n_tumours if n_tumours is not None else rng.integers(1, 4))
        inside = np.argwhere(field_t > 0.35)
        if inside.size == 0:
            inside = np.argwhere(field_t > 0.0)
        for _ in range(n_t):
            cy, cx = inside[rng.integers(len(inside))]
            r_px = rng.uniform(*tumour_radius_um) / mpp
            polys.append(_star_polygon(rng, (cx + 0.5) * step, (cy + 0.5) * step, r_px))
        if tumour_fraction is not None:
            polys = _scale_to_share(polys, tissue_a, step, float(tumour_fraction))
        tumour_a = ndimage.gaussian_filter(_rasterise(polys, (hh, ww), step).astype(np.float32), 0.7)

    ink_a = np.zeros((hh, ww), np.float32)
    ink_rgb = np.broadcast_to(_INKS["blue"], (hh, ww, 3)).copy()
    n_pen = int(pen_marks if pen_marks is not None else rng.integers(0, 3))
    for _ in range(n_pen):
        colour = _INKS[("blue", "green", "black")[int(rng.integers(3))]]
        n_pts = 400
        start = np.array([rng.uniform(0.1, 0.9) * hh, rng.uniform(0.1, 0.9) * ww])
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.04, n_pts))
        length = rng.uniform(0.25, 0.5) * min(hh, ww)
        pts = start + np.cumsum(np.stack([np.sin(ang), np.cos(ang)], 1), 0) * (length / n_pts)
        line = np.zeros((hh, ww), bool)
        pi = np.round(pts).astype(int)
        ok = (pi[:, 0] >= 0) & (pi[:, 0] < hh) & (pi[:, 1] >= 0) & (pi[:, 1] < ww)
        line[pi[ok, 0], pi[ok, 1]] = True
        if not line.any():
            continue
        width_um = rng.uniform(60.0, 160.0)
        stroke = ndimage.distance_transform_edt(~line) * um <= width_um / 2
        a = ndimage.gaussian_filter(stroke.astype(np.float32), 0.8) * 0.88
        ink_rgb = np.where((a > ink_a)[..., None], colour, ink_rgb)
        ink_a = np.maximum(ink_a, a)
    n_specks = int(specks if specks is not None else rng.integers(4, 13))
    glass = np.argwhere(field_t < -0.2)
    speck = np.zeros((hh, ww), bool)
    for _ in range(n_specks if glass.size else 0):
        cy, cx = glass[rng.integers(len(glass))]
        r = rng.uniform(8.0, 30.0) / um
        speck |= (yy - cy) ** 2 + (xx - cx) ** 2 <= max(r, 0.6) ** 2
    if speck.any():
        a = ndimage.gaussian_filter(speck.astype(np.float32), 0.5) * 0.9
        ink_rgb = np.where((a > ink_a)[..., None], _SPECK, ink_rgb)
        ink_a = np.maximum(ink_a, a)

    texture = np.clip(_smooth_noise(rng, (hh, ww), 1.2), -2.5, 2.5) * 0.5
    # drawn last, so that slides without them keep the layout they always had
    lymph_a = None
    if tissue and lymphoid > 0.0:
        blobs = _smooth_noise(rng, (hh, ww), max(1.0, 60.0 / um))  # blobs of a few hundred micrometres
        in_tissue = tissue_a > 0.5
        if in_tissue.any():
            cut = float(np.quantile(blobs[in_tissue], 1.0 - min(float(lymphoid), 1.0)))
            lymph_a = np.clip((blobs - cut) / 0.25 + 0.5, 0.0, 1.0).astype(np.float32)
    stain = None
    if stain_jitter > 0.0:
        stain = rng.uniform(1.0 - stain_jitter, 1.0 + stain_jitter, 3).astype(np.float32)
    return SyntheticSlide(
        height=int(height), width=int(width), mpp=float(mpp), step=step, tissue=tissue_a,
        tumour=tumour_a.astype(np.float32), ink_alpha=ink_a.astype(np.float32),
        ink_rgb=ink_rgb.astype(np.float32), texture=texture.astype(np.float32), seed=int(seed),
        atypia=float(atypia), tumour_polygons=polys, lymphoid=lymph_a, stain=stain,
        tumour_fraction=tumour_share(polys, tissue_a, step) if polys else 0.0,
    )


def _scale_to_share(polys: list[np.ndarray], tissue: np.ndarray, step: int, target: float,
                    rtol: float = 0.01, max_iter: int = 30) -> list[np.ndarray]:
    """Scale the outlines about their own centres, all by one factor, until they cover ``target`` of the
    tissue (:func:`tumour_share` within ``rtol``). The share grows with the square of the factor while
    the outlines lie in tissue, so a square-root update converges in a few steps; bisection takes over if
    it does not.

    Raises:
        ValueError: the target cannot be reached (the tissue is too small to hold that much tumour).
    """
    centres = [p.mean(axis=0) for p in polys]

    def scaled(f: float) -> list[np.ndarray]:
        return [c + f * (p - c) for p, c in zip(polys, centres)]

    lo, hi = 0.0, math.inf
    f = 1.0
    share = 0.0
    for _ in range(max_iter):
        share = tumour_share(scaled(f), tissue, step)
        if abs(share / target - 1.0) <= rtol:
            return scaled(f)
        if share < target:
            lo = f
        else:
            hi = f
        nxt = f * math.sqrt(target / share) if share > 0.0 else f * 4.0
        if not lo < nxt < hi:
            nxt = (lo + hi) / 2.0 if math.isfinite(hi) else 2.0 * f
        f = nxt
    raise ValueError(f"could not size the tumour to {target:.4f} of the tissue (reached {share:.4f}); "
                     "the slide has too little tissue for it")


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def write_pyramidal_tiff(
    path: str | os.PathLike,
    height: int,
    width: int,
    mpp: float,
    render: Callable[[int, int, int, int, int], np.ndarray],
    downsamples: Sequence[int] | None = None,
    tile: int = TILE,
    compression_level: int = 1,
) -> Path:
    """Write a pyramidal tiled RGB TIFF, rendering it tile by tile.

    Args:
        path: output ``.tif``/``.tiff``.
        height, width: level-0 size.
        mpp: level-0 microns per pixel; level ``k`` gets ``mpp * downsample``, written as ``X/YResolution`` in pixels
            per centimetre.
        render: ``render(downsample, y0, x0, h, w) -> (h, w, 3) uint8`` (level pixels).
        downsamples: level downsamples (integers, first 1); default :func:`pyramid_downsamples`.
        tile: tile side.
        compression_level: zlib level (1 fastest).

    Returns:
        The path written. Level 0 is the first IFD, the other levels follow as reduced-resolution IFDs
        (``NewSubfileType = 1``), the layout OpenSlide's generic-tiff driver and tifffile both read.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = list(downsamples) if downsamples else pyramid_downsamples(height, width)
    if ds[0] != 1:
        raise ValueError(f"the first downsample must be 1, got {ds}")
    bigtiff = height * width * 3 * 1.4 > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for i, d in enumerate(ds):
            lh, lw = height // d, width // d
            res = 1e4 / (mpp * d)  # pixels per centimetre
            tw.write(
                level_tiles(render, d, lh, lw, tile), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                photometric="rgb",
                compression="zlib", compressionargs={"level": int(compression_level)},
                resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
                metadata=None, software="medbundle.synthetic_wsi", maxworkers=1,
            )
    return path


def write_synthetic_slide(slide: SyntheticSlide, path: str | os.PathLike, compression_level: int = 1,
                          downsamples: Sequence[int] | None = None) -> Path:
    """Render ``slide`` into a pyramidal tiled TIFF at ``path``."""
    return write_pyramidal_tiff(path, slide.height, slide.width, slide.mpp, slide.render,
                                downsamples=downsamples, compression_level=compression_level)


def _write_slide(slide: SyntheticSlide, path: Path, fmt: str, compression_level: int, dicom_compression: str,
                 patient_id: str, body_part: str) -> Path:
    """Write ``slide`` as the TIFF ``path``, or (``fmt="dicom"``) as a DICOM slide folder ``path`` without suffix."""
    if fmt == "tiff":
        return write_synthetic_slide(slide, path, compression_level=compression_level)
    from medbundle.pathology.dicom_wsi import write_dicom_wsi

    folder = path.with_suffix("")
    write_dicom_wsi(folder, slide.height, slide.width, slide.mpp, slide.render, compression=dicom_compression,
                    slide_id=folder.name, uid_seed=f"{patient_id}/{folder.name}",
                    patient={"id": patient_id, "name": patient_id, "body_part": body_part})
    return folder


def _check_format(fmt: str) -> str:
    fmt = str(fmt).lower()
    if fmt not in ("tiff", "dicom"):
        raise ValueError(f"slide format must be 'tiff' or 'dicom', got {fmt!r}")
    return fmt


def write_asap_xml(polygons: Sequence[np.ndarray], path: str | os.PathLike, group: str = "_0") -> Path:
    """Write polygons (level-0 pixel ``(x, y)``) as an ASAP annotation XML, as Camelyon16 ships them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, poly in enumerate(polygons):
        lines.append(f'\t\t<Annotation Name={quoteattr(f"Annotation {i}")} Type="Polygon" '
                     f'PartOfGroup={quoteattr(group)} Color="#F4FA58">')
        lines.append("\t\t\t<Coordinates>")
        for k, (x, y) in enumerate(np.asarray(poly, dtype=float)):
            lines.append(f'\t\t\t\t<Coordinate Order="{k}" X="{x:.4f}" Y="{y:.4f}" />')
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>",
              f'\t\t<Group Name={quoteattr(group)} PartOfGroup="None" Color="#FF0000">', "\t\t\t<Attributes />",
              "\t\t</Group>", "\t</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _slide_size(rng: np.random.Generator, size: int | tuple[int, int], jitter: float, multiple: int) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for s in hw:
        s = s * (1 + rng.uniform(-jitter, jitter))
        out.append(max(multiple, int(round(s / multiple)) * multiple))
    return out[0], out[1]


def tumour_fraction_targets(n: int, rng: np.random.Generator, fraction_range: tuple[float, float] = (0.003, 0.04),
                            micro_share: float = 0.5) -> np.ndarray:
    """Tumour shares of the tissue for ``n`` tumour slides, log-uniform within ``fraction_range``, and
    stratified: ``ceil(micro_share * n)`` of them under :data:`MICRO_SHARE` (1 %), the others from 1 % up,
    in random order. Camelyon16's tumour slides are mostly micro- and macro-metastases covering a few
    percent of the tissue or far less; the strata make that hold on every draw, not only on average.

    Raises:
        ValueError: a range that does not straddle 1 % (with slides in both strata) or a share outside [0, 1].
    """
    lo, hi = (float(v) for v in fraction_range)
    if not 0.0 < lo < hi < 1.0:
        raise ValueError(f"tumour fraction range must satisfy 0 < low < high < 1, got {fraction_range}")
    if not 0.0 <= micro_share <= 1.0:
        raise ValueError(f"micro_share is a share of the tumour slides in [0, 1], got {micro_share}")
    n_micro = math.ceil(micro_share * n - 1e-9)
    if (n_micro and lo >= MICRO_SHARE) or (n - n_micro and hi <= MICRO_SHARE):
        raise ValueError(f"tumour fraction range {fraction_range} leaves no room for {n_micro} slides under "
                         f"{MICRO_SHARE:.0%} and {n - n_micro} from {MICRO_SHARE:.0%} up")
    micro_hi = 0.97 * MICRO_SHARE  # clear of 1 %: the sizing reaches its target within 1 %
    log_u = [rng.uniform(math.log(lo), math.log(micro_hi)) for _ in range(n_micro)]
    log_u += [rng.uniform(math.log(MICRO_SHARE), math.log(hi)) for _ in range(n - n_micro)]
    out = np.exp(np.asarray(log_u, np.float64))
    rng.shuffle(out)
    return out


def generate_camelyon16(
    root: str | os.PathLike,
    n_train_normal: int = 12,
    n_train_tumor: int = 12,
    n_test_normal: int = 6,
    n_test_tumor: int = 6,
    size: int | tuple[int, int] = 4096,
    mpp: float = 1.0,
    size_jitter: float = 0.15,
    seed: int = 0,
    compression_level: int = 1,
    tumour_fraction: tuple[float, float] = (0.003, 0.04),
    micro_share: float = 0.5,
    n_tumours: tuple[int, int] = (1, 2),
    tumour_radius_um: tuple[float, float] | None = None,
    atypia_range: tuple[float, float] = (0.6, 1.0),
    lymphoid: tuple[float, float] = (0.15, 0.35),
    stain_jitter: float = 0.08,
    format: str = "tiff",
    dicom_compression: str = "jpeg",
    **slide_kwargs: Any,
) -> dict[str, Any]:
    """Write synthetic slides in the Camelyon16 layout.

    ``root/training/normal/normal_NNN.tif``, ``root/training/tumor/tumor_NNN.tif`` with
    ``root/training/lesion_annotations/tumor_NNN.xml``, ``root/testing/images/test_NNN.tif`` with
    ``root/testing/reference.csv`` (``test_NNN,Tumor,Micro|Macro`` or ``test_NNN,Normal``, no header, as
    published) and ``root/testing/lesion_annotations/test_NNN.xml`` for the tumour test slides. Level-0
    resolution is ``mpp`` (the real slides are ~0.24 um/px; 1.0 keeps CPU demos small); slide sides vary by
    ``size_jitter`` and are multiples of 256.

    Every slide is a lymph-node-like section with lymphoid areas (a ``lymphoid`` share of the tissue drawn
    per slide) and its own stain strength (``stain_jitter``). Tumour slides get ``n_tumours`` regions
    (drawn per slide) whose union covers a share of the tissue drawn by :func:`tumour_fraction_targets`
    (per split: log-uniform in ``tumour_fraction``, at least ``micro_share`` of the tumour slides under 1 %),
    with an atypia from ``atypia_range`` (how large and pleomorphic the tumour nuclei are). In
    ``reference.csv`` a tumour slide is ``Micro`` when its share is under 1 % (:data:`MICRO_SHARE`),
    ``Macro`` otherwise.

    With ``format="dicom"`` every slide is a DICOM VL Whole Slide Microscopy series instead, in a folder named as
    the TIFF without its suffix (``training/normal/normal_001/level_0.dcm``, ``level_1.dcm``, ...; see
    :func:`medbundle.pathology.dicom_wsi.write_dicom_wsi`), with ``dicom_compression`` (``"jpeg"`` or ``"none"``)
    and a synthetic patient per slide (``PAT<seed><slide number>``); the slides' content and labels are the same.

    Args:
        tumour_radius_um: when given, the older, easier layout: 1-3 tumour regions with mean radii drawn from this
            range, whatever share of the tissue they cover (``tumour_fraction``, ``micro_share`` and ``n_tumours`` are
            then not used); for tests of the pipeline rather than of the task.
        slide_kwargs: passed to :func:`make_slide`.

    Returns:
        A summary ``{"layout", "mpp", "slides": [{"path", "label", "split", "name", "annotation", "size",
        "tumour_fraction", ...}], "tumour_fraction": {...}}`` (also written as ``synthetic_summary.json``),
        where ``tumour_fraction`` is each slide's measured share (:func:`tumour_share`) and the top-level
        entry its distribution over the tumour slides.
    """
    root = Path(root)
    fmt = _check_format(format)
    rng = np.random.default_rng(seed)
    rng_t = np.random.default_rng([seed, 16])  # the tumour sizes, lymphoid areas and stains: own stream
    slides: list[dict[str, Any]] = []
    plan = ([("training", "normal", i + 1) for i in range(n_train_normal)]
            + [("training", "tumor", i + 1) for i in range(n_train_tumor)])
    test_labels = ["Tumor"] * n_test_tumor + ["Normal"] * n_test_normal
    rng.shuffle(test_labels)
    plan += [("testing", lab, i + 1) for i, lab in enumerate(test_labels)]
    by_size = tumour_radius_um is None
    targets = {split: iter(tumour_fraction_targets(n, rng_t, tumour_fraction, micro_share) if by_size else [])
               for split, n in (("training", n_train_tumor), ("testing", n_test_tumor))}
    reference = []
    for k, (split, kind, idx) in enumerate(plan):
        positive = kind.lower() == "tumor"
        h, w = _slide_size(rng, size, size_jitter, 256)
        atypia = float(rng.uniform(*atypia_range))
        extra: dict[str, Any] = {"lymphoid": float(rng_t.uniform(*lymphoid)), "stain_jitter": float(stain_jitter)}
        if by_size:
            extra["n_tumours"] = int(rng_t.integers(n_tumours[0], n_tumours[1] + 1))
            extra["tumour_fraction"] = float(next(targets[split])) if positive else None
        else:
            extra["tumour_radius_um"] = tumour_radius_um
        s = make_slide(h, w, mpp=mpp, seed=seed * 100003 + k + 1, tumour=positive, tissue_shape="section",
                       atypia=atypia, **{**extra, **slide_kwargs})
        if split == "training":
            name = f"{kind}_{idx:03d}"
            path = root / "training" / kind / f"{name}.tif"
            ann = root / "training" / "lesion_annotations" / f"{name}.xml"
        else:
            name = f"test_{idx:03d}"
            path = root / "testing" / "images" / f"{name}.tif"
            ann = root / "testing" / "lesion_annotations" / f"{name}.xml"
            reference.append((name, kind, s.tumour_fraction))
        path = _write_slide(s, path, fmt, compression_level, dicom_compression, f"PAT{seed:04d}{k + 1:04d}", "AXILLA")
        if positive:
            write_asap_xml(s.tumour_polygons, ann)
        slides.append({"path": str(path), "label": int(positive), "split": split, "name": name,
                       "annotation": str(ann) if positive else None, "size": [h, w],
                       "tumour_fraction": s.tumour_fraction, "tumour_regions": len(s.tumour_polygons),
                       "atypia": atypia})
    if reference:
        ref = root / "testing" / "reference.csv"
        ref.parent.mkdir(parents=True, exist_ok=True)
        with open(ref, "w", newline="") as f:
            wr = csv.writer(f)
            for name, kind, share in reference:
                wr.writerow([name, kind] + ([("Micro" if share < MICRO_SHARE else "Macro")] if kind == "Tumor" else []))
    shares = np.array([sl["tumour_fraction"] for sl in slides if sl["label"]], np.float64)
    summary = {"layout": "camelyon16", "mpp": mpp, "slides": slides,
               "tumour_fraction": _share_summary(shares)}
    (root / "synthetic_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _share_summary(shares: np.ndarray) -> dict[str, Any]:
    """Distribution of the tumour slides' tumour shares of the tissue."""
    if shares.size == 0:
        return {"n_tumour_slides": 0}
    return {"n_tumour_slides": int(shares.size), "min": float(shares.min()), "median": float(np.median(shares)),
            "max": float(shares.max()), "under_1_percent": int((shares < MICRO_SHARE).sum()),
            "under_5_percent": int((shares < 0.05).sum()),
            "definition": "area inside the tumour outlines and in tissue / tissue area, from the generator's "
                          "outlines and tissue field"}


#: ISUP grade -> (tumour regions, radius range um, atypia) for the synthetic PANDA slides.
_GRADE_TUMOUR = {0: (0, (0, 0), 0.0), 1: (1, (120.0, 200.0), 0.55), 2: (1, (180.0, 280.0), 0.7),
                 3: (2, (180.0, 300.0), 0.85), 4: (3, (200.0, 320.0), 1.0), 5: (4, (240.0, 380.0), 1.2)}
_GLEASON = {0: "negative", 1: "3+3", 2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}


def generate_panda(
    root: str | os.PathLike,
    n_slides: int = 24,
    size: int | tuple[int, int] = (2048, 4096),
    mpp: float = 1.0,
    size_jitter: float = 0.1,
    grades: Sequence[int] | None = None,
    seed: int = 0,
    compression_level: int = 1,
    format: str = "tiff",
    dicom_compression: str = "jpeg",
    **slide_kwargs: Any,
) -> dict[str, Any]:
    """Write synthetic prostate biopsies in the PANDA layout.

    ``root/train.csv`` (``image_id,data_provider,isup_grade,gleason_score``) and
    ``root/train_images/<image_id>.tiff``. Tissue is 2-4 needle cores; the ISUP grade sets how many tumour
    regions there are, how large, and how atypical (denser, darker nuclei). Grades cycle 0..5 unless
    ``grades`` is given. ``format="dicom"`` writes ``train_images/<image_id>/`` DICOM slide folders instead, as
    :func:`generate_camelyon16` does.
    """
    root = Path(root)
    fmt = _check_format(format)
    rng = np.random.default_rng(seed)
    grades = list(grades) if grades is not None else [i % 6 for i in range(n_slides)]
    if len(grades) != n_slides:
        raise ValueError(f"got {len(grades)} grades for {n_slides} slides")
    rows, slides = [], []
    for k, g in enumerate(grades):
        if not 0 <= int(g) <= 5:
            raise ValueError(f"ISUP grades are 0..5, got {g}")
        n_t, radius, atypia = _GRADE_TUMOUR[int(g)]
        h, w = _slide_size(rng, size, size_jitter, 256)
        s = make_slide(h, w, mpp=mpp, seed=seed * 100003 + k + 1, tumour=n_t > 0, tissue_shape="cores",
                       n_tumours=n_t or None, tumour_radius_um=radius if n_t else (1.0, 1.0), atypia=atypia,
                       **slide_kwargs)
        image_id = f"{_hash2(np.array([k]), np.array([seed]), 99)[0]:016x}"[:32]
        path = root / "train_images" / f"{image_id}.tiff"
        path = _write_slide(s, path, fmt, compression_level, dicom_compression, f"PAT{seed:04d}{k + 1:04d}", "PROSTATE")
        provider = ("karolinska", "radboud")[k % 2]
        rows.append([image_id, provider, int(g), _GLEASON[int(g)]])
        slides.append({"path": str(path), "image_id": image_id, "isup_grade": int(g), "size": [h, w]})
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["image_id", "data_provider", "isup_grade", "gleason_score"])
        wr.writerows(rows)
    summary = {"layout": "panda", "mpp": mpp, "slides": slides}
    (root / "synthetic_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
