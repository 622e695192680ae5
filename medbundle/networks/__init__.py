"""Networks that more than one domain builds on (the 3D ResNet of the CT classifier and of the detector's
backbone); the detector's RetinaNet is in :mod:`medbundle.detection.networks`, the MIL network in
:mod:`medbundle.pathology.networks`."""

from medbundle.networks.resnet import RESNET_DEPTHS, ResNetClassifier

__all__ = ["RESNET_DEPTHS", "ResNetClassifier"]
