"""medbundle: helpers for MONAI bundles in medical image classification and detection.

The package adds what MONAI, PyTorch and scikit-learn lack for these tasks: imbalance-aware losses,
hard-negative mining, balanced sampling, medical metrics (with confidence intervals and the LUNA16
FROC protocol), dataset adapters and synthetic generators for public layouts, and Ignite handlers
that put those metrics into bundle workflows.
"""

__version__ = "0.1.0"
