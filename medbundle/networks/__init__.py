"""Networks that MONAI lacks in the form the bundles need."""

from medbundle.networks.resnet import RESNET_DEPTHS, ResNetClassifier
from medbundle.networks.retinanet import (
    feature_strides,
    fpn_feature_extractor,
    resnet_backbone,
    retinanet_resnet_fpn,
)

__all__ = [
    "RESNET_DEPTHS",
    "ResNetClassifier",
    "feature_strides",
    "fpn_feature_extractor",
    "resnet_backbone",
    "retinanet_resnet_fpn",
]
