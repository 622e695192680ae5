"""COCO-format detection files, so that any COCO tool (pycocotools, MONAI, detectron2) can re-score a run.

:func:`coco_ground_truth` turns per-image ground truth into a COCO dataset dict (``images``, ``categories``,
``annotations``), :func:`coco_detections` turns per-image predictions into a COCO results list, and
:func:`write_coco_json` writes either atomically. The inputs are those of
:func:`medbundle.metrics.detection.coco_detection_metrics`: one entry per image, corner boxes
``(x_min, y_min, x_max, y_max)`` in pixels, 0-based class labels. The files use COCO's own conventions:
1-based image and category ids (image ``i`` of the lists is id ``i + 1``, label ``c`` is category ``c + 1``)
and ``bbox = [x, y, width, height]``.

Re-scoring with pycocotools::

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO("ground_truth.json")
    ev = COCOeval(gt, gt.loadRes("detections.json"), "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()

The module needs numpy only (torch is imported by :func:`write_coco_json`'s writer, on first call).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.metrics.validation import check_corner_boxes_2d
from medbundle.utils import to_numpy

__all__ = ["coco_detections", "coco_ground_truth", "write_coco_json"]


def _labels(labels: Any, n: int, name: str, n_classes: int | None) -> np.ndarray:
    lab = to_numpy(labels, name).reshape(-1)
    if lab.size != n:
        raise ValueError(f"{name} has {lab.size} labels but the image has {n} boxes; pass one label per box.")
    if lab.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.all(np.isfinite(lab.astype(np.float64))) or np.any(np.mod(lab, 1) != 0) or lab.min() < 0:
        raise ValueError(f"{name} must hold 0-based integer class labels, got {np.unique(lab).tolist()}.")
    if n_classes is not None and lab.max() >= n_classes:
        raise ValueError(
            f"{name} has label {int(lab.max())} but there are only {n_classes} classes (labels 0..{n_classes - 1})."
        )
    return lab.astype(np.int64)


def _bbox(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _check_lengths(n_images: int, **others: int) -> None:
    for name, n in others.items():
        if n != n_images:
            raise ValueError(f"{name} has {n} entries but there are {n_images} images; pass one entry per image.")


def coco_ground_truth(
    image_names: Sequence[str],
    image_sizes: Sequence[Sequence[int]],
    gt_boxes: Sequence[Any],
    gt_labels: Sequence[Any],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Ground truth as a COCO dataset dict (what ``pycocotools.coco.COCO`` reads).

    Args:
        image_names (sequence of str, length N): File name of each image (``file_name``); image ``i`` gets id
            ``i + 1``.
        image_sizes (sequence of (width, height), length N): Size of each image in pixels, width first, as COCO
            stores it (not a numpy ``(H, W)`` shape).
        gt_boxes (sequence of array-like, one per image, shape (G_i, 4)): Corner boxes ``(x_min, y_min, x_max,
            y_max)`` in pixels; ``np.zeros((0, 4))`` (or ``[]``) for an image without findings.
        gt_labels (sequence of array-like, one per image, shape (G_i,), int): 0-based class of each box.
        classes (sequence of str, length C): Class names; label ``c`` becomes category id ``c + 1`` named
            ``classes[c]``.

    Returns:
        dict: ``info``, ``licenses`` (empty), ``images`` (``id``, ``file_name``, ``width``, ``height``),
        ``categories`` (``id``, ``name``, ``supercategory``) and ``annotations`` (``id`` from 1, ``image_id``,
        ``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels, ``area`` ``w * h``, ``iscrowd`` 0), in image order.

    Raises:
        ValueError: Lists of different lengths, malformed boxes or labels, a label outside ``classes``,
            duplicate class names or a non-positive image size.

    Warns:
        UserWarning: A box reaches beyond its image (often a ``(height, width)`` size passed by mistake).
    """
    n_images = len(image_names)
    _check_lengths(n_images, image_sizes=len(image_sizes), gt_boxes=len(gt_boxes), gt_labels=len(gt_labels))
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is empty; name at least one class.")
    if len(set(names)) != len(names):
        raise ValueError(f"classes has duplicate names: {names}.")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    outside = 0
    for i in range(n_images):
        size = to_numpy(image_sizes[i], f"image_sizes[{i}]").reshape(-1)
        if size.size != 2 or not np.all(np.isfinite(size.astype(np.float64))) or np.any(size <= 0):
            raise ValueError(f"image_sizes[{i}] must be (width, height) in pixels, both > 0; got {size.tolist()}.")
        width, height = int(size[0]), int(size[1])
        images.append({"id": i + 1, "file_name": str(image_names[i]), "width": width, "height": height})
        boxes = check_corner_boxes_2d(gt_boxes[i], f"gt_boxes[{i}]")
        labels = _labels(gt_labels[i], boxes.shape[0], f"gt_labels[{i}]", len(names))
        outside += int(np.count_nonzero((boxes[:, 2] > width) | (boxes[:, 3] > height)))
        for box, label in zip(boxes, labels):
            bbox = _bbox(box)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": 0,
            })
    if outside:
        warnings.warn(
            f"{outside} ground-truth box(es) reach beyond their image's width or height; image_sizes must be "
            "(width, height), not a (height, width) array shape.",
            stacklevel=2,
        )
    return {
        "info": {"description": "medbundle ground truth", "version": "1.0"},
        "licenses": [],
        "images": images,
        "categories": [{"id": c + 1, "name": n, "supercategory": "finding"} for c, n in enumerate(names)],
        "annotations": annotations,
    }


