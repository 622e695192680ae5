"""Tests for medbundle.metrics.detection: IoU against torchvision / MONAI, AP against MONAI's COCOMetric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou as monai_box_iou
from torchvision.ops import box_iou as tv_box_iou

from medbundle.metrics.detection import box_iou, coco_detection_metrics


def _random_boxes(rng: np.random.Generator, n: int, dim: int, scale: float = 20.0) -> np.ndarray:
    lo = rng.uniform(0, scale, size=(n, dim))
    size = rng.uniform(3, scale / 2, size=(n, dim))
    return np.concatenate([lo, lo + size], axis=1)


def test_box_iou_hand_case_2d_and_3d():
    a2 = np.array([[0.0, 0.0, 2.0, 2.0]])
    b2 = np.array([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    # overlap 1 / union 7; touching corners -> 0; identical -> 1
    np.testing.assert_allclose(box_iou(a2, b2), [[1 / 7, 0.0, 1.0]])
    a3 = np.array([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])
    b3 = np.array([[1.0, 1.0, 1.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 2.0, 2.0, 1.0]])
    # 1 / (8 + 8 - 1); half-height box inside -> 4 / 8
    np.testing.assert_allclose(box_iou(a3, b3), [[1 / 15, 0.5]])


def test_box_iou_matches_torchvision_2d():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 17, 2), _random_boxes(rng, 9, 2)
    expected = tv_box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    got = box_iou(torch.as_tensor(a), b)  # torch and numpy input mixed
    assert got.shape == (17, 9) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.count_nonzero(got) > 10  # the random case has real overlaps


def test_box_iou_matches_monai_3d():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 13, 3), _random_boxes(rng, 11, 3)
    expected = np.asarray(monai_box_iou(a, b))
    got = box_iou(a, b)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.count_nonzero(got) > 10


def test_box_iou_errors_and_degenerate():
    with pytest.raises(ValueError, match="both must be 2D or both 3D"):
        box_iou(np.zeros((1, 4)), np.zeros((1, 6)))
    with pytest.raises(ValueError, match="corner format"):
        box_iou(np.array([[2.0, 0, 0, 1, 1, 1]]), np.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_iou(np.zeros((1, 5)), np.zeros((1, 5)))
    # two degenerate (zero-volume) boxes: IoU defined as 0, not NaN
    assert box_iou(np.zeros((1, 6)), np.zeros((1, 6)))[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


def _monai_reference(pb, ps, pl, gb, gl, classes, thresholds, max_det, iou_fn):
    """MONAI's two-step COCO computation with the same threshold set as ours."""
    metric = COCOMetric(
        classes=classes, iou_list=(thresholds[0], thresholds[-1]), iou_range=(0.1, 0.5, 0.1),
        max_detection=(max_det,), verbose=False,
    )
    assert np.allclose(metric.iou_thresholds, thresholds)
    matched = matching_batch(
        iou_fn=iou_fn, iou_thresholds=metric.iou_thresholds, pred_boxes=pb, pred_classes=pl,
        pred_scores=ps, gt_boxes=gb, gt_classes=gl, max_detections=max_det,
    )
    return metric(matched)[0], metric.iou_thresholds


def _synthetic_batch(seed: int, n_images: int, dim: int):
    rng = np.random.default_rng(seed)
    pb, ps, pl, gb, gl = [], [], [], [], []
    for _ in range(n_images):
        g = _random_boxes(rng, int(rng.integers(1, 5)), dim)
        glab = rng.integers(0, 2, size=g.shape[0])
        # predictions: jittered copies of GT (some duplicated) plus random boxes
        src = rng.integers(0, g.shape[0], size=int(rng.integers(0, 6)))
        jitter = g[src] + rng.normal(0, 0.8, size=(src.size, 2 * dim))
        jitter[:, dim:] = np.maximum(jitter[:, dim:], jitter[:, :dim] + 0.5)
        n_rand = int(rng.integers(0, 5))
        p = np.concatenate([jitter, _random_boxes(rng, n_rand, dim)])
        lab = np.concatenate([glab[src], rng.integers(0, 2, size=n_rand)])
        flip = rng.uniform(size=lab.size) < 0.15  # some wrong-class predictions
        pb.append(p)
        ps.append(np.concatenate([rng.uniform(0.3, 1, size=src.size), rng.uniform(0, 0.7, size=n_rand)]))
        pl.append(np.where(flip, 1 - lab, lab))
        gb.append(g)
        gl.append(glab)
    # make sure both classes have GT so MONAI and we agree on every key
    gl[0][0], gl[1][0] = 0, 1
    return pb, ps, pl, gb, gl


