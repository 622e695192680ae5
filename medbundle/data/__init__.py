"""Dataset adapters (public layouts -> MONAI datalists), synthetic generators and robust datasets."""

from medbundle.data.cache import DiskCacheDataset
from medbundle.data.items import IMAGE_SUFFIXES, inference_items
from medbundle.data.streaming import FailedItem, InferencePlan, ItemBatch, SafeDataset, SkipFailedCollate

__all__ = ["DiskCacheDataset", "IMAGE_SUFFIXES", "inference_items",
           "FailedItem", "InferencePlan", "ItemBatch", "SafeDataset", "SkipFailedCollate"]
