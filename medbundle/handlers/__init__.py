"""Ignite handlers that put medbundle's metrics and writers into MONAI bundle workflows."""

from medbundle.handlers.cam3d import GradCAMVolumeSaver
from medbundle.handlers.checkpoint import ResumeCheckpoint
from medbundle.handlers.classification import (
    ClassificationReport,
    MultiLabelAUROC,
    load_thresholds,
    to_jsonable,
)
from medbundle.handlers.detection import CPMMetric, DetectionMetric, DetectionReport, DetectionWriter
from medbundle.handlers.distributed import ShardRecorder, rank_handlers
from medbundle.handlers.inference import GradCAMSaver, PredictionsWriter
from medbundle.handlers.progress import TrainingProgress
from medbundle.handlers.selection import SelectedEpochScore, TolerantSelection
from medbundle.handlers.streaming import StreamingWriter
from medbundle.handlers.tensorboard import LazySummaryWriter, LearningRateWriter

__all__ = [
    "CPMMetric",
    "DetectionMetric",
    "DetectionReport",
    "DetectionWriter",
    "ClassificationReport",
    "GradCAMSaver",
    "GradCAMVolumeSaver",
    "LazySummaryWriter",
    "LearningRateWriter",
    "MultiLabelAUROC",
    "PredictionsWriter",
    "ResumeCheckpoint",
    "SelectedEpochScore",
    "TolerantSelection",
    "ShardRecorder",
    "StreamingWriter",
    "TrainingProgress",
    "rank_handlers",
    "load_thresholds",
    "to_jsonable",
]
