"""Imbalance-aware classification losses.

Focal losses with per-class alpha and missing-label masking, class weights from counts (inverse,
scikit-learn "balanced", effective number of samples), the class-balanced loss of Cui et al., weighted
BCE / CE built from counts, and a by-name factory for bundle configs.
"""

from .class_balanced import ClassBalancedLoss, class_weights_from_counts, effective_number_weights
from .factory import LOSS_NAMES, build_loss
from .focal import SigmoidFocalLoss, SoftmaxFocalLoss
from .weighted import WeightedBCEWithLogitsLoss, WeightedCrossEntropyLoss

__all__ = [
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "effective_number_weights",
    "class_weights_from_counts",
    "ClassBalancedLoss",
    "WeightedBCEWithLogitsLoss",
    "WeightedCrossEntropyLoss",
    "build_loss",
    "LOSS_NAMES",
]
