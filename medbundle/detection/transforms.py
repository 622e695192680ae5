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
from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["VOXEL_REGION_SHIFT", "BoxesFollowImaged", "BoxesToVoxelRegionsd", "shift_boxes"]

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


def _affine(image: Any, spatial_dims: int) -> np.ndarray:
    """The ``(D + 1, D + 1)`` voxel-to-world matrix of a MetaTensor (MONAI keeps 4 x 4 also for 2D images)."""
    if not isinstance(image, MetaTensor):
        raise TypeError(f"BoxesFollowImaged needs a MetaTensor image (its affine), got {type(image).__name__}.")
    a = np.asarray(image.affine.detach().cpu(), dtype=np.float64)
    idx = list(range(spatial_dims)) + [a.shape[0] - 1]
    return a[np.ix_(idx, idx)]


class BoxesFollowImaged(Randomizable, MapTransform):
    """Run a spatial transform on the image and move the boxes with it, through the change of the image affine.

    MONAI's box transforms cover flips, 90-degree rotations, zooms and crops; a random affine (rotation, shear,
    scale, translation) or a resize to another aspect ratio has none. Every MONAI spatial transform updates the
    image's ``affine`` (voxel -> world), so the map from old to new voxel coordinates is ``inv(new_affine) @
    old_affine`` whatever the transform did; the boxes go through it with MONAI's ``apply_affine_to_boxes``
    (the new box encloses the moved corners, so a rotated box grows as in every box-level augmentation).

    Args:
        transform: A dictionary transform that changes the image geometry (e.g. ``RandAffined``, ``Resized``);
            it must update the image ``MetaTensor``'s affine, as MONAI's spatial transforms do. A random
            transform receives this transform's random state (``set_random_state``).
        image_key: The image the transform moves (a ``MetaTensor`` of shape ``(C, *spatial)``).
        box_keys: Keys of ``(N, 2 * D)`` corner (``StandardMode``) boxes in the image's voxel coordinates.
        voxel_regions: The boxes are in voxel-region coordinates (voxel ``i`` is ``[i, i + 1)``, the convention of
            MONAI's box flips and of torchvision's pixel boxes); they are moved to voxel centres for the affine
            and back. False: voxel-centre coordinates.
        allow_missing_keys: Skip absent box keys.

    Note:
        Boxes may leave the image (a translation or a rotation): follow with ``ClipBoxToImaged``.
    """

    def __init__(
        self,
        transform: Any,
        image_key: str = "image",
        box_keys: KeysCollection = "box",
        voxel_regions: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, box_keys, allow_missing_keys)
        self.transform = transform
        self.image_key = image_key
        self.shift = VOXEL_REGION_SHIFT if voxel_regions else 0.0

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> BoxesFollowImaged:
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:  # the wrapped transform draws its own parameters
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        dims = image.ndim - 1
        old = _affine(image, dims)
        d = dict(self.transform(d))
        move = np.linalg.solve(_affine(d[self.image_key], dims), old)
        if np.allclose(move, np.eye(dims + 1)):
            return d
        for key in self.key_iterator(d):
            boxes = d[key]
            if boxes.shape[0] == 0:
                continue
            t = torch.as_tensor(boxes) if not isinstance(boxes, torch.Tensor) else boxes
            m = torch.as_tensor(move, dtype=torch.float64, device=t.device)
            moved = apply_affine_to_boxes(shift_boxes(t.to(torch.float64), -self.shift), m)
            moved = shift_boxes(moved, self.shift).to(t.dtype if t.is_floating_point() else torch.float32)
            d[key] = moved if isinstance(boxes, torch.Tensor) else moved.numpy()
        return d
