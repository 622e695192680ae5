"""3D RetinaNet built from MONAI parts, with the FPN width and the backbone's depth and width selectable.

MONAI's ``resnet_fpn_feature_extractor`` always builds a 256-channel FPN on a ResNet, and the RetinaNet
heads inherit that width: four 3 x 3 x 3 convolutions of 256 channels on the finest feature map. That is
the published LUNA16 recipe and what a GPU handles; on a CPU, or to study smaller models, the heads
dominate the cost. This module adds only the choice of FPN width (:func:`fpn_feature_extractor`) and one
function that assembles MONAI's ``ResNet`` + ``BackboneWithFPN`` + ``RetinaNet`` from a few numbers
(:func:`retinanet_resnet_fpn`), computing the ``size_divisible`` the network needs. With the defaults it is
the network of MONAI's LUNA16 recipe (ResNet50, conv1 7 x 7 x 7 with stride (2, 2, 1), returned layers
[1, 2], 256 FPN channels, size divisible by (16, 16, 8)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
from monai.networks.nets import resnet

from medbundle.networks.resnet import RESNET_DEPTHS

__all__ = ["resnet_backbone", "fpn_feature_extractor", "feature_strides", "retinanet_resnet_fpn"]



def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or min(out) < 1:
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {value!r}.")
    return out


def resnet_backbone(
    depth: int = 50,
    spatial_dims: int = 3,
    n_input_channels: int = 1,
    conv1_t_size: int | Sequence[int] = (7, 7, 7),
    conv1_t_stride: int | Sequence[int] = (2, 2, 1),
    widen_factor: float = 1.0,
) -> resnet.ResNet:
    """MONAI ``ResNet`` of the given depth (10, 18, 34, 50, 101, 152) without a classification head.

    ``widen_factor`` scales the stage widths 64, 128, 256, 512 (0.25 gives 16, 32, 64, 128).
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}.")
    if widen_factor <= 0:
        raise ValueError(f"widen_factor must be > 0, got {widen_factor}.")
    block, layers = RESNET_DEPTHS[depth]
    return resnet.ResNet(
        block=block,
        layers=layers,
        block_inplanes=resnet.get_inplanes(),
        spatial_dims=spatial_dims,
        n_input_channels=n_input_channels,
        conv1_t_size=_tuple(conv1_t_size, spatial_dims, "conv1_t_size"),
        conv1_t_stride=_tuple(conv1_t_stride, spatial_dims, "conv1_t_stride"),
        widen_factor=widen_factor,
        feed_forward=False,
    )


def _stage_channels(backbone: torch.nn.Module, stage: int) -> int:
    layer = getattr(backbone, f"layer{stage}", None)
    if layer is None:
        raise ValueError(f"the backbone has no layer{stage}; returned_layers must name stages 1..4 of a ResNet.")
    convs = [m for m in layer[-1].modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))]
    return int(convs[-1].out_channels)


def fpn_feature_extractor(
    backbone: torch.nn.Module,
    spatial_dims: int = 3,
    returned_layers: Sequence[int] = (1, 2),
    out_channels: int = 256,
) -> BackboneWithFPN:
    """FPN over the ResNet stages ``returned_layers`` plus a max-pooled extra level, ``out_channels`` wide.

    Same structure as MONAI's ``resnet_fpn_feature_extractor`` (all layers trainable, no pretrained weights);
    the stage widths are read from the backbone, so any depth and ``widen_factor`` work. The result has
    ``len(returned_layers) + 1`` output maps and ``.out_channels == out_channels``.
    """
    layers = sorted({int(k) for k in returned_layers})
    if not layers or min(layers) < 1 or max(layers) > 4:
        raise ValueError(f"returned_layers must be stage numbers in 1..4, got {returned_layers!r}.")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
    return BackboneWithFPN(
        backbone,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(layers)},
        in_channels_list=[_stage_channels(backbone, k) for k in layers],
        out_channels=int(out_channels),
        spatial_dims=spatial_dims,
        extra_blocks=LastLevelMaxPool(spatial_dims),
    )


def feature_strides(
    conv1_t_stride: int | Sequence[int] = (2, 2, 1), returned_layers: Sequence[int] = (1, 2), spatial_dims: int = 3
) -> list[tuple[int, ...]]:
    """Stride in voxels of each FPN output map (finest first), for a MONAI ResNet with its 2x max pool.

    The coarsest stride is the ``size_divisible`` the RetinaNet needs: ``[16, 16, 8]`` for the LUNA16 recipe.
    """
    s1 = _tuple(conv1_t_stride, spatial_dims, "conv1_t_stride")
    layers = sorted({int(k) for k in returned_layers})
    strides = [tuple(s * 2 * 2 ** (k - 1) for s in s1) for k in layers]
    strides.append(tuple(2 * s for s in strides[-1]))  # LastLevelMaxPool
    return strides


def retinanet_resnet_fpn(
    depth: int = 50,
    num_classes: int = 1,
    num_anchors: int = 3,
    spatial_dims: int = 3,
    n_input_channels: int = 1,
    returned_layers: Sequence[int] = (1, 2),
    fpn_channels: int = 256,
    conv1_t_size: int | Sequence[int] = (7, 7, 7),
    conv1_t_stride: int | Sequence[int] = (2, 2, 1),
    widen_factor: float = 1.0,
    size_divisible: int | Sequence[int] | None = None,
) -> RetinaNet:
    """MONAI ``RetinaNet`` on a ResNet-FPN (defaults: MONAI's LUNA16 recipe network).

    Input ``(B, n_input_channels, *spatial)`` float; in training mode the network returns per-level
    classification logits ``(B, num_anchors * num_classes, *level_shape)`` and box regressions
    ``(B, num_anchors * 2 * spatial_dims, *level_shape)`` (a dict keyed ``classification`` /
    ``box_regression``), which ``RetinaNetDetector`` decodes. ``size_divisible=None`` uses the coarsest
    feature stride (:func:`feature_strides`); inputs are padded to a multiple of it.
    """
    backbone = resnet_backbone(depth, spatial_dims, n_input_channels, conv1_t_size, conv1_t_stride, widen_factor)
    features = fpn_feature_extractor(backbone, spatial_dims, returned_layers, fpn_channels)
    if size_divisible is None:
        size_divisible = list(feature_strides(conv1_t_stride, returned_layers, spatial_dims)[-1])
    return RetinaNet(
        spatial_dims=spatial_dims,
        num_classes=num_classes,
        num_anchors=num_anchors,
        feature_extractor=features,
        size_divisible=size_divisible,
    )
