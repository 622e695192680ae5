"""Boxes in the voxel-region coordinates that MONAI's box augmentations assume.

MONAI's detection transforms use two conventions for the same voxel grid:

- ``AffineBoxToImageCoordinated`` (and ``AffineBoxToWorldCoordinated``) map world boxes through the image
  affine, which puts the centre of voxel ``i`` at coordinate ``i`` (voxel-centre coordinates);
- ``FlipBoxd`` / ``RandFlipBoxd`` (``x -> n - x``), ``RotateBox90d`` and the zooms treat voxel ``i`` as
  the interval ``[i, i + 1)`` (voxel-region coordinates): a box that covers voxel 2 of 10 must be
  ``[2, 3]`` to be flipped onto voxel 7 (``[7, 8]``).

Chained as MONAI's detection recipe chains them, a box from the affine (``[1.5, 2.5]``) is flipped to
``[7.5, 8.5]`` while its voxel goes to 7: a one-voxel error on every flipped axis. A detector trained with
random flips and rotations therefore learns boxes half a voxel off on average, and predicts them so; mapped
back through the affine, every detection is shifted by half a voxel per axis (0.5-0.75 mm at LUNA16-like
spacings), which costs hits on 3-6 mm nodules whose LUNA16 hit radius is 1.5-3 mm.

:class:`BoxesToVoxelRegionsd` moves the boxes to voxel-region coordinates after
``AffineBoxToImageCoordinated`` (+0.5 voxel), so that every augmentation is exact;
:class:`~medbundle.detection.inferers.DetectorInferer` and
:class:`~medbundle.detection.engines.DetectionEvaluator` with ``voxel_regions=True`` move the predictions (and
ground truth) back (-0.5 voxel) before anything maps them to world coordinates.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["VOXEL_REGION_SHIFT", "BoxesToVoxelRegionsd", "shift_boxes"]

#: voxel-region coordinate minus voxel-centre coordinate of the same point, per axis (voxels)
VOXEL_REGION_SHIFT = 0.5


def shift_boxes(boxes: Any, shift: float) -> Any:
    """Corner boxes ``(N, 2 * D)`` (``StandardMode``: ``[x0, y0, z0, x1, y1, z1]``; tensor or array) moved by
    ``shift`` voxels along every axis. Returns a new object of the same type."""
    return boxes + shift if isinstance(boxes, torch.Tensor) else np.asarray(boxes) + shift


class BoxesToVoxelRegionsd(MapTransform):
    """Move ``StandardMode`` (corner) boxes from voxel-centre to voxel-region coordinates (+0.5 voxel), or back
    with ``inverse=True``; see the module docstring for why.

    Args:
        box_keys: keys of ``(N, 2 * D)`` corner boxes in image voxel coordinates.
        inverse: move from voxel-region back to voxel-centre coordinates (-0.5 voxel).
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(self, box_keys: KeysCollection, inverse: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(box_keys, allow_missing_keys)
        self.shift = -VOXEL_REGION_SHIFT if inverse else VOXEL_REGION_SHIFT

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = shift_boxes(d[key], self.shift)
        return d
