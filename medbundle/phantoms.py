"""Synthetic chest anatomy (a CT volume and a frontal radiograph) that more than one domain paints findings into.

CT: the CT classifier's generator (:mod:`medbundle.ct.synthetic`) draws whole volumes with a finding per
class; the nodule detector's generator (:mod:`medbundle.detection.synthetic`) takes the "normal" anatomy
and places LUNA16-sized nodules in it. Both start from :func:`render_ct_volume`: air around an elliptic
body (soft tissue with a fat rim), a vertebral column, two lungs (~-850 HU) with thin vessels as
distractors, and Gaussian noise; axes ``(X, Y, Z)`` run right, anterior, superior (RAS).

Radiograph: the chest X-ray classifier's generator (:mod:`medbundle.xray.synthetic`) and the 2D lesion
detector's generators (:mod:`medbundle.detection.synthetic_cxr`) start from :func:`chest_radiograph_anatomy`,
a noise-free frontal chest background (body, two darker lung fields, brighter mediastinum, faint rib
stripes) on a grid of fractions of the image side; :data:`CXR_LUNG_FIELDS` gives the lung ellipses it
draws, so a generator can place lesions inside the lungs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["CT_CLASS_NAMES", "CXR_LUNG_FIELDS", "chest_radiograph_anatomy", "render_ct_volume"]

#: Class names the phantom knows how to draw (any subset with "normal" may be used, e.g. binary).
CT_CLASS_NAMES: tuple[str, ...] = ("normal", "nodule", "consolidation")


def _box(center: np.ndarray, half: np.ndarray, grid: Sequence[np.ndarray]) -> tuple[slice, ...] | None:
    """Index box of the voxels whose centres lie within ``center +- half`` (mm); None if empty."""
    out = []
    for c, h, g in zip(center, half, grid):
        lo, hi = np.searchsorted(g, c - h), np.searchsorted(g, c + h, side="right")
        if hi <= lo:
            return None
        out.append(slice(int(lo), int(hi)))
    return tuple(out)


def _ellipsoid(center: Sequence[float], half: Sequence[float], grid: Sequence[np.ndarray]) -> np.ndarray:
    x, y, z = (g.reshape(s) for g, s in zip(grid, ((-1, 1, 1), (1, -1, 1), (1, 1, -1))))
    return ((x - center[0]) / half[0]) ** 2 + ((y - center[1]) / half[1]) ** 2 + ((z - center[2]) / half[2]) ** 2 <= 1


def _point_in_ellipsoid(rng: np.random.Generator, center: np.ndarray, half: np.ndarray) -> np.ndarray:
    v = rng.normal(size=3)
    v *= rng.random() ** (1 / 3) / np.linalg.norm(v)
    return center + v * half


def render_ct_volume(
    label: str,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic chest CT volume and its lesion mask.

    Args:
        label: One of :data:`CT_CLASS_NAMES`: which finding to draw.
        shape: ``(X, Y, Z)`` voxels; axes run right, anterior, superior (RAS).
        spacing: Voxel size in mm along ``(X, Y, Z)``.
        rng: Random generator for anatomy jitter, vessels, findings and noise (a fresh one if None).

    Returns:
        (volume, mask): ``volume`` int16 HU in [-1024, 3071], shape ``shape``; ``mask`` uint8 in {0, 1}, same
        shape, 1 on the finding (all 0 for ``"normal"``).
    """
    if label not in CT_CLASS_NAMES:
        raise ValueError(f"unknown synthetic CT class {label!r}; the generator draws {list(CT_CLASS_NAMES)}.")
    rng = np.random.default_rng() if rng is None else rng
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float64)
    grid = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, sp)]
    fov = np.asarray(shape) * sp
    x, y, z = (g.reshape(s) for g, s in zip(grid, ((-1, 1, 1), (1, -1, 1), (1, 1, -1))))

    # body: elliptic cylinder, slightly narrower towards the ends, shifted a little
    scale = rng.uniform(0.9, 1.0)
    a, b = 0.42 * fov[0] * scale, 0.34 * fov[1] * scale
    shift = rng.uniform(-0.03, 0.03, size=2) * fov[:2]
    taper = 1.0 - 0.08 * (z / (fov[2] / 2)) ** 2
    r_body = ((x - shift[0]) / (a * taper)) ** 2 + ((y - shift[1]) / (b * taper)) ** 2
    vol = np.full(shape, -1000.0, dtype=np.float32)
    body = np.broadcast_to(r_body <= 1.0, shape)
    vol[body] = rng.uniform(30.0, 50.0)
    vol[np.broadcast_to((r_body > 0.86) & (r_body <= 1.0), shape)] = -90.0  # subcutaneous fat

    # spine: vertebral column posteriorly, full length
    spine = ((x - shift[0]) ** 2 + (y - (shift[1] - 0.72 * b)) ** 2) <= (0.15 * b) ** 2
    vol[np.broadcast_to(spine, shape)] = rng.uniform(600.0, 800.0)

    # lungs: two ellipsoids
    lungs = np.zeros(shape, dtype=bool)
    lung_geom = []
    for side in (-1.0, 1.0):
        c = np.array([shift[0] + side * 0.47 * a, shift[1] + 0.08 * b, 0.05 * fov[2]])
        h = np.array([0.36 * a, 0.6 * b, 0.42 * fov[2]]) * rng.uniform(0.92, 1.05, size=3)
        lungs |= _ellipsoid(c, h, grid)
        lung_geom.append((c, h))
    lung_hu = rng.uniform(-870.0, -830.0)
    vol[lungs] = lung_hu

    # vessels: thin tubes inside the lungs (distractors present in every class)
    for c, h in lung_geom:
        for _ in range(int(rng.integers(6, 13))):
            p0 = _point_in_ellipsoid(rng, c, 0.7 * h)
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            length, radius = rng.uniform(10.0, 30.0), rng.uniform(0.8, 1.6)
            p1 = p0 + length * d
            box = _box((p0 + p1) / 2, np.abs(p1 - p0) / 2 + radius + sp, grid)
            if box is None:
                continue
            gx, gy, gz = (g[s] for g, s in zip(grid, box))
            q = np.stack(np.meshgrid(gx, gy, gz, indexing="ij"), axis=-1) - p0
            t = np.clip(q @ d, 0.0, length)
            dist = np.linalg.norm(q - t[..., None] * d, axis=-1)
            sel = (dist <= radius) & lungs[box]
            vol[box][sel] = rng.uniform(-50.0, 40.0)

    mask = np.zeros(shape, dtype=np.uint8)
    if label == "nodule":
        for _ in range(int(rng.integers(1, 4))):
            c, h = lung_geom[int(rng.integers(0, 2))]
            r = rng.uniform(4.0, 10.0)
            p = _point_in_ellipsoid(rng, c, np.maximum(h - r, 1.0) * 0.9)
            box = _box(p, np.full(3, r + 1.0), grid)
            if box is None:
                continue
            gx, gy, gz = (g[s] for g, s in zip(grid, box))
            dist = np.sqrt((gx[:, None, None] - p[0]) ** 2 + (gy[None, :, None] - p[1]) ** 2 + (gz - p[2]) ** 2)
            sel = dist <= r
            vol[box][sel] = rng.uniform(10.0, 50.0)
            mask[box][sel] = 1
    elif label == "consolidation":
        c, h = lung_geom[int(rng.integers(0, 2))]
        p = c + np.array([0.0, rng.uniform(-0.3, 0.3) * h[1], rng.choice([-0.45, 0.45]) * h[2]])
        half = rng.uniform(14.0, 22.0, size=3)
        box = _box(p, half, grid)
        if box is not None:
            region = _ellipsoid(p, half, [g[s] for g, s in zip(grid, box)]) & lungs[box]
            sub = region.shape
            coarse = rng.normal(size=(7, 7, 7))
            field = ndimage.zoom(coarse, [max(n, 2) / 7.0 for n in sub], order=1)[: sub[0], : sub[1], : sub[2]]
            field = np.pad(field, [(0, n - f) for n, f in zip(sub, field.shape)], mode="edge")
            sel = region & (field > -0.3)
            vol[box][sel] = np.clip(-90.0 + 60.0 * field[sel], -120.0, 0.0)
            mask[box][sel] = 1

    noise_sd = rng.uniform(10.0, 20.0)
    vol += noise_sd * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16), mask


