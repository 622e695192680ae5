"""Medical metrics in scikit-learn's ``(y_true, y_score)`` convention, importable without torch or MONAI.

- :mod:`~medbundle.metrics.classification`: confusion-based rates (per class, macro, micro), quadratic
  kappa, and the multi-label report the bundles write to ``metrics.json``.
- :mod:`~medbundle.metrics.roc`: AUROC/AP (NaN-masked multi-label), DeLong variance, CI and test,
  stratified bootstrap CI, operating points.
- :mod:`~medbundle.metrics.calibration`: reliability diagram data and expected calibration error.
- :mod:`~medbundle.metrics.detection`: 2D/3D box IoU and COCO-style AP/mAP.
- :mod:`~medbundle.metrics.froc`: the LUNA16 FROC/CPM protocol.
- :mod:`~medbundle.metrics.validation`: the input checks they share.

The functions are plain: arrays in, numbers out. The stateful wrappers that bundles attach to MONAI engines
(:class:`~medbundle.metrics.cumulative.MultiLabelAUROCMetric`, a MONAI ``CumulativeIterationMetric``) need
torch and live apart in :mod:`medbundle.metrics.cumulative`, which this package does not import.

Names are loaded on first use (PEP 562), so ``import medbundle.metrics.froc`` loads neither scikit-learn nor
SciPy's statistics.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "expected_calibration_error": "calibration",
    "reliability_diagram": "calibration",
    "binary_confusion": "classification",
    "binary_rates": "classification",
    "cohen_kappa_quadratic": "classification",
    "multilabel_classification_report": "classification",
    "multilabel_rates": "classification",
    "box_iou": "detection",
    "coco_detection_metrics": "detection",
    "evaluate_luna16_files": "froc",
    "image_froc": "froc",
    "luna16_froc": "froc",
    "average_precision": "roc",
    "average_precision_per_class": "roc",
    "bootstrap_auc_ci": "roc",
    "delong_auc_ci": "roc",
    "delong_auc_variance": "roc",
    "delong_test": "roc",
    "roc_auc": "roc",
    "roc_auc_per_class": "roc",
    "sensitivity_at_specificity": "roc",
    "specificity_at_sensitivity": "roc",
    "threshold_at_sensitivity": "roc",
    "threshold_at_specificity": "roc",
    "threshold_youden": "roc",
    "youden_thresholds": "roc",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
