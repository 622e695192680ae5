"""CT transforms: HU windowing presets, body masks, and training-crop weights around lesions.

What this adds over MONAI:

- :class:`CTWindowd`: MONAI's ``ScaleIntensityRanged`` takes ``a_min``/``a_max``; radiologists think in
  window level/width (WL/WW) and named presets (lung, mediastinum, bone, ...). This transform takes those,
  and can stack several windows as channels (one channel per preset) for multi-window network input.
- :class:`BodyMaskd`: a foreground (patient body) mask from HU: threshold, largest 3D connected component,
  holes filled slice by slice so that the lungs (air inside the body) count as body. Used to draw training
  patches inside the patient (``RandCropByPosNegLabeld`` / ``RandWeightedCropd`` with ``label_key`` or
  ``w_key`` = the mask) instead of in the air around it.

Conventions: images are channel-first, ``(C, X, Y, Z)`` in HU after ``LoadImaged`` +
``EnsureChannelFirstd`` (+ ``Orientationd(axcodes="RAS")``, after which the last axis runs
inferior -> superior and axial slices are ``[..., k]``).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange
from monai.utils import convert_to_dst_type, ensure_tuple, ensure_tuple_rep
from scipy import ndimage

__all__ = [
    "WINDOW_PRESETS",
    "window_range",
    "CTWindowd",
    "body_mask",
    "BodyMaskd",
    "dilate_box",
    "CropWeightMapd",
]

#: Named CT windows as (level = centre WL, width WW), both in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 3500.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}


def window_range(
    preset: str | None = "lung", level: float | None = None, width: float | None = None
) -> tuple[float, float]:
    """HU range ``(WL - WW/2, WL + WW/2)`` of a window.

    Args:
        preset: A key of :data:`WINDOW_PRESETS`, or None when both ``level`` and ``width`` are given.
        level, width: Window centre and width in HU; each one given overrides that value of the preset.

    Raises:
        ValueError: Unknown preset (the message lists the presets), a missing level/width without preset, or width <= 0.
    """
    if preset is not None:
        if preset not in WINDOW_PRESETS:
            raise ValueError(
                f"unknown CT window preset {preset!r}; use one of {sorted(WINDOW_PRESETS)} "
                "or pass level= and width= (HU) with preset=None."
            )
        p_level, p_width = WINDOW_PRESETS[preset]
        level = p_level if level is None else level
        width = p_width if width is None else width
    if level is None or width is None:
        raise ValueError(
            f"CT window needs a level and a width (HU), got level={level}, width={width}; "
            f"pass both or a preset from {sorted(WINDOW_PRESETS)}."
        )
    if not float(width) > 0:
        raise ValueError(f"CT window width must be > 0 HU, got {width}.")
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


class CTWindowd(MapTransform):
    """Map a CT window of HU values linearly onto ``[b_min, b_max]`` (dictionary transform).

    ``[WL - WW/2, WL + WW/2]`` goes to ``[b_min, b_max]``; values outside are clipped when ``clip``. This is
    MONAI's ``ScaleIntensityRange(a_min=WL - WW/2, a_max=WL + WW/2, ...)`` (used internally, so results are
    identical), driven by named presets. (DICOM's VOI window, PS3.3 C.11.2.1.2, places the edges 0.5 HU
    differently; the difference is below the display resolution of any preset.)

    Args:
        keys: Keys of the CT images, channel-first arrays/tensors in HU of any spatial size; numpy arrays, torch tensors
            and MetaTensors (meta is kept) are accepted, on any device.
        preset: Window name from :data:`WINDOW_PRESETS` (``lung``, ``mediastinum``, ``bone``, ``brain``, ``abdomen``);
            None when ``level`` and ``width`` are both given.
        level, width: Window centre and width in HU, overriding the preset's values.
        presets: Several preset names: the output holds one window per preset, stacked along the channel axis (input
            ``(C, ...)`` -> output ``(C * len(presets), ...)``, windows in the order given, each applied to all input
            channels). When given, ``preset``, ``level`` and ``width`` are ignored.
        b_min, b_max: Output range (float32).
        clip: Clip to ``[b_min, b_max]``.
        allow_missing_keys: Skip keys that are missing from the data.

    Raises:
        ValueError: Unknown preset name (the message lists the presets), or a window without level/width, or width <= 0.
    """

    def __init__(
        self,
        keys: KeysCollection,
        preset: str | None = "lung",
        level: float | None = None,
        width: float | None = None,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        presets: Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if presets is not None:
            names = [presets] if isinstance(presets, str) else list(presets)
            if not names:
                raise ValueError(f"CTWindowd: presets is empty; give at least one of {sorted(WINDOW_PRESETS)}.")
            self.ranges = [window_range(p) for p in names]
        else:
            self.ranges = [window_range(preset, level, width)]
        self.scalers = [
            ScaleIntensityRange(a_min=lo, a_max=hi, b_min=b_min, b_max=b_max, clip=clip) for lo, hi in self.ranges
        ]

    def window(self, img: Any) -> Any:
        """Window one channel-first image; see the class docstring for shapes."""
        outs = [s(img) for s in self.scalers]
        if not isinstance(img, torch.Tensor):  # MONAI returns a MetaTensor for numpy input: give numpy back
            outs = [
                np.asarray(o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else o, np.float32) for o in outs
            ]
        if len(outs) == 1:
            return outs[0]
        if isinstance(outs[0], torch.Tensor):
            return torch.cat(outs, dim=0)  # a MetaTensor keeps the meta of the first
        return np.concatenate(outs, axis=0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.window(d[key])
        return d


def body_mask(
    image: np.ndarray,
    threshold_hu: float = -500.0,
    largest_component: bool = True,
    fill_holes: bool = True,
    slice_axis: int = -1,
) -> np.ndarray:
    """Body (foreground) mask of a CT volume or slice in HU.

    Args:
        image: Spatial array (no channel axis), 2D ``(X, Y)`` or 3D ``(X, Y, Z)``, HU.
        threshold_hu: Voxels above this value are tissue (air is about -1000 HU, fat about -100 HU).
        largest_component: Keep only the largest connected component (6-connectivity in 3D), dropping the table, clothes
            and noise specks outside the patient.
        fill_holes: Fill holes in each slice along ``slice_axis`` (2D: the whole image). Slice-wise filling makes the
            lungs part of the body even though, in a real scan, they connect to outside air through the trachea (a 3D
            fill would leave them empty).
        slice_axis: Spatial axis across which slices are taken (the last, axial after ``Orientationd("RAS")``).

    Returns:
        np.ndarray, bool, same shape as ``image``. All False when no voxel exceeds the threshold.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"body_mask expects a 2D or 3D spatial array in HU, got shape {img.shape}.")
    mask = img > threshold_hu
    if largest_component and mask.any():
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
    if fill_holes and mask.any():
        if mask.ndim == 2:
            mask = ndimage.binary_fill_holes(mask)
        else:
            moved = np.moveaxis(mask, slice_axis, 0)
            filled = np.stack([ndimage.binary_fill_holes(s) if s.any() else s for s in moved], axis=0)
            mask = np.moveaxis(filled, 0, slice_axis)
    return np.ascontiguousarray(mask)


