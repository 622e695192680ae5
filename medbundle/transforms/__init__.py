"""Transforms that more than one domain uses and MONAI lacks.

- :class:`~medbundle.transforms.channels.EnsureGrayscaled`: one luminance channel from grey, grey+alpha
  or colour images.
- :class:`~medbundle.transforms.fields.MetaToFieldd`: a reader's meta value (the colour-conversion note) as a plain
  item field that the prediction writers show.

Readers are in :mod:`medbundle.io`; the transforms of one kind of image in its domain
(:mod:`medbundle.ct.transforms`, :mod:`medbundle.pathology.transforms`).
"""

from medbundle.transforms.channels import EnsureGrayscale, EnsureGrayscaled
from medbundle.transforms.fields import MetaToFieldd

__all__ = ["EnsureGrayscale", "EnsureGrayscaled", "MetaToFieldd"]
