"""Dataset adapters (public layouts -> MONAI datalists), synthetic generators and robust datasets."""

from medbundle.data.items import IMAGE_SUFFIXES, inference_items
from medbundle.data.safe import SafeCacheDataset

__all__ = ["IMAGE_SUFFIXES", "SafeCacheDataset", "inference_items"]
