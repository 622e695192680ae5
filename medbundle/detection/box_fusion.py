"""Weighted box fusion (WBF) of the boxes several readers drew on one image, per class, in numpy.

VinDr-CXR's training images were each read by three radiologists, who boxed the same finding independently;
their boxes overlap without being equal. Training on all of them teaches a detector three slightly different
answers, so the boxes of one finding are fused first. The rule implemented here is weighted box fusion
(Solovyev, Wang and Gabruseva, *Weighted boxes fusion: ensembling boxes from different object detection models*,
Image and Vision Computing 2021, arXiv:1910.13302), written anew in numpy; it follows the algorithm of the
``ensemble_boxes`` package (``weighted_boxes_fusion``), except for how the fused score is stated (below).

Boxes are corners ``[x_min, y_min, x_max, y_max]`` in any one frame (pixels here); IoU is scale free, so nothing
is normalised. Areas are ``(x_max - x_min) * (y_max - y_min)`` (no ``+ 1``: pixel ``i`` covers ``[i, i + 1)``).
The same rule fuses 3D boxes ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (IoU of volumes): the lung nodule
detector's test-time augmentation treats each flipped pass as a reader (:class:`~medbundle.detection.inferers.
DetectorInferer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FusedBoxes", "box_iou", "weighted_box_fusion"]


class FusedBoxes(NamedTuple):
    """What :func:`weighted_box_fusion` returns (``N`` fused boxes, sorted by label, then score high to low)."""

    boxes: np.ndarray  #: ``(N, 4)`` float64 corners ``[x_min, y_min, x_max, y_max]`` (``(N, 6)`` for 3D boxes)
    labels: np.ndarray  #: ``(N,)`` int64 class of each box
    scores: np.ndarray  #: ``(N,)`` float64: weighted share of the readers that marked it (in [0, 1] for scores <= 1)
    n_readers: np.ndarray  #: ``(N,)`` int64 number of distinct readers whose boxes were fused into it


def _as_boxes(value: Any, what: str, width: int | None = None) -> np.ndarray:
    """``value`` as float64 corner boxes ``(N, 4)`` (2D) or ``(N, 6)`` (3D); ``width`` forces one of them."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, width or 4))
    if arr.ndim != 2 or arr.shape[1] not in (4, 6) or (width is not None and arr.shape[1] != width):
        want = f"(N, {width})" if width else "(N, 4) or (N, 6)"
        raise ValueError(f"{what}: expected corner boxes of shape {want} (mins then maxes), got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: boxes hold NaN or infinite coordinates.")
    d = arr.shape[1] // 2
    if np.any(arr[:, d:] < arr[:, :d]):
        raise ValueError(f"{what}: a box has a max corner below its min corner (corners must be mins then maxes).")
    return arr


