"""2D detectors from torchvision (Faster R-CNN v2, RetinaNet v2, FCOS) behind MONAI's ``RetinaNetDetector`` interface.

The 2D chest X-ray detection bundle trains torchvision's detectors with the same engines as the 3D nodule
detector (:class:`medbundle.detection.engines.DetectionTrainer`, ``DetectionEvaluator``,
:class:`medbundle.detection.inferers.DetectorInferer`). Those engines talk to a MONAI ``RetinaNetDetector``:
``detector(images, targets)`` returns a loss dict with ``detector.cls_key`` / ``detector.box_reg_key``,
``detector(images)`` in eval mode returns per-image dicts under ``target_box_key`` / ``target_label_key`` /
``pred_score_key``, and ``detector.network`` is what checkpoints hold. :class:`TorchvisionDetector` gives a
torchvision model that interface.

Builders (all with ``weights=None``: nothing is ever downloaded):

- :func:`faster_rcnn`: Faster R-CNN as ``fasterrcnn_resnet50_fpn_v2`` assembles it (Li et al. 2021,
  "Benchmarking detection transfer learning with vision transformers"): a BatchNorm ResNet with a BatchNorm FPN,
  ``RPNHead(conv_depth=2)`` and a ``FastRCNNConvFCHead`` of 4 BatchNorm convolutions + 1 fully connected layer;
  any torchvision ResNet, any FPN width, any number of input channels, anchors from arguments, and optional online
  hard example mining in the RPN and the RoI head (:class:`OHEMRegionProposalNetwork`, :class:`OHEMRoIHeads`).
- :func:`retinanet`: RetinaNet as ``retinanet_resnet50_fpn_v2`` assembles it (P3-P7, P6/P7 from C5, GroupNorm
  heads, GIoU box loss).
- :func:`fcos`: FCOS as ``fcos_resnet50_fpn`` assembles it (P3-P7, P6/P7 from P5, BatchNorm ResNet).
- :func:`build_detector`: one of the three by name, wrapped in :class:`TorchvisionDetector`, so one config key
  switches the model.

Image layout: MONAI readers with ``reverse_indexing=True`` give a 2D image as ``(C, X, Y)`` (first spatial dim =
image column x); torchvision wants ``(C, H, W)`` = ``(C, Y, X)``. The adapter transposes the last two dims, and
boxes ``(x_min, y_min, x_max, y_max)`` in pixels then mean the same thing on both sides (x along MONAI's first
spatial dim = torchvision's W), so they pass through unchanged.

Labels: the engines use 0-based lesion classes. Faster R-CNN's softmax classifier reserves class 0 for
background, so its builder adds one class and the adapter shifts labels by +1 going in and -1 coming out.
torchvision's RetinaNet and FCOS are sigmoid classifiers whose every output column is a foreground class (their
losses treat any matched label, 0 included, as foreground), so their builders use ``num_classes`` columns and
labels pass unchanged (``TorchvisionDetector.label_offset`` is 1 or 0).
"""

import copy
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from medbundle.detection.anchors import DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS
from medbundle.mining.ohem import hard_negative_mask

__all__ = [
    "MODELS",
    "RESNETS",
    "DEFAULT_ANCHOR_SIZES",
    "DEFAULT_ASPECT_RATIOS",
    "RETINANET_ANCHOR_SIZES",
    "FCOS_ANCHOR_SIZES",
    "TorchvisionDetector",
    "FixedSizeTransform",
    "OHEMRegionProposalNetwork",
    "OHEMRoIHeads",
    "select_hard_examples",
    "resnet_fpn",
    "faster_rcnn",
    "retinanet",
    "fcos",
    "build_detector",
    "export_network",
]

MODELS = ("faster_rcnn", "retinanet", "fcos")
"""Names :func:`build_detector` accepts."""

RESNETS = tuple(name for name in tv_resnet.__all__ if name[0].islower())
"""torchvision ResNet builders usable as backbones (``resnet18`` ... ``wide_resnet101_2``)."""

RETINANET_ANCHOR_SIZES: tuple[tuple[float, ...], ...] = tuple(
    (x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512)
)
"""RetinaNet's anchor sizes: three octave scales per level P3-P7."""
FCOS_ANCHOR_SIZES: tuple[tuple[float, ...], ...] = ((8,), (16,), (32,), (64,), (128,))
"""FCOS's per-level sizes (the level strides; FCOS is anchor-free and uses one square "anchor" per location)."""

_LEVEL_NAMES = {
    "faster_rcnn": "P2-P5 plus a max-pooled P6",
    "retinanet": "P3-P5 plus P6/P7",
    "fcos": "P3-P5 plus P6/P7",
}


# ---------------------------------------------------------------------------------------------------------------
# backbone and anchors
# ---------------------------------------------------------------------------------------------------------------


