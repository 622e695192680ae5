"""Synthetic chest CT scans with lung nodules, written in the LUNA16 layout.

No public CT data can be downloaded here, so this generator writes what the LUNA16 adapter
(:func:`medbundle.detection.luna16.luna16_datalist`) and a lung nodule detection bundle read:

- ``root/subset0`` .. ``root/subset{n_subsets-1}/<seriesuid>.mhd`` + ``.raw``: int16 HU, MetaImage with
  identity ``TransformMatrix``; ``Offset`` is the LPS world position (mm) of voxel ``(0, 0, 0)``. Array axes
  ``(x, y, z)`` run towards the patient's left, posterior and superior (LPS), as in LUNA16;
- ``root/annotations.csv``: ``seriesuid,coordX,coordY,coordZ,diameter_mm``, world LPS mm of each nodule
  centre, diameters within ``diameter_range`` (3-30 mm by default);
- ``root/annotations_excluded.csv``: same columns, findings that count neither as hits nor as false
  positives: nodules smaller than ``diameter_range[0]`` (with their diameter) and non-nodule opacities
  (diameter ``-1``, as LUNA16 writes them). They are drawn in the images too;
- ``root/seriesuids.csv``: every series UID, one per line, no header.

Series UIDs are ``1.3.6.1.4.1.14519.5.2.1.6279.6001.`` (the LIDC-IDRI prefix) plus 30 digits drawn from
the seed (64 characters, as real LUNA16 UIDs).

Image content: the chest anatomy of :func:`medbundle.phantoms.render_ct_volume` (air, elliptic
body with a fat rim, vertebral column posteriorly, two lungs at ~-850 HU with thin vessels as
distractors, Gaussian noise), flipped into LPS index order. The lungs are then segmented from the HU
(air-like voxels not connected to the air around the body) and findings are drawn inside them:

- nodules: ellipsoids with axis ratios within ~0.85-1.15 (``diameter_mm`` = the diameter of the sphere of
  the same volume), diameters drawn from LUNA16's own size distribution (the quantiles of its
  ``annotations.csv``, :data:`LUNA16_DIAMETER_QUANTILES`) truncated to ``diameter_range``: on 3-30 mm,
  3.25 mm and up, median 6.4 mm, mean 8.3 mm, 76 % under 10 mm, 4 % of 20 mm or more. Solid nodules
  are 0..50 HU; a fraction ``part_solid_fraction`` is part-solid: a ground-glass halo (-500..-300 HU) with
  a solid core of 30-60 % of the radius. Centres lie in a lung voxel at least ``min(r, 0.6 * deepest)`` mm
  from the lung boundary (so nodules larger than the lung reach the chest wall or mediastinum, never the
  air outside the body); findings do not overlap;
- excluded findings: small solid nodules (50-95 % of ``diameter_range[0]``) and elongated scar-like
  opacities (-350..-150 HU, 8-16 mm long, 1.6-3 mm thick);

all with a partial-volume edge one voxel wide and the scan's noise. Findings only raise attenuation
(they never darken tissue or bone). Everything is a function of the arguments: same seed, same bytes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medbundle.io.metaimage import write_mhd
from medbundle.phantoms import render_ct_volume

__all__ = [
    "LIDC_UID_PREFIX",
    "luna16_seriesuid",
    "LUNA16_DIAMETER_QUANTILES",
    "DIAMETER_DISTRIBUTIONS",
    "sample_nodule_diameters",
    "segment_lungs",
    "render_luna16_scan",
    "generate_luna16",
]

#: Root of the LIDC-IDRI series UIDs that LUNA16 uses.
LIDC_UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
_CSV_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]


def luna16_seriesuid(seed: int, index: int) -> str:
    """A deterministic LUNA16-like series UID: :data:`LIDC_UID_PREFIX` + 30 digits (64 characters)."""
    rng = np.random.default_rng([int(seed), int(index), 16])
    digits = [int(rng.integers(1, 10))] + rng.integers(0, 10, size=29).tolist()  # no leading zero
    return LIDC_UID_PREFIX + "".join(str(d) for d in digits)


#: Quantiles of LUNA16's nodule diameters: ``annotations.csv`` of the challenge (1,186 nodules >= 3 mm accepted
#: by at least 3 of 4 radiologists; min 3.25 mm, median 6.43 mm, mean 8.31 mm, sd 4.76 mm, 76 % under 10 mm,
#: 4 % under 4 mm, 4 % of 20 mm or more, max 32.27 mm). ``(cumulative probability, diameter in mm)``: every
#: 5 % up to the 90th percentile, then the 92.5th, 95th, 97.5th, 99th and the maximum. Their piecewise-linear
#: interpolation is the inverse CDF that :func:`sample_nodule_diameters` draws from (``distribution="luna16"``).
LUNA16_DIAMETER_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.00, 3.25), (0.05, 4.09), (0.10, 4.40), (0.15, 4.67), (0.20, 4.90), (0.25, 5.11), (0.30, 5.31),
    (0.35, 5.63), (0.40, 5.90), (0.45, 6.17), (0.50, 6.43), (0.55, 6.87), (0.60, 7.30), (0.65, 7.92),
    (0.70, 8.72), (0.75, 9.70), (0.80, 11.07), (0.85, 12.86), (0.90, 15.48), (0.925, 17.24), (0.95, 18.95),
    (0.975, 21.85), (0.99, 23.99), (1.00, 32.27),
)
DIAMETER_DISTRIBUTIONS = ("luna16", "power")


def sample_nodule_diameters(
    rng: np.random.Generator,
    n: int,
    diameter_range: Sequence[float] = (3.0, 30.0),
    distribution: str = "luna16",
    exponent: float = 2.0,
) -> np.ndarray:
    """Draw ``n`` nodule diameters (mm) on ``diameter_range`` by inverse-CDF sampling.

    Args:
        rng: random generator (one uniform draw per diameter).
        n: number of diameters.
        diameter_range: ``(min, max)`` in mm; the distribution is truncated to it.
        distribution: ``"luna16"``: LUNA16's own size distribution (:data:`LUNA16_DIAMETER_QUANTILES`, linear between
            its quantiles; on 3-30 mm: median 6.4 mm, mean 8.3 mm, 76 % under 10 mm). ``"power"``: density proportional
            to ``d ** -exponent`` (``exponent=2`` on 3-30 mm: median 5.5 mm, mean 7.7 mm, but 28 % under 4 mm where
            LUNA16 has 4 %).
        exponent: exponent of the ``"power"`` distribution.

    Returns:
        float64 array of shape ``(n,)``.

    Raises:
        ValueError: unknown ``distribution``, or a ``diameter_range`` outside LUNA16's 3.25-32.27 mm.
    """
    lo, hi = float(diameter_range[0]), float(diameter_range[1])
    u = rng.random(int(n))
    if distribution == "luna16":
        prob, diam = (np.asarray(c, dtype=np.float64) for c in zip(*LUNA16_DIAMETER_QUANTILES))
        p_lo, p_hi = np.interp([lo, hi], diam, prob)
        if p_hi <= p_lo:
            raise ValueError(
                f"diameter_range {tuple(diameter_range)} mm holds none of LUNA16's diameters "
                f"({diam[0]}-{diam[-1]} mm); use distribution='power'."
            )
        return np.clip(np.interp(p_lo + u * (p_hi - p_lo), prob, diam), lo, hi)
    if distribution != "power":
        raise ValueError(f"distribution must be one of {DIAMETER_DISTRIBUTIONS}, got {distribution!r}.")
    if abs(exponent - 1.0) < 1e-9:
        return lo * (hi / lo) ** u
    a = 1.0 - exponent
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def segment_lungs(volume: np.ndarray, threshold_hu: float = -400.0) -> tuple[np.ndarray, np.ndarray]:
    """Lungs and outside air of a synthetic chest volume in HU.

    Args:
        volume: HU, shape ``(X, Y, Z)`` with axial slices ``[..., k]``.
        threshold_hu: Voxels below this are air-like (lung parenchyma ~-850 HU, air -1000 HU).

    Returns:
        (lungs, outside): bool arrays of ``volume``'s shape. ``outside`` = air-like components touching the
        in-plane border of the image (air around the body); ``lungs`` = the other air-like voxels.
    """
    air = np.asarray(volume) < threshold_hu
    labels, n = ndimage.label(air)
    faces = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()])
    lut = np.zeros(n + 1, dtype=bool)
    lut[np.unique(faces)] = True
    lut[0] = False
    outside = lut[labels]
    return air & ~outside, outside


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _paint(
    vol: np.ndarray,
    allowed: np.ndarray,
    centre: np.ndarray,
    spacing: np.ndarray,
    half_axes_mm: np.ndarray,
    rotation: np.ndarray,
    hu: float,
    noise_sd: float,
    rng: np.random.Generator,
) -> None:
    """Raise ``vol`` (float32 HU, in place) towards ``hu`` inside an ellipsoid, with a 1-voxel soft edge.

    ``centre`` in continuous voxel indices; ``half_axes_mm`` along the columns of ``rotation`` (LPS-index
    frame scaled to mm). Voxels where ``allowed`` is False, or already denser than the target, are kept.
    """
    edge = float(np.min(spacing))
    reach = (float(np.max(half_axes_mm)) + edge) / spacing
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, vol.shape)
    if np.any(hi <= lo):
        return
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)]
    rel = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # mm offsets from the centre
    rho = np.linalg.norm((rel @ rotation) / half_axes_mm, axis=-1)  # 1 on the surface
    w = np.clip((1.0 - rho) * float(np.min(half_axes_mm)) / edge + 0.5, 0.0, 1.0) * allowed[box]
    target = hu + noise_sd * rng.standard_normal(w.shape)
    bg = vol[box]
    vol[box] = np.where(bg < target, bg + w * (target - bg), bg)


def _place(
    rng: np.random.Generator,
    depth_mm: np.ndarray,
    need_mm: float,
    taken: list[tuple[np.ndarray, float]],
    spacing: np.ndarray,
    radius_mm: float,
) -> np.ndarray | None:
    """A lung voxel (continuous index, jittered by < 0.3 voxel) at depth >= min(need, 0.6 * deepest) mm
    whose distance to every finding placed so far exceeds the sum of radii + 1 mm; None if the lungs are
    empty. When every try collides, the try farthest from the others is taken."""
    deepest = float(depth_mm.max())
    if deepest <= 0:
        return None
    cand = np.flatnonzero(depth_mm >= min(need_mm, 0.6 * deepest))
    best, best_gap = None, -np.inf
    for flat in rng.choice(cand, size=min(40, cand.size), replace=False):
        p = np.asarray(np.unravel_index(int(flat), depth_mm.shape), dtype=np.float64)
        gap = min((np.linalg.norm((p - c) * spacing) - r - radius_mm for c, r in taken), default=np.inf)
        if gap > 1.0:
            best = p
            break
        if gap > best_gap:
            best, best_gap = p, gap
    return None if best is None else best + rng.uniform(-0.3, 0.3, size=3)


def render_luna16_scan(
    shape: Sequence[int],
    spacing: Sequence[float],
    rng: np.random.Generator,
    n_nodules: int,
    n_excluded: int = 0,
    diameter_range: Sequence[float] = (3.0, 30.0),
    part_solid_fraction: float = 0.3,
    diameter_distribution: str = "luna16",
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """Draw one synthetic chest CT scan with nodules and excluded findings (see the module docstring).

    Args:
        shape: ``(X, Y, Z)`` voxels.
        spacing: Voxel size in mm along ``(X, Y, Z)``.
        rng: Random generator for the anatomy, findings and noise.
        n_nodules, n_excluded: How many nodules and excluded findings to draw (fewer only if the lungs are empty).
        diameter_range: ``(min, max)`` nodule diameter in mm.
        part_solid_fraction: Probability that a nodule is part-solid rather than solid.
        diameter_distribution: ``"luna16"`` (LUNA16's size distribution) or ``"power"`` (``1/d^2``); see
            :func:`sample_nodule_diameters`.

    Returns:
        (volume, lungs, nodules, excluded): ``volume``: int16 HU, shape ``(X, Y, Z)`` in LPS index order (``i`` -> left,
            ``j`` -> posterior, ``k`` -> superior), ready for :func:`~medbundle.io.metaimage.write_mhd`; ``lungs``:
            bool, the lung mask before the findings were drawn; ``nodules`` / ``excluded``: lists of ``{"ijk": [i, j, k]
            (continuous voxel indices of the centre), "diameter_mm": float (-1 for a non-nodule), "kind": "solid" |
            "part-solid" | "small-nodule" | "non-nodule"}``.
    """
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float64)
    ras, _ = render_ct_volume("normal", shape, sp, rng)
    vol = ras[::-1, ::-1, :].astype(np.float32)  # RAS index order -> LPS index order (flip x and y)
    lungs, outside = segment_lungs(vol)
    inside = ~outside
    bbox = ndimage.find_objects(lungs.astype(np.int8))
    depth = np.zeros(shape, dtype=np.float32)
    if bbox and bbox[0] is not None:
        crop = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in bbox[0])
        depth[crop] = ndimage.distance_transform_edt(lungs[crop], sampling=sp)
    noise_sd = float(np.std(vol[lungs][::7])) if lungs.any() else 15.0
    taken: list[tuple[np.ndarray, float]] = []

    nodules: list[dict[str, Any]] = []
    for d in sample_nodule_diameters(rng, n_nodules, diameter_range, diameter_distribution):
        r = float(d) / 2.0
        c = _place(rng, depth, r, taken, sp, r)
        if c is None:
            break
        taken.append((c, r))
        scale = rng.uniform(0.85, 1.15, size=3)
        half = r * scale / np.prod(scale) ** (1.0 / 3.0)  # same volume as the sphere of diameter d
        rot = _random_rotation(rng)
        solid_hu = float(rng.uniform(0.0, 50.0))
        if rng.random() < part_solid_fraction:
            _paint(vol, inside, c, sp, half, rot, float(rng.uniform(-500.0, -300.0)), noise_sd, rng)
            _paint(vol, inside, c, sp, half * rng.uniform(0.3, 0.6), rot, solid_hu, noise_sd, rng)
            kind = "part-solid"
        else:
            _paint(vol, inside, c, sp, half, rot, solid_hu, noise_sd, rng)
            kind = "solid"
        nodules.append({"ijk": c.tolist(), "diameter_mm": float(d), "kind": kind})

    excluded: list[dict[str, Any]] = []
    d_min = float(diameter_range[0])
    for _ in range(int(n_excluded)):
        if rng.random() < 0.5:
            d = float(rng.uniform(0.5, 0.95) * d_min)
            c = _place(rng, depth, d / 2.0, taken, sp, d / 2.0)
            if c is None:
                break
            taken.append((c, d / 2.0))
            _paint(vol, inside, c, sp, np.full(3, d / 2.0), np.eye(3), float(rng.uniform(0.0, 50.0)), noise_sd, rng)
            excluded.append({"ijk": c.tolist(), "diameter_mm": d, "kind": "small-nodule"})
        else:
            half = np.array([rng.uniform(4.0, 8.0), rng.uniform(0.8, 1.5), rng.uniform(0.8, 1.5)])
            c = _place(rng, depth, 1.5, taken, sp, float(half[0]))
            if c is None:
                break
            taken.append((c, float(half[0])))
            hu = float(rng.uniform(-350.0, -150.0))
            _paint(vol, inside, c, sp, half, _random_rotation(rng), hu, noise_sd, rng)
            excluded.append({"ijk": c.tolist(), "diameter_mm": -1.0, "kind": "non-nodule"})
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16), lungs, nodules, excluded


def _check_range(name: str, value: Sequence[float], low: float, integer: bool = False) -> tuple[Any, Any]:
    if len(value) != 2 or value[0] > value[1] or value[0] < low:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {tuple(value)}.")
    if integer:
        return int(value[0]), int(value[1])
    return float(value[0]), float(value[1])


def _write_rows(path: Path, rows: list[list[Any]], header: Sequence[str] | None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if header is not None:
            w.writerow(header)
        w.writerows(rows)


def generate_luna16(
    root: str | os.PathLike,
    n_scans: int = 24,
    shape: Sequence[int] = (128, 128, 96),
    spacing: Sequence[float] = (0.7, 0.7, 1.25),
    n_subsets: int = 4,
    seed: int = 0,
    nodules_per_scan: Sequence[int] = (0, 3),
    diameter_range: Sequence[float] = (3.0, 30.0),
    part_solid_fraction: float = 0.3,
    excluded_per_scan: Sequence[int] = (0, 2),
    jitter: float = 0.1,
    diameter_distribution: str = "luna16",
) -> dict[str, Any]:
    """Write a synthetic LUNA16-layout data set under ``root`` (layout in the module docstring).

    Args:
        root: Output folder (created; files of the same names are overwritten).
        n_scans: Number of scans; must be >= ``n_subsets``.
        shape: ``(X, Y, Z)`` voxels of every scan.
        spacing: Nominal voxel size in mm; each scan multiplies the in-plane spacing (the same for x and y) and the
            slice spacing by independent factors within ``1 +- jitter``.
        n_subsets: Number of ``subsetK`` folders; scans are dealt to them at random in equal numbers (+-1).
        seed: Everything is a function of the arguments: same seed, same files.
        nodules_per_scan: ``(min, max)`` nodules per scan, both inclusive, uniform. The first scan (by index) of each
            subset gets at least one nodule when ``max >= 1``, so every fold can measure sensitivity.
        diameter_range: ``(min, max)`` nodule diameter in mm (``annotations.csv``).
        part_solid_fraction: Fraction of nodules drawn part-solid (ground-glass halo and solid core).
        excluded_per_scan: ``(min, max)`` excluded findings per scan, both inclusive (``annotations_excluded.csv``).
        jitter: Relative per-scan variation of the spacing.
        diameter_distribution: ``"luna16"`` (default): LUNA16's nodule size distribution truncated to
            ``diameter_range``; ``"power"``: density ``1/d^2`` (see :func:`sample_nodule_diameters`).

    Returns:
        dict with ``root``, ``n_scans``, ``n_subsets``, ``subsets`` (list of UID lists, one per subset),
        ``n_nodules``, ``n_excluded`` and ``scans``: per scan ``seriesuid``, ``subset``, ``image`` (path
        relative to root), ``shape``, ``spacing`` (mm), ``origin`` (LPS mm), ``nodules`` and ``excluded``
        (lists of ``{"coord": [x, y, z] world LPS mm, "ijk": voxel indices, "diameter_mm", "kind"}``).
    """
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing must have 3 values (x, y, z), got {shape} and {spacing}.")
    if min(shape) < 16 or min(spacing) <= 0:
        raise ValueError(f"shape must be >= 16 voxels and spacing > 0 mm on every axis, got {shape}, {spacing}.")
    if n_subsets < 1 or n_scans < n_subsets:
        raise ValueError(f"need n_subsets >= 1 and n_scans >= n_subsets, got {n_scans} scans, {n_subsets} subsets.")
    nod_lo, nod_hi = _check_range("nodules_per_scan", nodules_per_scan, 0, integer=True)
    exc_lo, exc_hi = _check_range("excluded_per_scan", excluded_per_scan, 0, integer=True)
    d_lo, d_hi = _check_range("diameter_range", diameter_range, 1e-3)
    if not 0.0 <= part_solid_fraction <= 1.0 or not 0.0 <= jitter < 1.0:
        raise ValueError(f"part_solid_fraction and jitter must be in [0, 1], got {part_solid_fraction}, {jitter}.")
    sample_nodule_diameters(np.random.default_rng(0), 1, (d_lo, d_hi), diameter_distribution)  # check early

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    subset_of = np.empty(n_scans, dtype=int)
    subset_of[rng.permutation(n_scans)] = np.arange(n_scans) % n_subsets
    first_of_subset = {int(np.flatnonzero(subset_of == k)[0]) for k in range(n_subsets)}
    uids = [luna16_seriesuid(seed, i) for i in range(n_scans)]
    if len(set(uids)) != n_scans:  # 10^-50-ish; keep the files consistent anyway
        raise RuntimeError("series UID collision; use another seed.")

    ann_rows: list[list[Any]] = []
    exc_rows: list[list[Any]] = []
    scans: list[dict[str, Any]] = []
    for i, uid in enumerate(uids):
        srng = np.random.default_rng([int(seed), i])
        f = 1.0 + jitter * srng.uniform(-1.0, 1.0, size=2)
        sp = np.round([spacing[0] * f[0], spacing[1] * f[0], spacing[2] * f[1]], 6)
        n_nod = int(srng.integers(nod_lo, nod_hi + 1))
        if i in first_of_subset and nod_hi >= 1:
            n_nod = max(n_nod, 1)
        n_exc = int(srng.integers(exc_lo, exc_hi + 1))
        vol, _, nodules, excluded = render_luna16_scan(shape, sp, srng, n_nod, n_exc, (d_lo, d_hi), part_solid_fraction,
                                                       diameter_distribution)
        origin = np.round(
            [
                -(shape[0] - 1) / 2.0 * sp[0] + srng.uniform(-15.0, 15.0),
                -(shape[1] - 1) / 2.0 * sp[1] + srng.uniform(-15.0, 15.0),
                srng.uniform(-350.0, -150.0),
            ],
            4,
        )
        k = int(subset_of[i])
        rel = f"subset{k}/{uid}.mhd"
        write_mhd(root / rel, vol, sp, origin)
        for finding in nodules + excluded:  # the summary holds exactly what the CSVs say
            finding["coord"] = [round(float(v), 6) for v in origin + sp * np.asarray(finding["ijk"])]
            finding["diameter_mm"] = round(float(finding["diameter_mm"]), 4)
        ann_rows += [[uid, *n["coord"], n["diameter_mm"]] for n in nodules]
        exc_rows += [[uid, *e["coord"], e["diameter_mm"]] for e in excluded]
        scans.append(
            {
                "seriesuid": uid,
                "subset": k,
                "image": rel,
                "shape": list(vol.shape),
                "spacing": sp.tolist(),
                "origin": origin.tolist(),
                "nodules": nodules,
                "excluded": excluded,
            }
        )

    _write_rows(root / "annotations.csv", ann_rows, _CSV_HEADER)
    _write_rows(root / "annotations_excluded.csv", exc_rows, _CSV_HEADER)
    _write_rows(root / "seriesuids.csv", [[u] for u in uids], None)
    return {
        "root": str(root),
        "n_scans": n_scans,
        "n_subsets": n_subsets,
        "subsets": [[u for u, k in zip(uids, subset_of) if k == s] for s in range(n_subsets)],
        "n_nodules": len(ann_rows),
        "n_excluded": len(exc_rows),
        "scans": scans,
    }
