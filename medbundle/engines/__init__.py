"""MONAI workflows (Ignite engines) for what MONAI's supervised engines do not cover."""

from medbundle.engines.detection import DetectionEvaluator, DetectionTrainer, flatten_detection_batch, image_meta
from medbundle.engines.streaming import SkipFailedItemsMixin, StreamingDetectionEvaluator, StreamingEvaluator

__all__ = ["DetectionEvaluator", "DetectionTrainer", "flatten_detection_batch", "image_meta",
           "SkipFailedItemsMixin", "StreamingDetectionEvaluator", "StreamingEvaluator"]