def resnet_fpn(
    backbone: str = "resnet50",
    in_channels: int = 1,
    fpn_channels: int = 256,
    trainable_layers: int = 5,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_block: str = "pool",
    fpn_norm: bool = True,
) -> BackboneWithFPN:
    """A randomly initialised BatchNorm torchvision ResNet with an FPN on top (no weights are downloaded).

    Args:
        backbone: Name of a torchvision ResNet builder, one of :data:`RESNETS`.
        in_channels: Image channels; the first convolution is replaced when it is not 3 (1 for radiographs).
        fpn_channels: Channels of every FPN output.
        trainable_layers: ResNet stages left trainable, counted from the last (``layer4``, ``layer3``, ``layer2``,
            ``layer1``, ``conv1`` + ``bn1``), 0-5; the rest get ``requires_grad=False`` (useful only after loading
            pretrained weights).
        returned_layers: ResNet stages (1-4) that feed the FPN.
        extra_block: ``"pool"``: a max-pooled extra level (Faster R-CNN); ``"p6p7_c5"``: P6/P7 convolutions from
            the last stage's output C5, sized for its channels (RetinaNet v2); ``"p6p7_p5"``: P6/P7 from P5 (FCOS).
        fpn_norm: BatchNorm in the FPN's convolutions (Faster R-CNN v2), or none (RetinaNet v2, FCOS).

    Returns:
        ``torchvision.models.detection.backbone_utils.BackboneWithFPN`` with ``out_channels = fpn_channels``; its
        output is an ordered dict of ``len(returned_layers) + (1 or 2)`` maps ``(B, fpn_channels, H / s, W / s)``.
    """
    if backbone not in RESNETS:
        raise ValueError(f"unknown backbone {backbone!r}; use one of the torchvision ResNets: {', '.join(RESNETS)}.")
    if in_channels < 1 or fpn_channels < 1:
        raise ValueError(f"in_channels and fpn_channels must be >= 1, got {in_channels} and {fpn_channels}.")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}.")
    layers = sorted({int(k) for k in returned_layers})
    if not layers or layers[0] < 1 or layers[-1] > 4:
        raise ValueError(f"returned_layers must be a non-empty subset of [1, 2, 3, 4], got {list(returned_layers)}.")
    net = getattr(tv_resnet, backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    if in_channels != net.conv1.in_channels:
        conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet inits
        net.conv1 = conv1
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, param in net.named_parameters():
        if not any(name.startswith(prefix) for prefix in trainable):
            param.requires_grad_(False)
    last_channels = int(net.fc.in_features)  # C5 channels: 512 (resnet18/34), 2048 (resnet50 and deeper)
    stage_channels = {k: last_channels // 2 ** (4 - k) for k in range(1, 5)}
    extra: nn.Module
    if extra_block == "pool":
        extra = LastLevelMaxPool()
    elif extra_block == "p6p7_c5":
        extra = LastLevelP6P7(last_channels, fpn_channels)
    elif extra_block == "p6p7_p5":
        extra = LastLevelP6P7(fpn_channels, fpn_channels)
    else:
        raise ValueError(f"extra_block must be one of 'pool', 'p6p7_c5', 'p6p7_p5', got {extra_block!r}.")
    return BackboneWithFPN(
        net,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(layers)},
        in_channels_list=[stage_channels[k] for k in layers],
        out_channels=fpn_channels,
        extra_blocks=extra,
        norm_layer=nn.BatchNorm2d if fpn_norm else None,
    )


def _n_levels(returned_layers: Sequence[int], extra_block: str) -> int:
    return len(returned_layers) + (1 if extra_block == "pool" else 2)


def _anchor_generator(
    anchor_sizes: Sequence[Sequence[float]] | Sequence[float],
    aspect_ratios: Sequence[float] | Sequence[Sequence[float]],
    n_levels: int,
    model: str,
) -> AnchorGenerator:
    """``AnchorGenerator`` after checking the sizes against the FPN levels (config lists become tuples)."""
    sizes = [tuple(float(s) for s in (level if isinstance(level, Sequence) else (level,))) for level in anchor_sizes]
    if len(sizes) != n_levels:
        raise ValueError(
            f"anchor_sizes has {len(sizes)} levels but the {model} FPN gives {n_levels} feature maps "
            f"({_LEVEL_NAMES[model]}); give one tuple of sizes per level."
        )
    if any(len(level) == 0 for level in sizes) or len({len(level) for level in sizes}) != 1:
        raise ValueError(f"every FPN level needs the same number (>= 1) of anchor sizes, got {sizes}.")
    if min(min(level) for level in sizes) <= 0:
        raise ValueError(f"anchor sizes must be > 0 pixels, got {sizes}.")
    ratios_in = list(aspect_ratios)
    if ratios_in and all(isinstance(r, Sequence) for r in ratios_in):  # one tuple per level
        ratios = [tuple(float(r) for r in level) for level in ratios_in]
        if len(ratios) != n_levels or len({len(level) for level in ratios}) != 1:
            raise ValueError(
                f"per-level aspect_ratios need {n_levels} tuples of equal length (the heads predict the same number "
                f"of anchors on every level), got {ratios_in}."
            )
    else:
        ratios = [tuple(float(r) for r in ratios_in)] * n_levels
    if not ratios[0] or min(min(level) for level in ratios) <= 0:
        raise ValueError(f"aspect_ratios (height / width) must be non-empty and > 0, got {ratios_in}.")
    return AnchorGenerator(tuple(sizes), tuple(ratios))


class FixedSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection input transform without its resize: images are normalised and padded into a batch
    (to a multiple of ``size_divisible``) at the size they come in.

    torchvision's detectors rescale every image so that its shorter side is ``min_size`` (at most ``max_size`` for the
    longer side), in training and inference, and rescale the boxes back. A MONAI bundle sizes its images in its own
    preprocessing (and caches them at that size); a second resize inside the model would rescale the training crops
    of a patch-based recipe to ``min_size`` and cost time for nothing. With this transform what the preprocessing
    gives is what the network sees, crops and whole images alike.
    """

    def resize(
        self, image: Tensor, target: Optional[dict[str, Tensor]] = None  # noqa: UP045 (TorchScript reads it)
    ) -> tuple[Tensor, Optional[dict[str, Tensor]]]:  # noqa: UP045
        return image, target


def _transform_kwargs(
    in_channels: int,
    min_size: int | None,
    max_size: int | None,
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
) -> dict[str, Any]:
    mean = [0.0] * in_channels if image_mean is None else [float(v) for v in image_mean]
    std = [1.0] * in_channels if image_std is None else [float(v) for v in image_std]
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"image_mean and image_std need one value per input channel ({in_channels}), got {mean} and {std}."
        )
    if min(std) <= 0:
        raise ValueError(f"image_std must be > 0, got {std}.")
    if (min_size is None) != (max_size is None):
        raise ValueError(f"give both min_size and max_size (torchvision's resize) or neither (no resize), got "
                         f"min_size={min_size}, max_size={max_size}.")
    if min_size is None:
        return {"min_size": 1, "max_size": 1, "image_mean": mean, "image_std": std}
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}.")
    return {"min_size": int(min_size), "max_size": int(max_size), "image_mean": mean, "image_std": std}


def _fix_size(model: nn.Module, min_size: int | None) -> nn.Module:
    """Without ``min_size``, replace the model's input transform by :class:`FixedSizeTransform`."""
    if min_size is None:
        t = model.transform
        model.transform = FixedSizeTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                             size_divisible=t.size_divisible)
    return model


def _check_classes(num_classes: int) -> int:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes is the number of lesion classes (without background) and must be >= 1, "
                         f"got {num_classes}.")
    return int(num_classes)


