"""Medical metrics in scikit-learn's ``(y_true, y_score)`` convention.

- :mod:`~medbundle.metrics.classification`: confusion-based rates (per class, macro, micro), quadratic
  kappa, and the multi-label report the bundles write to ``metrics.json``.
- :mod:`~medbundle.metrics.roc`: AUROC/AP (NaN-masked multi-label), DeLong variance, CI and test,
  stratified bootstrap CI, operating points.
- :mod:`~medbundle.metrics.calibration`: reliability diagram data and expected calibration error.
- :mod:`~medbundle.metrics.detection`: 2D/3D box IoU and COCO-style AP/mAP.
- :mod:`~medbundle.metrics.froc`: the LUNA16 FROC/CPM protocol.
- :mod:`~medbundle.metrics.cumulative`: MONAI ``CumulativeIterationMetric`` wrappers for bundle configs.
"""

from medbundle.metrics.calibration import expected_calibration_error, reliability_diagram
from medbundle.metrics.classification import (
    binary_confusion,
    binary_rates,
    cohen_kappa_quadratic,
    multilabel_classification_report,
    multilabel_rates,
)
from medbundle.metrics.cumulative import MultiLabelAUROCMetric
from medbundle.metrics.detection import box_iou, coco_detection_metrics
from medbundle.metrics.froc import evaluate_luna16_files, luna16_froc
from medbundle.metrics.roc import (
    average_precision,
    average_precision_per_class,
    bootstrap_auc_ci,
    delong_auc_ci,
    delong_auc_variance,
    delong_test,
    roc_auc,
    roc_auc_per_class,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    threshold_at_sensitivity,
    threshold_at_specificity,
    threshold_youden,
    youden_thresholds,
)

__all__ = [
    "MultiLabelAUROCMetric",
    "average_precision",
    "average_precision_per_class",
    "binary_confusion",
    "box_iou",
    "coco_detection_metrics",
    "evaluate_luna16_files",
    "luna16_froc",
    "binary_rates",
    "bootstrap_auc_ci",
    "cohen_kappa_quadratic",
    "delong_auc_ci",
    "delong_auc_variance",
    "delong_test",
    "expected_calibration_error",
    "multilabel_classification_report",
    "multilabel_rates",
    "reliability_diagram",
    "roc_auc",
    "roc_auc_per_class",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "threshold_at_sensitivity",
    "threshold_at_specificity",
    "threshold_youden",
    "youden_thresholds",
]
