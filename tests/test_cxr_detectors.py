"""2D torchvision detectors behind the RetinaNetDetector interface: builders, adapter layout, OHEM, export, anchors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from medbundle.detection.anchors import anchor_recall, box_sizes_and_ratios, propose_anchors
from medbundle.detection.engines import DetectionEvaluator, DetectionTrainer
from medbundle.detection.torchvision_detectors import (
    MODELS,
    OHEMRegionProposalNetwork,
    OHEMRoIHeads,
    TorchvisionDetector,
    build_detector,
    export_network,
    faster_rcnn,
    fcos,
    retinanet,
    select_hard_examples,
)

X, Y = 80, 64  # non-square on purpose: a transposition shows
BOX = torch.tensor([[20.0, 10.0, 44.0, 30.0]])  # x_min, y_min, x_max, y_max: columns 20-43 (dim 1), rows 10-29 (dim 2)

# small Faster R-CNN sampling so that a CPU step takes well under a second
SMALL_RCNN = dict(rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=200,
                  rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64,
                  representation_size=128, anchor_sizes=((16,), (32,), (64,), (128,), (256,)))


def _image() -> torch.Tensor:
    img = torch.zeros(1, X, Y)  # MONAI layout (C, X, Y)
    img[0, 20:44, 10:30] = 1.0
    return img


def _target(n_boxes: int = 1) -> dict[str, torch.Tensor]:
    return {"boxes": BOX[:n_boxes].clone(), "labels": torch.zeros(n_boxes, dtype=torch.long)}


def _det(model: str = "faster_rcnn", num_classes: int = 1, **kwargs) -> TorchvisionDetector:
    torch.manual_seed(0)
    kw = dict(SMALL_RCNN) if model == "faster_rcnn" else {}
    kw.update(kwargs)
    channels = 32 if model == "faster_rcnn" else 64  # one-stage heads: GroupNorm(32) needs >1 value on P7 (1 x 1)
    return build_detector(model, num_classes, backbone="resnet18", fpn_channels=channels, min_size=Y, max_size=X,
                          **kw)


def _trainable(det: nn.Module) -> list[nn.Parameter]:
    return [p for p in det.parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------------------


def test_build_detector_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="faster_rcnn, retinanet, fcos"):
        build_detector("yolo", 1)
    with pytest.raises(ValueError, match="resnet18"):
        faster_rcnn(1, backbone="vgg16")
    with pytest.raises(ValueError, match="4 levels but the faster_rcnn FPN gives 5"):
        faster_rcnn(1, backbone="resnet18", fpn_channels=32, anchor_sizes=((16,), (32,), (64,), (128,)))
    with pytest.raises(ValueError, match="same number"):
        faster_rcnn(1, backbone="resnet18", fpn_channels=32, anchor_sizes=((16,), (32, 40), (64,), (128,), (256,)))
    with pytest.raises(ValueError, match="one value per input channel"):
        faster_rcnn(1, backbone="resnet18", fpn_channels=32, image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="without background"):
        faster_rcnn(0)
    with pytest.raises(ValueError, match="divisible by 32"):
        retinanet(1, backbone="resnet18", fpn_channels=48)
    with pytest.raises(ValueError, match="rpn_ohem mines Faster R-CNN"):
        build_detector("fcos", 1, rpn_ohem=True)
    with pytest.raises(ValueError, match="unknown roi_ohem option"):
        faster_rcnn(1, backbone="resnet18", fpn_channels=32, roi_ohem={"pool": 3})


def test_faster_rcnn_is_the_v2_recipe_on_one_channel():
    net = faster_rcnn(2, in_channels=1, backbone="resnet18", fpn_channels=32, aspect_ratios=(0.5, 1.0, 2.0, 4.0),
                      min_size=128, max_size=160)
    body = net.backbone.body
    assert body.conv1.in_channels == 1 and net.backbone.out_channels == 32
    assert isinstance(body.bn1, nn.BatchNorm2d) and type(body.bn1) is nn.BatchNorm2d  # trainable BN, not frozen
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.backbone.fpn.modules())  # BatchNorm FPN (v2)
    assert len(net.rpn.head.conv) == 2  # RPNHead(conv_depth=2)
    assert net.rpn.head.cls_logits.out_channels == 4  # one anchor per ratio (one size per level)
    convs = [m for m in net.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 4 and len(fcs) == 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.roi_heads.box_head.modules()) == 4
    assert net.roi_heads.box_predictor.cls_score.out_features == 3  # 2 lesion classes + background
    assert net.transform.image_mean == [0.0] and net.transform.image_std == [1.0]
    assert net.transform.min_size == (128,) and net.transform.max_size == 160
    assert all(p.requires_grad for p in net.parameters())  # trainable_layers=5
    frozen = faster_rcnn(1, backbone="resnet18", fpn_channels=32, trainable_layers=2)
    body = frozen.backbone.body
    assert not body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad


def test_one_stage_builders_size_p6_for_the_backbone():
    r = retinanet(3, backbone="resnet18", fpn_channels=64)
    assert r.backbone.fpn.extra_blocks.p6.in_channels == 512  # from C5 of resnet18 (2048 for resnet50)
    assert r.head.classification_head.num_classes == 3 and r.head.regression_head._loss_type == "giou"
    assert r.anchor_generator.num_anchors_per_location()[0] == 9
    f = fcos(2, backbone="resnet18", fpn_channels=64)
    assert f.backbone.fpn.extra_blocks.p6.in_channels == 64 and f.anchor_generator.num_anchors_per_location() == [1] * 5
    det = build_detector("retinanet", 3, backbone="resnet18", fpn_channels=64)
    assert det.kind == "retinanet" and det.num_classes == 3 and det.label_offset == 0 and det.spatial_dims == 2


# --------------------------------------------------------------------------------------------------------------
# the adapter: layout, labels, output format, losses
# --------------------------------------------------------------------------------------------------------------


def test_layout_monai_xy_to_torchvision_hw_keeps_the_box():
    det = _det()
    img = _image()
    tv = det.to_torchvision_images([img])[0]
    assert tv.shape == (1, Y, X)  # (C, H, W): H = rows = MONAI's second spatial dim
    x0, y0, x1, y1 = (int(v) for v in BOX[0])
    inside = tv[0, y0:y1, x0:x1]  # torchvision reads the same box as rows y0:y1, columns x0:x1
    assert inside.min() == 1.0 and float(inside.sum()) == float(tv.sum()) == float(img.sum())
    tv_target = det.to_torchvision_targets([_target()])[0]
    assert torch.equal(tv_target["boxes"], BOX)  # boxes pass unchanged
    batched = det.to_torchvision_images(img[None])  # (B, C, X, Y) tensor input
    assert torch.equal(batched[0], tv)
    with pytest.raises(ValueError, match="channels"):
        det.to_torchvision_images([torch.zeros(3, X, Y)])
    with pytest.raises(ValueError, match=r"\(C, X, Y\)"):
        det.to_torchvision_images([torch.zeros(X, Y)])


@pytest.mark.parametrize("model", MODELS)
def test_eval_output_format_and_frame(model):
    det = _det(model, num_classes=2)
    det.set_box_selector_parameters(score_thresh=0.0, nms_thresh=0.9, detections_per_img=50)
    det.eval()
    with torch.no_grad():
        out = det([_image(), _image()])
    assert isinstance(out, list) and len(out) == 2
    o = out[0]
    assert set(o) == {det.target_box_key, det.target_label_key, det.pred_score_key} == {"boxes", "labels",
                                                                                         "labels_scores"}
    boxes, labels, scores = o["boxes"], o["labels"], o["labels_scores"]
    assert 0 < boxes.shape[0] <= 50 and boxes.shape == (labels.shape[0], 4) and scores.shape == labels.shape
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and scores.dtype == torch.float32
    assert int(labels.min()) >= 0 and int(labels.max()) <= 1  # 0-based lesion classes
    # boxes are in the input's frame: x along the first spatial dim (X = 80), y along the second (Y = 64)
    assert float(boxes[:, 0].min()) >= 0 and float(boxes[:, 2].max()) <= X and float(boxes[:, 3].max()) <= Y
    if model == "faster_rcnn":  # random proposals clipped to the image reach the right border x = 80 > Y
        assert float(boxes[:, 2].max()) > Y
    again = det([_image()], use_inferer=True)  # MONAI Label asks for the inferer: the whole image, the same boxes
    assert not hasattr(det, "inferer")
    torch.testing.assert_close(again[0]["boxes"], det([_image()])[0]["boxes"])


def test_label_shift_in_and_out():
    rcnn = _det("faster_rcnn", num_classes=3)
    t = rcnn.to_torchvision_targets([{"boxes": BOX.repeat(3, 1), "labels": torch.tensor([0, 1, 2])}])[0]
    assert t["labels"].tolist() == [1, 2, 3] and t["labels"].dtype == torch.int64  # 0 is torchvision's background
    back = rcnn.from_torchvision_detections([{"boxes": BOX, "labels": torch.tensor([3]), "scores": torch.ones(1)}])
    assert back[0]["labels"].tolist() == [2]
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        rcnn.to_torchvision_targets([{"boxes": BOX, "labels": torch.tensor([3])}])
    one_stage = _det("fcos", num_classes=3)  # sigmoid classifiers: every column is a lesion class
    assert one_stage.to_torchvision_targets([{"boxes": BOX, "labels": torch.tensor([2])}])[0]["labels"].tolist() == [2]


@pytest.mark.parametrize("model", MODELS)
def test_one_training_step_and_loss_sums(model):
    det = _det(model)
    det.train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = det([_image(), torch.rand(1, X, Y)], [_target(), empty])  # the second image has no lesion
    terms = {k: v for k, v in losses.items() if k not in (det.cls_key, det.box_reg_key)}
    expected = {"faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
                "retinanet": {"classification", "bbox_regression"},
                "fcos": {"classification", "bbox_regression", "bbox_ctrness"}}[model]
    assert set(terms) == expected
    total = losses[det.cls_key] + losses[det.box_reg_key]
    assert math.isclose(total.item(), sum(v.item() for v in terms.values()), rel_tol=1e-6)
    assert all(torch.isfinite(v) for v in losses.values())
    opt = torch.optim.SGD(_trainable(det), lr=0.01)
    total.backward()
    opt.step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.network.backbone.parameters())


@pytest.mark.parametrize("ohem", [False, True])
def test_images_without_boxes_train(ohem):
    det = _det(rpn_ohem=ohem, roi_ohem=ohem)
    det.train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = det([torch.rand(1, X, Y)], [empty])
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0
    assert losses[det.cls_key].item() > 0
    (losses[det.cls_key] + losses[det.box_reg_key]).backward()


def test_faster_rcnn_loss_decreases_on_one_image():
    det = _det()
    opt = torch.optim.Adam(_trainable(det), lr=1e-3)
    history = []
    torch.manual_seed(1)  # the samplers draw at random
    for _ in range(20):
        det.train()
        losses = det([_image()], [_target()])
        loss = losses[det.cls_key] + losses[det.box_reg_key]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert np.mean(history[-4:]) < 0.6 * np.mean(history[:2]), history


def test_state_dict_is_the_networks_with_prefix():
    det = _det(rpn_ohem=True, roi_ohem=True)
    keys = set(det.state_dict())
    assert keys == {f"network.{k}" for k in det.network.state_dict()}
    plain = _det()
    assert set(plain.network.state_dict()) == set(det.network.state_dict())  # OHEM adds no parameters
    plain.network.load_state_dict(det.network.state_dict())


def test_set_box_selector_parameters():
    rcnn, ret = _det(), _det("retinanet")
    rcnn.set_box_selector_parameters(score_thresh=0.3, nms_thresh=0.2, detections_per_img=7)
    assert (rcnn.network.roi_heads.score_thresh, rcnn.network.roi_heads.nms_thresh,
            rcnn.network.roi_heads.detections_per_img) == (0.3, 0.2, 7)
    ret.set_box_selector_parameters(0.1, 0.4, 9, topk_candidates_per_level=33)
    assert (ret.network.score_thresh, ret.network.nms_thresh, ret.network.detections_per_img,
            ret.network.topk_candidates) == (0.1, 0.4, 9, 33)


def test_engines_train_and_evaluate_the_adapter():
    det = _det(rpn_ohem=True)
    items = [{"image": _image(), "box": BOX.clone(), "label": torch.zeros(1, dtype=torch.long)},
             {"image": torch.rand(1, X, Y), "box": torch.zeros(0, 4), "label": torch.zeros(0, dtype=torch.long)}]
    opt = torch.optim.SGD(_trainable(det), lr=0.01)
    trainer = DetectionTrainer("cpu", max_epochs=1, train_data_loader=[items], detector=det, optimizer=opt)
    trainer.run()
    out = trainer.state.output
    assert math.isclose(float(out["loss"]), float(out["cls_loss"] + out["box_reg_loss"]), rel_tol=1e-5)
    assert trainer.network is det.network
    det.set_box_selector_parameters(score_thresh=0.0, detections_per_img=5)
    evaluator = DetectionEvaluator("cpu", [items[:1]], det)
    evaluator.run()
    o = evaluator.state.output[0]
    assert o["pred_box"].shape[1] == 4 and o["box"].shape == (1, 4) and o["pred_label"].dtype == torch.int64
    assert o["image_meta"]["shape"] == [X, Y]


# --------------------------------------------------------------------------------------------------------------
# online hard example mining
# --------------------------------------------------------------------------------------------------------------


def test_select_hard_examples_keeps_positives_and_hardest_negatives():
    loss = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.05, 0.6, 0.4])
    labels = torch.tensor([1, 0, 0, 1, 0, -1, 0, 1, 0, 0])  # index 5 ignored
    pos, neg = select_hard_examples(loss, labels, batch_size_per_image=6, positive_fraction=0.5)
    assert torch.where(pos)[0].tolist() == [0, 3, 7]  # 3 positives <= 6 * 0.5: all kept
    assert torch.where(neg)[0].tolist() == [1, 4, 6]  # the 3 highest-loss negatives fill the batch
    pos, neg = select_hard_examples(loss, labels, batch_size_per_image=4, positive_fraction=0.5)
    assert torch.where(pos)[0].tolist() == [0, 3]  # cap 2: the two hardest positives (0.1, 0.3 > 0.05)
    assert torch.where(neg)[0].tolist() == [1, 4]
    pos, neg = select_hard_examples(loss, labels, 10, 0.5, neg_pos_ratio=1.0)
    assert int(pos.sum()) == 3 and torch.where(neg)[0].tolist() == [1, 4, 6]
    no_pos = torch.zeros(10, dtype=torch.long)
    pos, neg = select_hard_examples(loss, no_pos, 10, 0.5, neg_pos_ratio=3.0, min_negatives=2)
    assert not pos.any() and torch.where(neg)[0].tolist() == [1, 4]


def test_rpn_ohem_keeps_the_hardest_anchors_not_a_random_draw():
    net = faster_rcnn(1, backbone="resnet18", fpn_channels=32, rpn_ohem=True, rpn_batch_size_per_image=8,
                      rpn_positive_fraction=0.25)
    rpn = net.rpn
    assert isinstance(rpn, OHEMRegionProposalNetwork)
    n = 20
    labels = torch.zeros(n)
    labels[[2, 5, 11]] = 1.0
    labels[[7, 8]] = -1.0
    logits = torch.linspace(-3, 3, n)  # negatives: loss grows with the logit; positives: loss falls with it
    objectness = logits.clone().reshape(n, 1).requires_grad_(True)
    deltas = torch.zeros(n, 4)
    reg_targets = torch.zeros(n, 4)
    reg_targets[2] = 0.5  # the hardest positive also has a known box error
    obj_loss, box_loss = rpn.compute_loss(objectness, deltas, [labels], [reg_targets])
    # kept: at most int(8 * 0.25) = 2 positives, the hardest (lowest logits: 2, 5), and the 6 hardest negatives
    kept = [2, 5, 14, 15, 16, 17, 18, 19]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
    assert math.isclose(obj_loss.item(), float(bce[kept].mean()), rel_tol=1e-6)
    sl1 = torch.nn.functional.smooth_l1_loss(torch.zeros(4), torch.full((4,), 0.5), beta=1 / 9, reduction="sum")
    assert math.isclose(box_loss.item(), float(sl1) / len(kept), rel_tol=1e-6)
    obj_loss.backward()
    assert torch.where(objectness.grad.ravel() != 0)[0].tolist() == kept  # only the kept anchors learn
    # torchvision's sampler draws the negatives at random: a different set
    torch.manual_seed(0)
    rand_pos, rand_neg = rpn.fg_bg_sampler([labels])
    random_kept = torch.where(rand_pos[0] | rand_neg[0])[0].tolist()
    assert len(random_kept) == len(kept) and random_kept != kept


def test_roi_ohem_keeps_the_hardest_rois_per_image():
    net = faster_rcnn(1, backbone="resnet18", fpn_channels=32, roi_ohem={"pool_size": None},
                      box_batch_size_per_image=4, box_positive_fraction=0.25)
    heads = net.roi_heads
    assert isinstance(heads, OHEMRoIHeads)
    # two images, 6 and 5 pooled RoIs; class logits (background, lesion) chosen so the CE order is known
    labels = [torch.tensor([1, 1, 0, 0, 0, 0]), torch.tensor([0, 0, 0, 0, 0])]
    lesion_logit = torch.tensor([2.0, -1.0, -3.0, 1.5, 0.5, -0.5, 0.0, 3.0, -2.0, 1.0, 2.5])
    class_logits = torch.stack([torch.zeros(11), lesion_logit], dim=1).requires_grad_(True)
    box_regression = torch.zeros(11, 8)
    reg_targets = [torch.zeros(6, 4), torch.zeros(5, 4)]
    loss_cls, loss_box = heads.ohem_loss(class_logits, box_regression, labels, reg_targets)
    # image 1: cap int(4 * 0.25) = 1 positive, the harder of RoIs 0 (logit 2) and 1 (logit -1): RoI 1; then the
    # 3 negatives with the highest lesion logits: 3, 4, 5. Image 2 (no positive): its 4 hardest: 7, 10, 9, 6.
    kept = [1, 3, 4, 5, 6, 7, 9, 10]
    ce = torch.nn.functional.cross_entropy(class_logits.detach(), torch.cat(labels), reduction="none")
    assert math.isclose(loss_cls.item(), float(ce[kept].mean()), rel_tol=1e-6) and loss_box.item() == 0.0
    loss_cls.backward()
    assert torch.where(class_logits.grad.abs().sum(1) > 0)[0].tolist() == kept
    # the pool: all positives plus random negatives up to pool_size
    pooled = faster_rcnn(1, backbone="resnet18", fpn_channels=32, roi_ohem={"pool_size": 5},
                         box_batch_size_per_image=4).roi_heads
    idx = pooled.subsample([torch.tensor([1, 0, 0, 1, 0, 0, 0, -1, 0, 1])])[0]
    assert len(idx) == 5 and {0, 3, 9} <= set(idx.tolist()) and 7 not in idx.tolist()


def test_training_step_with_ohem_options():
    det = _det(rpn_ohem={"neg_pos_ratio": 3.0, "min_negatives": 4}, roi_ohem={"pool_size": 64, "neg_pos_ratio": 3})
    assert det.network.rpn.neg_pos_ratio == 3.0 and det.network.roi_heads.pool_size == 64
    det.train()
    losses = det([_image(), _image()], [_target(), _target()])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_classifier"].item() > 0
    (losses[det.cls_key] + losses[det.box_reg_key]).backward()


# --------------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------------


def _assert_same_detections(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert da["boxes"].shape == db["boxes"].shape and da["boxes"].shape[0] > 0
        torch.testing.assert_close(da["boxes"], db["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(da["labels_scores"], db["labels_scores"], atol=1e-4, rtol=0)
        assert torch.equal(da["labels"], db["labels"])


def test_ohem_faster_rcnn_scripts_and_exports_with_the_same_boxes():
    det = _det(rpn_ohem=True, roi_ohem=True)
    det.train()
    losses = det([_image()], [_target()])  # one OHEM step so BatchNorm statistics are not the initial ones
    (losses[det.cls_key] + losses[det.box_reg_key]).backward()
    det.set_box_selector_parameters(score_thresh=0.0, detections_per_img=20)
    det.eval()
    with torch.no_grad():
        eager = det([_image()])
    plain = export_network(det)
    assert type(plain.rpn) is RegionProposalNetwork and type(plain.roi_heads) is RoIHeads and not plain.training
    assert isinstance(det.network.rpn, OHEMRegionProposalNetwork)  # the original is untouched
    scripted_plain = torch.jit.script(plain)
    scripted_ohem = torch.jit.script(det.network)  # the OHEM subclasses script too (training loss unused)
    with torch.no_grad():
        _assert_same_detections(eager, TorchvisionDetector(plain)([_image()]))
        _assert_same_detections(eager, TorchvisionDetector(scripted_plain).eval()([_image()]))
        _assert_same_detections(eager, TorchvisionDetector(scripted_ohem).eval()([_image()]))


@pytest.mark.parametrize("model", ["retinanet", "fcos"])
def test_one_stage_models_script_with_the_same_boxes(model):
    det = _det(model)
    det.set_box_selector_parameters(score_thresh=0.0, detections_per_img=20)
    det.eval()
    with torch.no_grad():
        eager = det([_image()])
        scripted = TorchvisionDetector(torch.jit.script(export_network(det))).eval()([_image()])
    _assert_same_detections(eager, scripted)


# --------------------------------------------------------------------------------------------------------------
# anchors
# --------------------------------------------------------------------------------------------------------------


def _clustered_boxes(seed: int = 0) -> np.ndarray:
    """Boxes from 3 sizes (8, 16, 48 px) x 3 ratios h / w (0.5, 1, 3), with 5 % jitter."""
    rng = np.random.default_rng(seed)
    boxes = []
    for size in (8.0, 16.0, 48.0):
        for ratio in (0.5, 1.0, 3.0):
            for _ in range(40):
                s = size * rng.uniform(0.95, 1.05)
                r = ratio * rng.uniform(0.95, 1.05)
                w, h = s / math.sqrt(r), s * math.sqrt(r)
                x, y = rng.uniform(0, 200, size=2)
                boxes.append([x, y, x + w, y + h])
    return np.asarray(boxes)


def test_propose_anchors_recovers_clusters_and_beats_defaults():
    boxes = _clustered_boxes()
    sizes, ratios = box_sizes_and_ratios(boxes)
    assert sizes.shape == ratios.shape == (360,) and 0.45 < ratios.min() and ratios.max() < 3.2
    out = propose_anchors(boxes, n_levels=3, n_sizes_per_level=1, n_ratios=3)
    assert [len(level) for level in out["anchor_sizes"]] == [1, 1, 1]
    np.testing.assert_allclose([s[0] for s in out["anchor_sizes"]], [8, 16, 48], rtol=0.05)
    np.testing.assert_allclose(out["aspect_ratios"], [0.5, 1.0, 3.0], rtol=0.05)
    assert out["anchor_recall"] == 1.0 and out["default_anchor_recall"] < 0.5 and out["n_boxes"] == 360
    five = propose_anchors(boxes)  # 5 FPN levels, sizes increase from the finest level
    flat = [s[0] for s in five["anchor_sizes"]]
    assert len(flat) == 5 and flat == sorted(flat) and five["anchor_recall"] >= out["anchor_recall"] - 1e-9
    quant = propose_anchors(boxes, n_levels=3, method="quantile")
    np.testing.assert_allclose([s[0] for s in quant["anchor_sizes"]], [8, 16, 48], rtol=0.08)
    # scale: the same boxes at twice the resolution want anchors twice as large
    doubled = propose_anchors(boxes, n_levels=3, scale=2.0)
    np.testing.assert_allclose([s[0] for s in doubled["anchor_sizes"]], [16, 32, 96], rtol=0.05)
    # the proposal is ready for the builder
    faster_rcnn(1, backbone="resnet18", fpn_channels=32, anchor_sizes=five["anchor_sizes"],
                aspect_ratios=five["aspect_ratios"])



def test_anchors_command_reads_a_datalist(tmp_path, capsys):
    """``medbundle anchors DATALIST`` proposes from the split's boxes (images without boxes count for nothing)."""
    from medbundle.cli import main as cli_main

    boxes = _clustered_boxes()
    items = [{"image": f"i{k}.mha", "box": boxes[k:k + 3].tolist(), "label": [0] * 3} for k in range(0, 360, 3)]
    items += [{"image": "empty.mha", "box": [], "label": []}]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": items, "validation": [{"image": "v.mha", "box": [[0, 0, 500, 500]]}]}))
    assert cli_main(["anchors", str(dl), "--n-levels", "3", "--scale", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == propose_anchors(boxes, n_levels=3, scale=2.0)
    assert cli_main(["anchors", str(dl), "--n-levels", "3"]) == 0
    text = capsys.readouterr().out
    at_scale_1 = propose_anchors(boxes, n_levels=3)
    assert text.startswith("360 boxes") and f'--anchor_sizes "{at_scale_1["anchor_sizes"]}"' in text
    assert cli_main(["anchors", str(dl), "--split", "testing"]) == 2
    assert "no 'box' boxes in split 'testing'" in capsys.readouterr().err

def test_anchor_recall_and_errors():
    square = np.array([[0, 0, 32, 32], [10, 10, 26, 26]], dtype=float)
    assert anchor_recall(square, [[32]], [1.0]) == 0.5  # 16 px box vs a 32 px anchor: IoU 0.25
    assert anchor_recall(square, [[16], [32]], [1.0]) == 1.0
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        propose_anchors(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no positive width"):
        propose_anchors(np.array([[5, 5, 5, 9]]))
    with pytest.raises(ValueError, match="no boxes"):
        propose_anchors(np.zeros((0, 4)))
