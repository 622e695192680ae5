"""Tests for the chest X-ray detection metrics: image-level FROC (medbundle.metrics.froc.image_froc), COCO files
(medbundle.io.coco) and coco_detection_metrics against pycocotools' COCOeval through those files."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from medbundle.io.coco import coco_detections, coco_ground_truth, write_coco_json
from medbundle.metrics.detection import coco_detection_metrics
from medbundle.metrics.froc import NODE21_IOU_THRESHOLD, image_froc, luna16_froc

RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# ------------------------------------------------------------------------------------------ image_froc
def _hand_case():
    """4 images: lesion A hit twice (0.9 and an extra 0.6) plus an FP 0.5; lesion B hit at 0.3, lesion C missed,
    an FP 0.8; a lesion-free image with FPs 0.7 and 0.2; an empty image."""
    pred_boxes = [
        np.array([[10, 10, 30, 30], [12, 12, 32, 32], [100, 100, 120, 120]], float),
        np.array([[50, 50, 70, 70], [0, 0, 5, 5]], float),
        np.array([[300, 300, 320, 320], [400, 400, 410, 410]], float),
        np.zeros((0, 4)),
    ]
    pred_scores = [np.array([0.9, 0.6, 0.5]), np.array([0.3, 0.8]), np.array([0.7, 0.2]), np.zeros(0)]
    gt_boxes = [
        np.array([[10, 10, 30, 30]], float),
        np.array([[50, 50, 70, 70], [200, 200, 220, 220]], float),
        np.zeros((0, 4)),
        [],
    ]
    return pred_boxes, pred_scores, gt_boxes


def test_image_froc_hand_case_extra_hits_ignored():
    res = image_froc(*_hand_case(), n_bootstraps=0)
    # candidates: 0.9 TP, 0.8 FP, 0.7 FP, 0.5 FP, 0.3 TP, 0.2 FP over 4 images and 3 lesions
    third, two_thirds = 1 / 3, 2 / 3
    assert res["sensitivities"] == pytest.approx([third, third, third, two_thirds, two_thirds, two_thirds, two_thirds])
    assert res["mean_sensitivity"] == pytest.approx(11 / 21)
    assert res["sensitivity_by_rate"]["0.25"] == pytest.approx(third)
    assert res["fps_per_image"] == pytest.approx([0.0, 0.0, 0.75, 0.75, 1.0])
    assert res["sensitivity"] == pytest.approx([0.0, third, third, two_thirds, two_thirds])
    assert res["thresholds"] == [None, 0.9, 0.5, 0.3, 0.2]
    assert (res["n_images"], res["n_images_with_lesions"], res["n_lesions"], res["n_detected"]) == (4, 2, 3, 2)
    assert (res["n_detections"], res["n_false_positives"], res["n_extra_hits"]) == (7, 4, 1)
    assert res["iou_threshold"] == NODE21_IOU_THRESHOLD == 0.2
    assert res["hit_criterion"] == "IoU > 0.2"
    assert res["max_sensitivity"] == pytest.approx(two_thirds)
    assert res["max_fps_per_image"] == 1.0
    assert "sensitivities_ci" not in res
    # the read-out is luna16_froc's: np.interp of the stored curve at the grid point nearest each rate
    grid = np.linspace(0.125, 8.0, 10001)
    read_at = grid[np.abs(grid[None] - np.asarray(RATES)[:, None]).argmin(1)]
    assert np.interp(read_at, res["fps_per_image"], res["sensitivity"]) == pytest.approx(res["sensitivities"])


def test_image_froc_hand_case_extra_hits_as_false_positives():
    res = image_froc(*_hand_case(), extra_hits="false_positive", n_bootstraps=0)
    # the extra hit 0.6 on lesion A becomes an FP: 0.9 TP, 0.8/0.7/0.6/0.5 FP, 0.3 TP, 0.2 FP
    third, two_thirds = 1 / 3, 2 / 3
    assert res["sensitivities"] == pytest.approx([third, third, third, third, two_thirds, two_thirds, two_thirds])
    assert res["fps_per_image"] == pytest.approx([0.0, 0.0, 1.0, 1.0, 1.25])
    assert (res["n_false_positives"], res["n_extra_hits"], res["n_detected"]) == (5, 1, 2)


def test_image_froc_one_to_one_matching_lets_a_second_detection_take_a_second_lesion():
    # two overlapping lesions; the best detection overlaps both, the second one only the second lesion
    gt = [np.array([[0, 0, 10, 10], [4, 0, 14, 10]], float)]
    pred = [np.array([[2, 0, 12, 10], [4, 0, 14, 10]], float)]
    scores = [np.array([0.9, 0.8])]
    ignore = image_froc(pred, scores, gt, n_bootstraps=0)
    one_to_one = image_froc(pred, scores, gt, extra_hits="false_positive", n_bootstraps=0)
    assert ignore["n_detected"] == one_to_one["n_detected"] == 2
    assert ignore["n_false_positives"] == one_to_one["n_false_positives"] == 0
    assert ignore["n_extra_hits"] == 2  # (det 0, lesion 1) and (det 1, lesion 1) beyond the first hit each
    assert ignore["max_sensitivity"] == one_to_one["max_sensitivity"] == 1.0


def test_image_froc_hit_needs_iou_strictly_above_threshold():
    gt = [np.array([[0, 0, 10, 10]], float)]
    at = [np.array([[0, 0, 10, 2]], float)]  # IoU = 20 / 100 = 0.2 exactly: no hit
    above = [np.array([[0, 0, 10, 2.5]], float)]  # IoU 0.25
    assert image_froc(at, [[0.9]], gt, n_bootstraps=0)["n_detected"] == 0
    assert image_froc(at, [[0.9]], gt, n_bootstraps=0)["n_false_positives"] == 1
    assert image_froc(above, [[0.9]], gt, n_bootstraps=0)["n_detected"] == 1
    assert image_froc(above, [[0.9]], gt, iou_threshold=0.3, n_bootstraps=0)["n_detected"] == 0


def _grid_case(seed: int, n_images: int = 40):
    """Lesions and FP boxes on separate cells of a 100-px grid, so that hits are exact copies of lesion boxes and
    the same case can be written as LUNA16 points (marks at box centres, 20-mm nodules)."""
    rng = np.random.default_rng(seed)
    pred_boxes, pred_scores, gt_boxes = [], [], []
    for _ in range(n_images):
        cells = rng.permutation(36)[: int(rng.integers(0, 9))]
        n_les = int(rng.integers(0, min(3, cells.size) + 1))
        corner = np.stack([cells % 6, cells // 6], axis=1) * 100.0 + 40.0
        boxes = np.concatenate([corner, corner + 20.0], axis=1)
        gt = boxes[:n_les]
        hit = gt[rng.random(n_les) < 0.7]
        dup = hit[rng.random(hit.shape[0]) < 0.3]  # extra hits on some lesions
        pred = np.concatenate([hit, dup, boxes[n_les:]])
        pred_boxes.append(pred)
        pred_scores.append(rng.random(pred.shape[0]))
        gt_boxes.append(gt)
    return pred_boxes, pred_scores, gt_boxes


def _as_luna16(pred_boxes, pred_scores, gt_boxes):
    def table(boxes, values, last):
        uids = [f"img{i}" for i, b in enumerate(boxes) for _ in range(len(b))]
        centre = np.concatenate([(b[:, :2] + b[:, 2:]) / 2 for b in boxes]) if uids else np.zeros((0, 2))
        return {"seriesuid": np.array(uids, dtype=str), "coordX": centre[:, 0], "coordY": centre[:, 1],
                "coordZ": np.zeros(len(uids)), last: np.concatenate(values) if uids else np.zeros(0)}

    ann = table(gt_boxes, [np.full(len(g), 20.0) for g in gt_boxes], "diameter_mm")
    res = table(pred_boxes, pred_scores, "probability")
    return ann, res, [f"img{i}" for i in range(len(gt_boxes))]


@pytest.mark.parametrize("seed", [0, 1])
def test_image_froc_equals_luna16_froc_on_the_same_hits(seed):
    pb, ps, gb = _grid_case(seed)
    ann, res, uids = _as_luna16(pb, ps, gb)
    ours = image_froc(pb, ps, gb, n_bootstraps=200, seed=seed)
    ref = luna16_froc(ann, res, seriesuids=uids, max_marks_per_scan=None, n_bootstraps=200, seed=seed)
    assert ours["n_lesions"] == ref["n_nodules"] and ours["n_detected"] == ref["n_detected"]
    assert ours["n_false_positives"] == ref["n_false_positives"] and ours["n_extra_hits"] == ref["n_extra_hits"]
    assert ours["sensitivities"] == pytest.approx(ref["sensitivities"], abs=1e-12)
    assert ours["mean_sensitivity"] == pytest.approx(ref["cpm"], abs=1e-12)
    assert ours["fps_per_image"] == pytest.approx(ref["fps_per_scan"], abs=1e-12)
    assert ours["sensitivity"] == pytest.approx(ref["sensitivity"], abs=1e-12)
    assert ours["thresholds"] == ref["thresholds"]
    assert np.allclose(ours["sensitivities_ci"], ref["sensitivities_ci"], atol=1e-12)
    assert ours["mean_sensitivity_ci"] == pytest.approx(ref["cpm_ci"], abs=1e-12)
    assert ours["bootstrap_curve"]["fps_per_image"] == pytest.approx(ref["bootstrap_curve"]["fps_per_scan"])
    assert 0.0 < ours["mean_sensitivity"] < 1.0


def test_image_froc_bootstrap_ci_contains_estimate_and_is_seeded():
    pb, ps, gb = _grid_case(7, n_images=80)
    a = image_froc(pb, ps, gb, n_bootstraps=300, seed=11)
    b = image_froc(pb, ps, gb, n_bootstraps=300, seed=11)
    c = image_froc(pb, ps, gb, n_bootstraps=300, seed=12)
    assert a["sensitivities_ci"] == b["sensitivities_ci"] and a["mean_sensitivity_ci"] == b["mean_sensitivity_ci"]
    assert a["mean_sensitivity_ci"] != c["mean_sensitivity_ci"]
    lo, hi = a["mean_sensitivity_ci"]
    assert lo <= a["mean_sensitivity"] <= hi and lo < hi
    for (lo, hi), s in zip(a["sensitivities_ci"], a["sensitivities"]):
        assert 0.0 <= lo <= s <= hi <= 1.0
    assert (a["n_bootstraps"], a["n_bootstraps_valid"], a["confidence"], a["seed"]) == (300, 300, 0.95, 11)
    band = a["bootstrap_curve"]
    assert len(band["fps_per_image"]) == len(band["sensitivity_low"]) == len(band["sensitivity_high"])
    assert np.all(np.asarray(band["sensitivity_low"]) <= np.asarray(band["sensitivity_high"]))
    json.dumps(a, allow_nan=False)  # the result is plain JSON


def test_image_froc_empty_images():
    # no detections at all: sensitivity 0 everywhere, curve is the origin
    res = image_froc([np.zeros((0, 4)), []], [np.zeros(0), []], [np.array([[0, 0, 5, 5.0]]), []], n_bootstraps=10)
    assert res["sensitivities"] == [0.0] * 7 and res["n_false_positives"] == 0
    assert res["n_images"] == 2 and res["n_lesions"] == 1
    # no lesion in any image (a class absent from the test set): NaN, not an error
    res = image_froc([np.array([[0, 0, 5, 5.0]])], [[0.4]], [np.zeros((0, 4))], n_bootstraps=10)
    assert all(np.isnan(res["sensitivities"])) and np.isnan(res["mean_sensitivity"])
    assert res["n_false_positives"] == 1 and res["max_fps_per_image"] == 1.0
    assert all(np.isnan(res["mean_sensitivity_ci"])) and res["n_bootstraps_valid"] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pred_scores": [[0.5]]}, "pred_scores has 1"),
        ({"pred_boxes": [np.zeros((1, 5)), []]}, r"shape \(K, 4\)"),
        ({"pred_boxes": [np.array([[10, 0, 5, 5.0]]), []]}, "max corner lies below"),
        ({"gt_boxes": [np.array([[0, 0, np.nan, 5]]), []]}, r"gt_boxes\[0\] contains NaN"),
        ({"pred_scores": [[0.5, 0.1], []]}, r"pred_scores\[0\] has 2 scores"),
        ({"pred_scores": [[np.nan], []]}, "NaN or infinite scores"),
        ({"fp_rates": (0.0, 1.0)}, "fp_rates must be positive"),
        ({"iou_threshold": 1.0}, "iou_threshold must be in"),
        ({"extra_hits": "drop"}, "extra_hits must be one of"),
        ({"n_bootstraps": -1}, "n_bootstraps must be >= 0"),
        ({"confidence": 1.0}, "confidence must be in"),
    ],
)
def test_image_froc_errors(kwargs, match):
    args = {"pred_boxes": [np.array([[0, 0, 5, 5.0]]), []], "pred_scores": [[0.5], []],
            "gt_boxes": [np.array([[0, 0, 5, 5.0]]), np.zeros((0, 4))]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        image_froc(**args)
    with pytest.raises(ValueError, match="no images"):
        image_froc([], [], [])


# ------------------------------------------------------------------------------------------ COCO files
def test_coco_files_layout(tmp_path):
    gt = coco_ground_truth(
        ["a.png", "b.png"], [(640, 480), (100, 100)],
        [np.array([[10, 20, 40, 60], [0, 0, 5, 5]], float), np.zeros((0, 4))], [[1, 0], []], ["nodule", "mass"],
    )
    assert gt["images"] == [{"id": 1, "file_name": "a.png", "width": 640, "height": 480},
                            {"id": 2, "file_name": "b.png", "width": 100, "height": 100}]
    assert [(c["id"], c["name"]) for c in gt["categories"]] == [(1, "nodule"), (2, "mass")]
    assert gt["annotations"][0] == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 40.0],
                                    "area": 1200.0, "iscrowd": 0}
    assert gt["annotations"][1]["id"] == 2 and gt["annotations"][1]["category_id"] == 1
    dets = coco_detections([[], np.array([[1, 2, 3, 5]], float)], [[], [0.25]], [[], [1]], num_classes=2)
    assert dets == [{"image_id": 2, "category_id": 2, "bbox": [1.0, 2.0, 2.0, 3.0], "score": 0.25}]
    path = write_coco_json(gt, tmp_path / "sub" / "gt.json")
    assert path == tmp_path / "sub" / "gt.json" and json.loads(path.read_text()) == gt
    assert [p.name for p in path.parent.iterdir()] == ["gt.json"]  # no temporary file left over


def test_coco_files_errors():
    ok = {"image_names": ["a"], "image_sizes": [(10, 10)], "gt_boxes": [np.array([[0, 0, 5, 5.0]])],
          "gt_labels": [[0]], "classes": ["n"]}
    with pytest.raises(ValueError, match="only 1 classes"):
        coco_ground_truth(**{**ok, "gt_labels": [[1]]})
    with pytest.raises(ValueError, match="image_sizes has 2 entries"):
        coco_ground_truth(**{**ok, "image_sizes": [(10, 10), (5, 5)]})
    with pytest.raises(ValueError, match=r"\(width, height\)"):
        coco_ground_truth(**{**ok, "image_sizes": [(0, 10)]})
    with pytest.raises(ValueError, match="duplicate names"):
        coco_ground_truth(**{**ok, "classes": ["n", "n"]})
    with pytest.warns(UserWarning, match="not a \\(height, width\\)"):
        coco_ground_truth(**{**ok, "image_sizes": [(4, 10)]})
    with pytest.raises(ValueError, match="max corner lies below"):
        coco_detections([np.array([[5, 5, 0, 0.0]])], [[0.5]], [[0]])
    with pytest.raises(ValueError, match="NaN or infinite scores"):
        coco_detections([np.array([[0, 0, 5, 5.0]])], [[np.inf]], [[0]])
    with pytest.raises(ValueError, match="0-based integer"):
        coco_detections([np.array([[0, 0, 5, 5.0]])], [[0.5]], [[-1]])


# ------------------------------------------------------------------------------------------ pycocotools
def _random_detection_case(seed: int, n_images: int = 14, n_classes: int = 3, ties: bool = False):
    """Several classes; some images without ground truth, some without predictions; jittered hits, wrong-class
    and random boxes; with ``ties`` the scores are rounded to one decimal, so they tie across images."""
    rng = np.random.default_rng(seed)
    pb, ps, pl, gb, gl = [], [], [], [], []
    for i in range(n_images):
        n_gt = 0 if i % 5 == 1 else int(rng.integers(0, 6))
        n_pred = 0 if i % 7 == 2 else int(rng.integers(0, 12))
        xy = rng.uniform(0, 400, (n_gt, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 80, (n_gt, 2))], axis=1)
        glab = rng.integers(0, n_classes, n_gt)
        src = rng.integers(0, max(n_gt, 1), n_pred)
        base = gt[src] if n_gt else np.zeros((n_pred, 4))
        size = np.tile(base[:, 2:] - base[:, :2], 2)
        near = base + rng.normal(0, 0.1, (n_pred, 4)) * size  # IoUs spread over 0.3 .. 1
        rxy = rng.uniform(0, 400, (n_pred, 2))
        rand = np.concatenate([rxy, rxy + rng.uniform(10, 80, (n_pred, 2))], axis=1)
        is_rand = (rng.random(n_pred) < 0.3) | (n_gt == 0)
        pred = np.where(is_rand[:, None], rand, near)
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1.0)
        own = glab[src] if n_gt else rng.integers(0, n_classes, n_pred)
        plab = np.where(rng.random(n_pred) < 0.85, own, rng.integers(0, n_classes, n_pred))
        score = np.where(is_rand, rng.uniform(0.0, 0.7, n_pred), rng.uniform(0.3, 1.0, n_pred))
        score = np.round(score, 1) if ties else score
        pb.append(pred), ps.append(score), pl.append(plab), gb.append(gt), gl.append(glab)
    return pb, ps, pl, gb, gl


def _cocoeval(tmp_path, pb, ps, pl, gb, gl, classes, iou_thrs=None):
    """pycocotools' COCOeval on the files written by medbundle.io.coco."""
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    names = [f"img{i:03d}.png" for i in range(len(gb))]
    gt_json = write_coco_json(coco_ground_truth(names, [(512, 512)] * len(gb), gb, gl, classes), tmp_path / "gt.json")
    dt_json = write_coco_json(coco_detections(pb, ps, pl, len(classes)), tmp_path / "dt.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco.COCO(str(gt_json))
        ev = cocoeval.COCOeval(gt, gt.loadRes(str(dt_json)), "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_valid(x):
    x = np.asarray(x)
    return float(x[x > -1].mean()) if np.any(x > -1) else float("nan")


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True)])
def test_coco_detection_metrics_equal_pycocotools(tmp_path, seed, ties):
    classes = ["nodule", "mass", "effusion"]
    data = _random_detection_case(seed, ties=ties)
    ev = _cocoeval(tmp_path, *data, classes)
    thr = ev.params.iouThrs  # linspace(0.5, 0.95, 10)
    ours = coco_detection_metrics(*data, classes, iou_thresholds=thr, max_detections=100)
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-6)  # AP@[.50:.95]
    assert ours["ap_per_iou"]["0.5"] == pytest.approx(ev.stats[1], abs=1e-6)  # AP@.50
    assert ours["mar"] == pytest.approx(ev.stats[8], abs=1e-6)  # AR, maxDets=100
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area "all", maxDets 100
    recall = ev.eval["recall"][:, :, 0, -1]  # [T, K]
    for k, cls in enumerate(classes):
        for t, key in enumerate(ours["ap"][cls]):
            assert ours["ap"][cls][key] == pytest.approx(_mean_valid(precision[t, :, k]), abs=1e-6, nan_ok=True)
            assert ours["recall"][cls][key] == pytest.approx(recall[t, k], abs=1e-6)
    # a custom IoU threshold
    ev4 = _cocoeval(tmp_path, *data, classes, iou_thrs=[0.4])
    ours4 = coco_detection_metrics(*data, classes, iou_thresholds=[0.4])
    assert ours4["map"] == pytest.approx(_mean_valid(ev4.eval["precision"][0, :, :, 0, -1]), abs=1e-6)
    for k, cls in enumerate(classes):
        expected = _mean_valid(ev4.eval["precision"][0, :, k, 0, -1])
        assert ours4["ap"][cls]["0.4"] == pytest.approx(expected, abs=1e-6)
    # the case is not trivial
    assert 0.05 < ours["map"] < 0.95 and sum(ours["n_gt"].values()) > 20


