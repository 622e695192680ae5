"""Post-processing that keeps non-image outputs intact when a MONAI Label server runs the bundle.

MONAI Label's bundle inferer appends ``Restored(keys="pred", ref_image="image")`` to a classification
bundle's ``postprocessing``: it resizes ``pred`` to the input's ``spatial_shape`` as if ``pred`` were a
label map, which fails for a vector of class scores (``operands could not be broadcast together``).
Its classification writer then reads ``pred.array`` (a :class:`~monai.data.MetaTensor` attribute).
:class:`ClassScoresd` ends a classification ``postprocessing``: it leaves the scores as they are, makes
them a ``MetaTensor``, and removes ``spatial_shape`` from the reference image's metadata *copy* in the
item, so that a restore step has nothing to resize to. The image tensor itself is not copied or changed.
In a plain ``monai.bundle run`` it is a no-op for the outputs the bundle writes.

MONAI Label's detection writer returns only ``box`` and ``label``. :class:`DetectionResultd` (a detection
bundle's ``postprocessing``, which only MONAI Label runs) adds the scores and world boxes under
``result``, which that writer returns when a request sets ``"result_write_to_file": false``.

MONAI (1.5, 1.6) ``Spacingd`` merges a NIfTI image's metadata into every item whose key starts with
``<key>_`` and fails on MONAI Label's ``image_path`` string (``'str' object has no attribute 'update'``).
:class:`StringItemsAsided` renames such string items to ``_<name>`` before ``Spacingd`` and back after it.

MONAI Label's bundle trainer feeds the datastore's labelled images as ``{"image", "label": <label file>}``.
:class:`LoadClassLabeld` reads a class-label file (format in :mod:`medbundle.io.class_labels`) into the
vector or index the classifiers train on, and passes in-memory labels through, so one train config serves
both the bundles' own datalists and a MONAI Label datastore.

A slide classifier's input is a whole slide, which MONAI Label cannot hand to an inferer as pixels;
:class:`medbundle.pathology.transforms.SlideGridImaged` puts the slide's patch grid into ``image`` instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medbundle.io.class_labels import read_class_label

__all__ = ["ClassScoresd", "DetectionResultd", "LoadClassLabeld", "StringItemsAsided"]


def _without_shape(meta: Mapping) -> dict:
    return {k: v for k, v in meta.items() if k != "spatial_shape"}


class ClassScoresd(MapTransform):
    """Mark ``keys`` as class scores (a vector per item), not a spatial map; see the module docstring.

    Args:
        keys: the score keys (``"pred"``).
        ref_image: the input key whose metadata a spatial restore would follow (``"image"``).
        meta_key_postfix: postfix of the separate metadata dict (``<ref_image>_meta_dict``) when loaders run with
            ``image_only=False`` (as MONAI Label does).
    """

    def __init__(self, keys: KeysCollection, ref_image: str = "image", meta_key_postfix: str = "meta_dict",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_image = ref_image
        self.meta_key = f"{ref_image}_{meta_key_postfix}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = d[key]
            if isinstance(scores, torch.Tensor) and not isinstance(scores, MetaTensor):
                d[key] = MetaTensor(scores)
        ref = d.get(self.ref_image)
        if isinstance(ref, MetaTensor) and "spatial_shape" in ref.meta:
            # a new MetaTensor header over the same storage: the caller's image keeps its metadata
            view = MetaTensor(ref.as_tensor(), meta=_without_shape(ref.meta))
            view.applied_operations = ref.applied_operations
            d[self.ref_image] = view
        if isinstance(d.get(self.meta_key), Mapping):
            d[self.meta_key] = _without_shape(d[self.meta_key])
        return d


class DetectionResultd(MapTransform):
    """Put a detector's boxes, scores and labels into ``d[result_key]`` as JSON-ready lists.

    3D (6 box values): ``box``: voxel ``xyzxyz`` boxes on the preprocessed grid (what ``RetinaNetDetector``
    returns); ``box_world``: world ``[x, y, z, w, h, d]`` in mm (LPS, as LUNA16) from the image's affine.
    2D (4 box values, a radiograph detector): ``box``: ``[x_min, y_min, x_max, y_max]`` in pixels of the preprocessed
    image; ``box_image``: the same in pixels of the image as stored (the preprocessing only resized it); ``box_mm``:
    those times the pixel spacing the reader found (None without one, e.g. PNG).
    Both: ``score`` and ``label`` per box, highest score first.
    """

    def __init__(self, box_key: str = "box", label_key: str = "label", score_key: str = "label_scores",
                 ref_image: str = "image", result_key: str = "result", affine_lps_to_ras: bool = True) -> None:
        super().__init__([box_key], allow_missing_keys=False)
        self.box_key, self.label_key, self.score_key = box_key, label_key, score_key
        self.ref_image, self.result_key, self.affine_lps_to_ras = ref_image, result_key, affine_lps_to_ras

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d.get(self.ref_image)
        raw = torch.as_tensor(d[self.box_key]).detach().cpu().double()
        dims = raw.shape[-1] // 2 if raw.ndim == 2 and raw.shape[-1] in (4, 6) else (
            ref.ndim - 1 if isinstance(ref, torch.Tensor) and ref.ndim in (3, 4) else 3)
        boxes = raw.reshape(-1, 2 * dims)
        scores = torch.as_tensor(d.get(self.score_key, torch.zeros(len(boxes)))).detach().cpu().reshape(-1)
        labels = torch.as_tensor(d.get(self.label_key, torch.zeros(len(boxes)))).detach().cpu().reshape(-1)
        order = torch.argsort(scores, descending=True)
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        result = dict(d.get(self.result_key) or {})
        result.update({"box": boxes.tolist(), "score": scores.tolist(), "label": [int(v) for v in labels.tolist()]})
        if dims == 3:
            from medbundle.detection.boxes import corner_boxes_to_world

            affine = ref.affine if isinstance(ref, MetaTensor) else torch.eye(4)
            result["box_world"] = corner_boxes_to_world(boxes.numpy(), affine, self.affine_lps_to_ras).tolist()
        else:
            result.update(_image_and_mm_boxes(boxes.numpy(), ref))
        d[self.result_key] = result
        return d


def _image_and_mm_boxes(boxes: np.ndarray, ref: Any) -> dict[str, Any]:
    """2D boxes in pixels of the stored image (``meta["spatial_shape"]`` against the current shape) and in mm."""
    meta = ref.meta if isinstance(ref, MetaTensor) else {}
    shape = np.asarray(ref.shape[1:] if isinstance(ref, torch.Tensor) else [1, 1], dtype=np.float64)
    read = np.asarray(meta.get("spatial_shape", shape), dtype=np.float64).reshape(-1)[:2]
    image = boxes / np.tile(shape / read, 2)
    spacing = meta.get("spacing")
    mm = None
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)[:2]
        mm = (image * np.tile(sp, 2)).tolist() if sp.size == 2 and np.all(sp > 0) else None
    return {"box_image": image.tolist(), "box_mm": mm}


class StringItemsAsided(MapTransform):
    """Rename string items ``<key>_*`` (e.g. MONAI Label's ``image_path``) to ``_<key>_*``, or back with
    ``restore=True`` (put one on each side of ``Spacingd``); see the module docstring.

    A bundle's own runs have no such items, so this is a no-op there.
    """

    def __init__(self, keys: KeysCollection, restore: bool = False, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.restore = restore

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            prefix = f"_{key}_" if self.restore else f"{key}_"
            for k in [k for k, v in d.items() if isinstance(k, str) and k.startswith(prefix) and isinstance(v, str)]:
                d[k[1:] if self.restore else f"_{k}"] = d.pop(k)
        return d


class LoadClassLabeld(MapTransform):
    """Read class-label files under ``keys`` (see :mod:`medbundle.io.class_labels`); other labels pass.

    Args:
        keys: the label keys (``"label"``).
        class_names: the bundle's classes, in output order.
        multi_label: True: a float vector per item (multi-label bundles); False: a class index.
    """

    def __init__(self, keys: KeysCollection, class_names: Sequence[str], multi_label: bool = True,
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.class_names = list(class_names)
        self.multi_label = bool(multi_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_class_label(d[key], self.class_names, self.multi_label)
        return d