def coco_detections(
    pred_boxes: Sequence[Any],
    pred_scores: Sequence[Any],
    pred_labels: Sequence[Any],
    num_classes: int | None = None,
) -> list[dict[str, Any]]:
    """Predictions as a COCO results list (what ``COCO.loadRes`` reads).

    Args:
        pred_boxes (sequence of array-like, one per image, shape (K_i, 4)): Predicted corner boxes ``(x_min, y_min,
            x_max, y_max)`` in pixels, in the image order of :func:`coco_ground_truth` (image ``i`` is id ``i + 1``).
        pred_scores (sequence of array-like, one per image, shape (K_i,)): Confidence of each box (finite).
        pred_labels (sequence of array-like, one per image, shape (K_i,), int): 0-based class of each box; written
            as ``category_id = label + 1``.
        num_classes (int, optional): Number of classes, to reject labels ``>= num_classes``.

    Returns:
        list of dict: One ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per box, images in order
        and boxes in their given order within an image.

    Raises:
        ValueError: Lists of different lengths, malformed boxes, non-finite scores or bad labels.
    """
    n_images = len(pred_boxes)
    _check_lengths(n_images, pred_scores=len(pred_scores), pred_labels=len(pred_labels))
    out: list[dict[str, Any]] = []
    for i in range(n_images):
        boxes = check_corner_boxes_2d(pred_boxes[i], f"pred_boxes[{i}]")
        scores = to_numpy(pred_scores[i], f"pred_scores[{i}]").astype(np.float64).reshape(-1)
        if scores.size != boxes.shape[0]:
            raise ValueError(
                f"pred_scores[{i}] has {scores.size} scores but pred_boxes[{i}] has {boxes.shape[0]} boxes."
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"pred_scores[{i}] contains NaN or infinite scores.")
        labels = _labels(pred_labels[i], boxes.shape[0], f"pred_labels[{i}]", num_classes)
        for box, score, label in zip(boxes, scores, labels):
            out.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": _bbox(box), "score": float(score)})
    return out


def write_coco_json(obj: dict[str, Any] | list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write a COCO dataset dict or results list as JSON, atomically (the old file or the whole new one).

    Args:
        obj: The output of :func:`coco_ground_truth` or :func:`coco_detections`.
        path: Target file; its folder is created.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: ``obj`` holds NaN or infinite numbers (strict JSON has none).
    """
    from medbundle.io.files import atomic_write  # imports torch, so only when a file is written

    path = Path(path)
    text = json.dumps(obj, allow_nan=False)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