def test_recall_on_the_grid_pycocotools_versus_monai(tmp_path):
    """A final recall of 39/100 equals the grid value 0.39 in float64 but not in float32: pycocotools reads
    it, MONAI's COCOMetric (float32 counts) gives precision 0 there; ``convention`` follows either."""
    gt = np.array([[20 * (k % 10), 20 * (k // 10), 20 * (k % 10) + 10, 20 * (k // 10) + 10] for k in range(100)], float)
    pred = np.concatenate([gt[:29], [[300.0, 300.0, 310.0, 310.0]], gt[29:39]])  # 29 hits, 1 FP, 10 hits
    scores = np.linspace(1.0, 0.5, pred.shape[0])
    data = ([pred], [scores], [np.zeros(pred.shape[0], int)], [gt], [np.zeros(100, int)])
    ev = _cocoeval(tmp_path, *data, ["nodule"], iou_thrs=[0.5])
    coco_ap = _mean_valid(ev.eval["precision"][0, :, 0, 0, -1])
    # grid recalls 0 .. 0.29 read precision 1 (30 points), 0.30 .. 0.39 the envelope 39/40 (10 points)
    assert coco_ap == pytest.approx((30 + 10 * 39 / 40) / 101, abs=1e-12)
    ours = coco_detection_metrics(*data, ["nodule"], iou_thresholds=[0.5])
    assert ours["map"] == pytest.approx(coco_ap, abs=1e-12)
    assert ours["recall"]["nodule"]["0.5"] == pytest.approx(0.39, abs=1e-15)
    # MONAI 1.6.1's COCOMetric on this case gives 38.75 / 101: in float32, 29/100 < 0.29 so that grid point reads
    # 39/40, and 39/100 < 0.39 so that one reads 0 (not imported here: MONAI takes seconds to load)
    as_monai = coco_detection_metrics(*data, ["nodule"], iou_thresholds=[0.5], convention="monai")
    assert as_monai["map"] == pytest.approx((29 + 10 * 39 / 40) / 101, abs=1e-12)
    assert as_monai["recall"]["nodule"]["0.5"] == pytest.approx(0.39, abs=1e-7)
    with pytest.raises(ValueError, match="convention must be"):
        coco_detection_metrics(*data, ["nodule"], convention="coco")
