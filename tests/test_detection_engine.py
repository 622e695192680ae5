"""DetectionTrainer / DetectionEvaluator with a tiny RetinaNet on CPU, and the detection handlers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.data import MetaTensor
from monai.handlers import CheckpointSaver
from monai.networks.nets import resnet

from medbundle.detection.boxes import corner_boxes_to_world, image_to_world_boxes, world_to_corner_boxes
from medbundle.detection.engines import DetectionEvaluator, DetectionTrainer, flatten_detection_batch
from medbundle.detection.handlers import CPMMetric, DetectionMetric, DetectionReport, DetectionWriter
from medbundle.io.luna16_csv import read_luna16_results

SIZE = 32
AFFINE = np.array([[0.8, 0, 0, -40.0], [0, 0.8, 0, -30.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]])


def _detector() -> RetinaNetDetector:
    torch.manual_seed(0)
    backbone = resnet.ResNet(
        spatial_dims=3, block=resnet.ResNetBlock, layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32],
        n_input_channels=1, conv1_t_stride=(2, 2, 2), conv1_t_size=(3, 3, 3),
    )
    returned_layers = [1, 2]
    features = resnet_fpn_feature_extractor(backbone, 3, pretrained_backbone=False, returned_layers=returned_layers)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**i for i in range(len(returned_layers) + 1)], base_anchor_shapes=((6, 6, 6),)
    )
    net = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=1, feature_extractor=features,
                    size_divisible=2 * 2 * 2 ** max(returned_layers))
    det = RetinaNetDetector(net, anchors)
    det.set_target_keys(box_key="box", label_key="label")
    det.set_atss_matcher(num_candidates=4, center_in_gt=False)
    det.set_hard_negative_sampler(batch_size_per_image=32, positive_fraction=0.3, pool_size=20, min_neg=8)
    det.set_box_selector_parameters(score_thresh=0.0, topk_candidates_per_level=20, nms_thresh=0.2,
                                    detections_per_img=8)
    return det


def _item(seed: int, uid: str) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.1, (1, SIZE, SIZE, SIZE)).astype(np.float32)
    lo = rng.integers(4, SIZE - 12, size=3)
    img[0, lo[0]:lo[0] + 6, lo[1]:lo[1] + 6, lo[2]:lo[2] + 6] += 1.0
    meta = {"affine": torch.as_tensor(AFFINE), "filename_or_obj": f"/data/subset0/{uid}.mhd",
            "spatial_shape": [SIZE] * 3}
    box = np.concatenate([lo, lo + 6]).astype(np.float32)[None]
    return {"image": MetaTensor(torch.from_numpy(img), meta=meta), "box": torch.from_numpy(box),
            "label": torch.zeros(1, dtype=torch.long), "seriesuid": uid}


def test_flatten_detection_batch():
    a, b, c = {"x": 1}, {"x": 2}, {"x": 3}
    assert [d["x"] for d in flatten_detection_batch([[a, b], [c]])] == [1, 2, 3]
    assert [d["x"] for d in flatten_detection_batch([a, b])] == [1, 2]
    with pytest.raises(TypeError, match="no_collation"):
        flatten_detection_batch([torch.zeros(2)])


def test_trainer_two_iterations_updates_parameters():
    det = _detector()
    opt = torch.optim.SGD(det.network.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in det.network.parameters()]
    batches = [[[_item(0, "a"), _item(1, "b")]], [_item(2, "c")]]  # crops of one image, then a plain list
    trainer = DetectionTrainer("cpu", max_epochs=1, train_data_loader=batches, detector=det, optimizer=opt,
                               epoch_length=2)
    losses = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(dict(e.state.output)))
    trainer.run()
    assert trainer.state.iteration == 2 and len(losses) == 2
    for out in losses:
        assert set(out) == {"loss", "cls_loss", "box_reg_loss"}
        assert all(torch.isfinite(v) and v.ndim == 0 and not v.requires_grad for v in out.values())
        assert math.isclose(float(out["loss"]), float(out["cls_loss"] + out["box_reg_loss"]), rel_tol=1e-5)
    changed = [not torch.equal(a, b.detach()) for a, b in zip(before, det.network.parameters())]
    assert sum(changed) > len(changed) // 2


def test_detector_trains_with_medbundle_sigmoid_focal_loss():
    """The bundle's ``cls_loss`` swap: the detector's classification loss is then the focal loss."""
    from medbundle.losses import SigmoidFocalLoss

    det = _detector()
    det.set_cls_loss(SigmoidFocalLoss(gamma=2.0, alpha=0.25))
    det.set_box_regression_loss(torch.nn.SmoothL1Loss(beta=1.0 / 9), encode_gt=True, decode_pred=False)
    item = _item(3, "f")
    images, targets = [item["image"].as_tensor()], [{"box": item["box"], "label": item["label"]}]
    det.train()
    torch.manual_seed(0)
    focal = det(images, targets)[det.cls_key]
    det.set_cls_loss(torch.nn.BCEWithLogitsLoss())
    torch.manual_seed(0)
    bce = det(images, targets)[det.cls_key]
    assert torch.isfinite(focal) and focal.requires_grad
    # focal = mean(alpha_t * (1 - p_t)^2 * bce_elementwise) < 0.75 * mean(bce) (gamma shrinks every term)
    assert 0 < float(focal) < 0.75 * float(bce)
    focal.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.network.parameters())


def test_evaluator_with_report_writer_and_key_metric(tmp_path):
    det = _detector()
    data = [[_item(10 + i, f"1.2.3.{i}")] for i in range(3)]
    report = DetectionReport(output_dir=tmp_path / "eval", n_bootstraps=20)
    writer = DetectionWriter(tmp_path / "pred", max_marks=5)
    saver = CheckpointSaver(str(tmp_path / "models"), {"model": det.network}, save_key_metric=True)
    evaluator = DetectionEvaluator("cpu", data, det, key_val_metric={"val_cpm": CPMMetric()},
                                   additional_metrics={"val_map": DetectionMetric("map")},
                                   val_handlers=[report, writer, saver], use_inferer=False)
    evaluator.run()

    out = evaluator.state.output
    assert isinstance(out, list) and len(out) == 1
    o = out[0]
    assert set(o) >= {"image_meta", "pred_box", "pred_label", "pred_score", "box", "label", "seriesuid"}
    np.testing.assert_allclose(o["image_meta"]["affine"], AFFINE)
    assert o["pred_box"].shape[1] == 6 and o["pred_box"].shape[0] == o["pred_score"].shape[0] > 0

    m = evaluator.state.metrics
    assert 0.0 <= m["val_cpm"] <= 1.0 and 0.0 <= m["val_map"] <= 1.0
    assert math.isclose(m["val_cpm"], report.report["cpm"]) and math.isclose(m["val_map"], report.report["map"])
    assert evaluator.state.best_metric_epoch == 1
    assert list((tmp_path / "models").glob("*key_metric*.pt"))

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"cpm", "map", "mar", "coco", "froc", "n_images"} <= set(metrics)
    assert metrics["n_images"] == 3 and metrics["froc"]["n_scans"] == 3 and metrics["froc"]["n_nodules"] == 3
    assert "fps_per_scan" not in metrics["froc"] and len(metrics["froc"]["cpm_ci"]) == 2
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("cpm", "map", "mar"))
    assert (tmp_path / "eval" / "froc.png").stat().st_size > 0

    table = read_luna16_results(tmp_path / "pred" / "results.csv")
    assert set(table["seriesuid"].tolist()) <= {f"1.2.3.{i}" for i in range(3)}
    assert 0 < table["seriesuid"].size <= 15
    boxes = json.loads((tmp_path / "pred" / "1.2.3.0_boxes.json").read_text())
    assert boxes["box_mode"] == "cccwhd" and boxes["coordinate_system"].startswith("LPS")
    assert len(boxes["boxes"]) == len(boxes["scores"]) == len(boxes["labels"])
    assert boxes["scores"] == sorted(boxes["scores"], reverse=True)


def _perfect_outputs(affine: np.ndarray) -> list[dict]:
    outs = []
    for i, corner in enumerate(([4, 5, 6, 12, 13, 14], [20, 2, 9, 26, 10, 17])):
        box = torch.tensor([corner], dtype=torch.float32)
        outs.append({"image_meta": {"affine": affine, "filename_or_obj": f"/x/scan{i}.nii.gz"}, "pred_box": box,
                     "pred_label": torch.zeros(1, dtype=torch.long), "pred_score": torch.ones(1), "box": box,
                     "label": torch.zeros(1, dtype=torch.long)})
    return outs


def test_report_perfect_predictions_give_cpm_and_map_one(tmp_path):
    report = DetectionReport(output_dir=tmp_path, n_bootstraps=0)
    report.collect(_perfect_outputs(AFFINE))
    result = report.compute()
    assert result["cpm"] == pytest.approx(1.0) and result["map"] == pytest.approx(1.0)
    assert result["mar"] == pytest.approx(1.0)
    written = report.write(result)
    assert written["froc"]["n_scans"] == 2 and json.loads((tmp_path / "metrics.json").read_text())["cpm"] == 1.0
    # both nodules are under 10 mm (box sizes 6.4 x 6.4 x 12 and 4.8 x 6.4 x 12 mm, mean 8.3 and 7.7 mm)
    by_size = json.loads((tmp_path / "metrics.json").read_text())["froc_by_size"]
    assert by_size["strata"]["under_10mm"]["n_nodules"] == 2 and by_size["strata"]["10mm_or_more"]["n_nodules"] == 0
    assert written["sensitivity_at_1fp_by_size"] == {"under_10mm": 1.0, "10mm_or_more": None}
    plain = DetectionReport(n_bootstraps=0, size_edges=None)
    plain.collect(_perfect_outputs(AFFINE))
    assert plain.write()["froc_by_size"] is None and plain.report["sensitivity_at_1fp_by_size"] is None


def test_world_conversion_matches_luna16_helpers_and_round_trips():
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, -0.9, 2.5])
    affine[:3, 3] = [12.0, -80.0, 300.0]
    corners = np.array([[1.0, 2.0, 3.0, 9.0, 7.0, 5.0], [10.0, 0.0, 4.0, 12.5, 6.0, 11.0]])
    cccwhd = np.concatenate([(corners[:, :3] + corners[:, 3:]) / 2, corners[:, 3:] - corners[:, :3]], axis=1)
    for lps in (True, False):
        world = corner_boxes_to_world(corners, affine, affine_lps_to_ras=lps)
        np.testing.assert_allclose(world, image_to_world_boxes(cccwhd, affine, affine_lps_to_ras=lps))
    # axis-aligned affine: world -> voxel -> world is exact, and LPS negates x and y of the RAS centre
    world = corner_boxes_to_world(corners, AFFINE)
    np.testing.assert_allclose(world_to_corner_boxes(world, AFFINE), corners, atol=1e-9)
    ras = corner_boxes_to_world(corners, AFFINE, affine_lps_to_ras=False)
    np.testing.assert_allclose(world[:, :3], ras[:, :3] * [-1, -1, 1])
    np.testing.assert_allclose(world[:, 3:], (corners[:, 3:] - corners[:, :3]) * [0.8, 0.8, 1.5])
