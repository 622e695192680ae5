"""Networks that MONAI lacks in the form the bundles need."""

from medbundle.networks.resnet import RESNET_DEPTHS, ResNetClassifier

__all__ = ["RESNET_DEPTHS", "ResNetClassifier"]