# ---------------------------------------------------------------------------------------------------------------
# online hard example mining
# ---------------------------------------------------------------------------------------------------------------


def select_hard_examples(
    loss: Tensor,
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    neg_pos_ratio: float | None = None,
    min_negatives: int = 0,
) -> tuple[Tensor, Tensor]:
    """Pick the training examples of one image by their loss (OHEM) instead of at random.

    Keeps at most ``int(batch_size_per_image * positive_fraction)`` positives (all of them when there are fewer,
    else the highest-loss ones) and then the highest-loss negatives (:func:`medbundle.mining.ohem.hard_negative_mask`):
    with ``neg_pos_ratio=None`` as many as fill ``batch_size_per_image`` (the sample size torchvision's random
    ``BalancedPositiveNegativeSampler`` draws), else ``max(min_negatives, floor(neg_pos_ratio * n_pos))`` capped at
    that room. Ties go to the lower index, so the selection is deterministic.

    Args:
        loss: ``(N,)`` per-example loss (only the values are used).
        labels: ``(N,)`` labels: ``> 0`` positive (1.0 for RPN anchors, a class index for RoIs), ``0`` negative,
            ``< 0`` ignored (never kept).
        batch_size_per_image: Examples kept per image at most.
        positive_fraction: Largest share of positives among them.
        neg_pos_ratio: None: negatives fill the batch; a number: negatives per kept positive.
        min_negatives: With ``neg_pos_ratio``: negatives kept even without positives.

    Returns:
        ``(positive_mask, negative_mask)``, two ``(N,)`` bool tensors of the kept examples.
    """
    if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"need batch_size_per_image >= 1 and 0 <= positive_fraction <= 1, got "
                         f"{batch_size_per_image} and {positive_fraction}.")
    loss = loss.detach().reshape(-1)
    labels = labels.reshape(-1)
    pos_idx = torch.where(labels > 0)[0]
    n_pos_max = int(batch_size_per_image * positive_fraction)
    if pos_idx.numel() > n_pos_max:
        order = torch.sort(loss[pos_idx].float(), descending=True, stable=True).indices
        pos_idx = pos_idx[order[:n_pos_max]]
    target = torch.where(labels == 0, 0, -1).to(torch.int64)
    target[pos_idx] = 1
    room = batch_size_per_image - int(pos_idx.numel())
    if neg_pos_ratio is None:
        keep = hard_negative_mask(loss, target, neg_pos_ratio=0.0, min_negatives=room, max_negatives=room)
    else:
        keep = hard_negative_mask(loss, target, neg_pos_ratio=float(neg_pos_ratio),
                                  min_negatives=min(int(min_negatives), room), max_negatives=room)
    return keep & (target > 0), keep & (target == 0)


def _masked_mean(values: Tensor, mask: Tensor, n: Tensor) -> Tensor:
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum() / n


def _ohem_means(
    cls_loss: Tensor,
    box_loss: Tensor,
    target: Tensor,
    labels: Sequence[Tensor],
    sampler: Any,
    neg_pos_ratio: float | None,
    min_negatives: int,
) -> tuple[Tensor, Tensor]:
    """The classification and box losses averaged over the examples OHEM keeps, image by image.

    ``cls_loss`` / ``box_loss`` are per example (anchors or RoIs of all images, concatenated in ``labels``' order);
    each image keeps :func:`select_hard_examples` of ``cls + box`` with ``sampler``'s batch size and positive
    fraction. Both means divide by the number of kept examples, as torchvision divides by its sampled ones.
    """
    per_example = (cls_loss + box_loss).detach()
    kept_pos, kept_neg = [], []
    counts = [int(lab.numel()) for lab in labels]
    for loss_i, lab_i in zip(per_example.split(counts), target.split(counts)):
        p, n = select_hard_examples(loss_i, lab_i, sampler.batch_size_per_image, sampler.positive_fraction,
                                    neg_pos_ratio, min_negatives)
        kept_pos.append(p)
        kept_neg.append(n)
    keep_pos = torch.cat(kept_pos)
    keep = keep_pos | torch.cat(kept_neg)
    n_kept = keep.sum().clamp(min=1).to(cls_loss.dtype)
    return _masked_mean(cls_loss, keep, n_kept), _masked_mean(box_loss, keep_pos, n_kept)


def _ohem_options(options: bool | Mapping[str, Any] | None, allowed: tuple[str, ...], where: str) -> dict | None:
    """Config value of ``rpn_ohem`` / ``roi_ohem``: None/False (off), True (defaults) or a dict of options."""
    if options is None or options is False:
        return None
    if options is True:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{where} must be None, a bool or a dict of options {allowed}, got {options!r}.")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {where} option(s) {unknown}; valid: {list(allowed)}.")
    return dict(options)


class OHEMRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN whose training loss uses the hardest anchors instead of a random sample.

    Per image, :meth:`compute_loss` ranks the anchors by their loss (objectness binary cross-entropy, plus the
    box regression smooth-L1 for positives) and keeps the positives (at most ``batch_size_per_image *
    positive_fraction``) and the highest-loss negatives (:func:`select_hard_examples`), where torchvision's
    ``fg_bg_sampler`` draws both at random. The losses are then normalised exactly as torchvision does (mean
    objectness loss over the kept anchors, box loss summed over the kept positives divided by the number kept).
    Proposals and inference are torchvision's.

    TorchScript: the module scripts (``torch.jit.script`` of the whole detector in eval mode); the OHEM loss is
    ``@torch.jit.unused``, so a scripted copy infers exactly like the eager one but cannot compute training losses.

    Args:
        *args, **kwargs: As ``RegionProposalNetwork`` (anchor generator, head, ``fg_iou_thresh``, ``bg_iou_thresh``,
            ``batch_size_per_image``, ``positive_fraction``, ``pre_nms_top_n``, ``post_nms_top_n``, ``nms_thresh``,
            ``score_thresh``).
        neg_pos_ratio: None: negatives fill ``batch_size_per_image``; a number: negatives kept per positive.
        min_negatives: With ``neg_pos_ratio``: negatives kept in an image without positives.
    """

    __annotations__ = dict(RegionProposalNetwork.__annotations__)  # TorchScript reads the attribute types here

    def __init__(self, *args: Any, neg_pos_ratio: float | None = None, min_negatives: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.neg_pos_ratio = None if neg_pos_ratio is None else float(neg_pos_ratio)
        self.min_negatives = int(min_negatives)

    @classmethod
    def from_rpn(cls, rpn: RegionProposalNetwork, **options: Any) -> "OHEMRegionProposalNetwork":
        """The OHEM version of ``rpn``, sharing its anchor generator and head (same parameters, same settings)."""
        new = cls(*_rpn_args(rpn), **options)
        new.min_size = rpn.min_size
        new.train(rpn.training)
        return new

    def to_plain(self) -> RegionProposalNetwork:
        """torchvision's ``RegionProposalNetwork`` with this one's modules and settings (random sampling)."""
        plain = RegionProposalNetwork(*_rpn_args(self))
        plain.min_size = self.min_size
        plain.train(self.training)
        return plain

    @torch.jit.unused
    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """RPN losses over the positives and the hardest negatives of every image.

        Args:
            objectness: ``(sum of anchors over the batch, 1)`` logits, image by image (torchvision's order).
            pred_bbox_deltas: ``(sum of anchors, 4)`` predicted box deltas.
            labels: Per image ``(A,)`` float labels, 1 positive, 0 negative, -1 ignored.
            regression_targets: Per image ``(A, 4)`` encoded target deltas.

        Returns:
            ``(objectness_loss, box_loss)`` scalars.
        """
        logits = objectness.flatten()
        target = torch.cat(labels, dim=0)
        reg_target = torch.cat(regression_targets, dim=0)
        bce = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0).to(logits.dtype), reduction="none")
        pos = torch.where(target > 0)[0]
        box = torch.zeros_like(bce).index_put(
            (pos,),
            F.smooth_l1_loss(pred_bbox_deltas[pos], reg_target[pos], beta=1 / 9, reduction="none").sum(1).to(bce.dtype),
        )
        return _ohem_means(bce, box, target, labels, self.fg_bg_sampler, self.neg_pos_ratio, self.min_negatives)


def _rpn_args(rpn: RegionProposalNetwork) -> tuple:
    return (
        rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold,
        rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction, dict(rpn._pre_nms_top_n),
        dict(rpn._post_nms_top_n), rpn.nms_thresh, rpn.score_thresh,
    )


class OHEMRoIHeads(RoIHeads):
    """torchvision's box RoI head trained with online hard example mining (Shrivastava et al., CVPR 2016).

    Training: the proposals (plus the ground-truth boxes, as torchvision adds them) are matched to the ground truth
    as torchvision does; a pool of them is scored by the box head in one pass (``pool_size=None``: every
    labelled proposal; else all positives up to ``pool_size`` and random negatives filling it); each RoI's loss
    (cross-entropy, plus the box smooth-L1 for positives) ranks them, and per image the positives (at most
    ``batch_size_per_image * positive_fraction``) and the highest-loss negatives are kept
    (:func:`select_hard_examples`). ``loss_classifier`` is the mean cross-entropy over the kept RoIs and
    ``loss_box_reg`` the smooth-L1 summed over the kept positives divided by the number kept, as torchvision's
    ``fastrcnn_loss`` normalises its random sample. Only the kept RoIs receive gradient.

    Cost: the box head (4 convolutions in the v2 recipe) runs forward and backward on the whole pool, about
    2000 proposals per image with torchvision's ``rpn_post_nms_top_n_train`` against 512 sampled RoIs without OHEM;
    bound it with ``pool_size``.

    Evaluation runs torchvision's own box path (RoI pooling, box head, predictor, ``postprocess_detections``).
    Only the box branch is supported (no mask or keypoint heads).

    TorchScript: scripts; the OHEM training pass is ``@torch.jit.unused`` (a scripted copy infers identically).

    Args:
        box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction,
        bbox_reg_weights, score_thresh, nms_thresh, detections_per_img: As ``RoIHeads``; ``batch_size_per_image`` is
            the number of RoIs kept per image.
        pool_size: RoIs per image scored before the selection (None: all).
        neg_pos_ratio: None: negatives fill ``batch_size_per_image``; a number: negatives kept per positive.
        min_negatives: With ``neg_pos_ratio``: negatives kept in an image without positives.
    """

    __annotations__ = dict(RoIHeads.__annotations__)

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: tuple[float, float, float, float] | None,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        pool_size: int | None = None,
        neg_pos_ratio: float | None = None,
        min_negatives: int = 0,
    ) -> None:
        super().__init__(box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img)
        if pool_size is not None and pool_size < batch_size_per_image:
            raise ValueError(f"pool_size ({pool_size}) must be >= batch_size_per_image ({batch_size_per_image}).")
        self.pool_size = None if pool_size is None else int(pool_size)
        self.neg_pos_ratio = None if neg_pos_ratio is None else float(neg_pos_ratio)
        self.min_negatives = int(min_negatives)
        self.pool_sampler = (
            None if pool_size is None else det_utils.BalancedPositiveNegativeSampler(int(pool_size), 1.0)
        )

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, **options: Any) -> "OHEMRoIHeads":
        """The OHEM version of ``heads`` (box branch only), sharing its modules and settings."""
        if heads.has_mask() or heads.has_keypoint():
            raise ValueError("OHEMRoIHeads supports the box branch only (no mask or keypoint heads).")
        new = cls(*_roi_args(heads), **options)
        new.train(heads.training)
        return new

    def to_plain(self) -> RoIHeads:
        """torchvision's ``RoIHeads`` with this one's modules and settings (random sampling)."""
        plain = RoIHeads(*_roi_args(self))
        plain.train(self.training)
        return plain

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:
        """Indices of the pool of proposals to score, per image (called by ``select_training_samples``)."""
        if self.pool_sampler is None:
            return [torch.where(lab >= 0)[0] for lab in labels]
        pos, neg = self.pool_sampler(labels)
        return [torch.where(p | n)[0] for p, n in zip(pos, neg)]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]] = None,  # noqa: UP045 (TorchScript reads this annotation)
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], {"loss_classifier", "loss_box_reg"})`` with OHEM; eval: torchvision's detections.

        Args:
            features: FPN maps by name.
            proposals: Per image ``(P, 4)`` proposals ``x1, y1, x2, y2`` in pixels of the resized batch.
            image_shapes: Per image ``(H, W)`` after resizing.
            targets: Training: per image ``boxes`` ``(N, 4)`` float and ``labels`` ``(N,)`` int64 (1-based).
        """
        if self.training:
            return self._forward_train(features, proposals, image_shapes, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        result: list[dict[str, Tensor]] = []
        for i in range(len(boxes)):
            result.append({"boxes": boxes[i], "labels": labels[i], "scores": scores[i]})
        losses: dict[str, Tensor] = {}
        return result, losses

    @torch.jit.unused
    def _forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]],  # noqa: UP045
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if targets is None:
            raise ValueError("targets should not be None in training mode.")
        for t in targets:
            if not t["boxes"].is_floating_point() or t["labels"].dtype != torch.int64:
                raise TypeError("target boxes must be float and labels int64.")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = self.ohem_loss(class_logits, box_regression, labels, regression_targets)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    @torch.jit.unused
    def ohem_loss(
        self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Classification and box losses over the positives and the hardest negatives of each image's pool.

        Args:
            class_logits: ``(R, num_classes + 1)`` logits of the pooled RoIs, image by image.
            box_regression: ``(R, 4 * (num_classes + 1))`` class-specific box deltas.
            labels: Per image ``(R_i,)`` int64 labels, 0 = background.
            regression_targets: Per image ``(R_i, 4)`` encoded target deltas.

        Returns:
            ``(loss_classifier, loss_box_reg)`` scalars.
        """
        target = torch.cat(labels, dim=0)
        reg_target = torch.cat(regression_targets, dim=0)
        ce = F.cross_entropy(class_logits, target, reduction="none")
        pos = torch.where(target > 0)[0]
        deltas = box_regression.reshape(class_logits.shape[0], -1, 4)
        box = torch.zeros_like(ce).index_put(
            (pos,),
            F.smooth_l1_loss(deltas[pos, target[pos]], reg_target[pos], beta=1 / 9, reduction="none").sum(1)
            .to(ce.dtype),
        )
        return _ohem_means(ce, box, target, labels, self.fg_bg_sampler, self.neg_pos_ratio, self.min_negatives)


def _roi_args(heads: RoIHeads) -> tuple:
    return (
        heads.box_roi_pool, heads.box_head, heads.box_predictor, heads.proposal_matcher.high_threshold,
        heads.proposal_matcher.low_threshold, heads.fg_bg_sampler.batch_size_per_image,
        heads.fg_bg_sampler.positive_fraction, tuple(heads.box_coder.weights), heads.score_thresh, heads.nms_thresh,
        heads.detections_per_img,
    )


# ---------------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------------


def faster_rcnn(
    num_classes: int,
    in_channels: int = 1,
    backbone: str = "resnet50",
    fpn_channels: int = 256,
    trainable_layers: int = 5,
    anchor_sizes: Sequence[Sequence[float]] = DEFAULT_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    min_size: int | None = None,
    max_size: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    rpn_ohem: bool | Mapping[str, Any] | None = None,
    roi_ohem: bool | Mapping[str, Any] | None = None,
    representation_size: int = 1024,
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision Faster R-CNN in the v2 recipe, randomly initialised, for ``in_channels``-channel images.

    Args:
        num_classes: Lesion classes WITHOUT background (the model predicts ``num_classes + 1``).
        in_channels: Image channels (1 for radiographs).
        backbone: torchvision ResNet name (:data:`RESNETS`).
        fpn_channels: FPN width; also the width of the box head's 4 convolutions (256 in the v2 recipe).
        trainable_layers: See :func:`resnet_fpn` (5: everything trains).
        anchor_sizes: One tuple of sizes (sqrt of area, pixels of the training image) per FPN level, 5 levels
            (P2-P5 and the max-pooled P6); every level the same count
            (:func:`medbundle.detection.anchors.propose_anchors` proposes them from the training boxes).
        aspect_ratios: Anchor ``height / width`` ratios, used on every level (or one tuple per level).
        min_size, max_size: torchvision's internal resize (shorter side to ``min_size``, longer at most ``max_size``,
            boxes scaled back); None (default): no internal resize (:class:`FixedSizeTransform`): the bundle's
            preprocessing sizes the images, and training crops stay at their size.
        image_mean, image_std: Per-channel normalisation inside the model (default 0 and 1: the bundle normalises
            intensities itself).
        rpn_ohem: None/False: torchvision's random anchor sampling; True or a dict ``{"neg_pos_ratio": float|None,
            "min_negatives": int}``: :class:`OHEMRegionProposalNetwork`.
        roi_ohem: None/False: random RoI sampling; True or a dict ``{"pool_size": int|None, "neg_pos_ratio":
            float|None, "min_negatives": int}``: :class:`OHEMRoIHeads`.
        representation_size: Width of the box head's fully connected layer.
        **kwargs: Further ``torchvision.models.detection.FasterRCNN`` arguments, e.g. ``box_score_thresh``,
            ``box_nms_thresh``, ``box_detections_per_img``, ``rpn_batch_size_per_image``, ``rpn_positive_fraction``,
            ``box_batch_size_per_image``, ``box_positive_fraction``, ``rpn_pre_nms_top_n_train``,
            ``rpn_post_nms_top_n_test``, ``rpn_fg_iou_thresh``, ``box_fg_iou_thresh``.

    Returns:
        ``FasterRCNN``; ``model(list of (C, H, W))`` in torchvision's layout. Wrap it in :class:`TorchvisionDetector`
        for the engines' layout.
    """
    num_classes = _check_classes(num_classes)
    rpn_opts = _ohem_options(rpn_ohem, ("neg_pos_ratio", "min_negatives"), "rpn_ohem")
    roi_opts = _ohem_options(roi_ohem, ("pool_size", "neg_pos_ratio", "min_negatives"), "roi_ohem")
    for reserved in ("rpn_anchor_generator", "rpn_head", "box_head", "box_predictor", "box_roi_pool"):
        if reserved in kwargs:
            raise ValueError(f"faster_rcnn builds {reserved} itself; set it through the builder's arguments.")
    body = resnet_fpn(backbone, in_channels, fpn_channels, trainable_layers, (1, 2, 3, 4), "pool", fpn_norm=True)
    anchors = _anchor_generator(anchor_sizes, aspect_ratios, 5, "faster_rcnn")
    rpn_head = RPNHead(fpn_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * 4, [int(representation_size)],
                                  norm_layer=nn.BatchNorm2d)
    model = FasterRCNN(
        body,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(int(representation_size), num_classes + 1),
        **_transform_kwargs(in_channels, min_size, max_size, image_mean, image_std),
        **kwargs,
    )
    if rpn_opts is not None:
        model.rpn = OHEMRegionProposalNetwork.from_rpn(model.rpn, **rpn_opts)
    if roi_opts is not None:
        model.roi_heads = OHEMRoIHeads.from_roi_heads(model.roi_heads, **roi_opts)
    return _fix_size(model, min_size)


def retinanet(
    num_classes: int,
    in_channels: int = 1,
    backbone: str = "resnet50",
    fpn_channels: int = 256,
    trainable_layers: int = 5,
    anchor_sizes: Sequence[Sequence[float]] = RETINANET_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    min_size: int | None = None,
    max_size: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **kwargs: Any,
) -> RetinaNet:
    """torchvision RetinaNet in the v2 recipe (``retinanet_resnet50_fpn_v2``), randomly initialised.

    BatchNorm ResNet, FPN on C3-C5 without normalisation, P6/P7 computed from C5 (sized for the chosen ResNet's last
    stage: 512 channels for resnet18/34, 2048 for resnet50 and deeper), heads with ``GroupNorm(32)``, GIoU box loss,
    sigmoid focal classification loss.

    Args:
        num_classes: Lesion classes (no background column: see the module notes).
        in_channels, backbone, trainable_layers, min_size, max_size, image_mean, image_std: As :func:`faster_rcnn`.
        fpn_channels: FPN and head width; a multiple of 32 (GroupNorm with 32 groups).
        anchor_sizes: One tuple per level P3-P7 (5 levels); default three octave scales of 32-512.
        aspect_ratios: Anchor ``height / width`` ratios.
        **kwargs: Further ``RetinaNet`` arguments: ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
            ``fg_iou_thresh``, ``bg_iou_thresh``, ``topk_candidates``.

    Returns:
        ``torchvision.models.detection.RetinaNet``.
    """
    num_classes = _check_classes(num_classes)
    if fpn_channels % 32:
        raise ValueError(f"retinanet needs fpn_channels divisible by 32 (GroupNorm(32) heads), got {fpn_channels}.")
    body = resnet_fpn(backbone, in_channels, fpn_channels, trainable_layers, (2, 3, 4), "p6p7_c5", fpn_norm=False)
    anchors = _anchor_generator(anchor_sizes, aspect_ratios, 5, "retinanet")
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=partial(nn.GroupNorm, 32))
    head.regression_head._loss_type = "giou"  # as retinanet_resnet50_fpn_v2 sets it; no public setter exists
    return _fix_size(RetinaNet(body, num_classes, anchor_generator=anchors, head=head,
                               **_transform_kwargs(in_channels, min_size, max_size, image_mean, image_std), **kwargs),
                     min_size)


