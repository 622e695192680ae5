"""Pyramid levels of a whole-slide image as the writers lay them out: power-of-two downsamples and the tiles of a
level in row-major order. Shared by the pyramidal TIFF writer (:mod:`medbundle.pathology.synthetic`) and the
DICOM whole-slide writer (:mod:`medbundle.pathology.dicom_wsi`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["level_tiles", "pyramid_downsamples"]


def pyramid_downsamples(height: int, width: int, min_size: int = 256, max_levels: int = 10) -> list[int]:
    """Power-of-two downsamples 1, 2, 4, ... while both sides stay divisible and the level keeps at least
    ``min_size`` pixels on its shorter side (so each level halves the previous one exactly)."""
    ds = [1]
    while len(ds) < max_levels:
        d = ds[-1] * 2
        if height % d or width % d or min(height, width) // d < min_size:
            break
        ds.append(d)
    return ds


def level_tiles(render: Callable[[int, int, int, int, int], np.ndarray], downsample: int, height: int, width: int,
                tile: int = 256) -> Iterator[np.ndarray]:
    """The ``(tile, tile, 3)`` uint8 tiles of one pyramid level (``height`` x ``width`` level pixels) in row-major
    order, rendered by ``render(downsample, y0, x0, h, w)``; edge tiles are padded by repeating the edge."""
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            h, w = min(tile, height - ty), min(tile, width - tx)
            t = render(downsample, ty, tx, h, w)
            if t.shape != (h, w, 3) or t.dtype != np.uint8:
                raise ValueError(f"render returned {t.shape} {t.dtype}, expected ({h}, {w}, 3) uint8")
            if (h, w) != (tile, tile):
                t = np.pad(t, ((0, tile - h), (0, tile - w), (0, 0)), mode="edge")
            yield t
