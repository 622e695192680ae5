"""Boxes and their voxels stay together through MONAI's box augmentations (voxel-region coordinates)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.dictionary import (
    AffineBoxToImageCoordinated,
    ConvertBoxToStandardModed,
    FlipBoxd,
    RotateBox90d,
)
from monai.data import MetaTensor

from medbundle.detection.engines import DetectionEvaluator
from medbundle.detection.inferers import DetectorInferer
from medbundle.detection.transforms import VOXEL_REGION_SHIFT, BoxesToVoxelRegionsd, shift_boxes

VOXEL = (2, 3, 4)
AFFINE = torch.tensor([[0.8, 0, 0, -40.0], [0, 0.8, 0, -30.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]], dtype=torch.float64)


def _one_voxel_item() -> dict:
    """A 10^3 image with one bright voxel and a 1-voxel world box (``cccwhd``, mm) centred on it."""
    img = torch.zeros(1, 10, 10, 10)
    img[(0, *VOXEL)] = 1.0
    centre = (AFFINE @ torch.tensor([*VOXEL, 1.0], dtype=torch.float64))[:3]
    box = torch.cat([centre, torch.diagonal(AFFINE)[:3]])[None].float()
    return {"image": MetaTensor(img, affine=AFFINE), "box": box}


def _to_image(d: dict, regions: bool) -> dict:
    d = ConvertBoxToStandardModed(box_keys="box", mode="cccwhd")(d)
    d = AffineBoxToImageCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=False)(d)
    return BoxesToVoxelRegionsd("box")(d) if regions else d


def _voxel_and_box(d: dict) -> tuple[list[int], list[float]]:
    return torch.nonzero(d["image"][0])[0].tolist(), d["box"][0].tolist()


def test_affine_boxes_are_off_by_one_voxel_after_monai_flip():
    """The cause: the affine puts voxel i at i, MONAI's flip treats it as [i, i + 1)."""
    d = FlipBoxd(image_keys="image", box_keys="box", box_ref_image_keys="image", spatial_axis=0)(
        _to_image(_one_voxel_item(), regions=False))
    voxel, box = _voxel_and_box(d)
    assert voxel[0] == 10 - 1 - VOXEL[0]
    assert (box[0] + box[3]) / 2 == pytest.approx(voxel[0] + 1.0)  # the box centre is a whole voxel off


@pytest.mark.parametrize("axes", [[0], [1], [2], [0, 1, 2]])
def test_voxel_region_boxes_follow_their_voxel_through_flips(axes):
    d = FlipBoxd(image_keys="image", box_keys="box", box_ref_image_keys="image", spatial_axis=axes)(
        _to_image(_one_voxel_item(), regions=True))
    voxel, box = _voxel_and_box(d)
    np.testing.assert_allclose(box, [*voxel, *(v + 1 for v in voxel)], atol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_voxel_region_boxes_follow_their_voxel_through_rot90(k):
    d = RotateBox90d(image_keys="image", box_keys="box", box_ref_image_keys="image", k=k, spatial_axes=(0, 1))(
        _to_image(_one_voxel_item(), regions=True))
    voxel, box = _voxel_and_box(d)
    np.testing.assert_allclose(box, [*voxel, *(v + 1 for v in voxel)], atol=1e-4)


def test_inverse_transform_and_shift_round_trip():
    d = _to_image(_one_voxel_item(), regions=True)
    back = BoxesToVoxelRegionsd("box", inverse=True)(d)["box"][0].tolist()
    np.testing.assert_allclose(back, [v - 0.5 for v in VOXEL] + [v + 0.5 for v in VOXEL], atol=1e-4)
    arr = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    np.testing.assert_allclose(shift_boxes(shift_boxes(arr, 0.5), -0.5), arr)


class _FixedDetector(torch.nn.Module):
    """Stands in for a RetinaNetDetector: returns one box per image."""

    target_box_key, target_label_key, pred_score_key = "box", "label", "label_scores"
    inferer = None

    def forward(self, images, use_inferer=False):
        return [{"box": torch.tensor([[2.5, 3.5, 4.5, 3.5, 4.5, 5.5]]), "label": torch.zeros(1, dtype=torch.long),
                 "label_scores": torch.ones(1)} for _ in images]


def test_detector_inferer_moves_predictions_back_to_voxel_centres():
    det = _FixedDetector()
    images = [torch.zeros(1, 8, 8, 8)]
    plain = DetectorInferer(det)(images)[0]["box"]
    centred = DetectorInferer(det, voxel_regions=True)(images)[0]["box"]
    torch.testing.assert_close(centred, plain - VOXEL_REGION_SHIFT)


def test_evaluator_refuses_an_inferer_in_the_other_convention():
    det = _FixedDetector()
    det.network = torch.nn.Identity()
    with pytest.raises(ValueError, match="half a voxel"):
        DetectionEvaluator(device="cpu", val_data_loader=[], detector=det, inferer=DetectorInferer(det),
                           voxel_regions=True)
