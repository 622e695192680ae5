"""MONAI workflows (Ignite engines) for what MONAI's supervised engines do not cover.

The detector's trainer and evaluators live in :mod:`medbundle.detection.engines`.
"""

from medbundle.engines.streaming import FAILED_ITEMS, SkipFailedItemsMixin, StreamingEvaluator

__all__ = ["FAILED_ITEMS", "SkipFailedItemsMixin", "StreamingEvaluator"]
