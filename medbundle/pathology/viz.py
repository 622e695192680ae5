"""Attention maps of whole slides: a heatmap over the thumbnail (PNG), tiles as GeoJSON for QuPath, and a
mosaic of the most attended patches.

Attention is shown relative to uniform: ``N x a_n`` for a bag of ``N`` patches (1 = average attention),
scaled to the colour map by its maximum on the slide, so slides with different bag sizes read alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["attention_geojson", "attention_heatmap", "save_attention_heatmap", "top_patch_mosaic", "write_geojson"]


def _relative(attention: np.ndarray) -> np.ndarray:
    a = np.asarray(attention, dtype=np.float64).ravel()
    return a * a.size


def attention_heatmap(grid, attention: np.ndarray, max_side: int = 2048, alpha: float = 0.5,
                      cmap: str = "jet") -> np.ndarray:
    """RGB uint8 image: the slide thumbnail with each patch's footprint coloured by its attention.

    Args:
        grid: the slide's :class:`~medbundle.pathology.reader.SlideGrid` (thumbnail, coordinates).
        attention: ``(N,)`` attention weights in grid order.
        max_side: the image is downscaled so its longer side is at most this.
        alpha: opacity of the colour over the thumbnail.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    att = _relative(attention)
    if att.size != len(grid):
        raise ValueError(f"{att.size} attention weights for {len(grid)} patches")
    thumb = np.asarray(grid.images()[0])
    th, tw = thumb.shape[:2]
    f = min(1.0, max_side / max(th, tw))
    if f < 1.0:
        thumb = np.asarray(Image.fromarray(thumb).resize((max(1, int(tw * f)), max(1, int(th * f))), Image.BILINEAR))
    h, w = thumb.shape[:2]
    scale_y, scale_x = h / (grid.slide_size[0] / 1.0), w / (grid.slide_size[1] / 1.0)
    heat = np.zeros((h, w), np.float32)
    covered = np.zeros((h, w), bool)
    side = grid.footprint
    ys = np.floor(grid.coords[:, 0] * scale_y).astype(int)
    xs = np.floor(grid.coords[:, 1] * scale_x).astype(int)
    ye = np.maximum(np.ceil((grid.coords[:, 0] + side) * scale_y).astype(int), ys + 1)
    xe = np.maximum(np.ceil((grid.coords[:, 1] + side) * scale_x).astype(int), xs + 1)
    top = att.max() if att.size else 1.0
    for i in np.argsort(att):  # most attended drawn last
        heat[ys[i]:ye[i], xs[i]:xe[i]] = att[i] / top
        covered[ys[i]:ye[i], xs[i]:xe[i]] = True
    colour = colormaps[cmap](heat)[..., :3] * 255.0
    out = thumb[..., :3].astype(np.float32)
    out[covered] = (1 - alpha) * out[covered] + alpha * colour[covered]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_attention_heatmap(grid, attention: np.ndarray, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`attention_heatmap` as a PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(attention_heatmap(grid, attention, **kwargs)).save(path)
    return path


def attention_geojson(grid, attention: np.ndarray, top_k: int = 0, probabilities: dict | None = None) -> dict:
    """The patches as a GeoJSON ``FeatureCollection`` that QuPath imports (File > Import objects).

    Each patch is a square ``Polygon`` in level-0 pixel coordinates (QuPath's image coordinates), a
    ``detection`` object with measurements ``attention`` (raw weight), ``attention_relative`` (``N x a``)
    and ``attention_rank`` (1 = most attended); the ``top_k`` most attended are classified
    ``"Top attention"`` so they stand out. Colour detections by a measurement in QuPath to see the map.
    """
    att = np.asarray(attention, dtype=np.float64).ravel()
    if att.size != len(grid):
        raise ValueError(f"{att.size} attention weights for {len(grid)} patches")
    rel = att * att.size
    order = np.argsort(-att, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(1, att.size + 1)
    side = grid.footprint
    feats = []
    for i in range(att.size):
        y, x = float(grid.coords[i, 0]), float(grid.coords[i, 1])
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        props: dict[str, Any] = {
            "objectType": "detection",
            "name": f"patch {i}",
            "measurements": {"attention": float(att[i]), "attention_relative": float(rel[i]),
                             "attention_rank": int(rank[i]), "tissue_fraction": float(grid.tissue_fraction[i])},
        }
        if top_k and rank[i] <= top_k:
            props["classification"] = {"name": "Top attention", "color": [255, 0, 0]}
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    out = {"type": "FeatureCollection", "features": feats,
           "properties": {"slide": grid.path, "patch_size_level0": side, "mpp": grid.mpp}}
    if probabilities:
        out["properties"]["probabilities"] = {str(k): float(v) for k, v in probabilities.items()}
    return out


def write_geojson(content: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, separators=(",", ":"))
    return path


def top_patch_mosaic(patches: np.ndarray, attention: np.ndarray, n_patches: int, cols: int = 4,
                     gap: int = 4) -> np.ndarray:
    """A mosaic of patches ``(k, 3, P, P)`` uint8, most attended first, each labelled with its rank and
    relative attention ``N x a``."""
    from PIL import Image, ImageDraw

    k, _, p, _ = patches.shape
    cols = max(1, min(cols, k))
    rows = -(-k // cols)
    label_h = 12
    canvas = np.full((rows * (p + label_h + gap) + gap, cols * (p + gap) + gap, 3), 255, np.uint8)
    for i in range(k):
        r, c = divmod(i, cols)
        y, x = gap + r * (p + label_h + gap) + label_h, gap + c * (p + gap)
        canvas[y:y + p, x:x + p] = np.moveaxis(patches[i], 0, -1)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for i in range(k):
        r, c = divmod(i, cols)
        draw.text((gap + c * (p + gap), gap + r * (p + label_h + gap)),
                  f"#{i + 1} {float(attention[i]) * n_patches:.1f}x", fill=(0, 0, 0))
    return np.asarray(img)