def fcos(
    num_classes: int,
    in_channels: int = 1,
    backbone: str = "resnet50",
    fpn_channels: int = 256,
    trainable_layers: int = 5,
    anchor_sizes: Sequence[Sequence[float]] = FCOS_ANCHOR_SIZES,
    min_size: int | None = None,
    max_size: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **kwargs: Any,
) -> FCOS:
    """torchvision FCOS (``fcos_resnet50_fpn``), randomly initialised: BatchNorm ResNet, FPN on C3-C5, P6/P7 from P5.

    Args:
        num_classes: Lesion classes (no background column).
        in_channels, backbone, trainable_layers, min_size, max_size, image_mean, image_std: As :func:`faster_rcnn`.
        fpn_channels: FPN and head width; a multiple of 32 (FCOS's heads use GroupNorm(32)).
        anchor_sizes: One size per level P3-P7 (FCOS is anchor-free: the size scales the centre-sampling radius and
            the box coding of its level; default the strides 8-128). One anchor per location: no aspect ratios.
        **kwargs: Further ``FCOS`` arguments: ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
            ``center_sampling_radius``, ``topk_candidates``.

    Returns:
        ``torchvision.models.detection.FCOS``.
    """
    num_classes = _check_classes(num_classes)
    if fpn_channels % 32:
        raise ValueError(f"fcos needs fpn_channels divisible by 32 (GroupNorm(32) heads), got {fpn_channels}.")
    if "aspect_ratios" in kwargs:
        raise ValueError("fcos is anchor-free (one square location per level); it takes no aspect_ratios.")
    body = resnet_fpn(backbone, in_channels, fpn_channels, trainable_layers, (2, 3, 4), "p6p7_p5", fpn_norm=False)
    anchors = _anchor_generator(anchor_sizes, (1.0,), 5, "fcos")
    if anchors.num_anchors_per_location()[0] != 1:
        raise ValueError(f"fcos takes one size per level, got anchor_sizes={anchor_sizes}.")
    return _fix_size(FCOS(body, num_classes, anchor_generator=anchors,
                          **_transform_kwargs(in_channels, min_size, max_size, image_mean, image_std), **kwargs),
                     min_size)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"faster_rcnn": faster_rcnn, "retinanet": retinanet, "fcos": fcos}
