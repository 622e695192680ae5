"""The detector's whole-image inference behind MONAI's ``Inferer`` interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from medbundle.detection.transforms import VOXEL_REGION_SHIFT, shift_boxes

__all__ = ["DetectorInferer"]


class DetectorInferer(Inferer):
    """Inferer that runs a MONAI ``RetinaNetDetector`` on a list of images, whole-scan by sliding window.

    MONAI's inferers take a batched tensor and a network; a ``RetinaNetDetector`` takes a *list* of
    ``(C, *spatial)`` images of any sizes and, with ``use_inferer=True``, runs the sliding-window inferer set by
    ``detector.set_sliding_window_inferer(...)`` over each whole image, then decodes boxes, applies the score
    threshold and NMS set by ``set_box_selector_parameters``. This class puts that call behind MONAI's
    ``Inferer`` interface, so a bundle's ``inferer`` property is the detector's real inference path.

    Args:
        detector: The ``RetinaNetDetector``.
        use_inferer: None (default): use the sliding window when the detector has one set; True / False force it.
        voxel_regions: The detector was trained on boxes in voxel-region coordinates
            (:class:`~medbundle.detection.transforms.BoxesToVoxelRegionsd`): its boxes are moved back to voxel-centre
            coordinates (-0.5 voxel), the frame of the image affine.

    ``__call__(inputs, network=None)``: ``inputs`` is a list of ``(C, *spatial)`` tensors or a ``(B, C,
    *spatial)`` tensor; ``network`` is ignored (the detector holds its network). Returns one dict per image
    with the detector's box (``(K, 2 * spatial_dims)``, image voxels, ``xyzxyz``), label and score keys.
    """

    def __init__(self, detector: torch.nn.Module, use_inferer: bool | None = None, voxel_regions: bool = False) -> None:
        super().__init__()
        self.detector = detector
        self.use_inferer = use_inferer
        self.voxel_regions = bool(voxel_regions)

    def __call__(self, inputs: Any, network: Callable | None = None, *args: Any, **kwargs: Any) -> list[dict]:
        images = list(inputs) if isinstance(inputs, (list, tuple)) else list(torch.unbind(inputs, dim=0))
        use = self.use_inferer
        if use is None:
            use = getattr(self.detector, "inferer", None) is not None
        self.detector.eval()
        preds = self.detector(images, use_inferer=bool(use))
        if self.voxel_regions:
            key = self.detector.target_box_key
            preds = [{**p, key: shift_boxes(p[key], -VOXEL_REGION_SHIFT)} for p in preds]
        return preds