def box_iou(a: Any, b: Any) -> np.ndarray:
    """Intersection over union of every box in ``a`` ``(N, 2d)`` with every box in ``b`` ``(M, 2d)``: ``(N, M)``.

    Corner boxes ``[x_min, y_min, x_max, y_max]`` (2D) or ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (3D);
    two boxes of zero area (volume), or disjoint boxes, have IoU 0.
    """
    a = _as_boxes(a, "box_iou(a)")
    b = _as_boxes(b, "box_iou(b)", a.shape[1] if a.shape[0] else None)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    d = a.shape[1] // 2
    lo = np.maximum(a[:, None, :d], b[None, :, :d])
    hi = np.minimum(a[:, None, d:], b[None, :, d:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    area_a = np.prod(a[:, d:] - a[:, :d], axis=-1)
    area_b = np.prod(b[:, d:] - b[:, :d], axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_box_fusion(
    boxes_per_reader: Sequence[Any],
    labels_per_reader: Sequence[Any],
    iou_threshold: float = 0.5,
    scores_per_reader: Sequence[Any] | None = None,
    weights: Sequence[float] | None = None,
    min_readers: int = 1,
    skip_box_threshold: float = 0.0,
    box_rule: str = "mean",
) -> FusedBoxes:
    """Fuse the boxes several readers drew on one image into one box per finding, class by class.

    The rule (weighted box fusion):

    1. Reader ``r``'s box ``j`` gets the confidence ``c = score[r][j] * weight[r]`` (scores default to 1: a
       radiologist's mark; weights default to 1). Boxes with ``score < skip_box_threshold`` are left out.
    2. Each class is fused on its own. Its boxes are visited from the highest confidence to the lowest (ties: reader
       order, then box order), and each joins the cluster whose *current fused box* it overlaps most, if that IoU is
       greater than ``iou_threshold``; otherwise it starts a cluster of its own. A box that overlaps nothing stays a
       box of its own (with one reader).
    3. A cluster's fused box is the confidence-weighted mean of its members' corners (with unit scores and weights:
       the plain mean of the readers' boxes), recomputed each time a box joins.
    4. Its score is the summed confidence of the distinct readers in it (a reader's best box if it has two there),
       divided by the summed weight of all readers: with unit scores and weights, the share of readers who marked the
       finding (1/3, 2/3 or 1 for VinDr-CXR's three radiologists).
    5. ``n_readers`` counts the distinct readers in the cluster; clusters with fewer than ``min_readers`` readers are
       dropped (``min_readers=2``: keep only findings two radiologists agree on).

    VinBigData practice: in the Kaggle *VinBigData Chest X-ray Abnormalities Detection* competition (2021) the three
    radiologists' training boxes were commonly fused with ``ensemble_boxes.weighted_boxes_fusion``, every box scored
    1, ``skip_box_thr`` about 1e-4 and ``iou_thr`` between 0.5 and 0.7 (0.5, e.g., in the VinDr-CXR fusion configs
    of github.com/Madave94/gtiod); the defaults here are unit scores and ``iou_threshold=0.5``, ``min_readers=1``. The
    competition scored mAP at IoU 0.4.

    Differences from ``ensemble_boxes``: coordinates are not normalised or clipped to [0, 1]; the fused score is the
    share of reader weight stated in step 4 (``ensemble_boxes``' ``conf_type="avg"`` gives the same value while a
    cluster holds at most one box per reader); ``min_readers`` is added.

    Args:
        boxes_per_reader: One entry per reader: its boxes, ``(N_r, 4)`` corners, or ``(N_r, 6)`` for 3D boxes (an empty
            list for a reader who marked nothing, e.g. "No finding").
        labels_per_reader: One entry per reader: ``(N_r,)`` integer classes of its boxes.
        iou_threshold: A box joins a cluster only when its IoU with the cluster's fused box is greater than this.
        scores_per_reader: Optional ``(N_r,)`` scores in [0, 1] per reader; 1 when None.
        weights: Optional weight per reader (> 0); 1 each when None.
        min_readers: Drop fused boxes marked by fewer distinct readers.
        skip_box_threshold: Leave out boxes whose score is below this.
        box_rule: ``"mean"`` (weighted box fusion, step 3) or ``"best"``: a cluster keeps the box of its most
            confident member, and later boxes are compared with that box (clusters as in non-maximum suppression,
            scores still summed as in step 4).

    Returns:
        :class:`FusedBoxes` ``(boxes, labels, scores, n_readers)``; empty arrays when no box survives.

    Raises:
        ValueError: Mismatched lengths, boxes not ``(N, 4)`` / ``(N, 6)`` corners with min <= max (or readers of two
            dimensions), a non-positive weight, or an ``iou_threshold`` outside [0, 1).
    """
    n = len(boxes_per_reader)
    if len(labels_per_reader) != n:
        raise ValueError(f"{n} readers' boxes but {len(labels_per_reader)} readers' labels.")
    if scores_per_reader is not None and len(scores_per_reader) != n:
        raise ValueError(f"{n} readers' boxes but {len(scores_per_reader)} readers' scores.")
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}.")
    if box_rule not in ("mean", "best"):
        raise ValueError(f"box_rule must be 'mean' or 'best', got {box_rule!r}.")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be {n} positive numbers (one per reader), got {weights}.")

    # flat table of every kept box: reader, confidence, label, corners (every reader in the same dimension)
    width = next((np.shape(b)[-1] for b in boxes_per_reader if np.size(b)), 4)
    rows_reader, rows_conf, rows_label, rows_box = [], [], [], []
    for r in range(n):
        b = _as_boxes(boxes_per_reader[r], f"reader {r} boxes", width)
        lab = np.asarray(labels_per_reader[r]).reshape(-1)
        if lab.size != b.shape[0]:
            raise ValueError(f"reader {r}: {b.shape[0]} boxes but {lab.size} labels.")
        if scores_per_reader is None:
            s = np.ones(b.shape[0])
        else:
            s = np.asarray(scores_per_reader[r], dtype=np.float64).reshape(-1)
            if s.size != b.shape[0]:
                raise ValueError(f"reader {r}: {b.shape[0]} boxes but {s.size} scores.")
        keep = s >= skip_box_threshold
        rows_reader.append(np.full(int(keep.sum()), r))
        rows_conf.append(s[keep] * w[r])
        rows_label.append(lab[keep].astype(np.int64))
        rows_box.append(b[keep])
    readers = np.concatenate(rows_reader) if rows_reader else np.zeros(0, dtype=np.int64)
    conf = np.concatenate(rows_conf) if rows_conf else np.zeros(0)
    labels = np.concatenate(rows_label) if rows_label else np.zeros(0, dtype=np.int64)
    boxes = np.concatenate(rows_box) if rows_box else np.zeros((0, width))

    out_boxes, out_labels, out_scores, out_readers = [], [], [], []
    total_weight = float(w.sum())
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[np.argsort(-conf[idx], kind="stable")]
        members: list[list[int]] = []
        fused = np.zeros((0, width))
        for i in idx:
            if fused.shape[0]:
                ious = box_iou(boxes[i : i + 1], fused)[0]
                best = int(np.argmax(ious))
                if ious[best] > iou_threshold:
                    members[best].append(int(i))
                    if box_rule == "mean":
                        m = np.asarray(members[best])
                        fused[best] = (conf[m, None] * boxes[m]).sum(axis=0) / conf[m].sum()
                    continue
            members.append([int(i)])
            fused = np.vstack([fused, boxes[i]])
        for k, m in enumerate(members):
            m_arr = np.asarray(m)
            per_reader = {int(r): float(conf[m_arr][readers[m_arr] == r].max()) for r in np.unique(readers[m_arr])}
            if len(per_reader) < min_readers:
                continue
            out_boxes.append(fused[k])
            out_labels.append(int(cls))
            out_scores.append(sum(per_reader.values()) / total_weight)
            out_readers.append(len(per_reader))

    if not out_boxes:
        return FusedBoxes(np.zeros((0, width)), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))
    lab_arr, sc_arr = np.asarray(out_labels, dtype=np.int64), np.asarray(out_scores)
    order = np.lexsort((-sc_arr, lab_arr))
    return FusedBoxes(
        np.asarray(out_boxes)[order],
        lab_arr[order],
        sc_arr[order],
        np.asarray(out_readers, dtype=np.int64)[order],
    )