_ADAPTER_KEYS = ("target_box_key", "target_label_key", "cls_key", "box_reg_key")


def build_detector(model: str = "faster_rcnn", num_classes: int = 1, **kwargs: Any) -> "TorchvisionDetector":
    """Build one of :data:`MODELS` and wrap it in :class:`TorchvisionDetector` (one config key switches the model).

    Args:
        model: ``"faster_rcnn"``, ``"retinanet"`` or ``"fcos"``.
        num_classes: Lesion classes without background.
        **kwargs: The builder's arguments (:func:`faster_rcnn`, :func:`retinanet`, :func:`fcos`), plus the adapter's
            ``target_box_key``, ``target_label_key``, ``cls_key``, ``box_reg_key``. For ``"fcos"`` (anchor-free)
            ``aspect_ratios`` is dropped, so that one config serves all three models.

    Returns:
        :class:`TorchvisionDetector`.
    """
    if model not in _BUILDERS:
        raise ValueError(f"unknown detector model {model!r}; valid: {', '.join(MODELS)}.")
    adapter_kwargs = {k: kwargs.pop(k) for k in _ADAPTER_KEYS if k in kwargs}
    if model == "fcos":  # anchor-free: one square location per level, so a config's ratios do not apply
        kwargs.pop("aspect_ratios", None)
    if model != "faster_rcnn":
        for key in ("rpn_ohem", "roi_ohem"):
            if kwargs.get(key) not in (None, False):
                raise ValueError(f"{key} mines Faster R-CNN's anchor / RoI samples; {model} has none (use model="
                                 f"'faster_rcnn', or drop {key}).")
            kwargs.pop(key, None)
    return TorchvisionDetector(_BUILDERS[model](num_classes, **kwargs), **adapter_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------------------------------------------

_LOSS_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "faster_rcnn": (("loss_classifier", "loss_objectness"), ("loss_box_reg", "loss_rpn_box_reg")),
    "retinanet": (("classification",), ("bbox_regression",)),
    "fcos": (("classification", "bbox_ctrness"), ("bbox_regression",)),
}
_KINDS = {"FasterRCNN": "faster_rcnn", "RetinaNet": "retinanet", "FCOS": "fcos"}


