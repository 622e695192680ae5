"""Hard example mining: deterministic hard-negative selection and top-k OHEM on element-wise losses.

The classifiers select it by loss name (``--loss_name ohem_bce`` for chest X-rays, ``ohem_ce`` for CT volumes
and slides; :func:`medbundle.losses.build_loss`).
"""

from .ohem import HardExampleLoss, OHEMLoss, hard_negative_mask, topk_hard_example_loss

__all__ = ["HardExampleLoss", "hard_negative_mask", "OHEMLoss", "topk_hard_example_loss"]