@pytest.mark.parametrize("dim,seed,max_det", [(3, 0, 100), (2, 1, 100), (3, 2, 2)])
def test_coco_metrics_match_monai(dim, seed, max_det):
    classes = ["nodule", "mass"]
    pb, ps, pl, gb, gl = _synthetic_batch(seed, n_images=12, dim=dim)
    ours = coco_detection_metrics(pb, ps, pl, gb, gl, classes, max_detections=max_det)
    ref, thr = _monai_reference(pb, ps, pl, gb, gl, classes, list(ours["iou_thresholds"]), max_det, box_iou)
    keys = [f"{t:.2f}" for t in thr]
    suffix = f"MaxDet_{max_det}"
    rng_tag = "IoU_0.10_0.50_0.10"
    assert ours["map"] == pytest.approx(ref[f"mAP_{rng_tag}_{suffix}"], abs=1e-6)
    assert ours["mar"] == pytest.approx(ref[f"mAR_{rng_tag}_{suffix}"], abs=1e-6)
    for cls in classes:
        assert ours["map_per_class"][cls] == pytest.approx(ref[f"{cls}_mAP_{rng_tag}_{suffix}"], abs=1e-6)
        assert ours["mar_per_class"][cls] == pytest.approx(ref[f"{cls}_mAR_{rng_tag}_{suffix}"], abs=1e-6)
    ours_keys = list(ours["ap_per_iou"])
    for ok, mk in [(ours_keys[0], keys[0]), (ours_keys[-1], keys[-1])]:
        assert ours["ap_per_iou"][ok] == pytest.approx(ref[f"AP_IoU_{mk}_{suffix}"], abs=1e-6)
        for cls in classes:
            assert ours["ap"][cls][ok] == pytest.approx(ref[f"{cls}_AP_IoU_{mk}_{suffix}"], abs=1e-6)
            assert ours["recall"][cls][ok] == pytest.approx(ref[f"{cls}_AR_IoU_{mk}_{suffix}"], abs=1e-6)
    # the synthetic case is not trivial: AP strictly between 0 and 1 and differs across thresholds
    values = [v for cls in classes for v in ours["ap"][cls].values()]
    assert 0.0 < min(values) < max(values) < 1.0


def test_coco_metrics_match_monai_with_monai_iou():
    classes = ["a", "b"]
    pb, ps, pl, gb, gl = _synthetic_batch(5, n_images=8, dim=3)
    ours = coco_detection_metrics(pb, ps, pl, gb, gl, classes)
    ref, _ = _monai_reference(pb, ps, pl, gb, gl, classes, list(ours["iou_thresholds"]), 100, monai_box_iou)
    assert ours["map"] == pytest.approx(ref["mAP_IoU_0.10_0.50_0.10_MaxDet_100"], abs=1e-6)