class BodyMaskd(MapTransform):
    """Add a uint8 body mask, computed from a channel-first CT image in HU (dictionary transform).

    Args:
        keys: Key of the image, shape ``(C, X, Y, Z)`` (or ``(C, X, Y)``) in HU; channel 0 is used. Run it before
            intensity windowing.
        mask_key: Key the mask is written to: uint8 in {0, 1}, shape ``(1, X, Y, Z)``, same type as the image (a
            MetaTensor keeps the image's meta, so ``Spacingd``/``Orientationd`` and crops treat both alike).
        threshold_hu, largest_component, fill_holes, slice_axis: See :func:`body_mask` (``slice_axis`` counts spatial
            axes, -1 = the last).
        allow_missing_keys: Skip keys that are missing from the data.

    Use with ``RandCropByPosNegLabeld(label_key=mask_key, pos=1, neg=0, ...)`` to draw patches centred inside
    the body.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "body_mask",
        threshold_hu: float = -500.0,
        largest_component: bool = True,
        fill_holes: bool = True,
        slice_axis: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"BodyMaskd takes one image key, got {list(self.keys)}.")
        self.mask_key = mask_key
        self.kwargs = {
            "threshold_hu": threshold_hu,
            "largest_component": largest_component,
            "fill_holes": fill_holes,
            "slice_axis": slice_axis,
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if arr.ndim not in (3, 4):
                raise ValueError(
                    f"BodyMaskd: {key!r} must be channel-first (C, X, Y[, Z]) in HU, got shape {arr.shape}; "
                    "add EnsureChannelFirstd before it."
                )
            mask = body_mask(arr[0], **self.kwargs)[None].astype(np.uint8)
            out = convert_to_dst_type(mask, img, dtype=torch.uint8 if isinstance(img, torch.Tensor) else np.uint8)[0]
            if isinstance(img, MetaTensor) and isinstance(out, MetaTensor):
                out.meta = copy.deepcopy(dict(img.meta))
                out.applied_operations = copy.deepcopy(img.applied_operations)
            d[self.mask_key] = out
        return d






def dilate_box(mask: torch.Tensor, margin: Sequence[int] | int) -> torch.Tensor:
    """Dilate a channel-first mask by a box: ``margin[i]`` voxels both ways along spatial axis ``i``.

    A voxel of the result is True when some non-zero voxel of ``mask`` lies within ``margin`` voxels of it
    along every axis (Chebyshev distance per axis), i.e. when a box of half-size ``margin`` centred on the
    voxel overlaps the mask. Separable running sums make it O(voxels) per axis, whatever the margin, on any
    device.

    Args:
        mask: ``(C, *spatial)`` tensor; non-zero = foreground.
        margin: one int per spatial axis, or one for all; 0 leaves that axis alone.

    Returns:
        Bool tensor of the same shape and device.

    Raises:
        ValueError: a negative margin, or a margin with the wrong number of values.
    """
    out = torch.as_tensor(mask) != 0
    nd = out.ndim - 1
    try:
        margins = [int(m) for m in ensure_tuple_rep(margin, nd)]
    except ValueError as e:
        raise ValueError(f"dilate_box: margin {margin!r} must be one int or one per spatial axis ({nd}).") from e
    if any(m < 0 for m in margins):
        raise ValueError(f"dilate_box: margin must be >= 0 voxels, got {margins}.")
    for axis, m in enumerate(margins, start=1):
        if m == 0 or not out.any():
            continue
        n = out.shape[axis]
        csum = torch.cumsum(out.to(torch.int32), dim=axis)
        pad_shape = list(csum.shape)
        pad_shape[axis] = 1
        csum = torch.cat([torch.zeros(pad_shape, dtype=csum.dtype, device=csum.device), csum], dim=axis)
        idx = torch.arange(n, device=out.device)
        hi = torch.clamp(idx + m + 1, max=n)
        lo = torch.clamp(idx - m, min=0)
        out = (csum.index_select(axis, hi) - csum.index_select(axis, lo)) > 0
    return out


class CropWeightMapd(MapTransform):
    """Weight map for :class:`~monai.transforms.RandWeightedCropd`: where training patches are centred.

    ``weight = body + roi_weight * roi + lesion_weight * near_lesion`` (body and roi are 0 outside the
    body), so patches fall inside the body, preferably inside the region where findings occur (``roi``:
    body voxels whose intensity lies in ``roi_range``, e.g. lung parenchyma in HU), and on the labelled
    finding (a finding mask) when the item has one. The ROI term matters for patch-trained volume
    classifiers: without it, patches of normal volumes fall mostly in soft tissue while lesion-centred
    patches of abnormal volumes fall in the lungs, and the network learns "lung" instead of the finding.
    Without a body mask, every voxel has weight 1.

    ``near_lesion`` is the finding mask dilated by ``lesion_margin`` voxels per axis: a patch drawn there
    holds the finding anywhere within ``lesion_margin`` of its centre, not always at its centre. This has
    to match how the volume is read at inference: sliding windows with step ``s`` see a finding at up to
    ``s / 2`` voxels per axis from the nearest window's centre (``s = roi * (1 - overlap)``, so
    ``roi / 4`` at 50 % overlap). A network trained only on finding-centred patches (``lesion_margin`` 0)
    learns "a finding at the centre": measured on the synthetic CT demo, every test nodule scored
    p(nodule) >= 0.98 in a window centred on it, but a mean of 0.03-0.85 at 8 voxels (a quarter window)
    off centre, so whether a nodule volume was found depended on where the window grid happened to fall.

    Args:
        body_key: key of the body mask (e.g. from :class:`BodyMaskd`).
        lesion_key: key of an optional finding mask (non-zero = finding).
        out_key: key the weight map is written to (float32, same shape as the body mask).
        lesion_weight: how much more likely a voxel near a finding is as a patch centre than a body voxel; a very large
            value (e.g. 1e6) makes every patch of an item with a finding hold the finding, so that the item's label is
            true of each of its patches.
        ref_key: key of the image the ROI term is computed from (channel 0).
        roi_range: ``(low, high)`` intensity range of the region of interest in ``ref_key``'s units at this point of the
            pipeline (HU before windowing); None disables the ROI term.
        roi_weight: weight added to ROI voxels.
        lesion_margin: voxels per spatial axis (or one int for all) by which the finding mask is dilated
            (:func:`dilate_box`) before ``lesion_weight`` is put on it; 0 centres every such patch on a finding voxel.

    Raises:
        ValueError: a negative ``lesion_margin``.
    """

    def __init__(
        self,
        body_key: str = "body_mask",
        lesion_key: str = "mask",
        out_key: str = "crop_weight",
        lesion_weight: float = 50.0,
        ref_key: str = "image",
        roi_range: Sequence[float] | None = None,
        roi_weight: float = 5.0,
        lesion_margin: Sequence[int] | int = 0,
    ) -> None:
        super().__init__([body_key], allow_missing_keys=True)
        self.body_key, self.lesion_key, self.out_key, self.ref_key = body_key, lesion_key, out_key, ref_key
        self.lesion_weight = float(lesion_weight)
        self.roi_range = None if roi_range is None else (float(roi_range[0]), float(roi_range[1]))
        self.roi_weight = float(roi_weight)
        margins = [int(m) for m in ensure_tuple(lesion_margin)]
        if any(m < 0 for m in margins):
            raise ValueError(f"CropWeightMapd: lesion_margin must be >= 0 voxels, got {lesion_margin!r}.")
        self.lesion_margin = margins[0] if len(margins) == 1 else margins

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.body_key] if self.body_key in d else d[self.ref_key][:1]
        weight = (ref > 0).float() if self.body_key in d else torch.ones_like(ref, dtype=torch.float32)
        if self.roi_range is not None and self.ref_key in d:
            img = torch.as_tensor(d[self.ref_key])[:1]
            roi = (img >= self.roi_range[0]) & (img <= self.roi_range[1]) & (weight > 0)
            weight = weight + self.roi_weight * roi.float()
        lesion = d.get(self.lesion_key)
        if lesion is not None and tuple(lesion.shape[1:]) == tuple(weight.shape[1:]):
            near = dilate_box(torch.as_tensor(lesion)[:1], self.lesion_margin)
            weight = weight + self.lesion_weight * near.to(weight.device).float()
        d[self.out_key] = weight
        return d
