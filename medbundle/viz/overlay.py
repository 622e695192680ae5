"""Heatmap overlays (Grad-CAM, attention) written as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["heatmap_overlay", "save_heatmap_overlay"]


def _normalise(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo, hi = np.nanmin(a), np.nanmax(a)
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a 2D heatmap (any range, resized to the image if needed) over a 2D grey image.

    Args:
        image: (H, W) grey image, any range (min-max scaled).
        heatmap: (h, w) map, any range (min-max scaled); resized bilinearly to (H, W).
        alpha: heatmap opacity in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    img = _normalise(np.squeeze(image))
    hm = _normalise(np.squeeze(heatmap))
    if hm.shape != img.shape:
        hm = np.asarray(Image.fromarray(hm).resize(img.shape[::-1], Image.BILINEAR), dtype=np.float32)
    colour = colormaps[cmap](hm)[..., :3]
    rgb = (1 - alpha) * np.repeat(img[..., None], 3, axis=-1) + alpha * colour
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def save_heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, path: str | Path, alpha: float = 0.45, transpose: bool = True
) -> Path:
    """Write :func:`heatmap_overlay` as a PNG.

    ``transpose`` undoes MONAI's (W, H) array layout from ``PILReader`` (and the X-ray DICOM reader)
    so the PNG shows the picture as the input file does.
    """
    from PIL import Image

    image, heatmap = np.squeeze(np.asarray(image)), np.squeeze(np.asarray(heatmap))
    if transpose:
        image, heatmap = image.T, heatmap.T
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(heatmap_overlay(image, heatmap, alpha)).save(path)
    return path