# ----------------------------------------------------------------------------------------------------------
# frontal chest radiograph
# ----------------------------------------------------------------------------------------------------------
#: Lung fields drawn by :func:`chest_radiograph_anatomy`: ``(cx, cy, rx, ry)`` of each ellipse as fractions of the
#: image side (x = column, y = row; image left first). The darkening is full inside 0.7 of each radius and fades to
#: nothing at the ellipse's edge.
CXR_LUNG_FIELDS: tuple[tuple[float, float, float, float], ...] = ((0.32, 0.5, 0.15, 0.3), (0.68, 0.5, 0.15, 0.3))


def chest_radiograph_anatomy(size: int, pad: int = 0) -> np.ndarray:
    """Noise-free frontal chest background of shape ``(size + 2 pad, size + 2 pad)`` (rows, columns).

    Float32 grey levels in about [20, 190] (bright = attenuating): an elliptic body, two darker lung fields
    (:data:`CXR_LUNG_FIELDS`), a brighter mediastinum and faint rib stripes over the lungs. Coordinates are fractions of
    ``size``; ``pad`` extra pixels on every side let a caller shift the anatomy by cropping.
    """
    n = size + 2 * pad
    c = (np.arange(n, dtype=np.float32) - pad + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")

    def soft_ellipse(cx: float, cy: float, rx: float, ry: float, edge: float = 0.04) -> np.ndarray:
        d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return np.clip((1.0 - d) / edge, 0.0, 1.0)

    body = soft_ellipse(0.5, 0.56, 0.46, 0.52, edge=0.08)
    (lcx, lcy, lrx, lry), (rcx, rcy, rrx, rry) = CXR_LUNG_FIELDS
    lungs = np.maximum(soft_ellipse(lcx, lcy, lrx, lry, 0.3), soft_ellipse(rcx, rcy, rrx, rry, 0.3))
    mediastinum = np.exp(-(((x - 0.5) / 0.08) ** 2)) * np.clip((y - 0.15) / 0.2, 0.0, 1.0)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (9.0 * y + 1.5 * (x - 0.5) ** 2))
    img = 25.0 + 135.0 * body - 70.0 * lungs * body + 30.0 * mediastinum * body + 10.0 * ribs * lungs
    return img.astype(np.float32)
