"""Channel handling that MONAI has no one-line transform for."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["EnsureGrayscale", "EnsureGrayscaled"]


class EnsureGrayscale(Transform):
    """Reduce a channel-first image to one grey channel.

    Public chest X-ray sets mix grey, RGB and RGBA files (a few ChestX-ray14 PNGs are RGBA). One channel
    passes through; RGB or RGBA becomes the ITU-R BT.601 luma of the first three channels (alpha is
    dropped); two channels (grey + alpha) keep the first. Input (C, *spatial), output (1, *spatial).
    """

    _LUMA = (0.299, 0.587, 0.114)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        if c == 1:
            return img
        if c == 2:
            return img[:1]
        if c in (3, 4):
            w = torch.as_tensor(self._LUMA, dtype=torch.float32, device=img.device)
            w = w.reshape(3, *([1] * (img.ndim - 1)))
            out = (img[:3].float() * w).sum(0, keepdim=True)
            return out
        raise ValueError(f"expected 1-4 channels (grey, grey+alpha, RGB, RGBA), got {c}: shape {tuple(img.shape)}")


class EnsureGrayscaled(MapTransform):
    """Dictionary version of :class:`EnsureGrayscale`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureGrayscale()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