def _model_kind(network: nn.Module) -> str:
    for cls, kind in ((FasterRCNN, "faster_rcnn"), (RetinaNet, "retinanet"), (FCOS, "fcos")):
        if isinstance(network, cls):
            return kind
    name = getattr(network, "original_name", type(network).__name__)  # a scripted model keeps its class name here
    if name in _KINDS:
        return _KINDS[name]
    raise TypeError(f"TorchvisionDetector wraps torchvision's FasterRCNN, RetinaNet or FCOS (eager or scripted), "
                    f"got {type(network).__name__}.")


class TorchvisionDetector(nn.Module):
    """A torchvision detector with the interface of MONAI's ``RetinaNetDetector`` (2D).

    The engines (:class:`~medbundle.detection.engines.DetectionTrainer`, ``DetectionEvaluator``,
    :class:`~medbundle.detection.inferers.DetectorInferer`) use it exactly like the 3D detector.

    Attributes:
        network: The torchvision model. Checkpoints save and load ``detector.network``; the adapter's own
            ``state_dict`` is the network's with the prefix ``network.`` (as for MONAI's ``RetinaNetDetector``) and
            holds nothing else.
        spatial_dims: 2.
        num_classes: Lesion classes (without background).
        label_offset: 1 for Faster R-CNN (class 0 is background), 0 for RetinaNet / FCOS.
        kind: ``"faster_rcnn"``, ``"retinanet"`` or ``"fcos"``.
        target_box_key, target_label_key: Keys of the ``(N, 4)`` boxes and ``(N,)`` labels in targets and outputs.
        pred_score_key: ``target_label_key + "_scores"``, the key of the output scores.
        cls_key, box_reg_key: Keys of the summed classification / box losses in the training output.

    There is no ``inferer`` attribute (MONAI's detector has one for its sliding window): radiographs are detected
    whole, and MONAI Label logs a detector's inferer when the attribute exists.

    Args:
        network: torchvision ``FasterRCNN``, ``RetinaNet`` or ``FCOS`` (or a scripted one, for inference). The adapter
            starts in the network's train/eval mode.
        target_box_key, target_label_key, cls_key, box_reg_key: See the attributes. The default loss keys differ from
            MONAI's (``"classification"``) because torchvision's one-stage models already use that name for one term.
    """

    def __init__(
        self,
        network: nn.Module,
        target_box_key: str = "boxes",
        target_label_key: str = "labels",
        cls_key: str = "cls_loss",
        box_reg_key: str = "box_reg_loss",
    ) -> None:
        super().__init__()
        self.network = network
        self.kind = _model_kind(network)
        self.spatial_dims = 2
        self.label_offset = 1 if self.kind == "faster_rcnn" else 0
        self.cls_loss_terms, self.box_loss_terms = _LOSS_GROUPS[self.kind]
        if cls_key == box_reg_key or {cls_key, box_reg_key} & set(self.cls_loss_terms + self.box_loss_terms):
            raise ValueError(f"cls_key and box_reg_key must differ from each other and from torchvision's loss names "
                             f"{self.cls_loss_terms + self.box_loss_terms}, got {cls_key!r}, {box_reg_key!r}.")
        self.cls_key, self.box_reg_key = cls_key, box_reg_key
        self.set_target_keys(target_box_key, target_label_key)
        if self.kind == "faster_rcnn":
            self.num_classes = int(network.roi_heads.box_predictor.cls_score.out_features) - 1
        else:
            self.num_classes = int(network.head.classification_head.num_classes)
        body = getattr(getattr(network, "backbone", None), "body", None)
        conv1 = getattr(body, "conv1", None)
        self.in_channels: int | None = int(conv1.in_channels) if conv1 is not None else None
        self.train(network.training)  # start in the network's mode (an exported network is in eval mode)

    def set_target_keys(self, box_key: str, label_key: str) -> None:
        """Keys of boxes and labels in targets and outputs; scores go under ``label_key + "_scores"``."""
        self.target_box_key, self.target_label_key = box_key, label_key
        self.pred_score_key = label_key + "_scores"

    def set_box_selector_parameters(
        self,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates_per_level: int | None = None,
    ) -> None:
        """Inference box selection: score threshold, NMS IoU threshold, boxes kept per image.

        Args:
            score_thresh: Boxes scoring below are dropped (class probability).
            nms_thresh: IoU above which the lower-scoring box of a class is suppressed.
            detections_per_img: Boxes kept per image at most.
            topk_candidates_per_level: RetinaNet / FCOS: candidates per FPN level before NMS (None: unchanged).
                Faster R-CNN ignores it (its proposals are limited by ``rpn_post_nms_top_n_test``).
        """
        target = self.network.roi_heads if self.kind == "faster_rcnn" else self.network
        target.score_thresh = float(score_thresh)
        target.nms_thresh = float(nms_thresh)
        target.detections_per_img = int(detections_per_img)
        if topk_candidates_per_level is not None and self.kind != "faster_rcnn":
            self.network.topk_candidates = int(topk_candidates_per_level)

    # layout conversions ------------------------------------------------------------------------------------------

    def to_torchvision_images(self, images: Sequence[Tensor] | Tensor) -> list[Tensor]:
        """``(C, X, Y)`` images (MONAI layout, a list or a ``(B, C, X, Y)`` tensor) to torchvision's ``(C, H, W)``."""
        items = list(torch.unbind(images, 0)) if isinstance(images, Tensor) else list(images)
        if not items:
            raise ValueError("no images given.")
        out = []
        for i, img in enumerate(items):
            if not isinstance(img, Tensor) or img.ndim != 3:
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"image {i}: expected a (C, X, Y) tensor, got {shape}.")
            if self.in_channels is not None and img.shape[0] != self.in_channels:
                raise ValueError(f"image {i}: {img.shape[0]} channels, the network takes {self.in_channels}.")
            out.append(img.as_subclass(Tensor).transpose(-1, -2).contiguous())
        return out

    def to_torchvision_targets(self, targets: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Targets ``{target_box_key: (N, 4) float pixels, target_label_key: (N,) 0-based}`` to torchvision's dicts."""
        out = []
        for i, t in enumerate(targets):
            if self.target_box_key not in t or self.target_label_key not in t:
                raise KeyError(f"target {i} needs {self.target_box_key!r} and {self.target_label_key!r}, "
                               f"has {sorted(t)}.")
            boxes = torch.as_tensor(t[self.target_box_key]).as_subclass(Tensor).to(torch.float32).reshape(-1, 4)
            labels = torch.as_tensor(t[self.target_label_key]).as_subclass(Tensor).to(torch.int64).reshape(-1)
            if boxes.shape[0] != labels.shape[0]:
                raise ValueError(f"target {i}: {boxes.shape[0]} boxes but {labels.shape[0]} labels.")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"target {i}: labels must be 0-based class indices in [0, {self.num_classes}), "
                                 f"got {labels.tolist()}.")
            out.append({"boxes": boxes, "labels": labels + self.label_offset})
        return out

    def from_torchvision_detections(self, detections: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
        """torchvision's per-image ``boxes`` / ``labels`` / ``scores`` to this adapter's keys and 0-based labels."""
        return [
            {
                self.target_box_key: d["boxes"].to(torch.float32),
                self.target_label_key: d["labels"].to(torch.int64) - self.label_offset,
                self.pred_score_key: d["scores"].to(torch.float32),
            }
            for d in detections
        ]

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        use_inferer: bool = False,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training losses or detections, as MONAI's ``RetinaNetDetector.forward``.

        Args:
            images: ``(C, X, Y)`` tensors (MONAI layout, first spatial dim = image column x), or ``(B, C, X, Y)``.
            targets: Training only: per image ``{target_box_key: (N, 4) x_min, y_min, x_max, y_max in pixels,
                target_label_key: (N,) 0-based class}``; ``N`` may be 0 (an image without lesions).
            use_inferer: Accepted for MONAI's interface (MONAI Label passes True) and ignored: there is no
                sliding-window inferer, 2D images are detected whole.

        Returns:
            Training: dict of every torchvision loss term (scalars) plus ``cls_key`` (sum of the classification
            terms: Faster R-CNN ``loss_classifier + loss_objectness``, RetinaNet ``classification``, FCOS
            ``classification + bbox_ctrness``) and ``box_reg_key`` (sum of the box terms), so that
            ``cls + box`` equals torchvision's total loss. Eval: one dict per image with ``target_box_key``
            ``(K, 4)`` float32 boxes in the input's pixel frame, ``target_label_key`` ``(K,)`` int64 0-based classes,
            ``pred_score_key`` ``(K,)`` float32 scores.
        """
        tv_images = self.to_torchvision_images(images)
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets (one dict of boxes and labels per image).")
            if len(targets) != len(tv_images):
                raise ValueError(f"{len(tv_images)} images but {len(targets)} targets.")
            out = self.network(tv_images, self.to_torchvision_targets(targets))
            losses = dict(out[0] if isinstance(out, tuple) else out)
            unknown = sorted(set(losses) - set(self.cls_loss_terms) - set(self.box_loss_terms))
            if unknown:
                raise ValueError(f"unexpected loss terms {unknown} from the {self.kind} network.")
            losses[self.cls_key] = sum(losses[k] for k in self.cls_loss_terms if k in losses)
            losses[self.box_reg_key] = sum(losses[k] for k in self.box_loss_terms if k in losses)
            return losses
        out = self.network(tv_images)
        detections = out[1] if isinstance(out, tuple) else out
        return self.from_torchvision_detections(detections)


def export_network(detector: TorchvisionDetector | nn.Module) -> nn.Module:
    """A plain torchvision copy of the detector's network, in eval mode, ready for ``torch.jit.script``.

    The OHEM modules are replaced by torchvision's ``RegionProposalNetwork`` / ``RoIHeads`` with the same
    submodules and settings (OHEM adds no parameters, so the state_dict is unchanged and interchangeable), so the
    scripted model needs nothing from medbundle. The networks with OHEM also script directly; this copy is the
    dependency-free one. The scripted model is torchvision's: ``model(list of (C, H, W))`` returns ``(losses,
    detections)`` with 1-based Faster R-CNN labels; wrap it in :class:`TorchvisionDetector` for the MONAI layout.

    Args:
        detector: A :class:`TorchvisionDetector` or a torchvision network.

    Returns:
        The copied network (``eval()``; the input is not modified).
    """
    network = detector.network if isinstance(detector, TorchvisionDetector) else detector
    plain = copy.deepcopy(network)
    if isinstance(getattr(plain, "rpn", None), OHEMRegionProposalNetwork):
        plain.rpn = plain.rpn.to_plain()
    if isinstance(getattr(plain, "roi_heads", None), OHEMRoIHeads):
        plain.roi_heads = plain.roi_heads.to_plain()
    return plain.eval()

