"""Ignite handlers that put medbundle's metrics and writers into MONAI bundle workflows."""

from medbundle.handlers.cam3d import GradCAMVolumeSaver
from medbundle.handlers.classification import (
    ClassificationReport,
    MultiLabelAUROC,
    load_thresholds,
    to_jsonable,
)
from medbundle.handlers.detection import CPMMetric, DetectionMetric, DetectionReport, DetectionWriter
from medbundle.handlers.distributed import ShardRecorder, rank_handlers
from medbundle.handlers.inference import GradCAMSaver, PredictionsWriter

__all__ = [
    "CPMMetric",
    "DetectionMetric",
    "DetectionReport",
    "DetectionWriter",
    "ClassificationReport",
    "GradCAMSaver",
    "GradCAMVolumeSaver",
    "MultiLabelAUROC",
    "PredictionsWriter",
    "ShardRecorder",
    "rank_handlers",
    "load_thresholds",
    "to_jsonable",
]
