"""Boxes between the voxel grid of an image and the patient's world frame (mm), for LUNA16-style tables.

MONAI's ``monai.apps.detection`` converts box modes (corner / centre-size) inside one image; it has no
conversion to world coordinates. These functions add it: boxes as ``cccwhd`` (centre x, y, z and size
w, h, d) in mm of the LPS frame that LUNA16's ``annotations.csv`` uses, or as voxel boxes of an image
whose ``affine`` (voxel to world, RAS for MONAI readers) is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medbundle.utils import to_numpy

__all__ = ["as_cccwhd_boxes", "corner_boxes_to_world", "corners_from_centre_size", "image_to_world_boxes",
           "world_to_corner_boxes", "world_to_image_boxes"]


def as_cccwhd_boxes(boxes: Any, name: str) -> np.ndarray:
    """``boxes`` (one box or ``(N, 6)``, array or tensor) as float64 ``(N, 6)`` ``cccwhd``; ValueError otherwise."""
    b = to_numpy(boxes, name, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 6))
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 6:
        raise ValueError(f"{name} must be N x 6 boxes (cx, cy, cz, w, h, d), got shape {b.shape}.")
    return b


def _lps_affine(affine: Any, affine_lps_to_ras: bool) -> np.ndarray:
    a = to_numpy(affine, "affine", dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be a 4 x 4 voxel-to-world matrix, got shape {a.shape}.")
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a if affine_lps_to_ras else a


def _map_boxes(b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map cccwhd boxes through the 4 x 4 matrix ``m`` as MONAI's ``apply_affine_to_boxes`` does: the two
    corners are mapped, the result is their axis-aligned min/max box."""
    lo = b[:, :3] - b[:, 3:] / 2.0
    hi = b[:, :3] + b[:, 3:] / 2.0
    p = lo @ m[:3, :3].T + m[:3, 3]
    q = hi @ m[:3, :3].T + m[:3, 3]
    new_lo, new_hi = np.minimum(p, q), np.maximum(p, q)
    return np.concatenate([(new_lo + new_hi) / 2.0, new_hi - new_lo], axis=1)


def world_to_image_boxes(boxes_world: Any, affine: Any, affine_lps_to_ras: bool = True) -> np.ndarray:
    """World boxes (mm) -> voxel boxes, both ``cccwhd``.

    Args:
        boxes_world: ``(N, 6)`` (or one box ``(6,)``) ``[cx, cy, cz, w, h, d]`` in world mm, LPS when
            ``affine_lps_to_ras`` (LUNA16 CSV coordinates); numpy, list or torch.
        affine: The image's 4 x 4 voxel-to-world affine, ``meta["affine"]`` (RAS, as MONAI readers give it).
        affine_lps_to_ras: True: the affine is RAS and the boxes LPS; the affine's first two rows are negated (RAS ->
            LPS) before it is inverted, as ``AffineBoxToImageCoordinated(affine_lps_to_ras=True)``. False: boxes and
            affine are in the same frame.

    Returns:
        float64 ``(N, 6)``: ``[ci, cj, ck, size_i, size_j, size_k]`` in voxels of the image's array axes
        (voxel centres at integer indices). For a diagonal affine, ``ci = (x_lps - ox_lps) / sx`` and
        ``size_i = w / sx``. Equal to ``ConvertBoxToStandardModed(mode="cccwhd")`` +
        ``AffineBoxToImageCoordinated(affine_lps_to_ras=True)`` followed by a conversion back to ``cccwhd``.
    """
    b = as_cccwhd_boxes(boxes_world, "boxes_world")
    return _map_boxes(b, np.linalg.inv(_lps_affine(affine, affine_lps_to_ras)))


def image_to_world_boxes(boxes_image: Any, affine: Any, affine_lps_to_ras: bool = True) -> np.ndarray:
    """Voxel boxes -> world boxes (mm), both ``cccwhd``; the inverse of :func:`world_to_image_boxes`.

    ``boxes_image``: ``(N, 6)`` ``[ci, cj, ck, size_i, size_j, size_k]`` in voxels; ``affine``: the image's
    ``meta["affine"]`` (RAS); with ``affine_lps_to_ras`` the result is LPS (LUNA16 CSV coordinates).
    Returns float64 ``(N, 6)`` ``[cx, cy, cz, w, h, d]``, sizes in mm (>= 0).
    """
    b = as_cccwhd_boxes(boxes_image, "boxes_image")
    return _map_boxes(b, _lps_affine(affine, affine_lps_to_ras))


def corner_boxes_to_world(boxes_xyzxyz: Any, affine: Any, affine_lps_to_ras: bool = True) -> np.ndarray:
    """Voxel corner boxes -> world boxes.

    Args:
        boxes_xyzxyz: ``(N, 6)`` ``[i0, j0, k0, i1, j1, k1]`` in voxels of the image the affine belongs to (MONAI
            ``StandardMode``, what ``RetinaNetDetector`` predicts).
        affine: ``(4, 4)`` voxel-to-world matrix of that image (``meta["affine"]``, RAS for MONAI readers).
        affine_lps_to_ras: True: give LPS world coordinates (LUNA16) from a RAS affine; see the module docstring.

    Returns:
        float64 ``(N, 6)`` world ``cccwhd`` boxes ``[x, y, z, w, h, d]`` in mm; equal to
        ``image_to_world_boxes(cccwhd of the input, affine, affine_lps_to_ras)``.
    """
    b = to_numpy(boxes_xyzxyz, dtype=np.float64).reshape(-1, 6)
    centre_size = np.concatenate([(b[:, :3] + b[:, 3:]) / 2.0, b[:, 3:] - b[:, :3]], axis=1)
    return image_to_world_boxes(centre_size, affine, affine_lps_to_ras=affine_lps_to_ras)


def world_to_corner_boxes(boxes_world: Any, affine: Any, affine_lps_to_ras: bool = True) -> np.ndarray:
    """World ``cccwhd`` boxes (mm) -> voxel ``xyzxyz`` boxes; the inverse of :func:`corner_boxes_to_world`."""
    c = world_to_image_boxes(boxes_world, affine, affine_lps_to_ras=affine_lps_to_ras)
    return np.concatenate([c[:, :3] - c[:, 3:] / 2.0, c[:, :3] + c[:, 3:] / 2.0], axis=1)


def corners_from_centre_size(boxes_world: np.ndarray) -> np.ndarray:
    """``(N, 6)`` ``cccwhd`` boxes -> ``(N, 6)`` corner boxes ``[x0, y0, z0, x1, y1, z1]`` in the same units."""
    centre, half = boxes_world[:, :3], boxes_world[:, 3:] / 2.0
    return np.concatenate([centre - half, centre + half], axis=1)
