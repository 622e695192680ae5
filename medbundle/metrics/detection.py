"""Box overlap and COCO-style average precision for 2D and 3D detection.

MONAI computes the same numbers in two steps (:func:`monai.apps.detection.metrics.matching.matching_batch`
then :class:`monai.apps.detection.metrics.coco.COCOMetric`) with string keys that encode the IoU range.
This module gives one call that takes plain per-image arrays (numpy or torch), checks them, and returns
a nested, JSON-ready dictionary: AP per class per IoU threshold, mAP over the thresholds, and max recall.
The matching and interpolation conventions are pycocotools' (which MONAI and nnDetection follow), so the
values agree with pycocotools' ``COCOeval`` and with MONAI's (see :func:`coco_detection_metrics` for the
documented differences; ``convention="monai"`` follows MONAI where the two disagree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medbundle.utils import to_numpy

__all__ = ["box_iou", "coco_detection_metrics"]

# 101 recall points 0.00, 0.01, ..., 1.00 (COCO / MONAI interpolation).
_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101, endpoint=True)




def _check_boxes(boxes: Any, name: str) -> np.ndarray:
    """Check a ``(N, 2*D)`` corner-box array and return it as float64."""
    arr = to_numpy(boxes)
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(
            f"{name} is a 1-D empty array; pass an empty box array with its width, e.g. np.zeros((0, 6))."
        )
    if arr.ndim != 2 or arr.shape[1] not in (4, 6):
        raise ValueError(
            f"{name} must have shape (N, 4) for 2D (x1, y1, x2, y2) or (N, 6) for 3D "
            f"(x1, y1, z1, x2, y2, z2) corner boxes; got shape {arr.shape}."
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite coordinates; remove or fix those boxes.")
    d = arr.shape[1] // 2
    bad = np.nonzero(np.any(arr[:, d:] < arr[:, :d], axis=1))[0]
    if bad.size:
        raise ValueError(
            f"{name}: box {int(bad[0])} has a max corner below its min corner ({arr[bad[0]].tolist()}); "
            "boxes must be in corner format (mins first, then maxes), not centre/size."
        )
    return arr


def _check_boxes_or_empty(boxes: Any, name: str) -> np.ndarray:
    """Like :func:`_check_boxes`, but any empty input (``[]``, ``np.zeros((0, 6))``) means no boxes."""
    arr = to_numpy(boxes)
    if arr.size == 0:
        return np.zeros((0, arr.shape[1] if arr.ndim == 2 and arr.shape[1] in (4, 6) else 0))
    return _check_boxes(arr, name)


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Intersection over union of every pair of axis-aligned corner boxes, in 2D or 3D.

    Args:
        boxes1 (array-like or torch.Tensor, shape (N, 2*D)): Corner boxes ``(x1, y1, x2, y2)`` (D=2) or ``(x1, y1, z1,
        x2, y2, z2)`` (D=3), in any unit (voxels or mm), both arrays in the same unit. Max corners must not be below min
            corners.
        boxes2 (array-like or torch.Tensor, shape (M, 2*D)): Same format as ``boxes1``.

    Returns:
        np.ndarray, shape (N, M), float64: ``iou[i, j] = |b1_i ∩ b2_j| / |b1_i ∪ b2_j|`` with extents ``max - min`` (no
        "+1"), the convention of :func:`torchvision.ops.box_iou` and :func:`monai.data.box_utils.box_iou`. A pair whose
            union is empty (two degenerate boxes) has IoU 0.

    Note:
        Unlike the torchvision and MONAI functions this accepts numpy or torch input of either
        dimensionality, always computes in float64, and rejects malformed boxes with a message.
    """
    b1 = _check_boxes(boxes1, "boxes1")
    b2 = _check_boxes(boxes2, "boxes2")
    if b1.shape[1] != b2.shape[1]:
        raise ValueError(
            f"boxes1 has {b1.shape[1] // 2}-D boxes (width {b1.shape[1]}) but boxes2 has "
            f"{b2.shape[1] // 2}-D boxes (width {b2.shape[1]}); both must be 2D or both 3D."
        )
    d = b1.shape[1] // 2
    area1 = np.prod(b1[:, d:] - b1[:, :d], axis=1)
    area2 = np.prod(b2[:, d:] - b2[:, :d], axis=1)
    lo = np.maximum(b1[:, None, :d], b2[None, :, :d])
    hi = np.minimum(b1[:, None, d:], b2[None, :, d:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    union = area1[:, None] + area2[None, :] - inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def _match_image_class(
    pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Greedy matching of one image and class: returns ``(T, K)`` bool, K preds already score-sorted.

    Each prediction, from the highest score down, takes the still-unmatched ground-truth box of highest
    IoU among those with IoU >= threshold (the last such box when IoUs tie, as MONAI does); a prediction
    that finds none is a false positive. A second prediction on a matched box is therefore a FP.
    """
    n_pred = pred_boxes.shape[0]
    matched = np.zeros((thresholds.size, n_pred), dtype=bool)
    if n_pred == 0 or gt_boxes.shape[0] == 0:
        return matched
    ious = box_iou(pred_boxes, gt_boxes)
    for t_idx, t in enumerate(thresholds):
        limit = min(float(t), 1.0 - 1e-10)
        taken = np.zeros(gt_boxes.shape[0], dtype=bool)
        for p in range(n_pred):
            cand = np.where(taken, -np.inf, ious[p])
            best = float(cand.max())
            if best < limit:
                continue
            g = int(np.flatnonzero(cand == best)[-1])
            taken[g] = True
            matched[t_idx, p] = True
    return matched


def _ap_and_recall(
    matched_sorted: np.ndarray, num_gt: int, count_dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """101-point interpolated AP, final recall and the interpolated precision at the 101 recalls, per threshold,
    from score-sorted matches ``(T, K)``; the last is ``(T, 101)`` (pycocotools' ``eval["precision"]``).

    ``count_dtype`` is the type of the cumulative counts and so of the recall: float64 as pycocotools, or
    float32 as MONAI (see ``coco_detection_metrics``'s ``convention``).
    """
    n_thr = matched_sorted.shape[0]
    ap = np.zeros(n_thr)
    recall = np.zeros(n_thr)
    precision = np.zeros((n_thr, _RECALL_THRESHOLDS.size))
    if matched_sorted.shape[1] == 0:
        return ap, recall, precision
    tp = np.cumsum(matched_sorted, axis=1).astype(count_dtype)
    fp = np.cumsum(~matched_sorted, axis=1).astype(count_dtype)
    for t in range(n_thr):
        # The recall keeps the counts' type, so that a recall equal to a grid value resolves as the reference.
        rc = tp[t] / count_dtype(num_gt)
        pr = tp[t].astype(np.float64) / (tp[t].astype(np.float64) + fp[t])
        envelope = np.maximum.accumulate(pr[::-1])[::-1]
        idx = np.searchsorted(rc, _RECALL_THRESHOLDS, side="left")
        prec_at = np.where(idx < rc.size, envelope[np.minimum(idx, rc.size - 1)], 0.0)
        ap[t] = float(np.mean(prec_at))
        recall[t] = float(rc[-1])
        precision[t] = prec_at
    return ap, recall, precision


def _iou_key(t: float) -> str:
    return f"{round(float(t), 6):g}"


def coco_detection_metrics(
    pred_boxes: Sequence[Any],
    pred_scores: Sequence[Any],
    pred_labels: Sequence[Any],
    gt_boxes: Sequence[Any],
    gt_labels: Sequence[Any],
    classes: Sequence[str],
    iou_thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    max_detections: int = 100,
    convention: str = "pycocotools",
    return_curves: bool = False,
) -> dict[str, Any]:
    """COCO-style AP per class and IoU threshold, mAP and max recall, as pycocotools and MONAI compute them.

    Args:
        pred_boxes (sequence of array-like, one per image, shape (K_i, 2*D)): Predicted corner boxes (see
        :func:`box_iou`), numpy or torch. Use ``np.zeros((0, 2*D))`` for an image without predictions.
        pred_scores (sequence of array-like, one per image, shape (K_i,)): Confidence of each predicted box; higher is
        more confident.
        pred_labels (sequence of array-like, one per image, shape (K_i,), int): Class index of each predicted box, ``0
        <= label < len(classes)``.
        gt_boxes (sequence of array-like, one per image, shape (G_i, 2*D)): Ground-truth corner boxes, in the same unit
        as the predictions.
        gt_labels (sequence of array-like, one per image, shape (G_i,), int): Class index of each ground-truth box.
        classes (sequence of str): Class names; ``classes[i]`` names label ``i``.
        iou_thresholds (sequence of float, default (0.1, 0.2, 0.3, 0.4, 0.5)): IoU thresholds at which AP and recall are
        computed; mAP and mAR average over them. MONAI's ``COCOMetric(iou_list=(0.1, 0.5), iou_range=(0.1, 0.5, 0.1))``
            uses the same set.
        max_detections (int, default 100): Highest-scoring predictions kept per image and class (pycocotools'
            ``params.maxDets[-1]``, MONAI's ``max_detection[-1]``).
        convention (str, default "pycocotools"): How a recall that equals a recall-grid value is read (see Note):
            ``"pycocotools"`` (float64 counts, the COCO reference) or ``"monai"`` (float32 counts, MONAI's
            ``COCOMetric``).
        return_curves (bool, default False): Also return ``curves``: ``{class: {iou_key: {"recall": the 101
            recalls 0, 0.01, ..., 1, "precision": the interpolated precision there}}}`` (pycocotools'
            ``eval["precision"][t, :, k, 0, -1]``; AP is its mean) for the classes with ground truth.

    Returns:
        dict: ``iou_thresholds`` (list of float), ``max_detections``, ``convention``, ``classes``; ``ap``:
            ``{class: {iou_key: AP}}`` (101-point interpolated precision, MONAI's ``{class}_AP_IoU_{t}_MaxDet_{m}``);
            ``ap_per_iou``: ``{iou_key: mean AP over classes}`` (``AP_IoU_{t}_MaxDet_{m}``); ``map_per_class``:
            ``{class: mean AP over thresholds}``; ``map``: mean AP over thresholds and classes
            (``mAP_IoU_..._MaxDet_{m}``); ``recall``: ``{class: {iou_key: max recall}}``; ``mar_per_class``; ``mar``
            (``mAR_IoU_..._MaxDet_{m}``); ``n_gt`` and ``n_pred`` per class. ``iou_key`` is the threshold written
            with ``:g`` (``"0.1"``, ``"0.3"``).

    Note:
        Conventions (pycocotools / MONAI / nnDetection): predictions are sorted by score (stable), cut to
        ``max_detections`` per image and class, and matched greedily per image and class: each takes the
        unmatched ground truth of highest IoU >= threshold (the last one listed when IoUs tie), so a duplicate
        detection of a matched box is a false positive. IoU uses extents ``max - min`` (no "+1"), as
        pycocotools does for ``bbox = [x, y, w, h]`` with ``w = x_max - x_min``. Across images, detections are
        ranked by score (stable, in image order), precision is made monotone, and AP is the mean precision at
        the 101 recalls ``numpy.linspace(0, 1, 101)``: at each grid recall r, the envelope at the first
        detection whose recall is >= r (0 when no detection reaches r). Recall is the recall after all kept
        detections. With 2D boxes and ``iou_thresholds=numpy.linspace(0.5, 0.95, 10)``, ``map`` is pycocotools'
        ``stats[0]`` (AP@[.50:.95], area "all", maxDets 100), ``mar`` its ``stats[8]``, and ``ap[class][key]``
        the mean of ``eval["precision"][t, :, k, 0, -1]`` (``tests/test_cxr_detection_metrics.py`` checks
        them through the COCO files of :mod:`medbundle.io.coco`, within 1e-6).

        Differences from MONAI's ``COCOMetric``:

        * A class with no ground-truth box in any image has AP and recall NaN and is left out of the class
          means (as pycocotools leaves out its -1; MONAI averages that -1 into its mAP).
        * Counts: MONAI holds the cumulative TP/FP counts in float32, pycocotools in float64. A recall
          ``k / n_gt`` that equals a grid value exactly in float64 but rounds below it in float32 (e.g.
          29/100, 39/100, 58/200) is read one true positive later by MONAI, and when it is the final recall,
          MONAI gives precision 0 at that grid point; AP then differs by up to 1/101 per such point.
          ``convention="monai"`` reproduces MONAI here, the default reproduces pycocotools. Otherwise the two
          conventions give the same AP, and recalls that differ only by float32 rounding (about 1e-8).
    """
    n_images = len(pred_boxes)
    lengths = {
        "pred_scores": len(pred_scores),
        "pred_labels": len(pred_labels),
        "gt_boxes": len(gt_boxes),
        "gt_labels": len(gt_labels),
    }
    for name, n in lengths.items():
        if n != n_images:
            raise ValueError(
                f"pred_boxes has {n_images} images but {name} has {n}; pass one entry per image in each list."
            )
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty; name at least one class.")
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}.")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or np.any((thresholds < 0) | (thresholds > 1)):
        raise ValueError(f"iou_thresholds must be a non-empty list of values in [0, 1], got {thresholds}.")
    count_dtypes = {"pycocotools": np.float64, "monai": np.float32}
    if convention not in count_dtypes:
        raise ValueError(f"convention must be 'pycocotools' or 'monai', got {convention!r}.")
    n_cls = len(classes)

    # Per class: per-image lists of (scores_sorted, matched (T, K)) and gt counts.
    scores_by_cls: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    matched_by_cls: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    n_gt = np.zeros(n_cls, dtype=np.int64)
    n_pred = np.zeros(n_cls, dtype=np.int64)
    dim_width: int | None = None
    for i in range(n_images):
        pb = _check_boxes_or_empty(pred_boxes[i], f"pred_boxes[{i}]")
        gb = _check_boxes_or_empty(gt_boxes[i], f"gt_boxes[{i}]")
        for arr, name in ((pb, "pred_boxes"), (gb, "gt_boxes")):
            if arr.shape[0] == 0 or arr.shape[1] == 0:
                continue
            if dim_width is None:
                dim_width = arr.shape[1]
            elif arr.shape[1] != dim_width:
                raise ValueError(
                    f"{name}[{i}] has boxes of width {arr.shape[1]} but earlier boxes have width "
                    f"{dim_width}; all images must be 2D (4 values) or all 3D (6 values)."
                )
        ps = to_numpy(pred_scores[i]).astype(np.float64).reshape(-1)
        pl = to_numpy(pred_labels[i]).reshape(-1)
        gl = to_numpy(gt_labels[i]).reshape(-1)
        if ps.size != pb.shape[0] or pl.size != pb.shape[0]:
            raise ValueError(
                f"image {i}: pred_boxes has {pb.shape[0]} boxes but pred_scores has {ps.size} and "
                f"pred_labels {pl.size} entries; they must match."
            )
        if gl.size != gb.shape[0]:
            raise ValueError(
                f"image {i}: gt_boxes has {gb.shape[0]} boxes but gt_labels has {gl.size} entries."
            )
        if not np.all(np.isfinite(ps)):
            raise ValueError(f"pred_scores[{i}] contains NaN or infinite scores.")
        for lab, name in ((pl, "pred_labels"), (gl, "gt_labels")):
            if lab.size and (
                not np.all(np.equal(np.mod(lab, 1), 0)) or lab.min() < 0 or lab.max() >= n_cls
            ):
                raise ValueError(
                    f"{name}[{i}] has labels {np.unique(lab).tolist()}; labels must be integers in "
                    f"[0, {n_cls - 1}] indexing classes={classes}."
                )
        pl = pl.astype(np.int64)
        gl = gl.astype(np.int64)
        for c in np.union1d(pl, gl):
            c = int(c)
            sel = np.flatnonzero(pl == c)
            order = np.argsort(-ps[sel], kind="mergesort")[:max_detections]
            sel = sel[order]
            g_sel = gl == c
            n_gt[c] += int(np.count_nonzero(g_sel))
            n_pred[c] += sel.size
            scores_by_cls[c].append(ps[sel])
            matched_by_cls[c].append(_match_image_class(pb[sel], ps[sel], gb[g_sel], thresholds))

    ap = np.full((n_cls, thresholds.size), np.nan)
    rec = np.full((n_cls, thresholds.size), np.nan)
    prec = np.full((n_cls, thresholds.size, _RECALL_THRESHOLDS.size), np.nan)
    for c in range(n_cls):
        if n_gt[c] == 0:
            continue
        if scores_by_cls[c]:
            scores = np.concatenate(scores_by_cls[c])
            matched = np.concatenate(matched_by_cls[c], axis=1)
            order = np.argsort(-scores, kind="mergesort")
            matched = matched[:, order]
        else:
            matched = np.zeros((thresholds.size, 0), dtype=bool)
        ap[c], rec[c], prec[c] = _ap_and_recall(matched, int(n_gt[c]), count_dtypes[convention])

    keys = [_iou_key(t) for t in thresholds]
    if len(set(keys)) != len(keys):
        raise ValueError(f"iou_thresholds has duplicate values: {thresholds.tolist()}.")

    def _mean(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(np.mean(x)) if x.size else float("nan")

    out: dict[str, Any] = {
        "iou_thresholds": [float(t) for t in thresholds],
        "max_detections": int(max_detections),
        "convention": convention,
        "classes": classes,
        "ap": {cls: {k: float(ap[c, j]) for j, k in enumerate(keys)} for c, cls in enumerate(classes)},
        "ap_per_iou": {k: _mean(ap[:, j]) for j, k in enumerate(keys)},
        "map_per_class": {cls: _mean(ap[c]) for c, cls in enumerate(classes)},
        "map": _mean(ap),
        "recall": {cls: {k: float(rec[c, j]) for j, k in enumerate(keys)} for c, cls in enumerate(classes)},
        "mar_per_class": {cls: _mean(rec[c]) for c, cls in enumerate(classes)},
        "mar": _mean(rec),
        "n_gt": {cls: int(n_gt[c]) for c, cls in enumerate(classes)},
        "n_pred": {cls: int(n_pred[c]) for c, cls in enumerate(classes)},
    }
    if return_curves:
        out["curves"] = {
            cls: {k: {"recall": _RECALL_THRESHOLDS.tolist(), "precision": prec[c, j].tolist()}
                  for j, k in enumerate(keys)}
            for c, cls in enumerate(classes) if n_gt[c] > 0
        }
    return out
