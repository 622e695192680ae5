"""Generic Ignite handlers that put medbundle's metrics and writers into MONAI bundle workflows.

Handlers of one kind of image live in its domain: :mod:`medbundle.ct.handlers`,
:mod:`medbundle.detection.handlers`, :mod:`medbundle.pathology.handlers`.
"""

from medbundle.handlers.checkpoint import ResumeCheckpoint
from medbundle.handlers.classification import ClassificationReport, MultiLabelAUROC, load_thresholds
from medbundle.handlers.distributed import ShardRecorder, rank_handlers
from medbundle.handlers.inference import GradCAMSaver, PredictionsWriter
from medbundle.handlers.progress import TrainingProgress
from medbundle.handlers.selection import SelectedEpochScore, TolerantSelection
from medbundle.handlers.streaming import StreamingWriter
from medbundle.handlers.tensorboard import LazySummaryWriter, LearningRateWriter

__all__ = [
    "ClassificationReport",
    "GradCAMSaver",
    "LazySummaryWriter",
    "LearningRateWriter",
    "MultiLabelAUROC",
    "PredictionsWriter",
    "ResumeCheckpoint",
    "SelectedEpochScore",
    "ShardRecorder",
    "StreamingWriter",
    "TolerantSelection",
    "TrainingProgress",
    "load_thresholds",
    "rank_handlers",
]