def test_coco_hand_cases():
    gt = [np.array([[0.0, 0.0, 0.0, 10.0, 10.0, 10.0]])]
    # one perfect box: AP 1 at every threshold, recall 1
    res = coco_detection_metrics(gt, [np.array([0.9])], [np.array([0])], gt, [np.array([0])], ["nodule"])
    assert res["map"] == 1.0 and res["mar"] == 1.0
    assert all(v == 1.0 for v in res["ap"]["nodule"].values())

    # duplicate detection with the HIGHER score ranked first is TP, the duplicate FP: precision 1 at
    # recall 1 is reached on the first detection, so AP stays 1
    two = [np.repeat(gt[0], 2, axis=0)]
    res = coco_detection_metrics(two, [np.array([0.9, 0.8])], [np.array([0, 0])], gt, [np.array([0])], ["n"])
    assert res["map"] == 1.0

    # a false positive scored above the true one: precision at recall 1 is 1/2 -> AP 0.5
    far = np.array([[50.0, 50, 50, 60, 60, 60]])
    boxes = [np.concatenate([far, gt[0]])]
    res = coco_detection_metrics(boxes, [[0.9, 0.5]], [[0, 0]], gt, [[0]], ["n"])
    assert res["ap"]["n"]["0.1"] == pytest.approx(0.5, abs=1e-9)

    # duplicate counts as FP: two GT, detections [hit A (0.9), duplicate of A (0.8), hit B (0.7)]
    # recall 0.5 at precision 1; recall 1 at precision 2/3 -> AP = (51 * 1 + 50 * 2/3) / 101
    gts = np.array([[0.0, 0, 0, 10, 10, 10], [20.0, 20, 20, 30, 30, 30]])
    preds = np.stack([gts[0], gts[0], gts[1]])
    res = coco_detection_metrics(
        [preds], [np.array([0.9, 0.8, 0.7])], [np.zeros(3, int)], [gts], [np.zeros(2, int)], ["n"]
    )
    assert res["ap"]["n"]["0.5"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-9)
    assert res["recall"]["n"]["0.5"] == 1.0

    # an IoU of 1/7 (2D) is a hit at 0.1 and a miss from 0.2 on
    res = coco_detection_metrics(
        [np.array([[1.0, 1.0, 3.0, 3.0]])], [np.array([1.0])], [np.array([0])],
        [np.array([[0.0, 0.0, 2.0, 2.0]])], [np.array([0])], ["n"],
    )
    assert res["ap"]["n"] == {"0.1": 1.0, "0.2": 0.0, "0.3": 0.0, "0.4": 0.0, "0.5": 0.0}
    assert res["map"] == pytest.approx(0.2)


def test_coco_class_without_gt_is_nan_and_skipped():
    gt = [np.array([[0.0, 0.0, 4.0, 4.0]])]
    res = coco_detection_metrics(
        [np.array([[0.0, 0.0, 4.0, 4.0], [9.0, 9, 12, 12]])], [np.array([0.9, 0.8])], [np.array([0, 1])],
        gt, [np.array([0])], ["a", "b"],
    )
    assert np.isnan(res["map_per_class"]["b"]) and res["map"] == 1.0
    assert res["n_gt"] == {"a": 1, "b": 0} and res["n_pred"] == {"a": 1, "b": 1}


def test_coco_empty_images_and_errors():
    gt = [np.array([[0.0, 0.0, 4.0, 4.0]]), np.zeros((0, 4))]
    res = coco_detection_metrics(
        [np.zeros((0, 4)), np.array([])], [np.array([]), np.array([])], [np.array([]), np.array([])],
        gt, [np.array([0]), np.array([])], ["a"],
    )
    assert res["map"] == 0.0 and res["mar"] == 0.0
    with pytest.raises(ValueError, match="labels must be integers in"):
        coco_detection_metrics([np.zeros((1, 4))], [[0.5]], [[3]], [np.zeros((0, 4))], [[]], ["a"])
    with pytest.raises(ValueError, match="one entry per image"):
        coco_detection_metrics([np.zeros((1, 4))], [], [[0]], [np.zeros((0, 4))], [[]], ["a"])
    with pytest.raises(ValueError, match="pred_scores has 2"):
        coco_detection_metrics([np.zeros((1, 4))], [[0.1, 0.2]], [[0]], [np.zeros((0, 4))], [[]], ["a"])
