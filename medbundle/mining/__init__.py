"""Hard example mining: deterministic hard-negative selection and top-k OHEM on element-wise losses."""

from .ohem import OHEMLoss, hard_negative_mask, topk_hard_example_loss

__all__ = ["hard_negative_mask", "OHEMLoss", "topk_hard_example_loss"]
