"""Flip test-time augmentation of the 3D detector: box flips, 3D weighted box fusion, the fused scores."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medbundle.detection.box_fusion import box_iou, weighted_box_fusion
from medbundle.detection.inferers import DetectorInferer, flip_boxes

SHAPE = (10, 9, 8)
BLOCK = (slice(2, 4), slice(3, 6), slice(1, 2))  # voxels 2-3, 3-5, 1
ALL_FLIPS = [list(c) for k in (1, 2, 3) for c in itertools.combinations(range(3), k)]


def _block_image() -> torch.Tensor:
    img = torch.zeros(1, *SHAPE)
    img[(0, *BLOCK)] = 1.0
    return img


def _bbox(img: torch.Tensor, regions: bool) -> torch.Tensor:
    """Corner box of the non-zero voxels: voxel regions ``[i, i + 1)`` or voxel centres ``i``."""
    idx = torch.nonzero(img[0]).float()
    lo, hi = idx.min(0).values, idx.max(0).values + (1.0 if regions else 0.0)
    return torch.cat([lo, hi])[None]


@pytest.mark.parametrize("axes", ALL_FLIPS)
@pytest.mark.parametrize("regions", [True, False])
def test_flip_boxes_maps_a_box_of_the_flipped_image_onto_the_original(axes, regions):
    img = _block_image()
    flipped = torch.flip(img, dims=[a + 1 for a in axes])
    back = flip_boxes(_bbox(flipped, regions), axes, SHAPE, voxel_regions=regions)
    torch.testing.assert_close(back, _bbox(img, regions))
    # its own inverse
    torch.testing.assert_close(flip_boxes(back, axes, SHAPE, regions), _bbox(flipped, regions))


def test_box_iou_of_3d_boxes_by_hand():
    a = [[0, 0, 0, 2, 2, 2]]
    b = [[1, 0, 0, 3, 2, 2], [5, 5, 5, 6, 6, 6], [0, 0, 0, 2, 2, 2]]
    np.testing.assert_allclose(box_iou(a, b), [[4 / 12, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"box_iou\(b\): expected corner boxes of shape \(N, 4\)"):
        box_iou([[0, 0, 1, 1]], b)


def test_3d_fusion_of_boxes_of_one_slab_equals_the_2d_fusion():
    """3D boxes that all span z in [0, 1] have the IoU of their 2D footprints: fusion must agree with 2D."""
    rng = np.random.default_rng(0)
    boxes2d, scores, labels = [], [], []
    for _ in range(3):
        lo = rng.uniform(0, 20, size=(6, 2))
        boxes2d.append(np.hstack([lo, lo + rng.uniform(3, 8, size=(6, 2))]))
        scores.append(rng.uniform(0.1, 1.0, size=6))
        labels.append(rng.integers(0, 2, size=6))
    boxes3d = [np.hstack([b[:, :2], np.zeros((6, 1)), b[:, 2:], np.ones((6, 1))]) for b in boxes2d]
    f2 = weighted_box_fusion(boxes2d, labels, 0.3, scores)
    f3 = weighted_box_fusion(boxes3d, labels, 0.3, scores)
    assert f3.boxes.shape == (len(f2.boxes), 6)
    np.testing.assert_allclose(f3.boxes[:, [0, 1, 3, 4]], f2.boxes)
    np.testing.assert_allclose(f3.boxes[:, [2, 5]], np.tile([0.0, 1.0], (len(f2.boxes), 1)))
    np.testing.assert_allclose(f3.scores, f2.scores)
    np.testing.assert_array_equal(f3.labels, f2.labels)


class _BlockDetector(torch.nn.Module):
    """Stands in for a RetinaNetDetector: boxes the bright voxels of each image it is given (score 0.8, voxel
    regions), and always adds a mark at the same array corner (score 0.95), which no mirror sees at one place."""

    target_box_key, target_label_key, pred_score_key = "box", "label", "label_scores"
    inferer = None

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images, use_inferer=False):
        self.calls += 1
        out = []
        for im in images:
            boxes = torch.cat([_bbox(im, regions=True), torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])])
            out.append({"box": boxes, "label": torch.zeros(2, dtype=torch.long),
                        "label_scores": torch.tensor([0.8, 0.95])})
        return out


def test_flip_tta_keeps_the_finding_every_mirror_sees_and_divides_a_one_orientation_mark():
    images = [_block_image(), _block_image()]
    plain = DetectorInferer(_BlockDetector(), voxel_regions=True)(images)[0]
    assert plain["label_scores"].argmax() == 1  # without TTA the corner mark ranks first

    det = _BlockDetector()
    out = DetectorInferer(det, voxel_regions=True, flips=ALL_FLIPS, fusion_iou=0.2)(images)
    assert det.calls == 1 + len(ALL_FLIPS)  # one batch per pass
    for pred in out:
        scores = pred["label_scores"]
        assert scores.tolist() == sorted(scores.tolist(), reverse=True)
        # the block: found in all 8 passes at the same place after un-flipping -> same box, score 0.8
        torch.testing.assert_close(pred["box"][0], _bbox(_block_image(), regions=True)[0] - 0.5)
        assert scores[0].item() == pytest.approx(0.8)
        # the corner mark lands on 8 different corners -> 8 boxes of score 0.95 / 8
        assert len(scores) == 1 + 8
        np.testing.assert_allclose(scores[1:].numpy(), 0.95 / 8, rtol=1e-6)


def test_flip_tta_max_detections_and_bad_flips():
    out = DetectorInferer(_BlockDetector(), flips=[[0]], max_detections=2)([_block_image()])[0]
    assert len(out["box"]) == 2
    with pytest.raises(ValueError, match="distinct spatial axes"):
        DetectorInferer(_BlockDetector(), flips=[[0, 0]])
    with pytest.raises(ValueError, match="distinct spatial axes"):
        DetectorInferer(_BlockDetector(), flips=[[]])
    with pytest.raises(ValueError, match="fusion_iou"):
        DetectorInferer(_BlockDetector(), flips=[[0]], fusion_iou=1.0)
    with pytest.raises(ValueError, match="fusion_box"):
        DetectorInferer(_BlockDetector(), flips=[[0]], fusion_box="median")
    with pytest.raises(ValueError, match=r"axes \[3\] do not exist"):
        DetectorInferer(_BlockDetector(), flips=[[3]])([_block_image()])


def test_box_rule_best_keeps_the_most_confident_box_and_sums_scores_like_mean():
    boxes = [[[0, 0, 0, 4, 4, 4]], [[1, 0, 0, 5, 4, 4]]]  # IoU 48 / 80 = 0.6
    labels, scores = [[0], [0]], [[0.9], [0.3]]
    best = weighted_box_fusion(boxes, labels, 0.5, scores, box_rule="best")
    mean = weighted_box_fusion(boxes, labels, 0.5, scores, box_rule="mean")
    np.testing.assert_allclose(best.boxes, [[0, 0, 0, 4, 4, 4]])
    np.testing.assert_allclose(mean.boxes, [[0.25, 0, 0, 4.25, 4, 4]])  # (0.9 * 0 + 0.3 * 1) / 1.2
    np.testing.assert_allclose(best.scores, [0.6])
    np.testing.assert_allclose(mean.scores, [0.6])
    with pytest.raises(ValueError, match="box_rule"):
        weighted_box_fusion(boxes, labels, 0.5, scores, box_rule="median")
