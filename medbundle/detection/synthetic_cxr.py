"""Synthetic chest radiographs with lesion boxes, written in the NODE21 and VinDr-CXR layouts.

No public chest X-ray data can be downloaded here, so these generators write what the adapters of
:mod:`medbundle.detection.cxr_datasets` read, in the datasets' own layouts:

- :func:`generate_node21`: ``root/metadata.csv`` (``img_name,x,y,width,height,label``; one row per nodule, ``x, y``
  the box's top-left pixel, integers; one row ``label 0`` with a zero box for an image without nodules) and
  ``root/images/c0001.mha`` ...: 2D MetaImage, uint16 in the 12-bit range 0-4095 (an assumption: the real
  preprocessed files' value range is not documented), ``ElementSpacing`` = ``field_of_view_mm / image_size``
  (370 mm: 0.36 mm at 1024 px, the scale of NODE21's 1024 x 1024 lung-field crops);
- :func:`generate_vindr`: ``root/train.csv`` with the Kaggle columns ``image_id,class_name,class_id,rad_id,x_min,
  y_min,x_max,y_max`` (rows in random order; each image read by ``n_readers`` of ``R1`` .. ``R17``, every reader
  drawing their own jittered box of each finding they see, some readers missing a finding, and a reader who sees
  nothing writing one "No finding" row, class_id 14, empty box) and ``root/train/<image_id>.dicom``: single-frame DX
  DICOM written with pydicom, 12 bits stored in 16, MONOCHROME2 or (one image in five) MONOCHROME1, with
  PixelSpacing, ImagerPixelSpacing or both (``field_of_view_mm / size``, 400 mm), some with a window that maps the
  12-bit range linearly. ``image_id`` is 32 hex digits, as VinDr's.

Image content: the frontal chest anatomy of :func:`medbundle.phantoms.chest_radiograph_anatomy` (body, darker lung
fields, mediastinum, rib stripes), shifted by up to 4 % of the size, a heart shadow, smooth and fine noise and a
global contrast/brightness jitter. Lesions only add attenuation, each over a compact footprint whose bounding box is
the true box (so every pixel a lesion changes lies inside its box):

- nodule (NODE21, VinDr "Nodule/Mass"): a faint round opacity with soft edges, ``amp * (1 - (r / R)^2)^0.75``, in a
  lung field and not overlapping another. NODE21 diameters are drawn log-uniformly on 6-30 mm (median 13 mm), the
  range of the NODE21 annotation protocol ("6 mm to 30 mm", node21.grand-challenge.org/Annotation_Process); no
  published histogram of the boxes was found. VinDr "Nodule/Mass" spans nodules and masses: 8-45 mm;
- "Cardiomegaly": the heart shadow (centre-left of the mediastinum as displayed, at the lung bases) widened 1.35-1.5
  times: cardiothoracic ratio about 0.55-0.65 instead of about 0.4; the box is the enlarged heart;
- "Pleural effusion": an opacity filling one lung base below a meniscus that rises laterally (blunting the
  costophrenic angle), about a quarter of the image wide and a fifth high;
- "Aortic enlargement": a bright round bulge of the aortic knob at the upper left mediastinal border (patient's
  left = image right), 8-11 % of the image across.

Random streams: image ``i`` draws its background from ``default_rng([seed, i, 0])`` and its lesions from
``default_rng([seed, i, 1])`` (VinDr readers from ``[seed, i, 2]``), so the same seed with ``positive_fraction=0`` /
``prevalence=0`` writes the same images without lesions: their difference is exactly the lesions. Sizes in pixels
follow ``image_size``; everything is a function of the arguments (same seed, same bytes).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medbundle.detection.cxr_datasets import VINDR_CLASSES, VINDR_NO_FINDING, VINDR_NO_FINDING_ID
from medbundle.io.dicom_write import ds_string, new_dataset, save_dicom, set_synthetic_patient
from medbundle.phantoms import CXR_LUNG_FIELDS, chest_radiograph_anatomy

__all__ = [
    "NODE21_DIAMETER_RANGE_MM",
    "VINDR_SYNTHETIC_CLASSES",
    "generate_node21",
    "generate_vindr",
    "vindr_image_id",
]

#: Nodule diameters of the NODE21 annotation protocol (mm).
NODE21_DIAMETER_RANGE_MM: tuple[float, float] = (6.0, 30.0)
#: The VinDr-CXR findings :func:`generate_vindr` can draw.
VINDR_SYNTHETIC_CLASSES: tuple[str, ...] = ("Aortic enlargement", "Cardiomegaly", "Nodule/Mass", "Pleural effusion")

_MAX_SHIFT = 0.04
_LEVELS = 16.0  # 8-bit-like grey level -> 12-bit stored value
_DX_PRESENTATION_UID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_HEART = (0.535, 0.665)  # heart centre, fractions of the side (x = column, y = row)
_LUNG_DARKENING = 70.0  # how much darker chest_radiograph_anatomy draws the lung fields than the body


# ----------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------
class _Canvas:
    """An image being drawn: pixels (rows, cols) float32 and the map from anatomy fractions to pixel coordinates."""

    def __init__(self, img: np.ndarray, side: int, off_x: float, off_y: float) -> None:
        self.img, self.side, self.off_x, self.off_y = img, side, off_x, off_y

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """Pixel coordinates (corner convention) of the anatomy point at fractions ``(fx, fy)`` of the side."""
        return fx * self.side - self.off_x, fy * self.side - self.off_y

    def paint(
        self, x_lo: float, x_hi: float, y_lo: float, y_hi: float, field: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ) -> list[float] | None:
        """Add ``field(x, y)`` (pixel-centre coordinates, broadcast) over the window; box of where it is > 0.

        Returns ``[x_min, y_min, x_max, y_max]`` (pixel corners) of the pixels the field changed, or None.
        """
        rows, cols = self.img.shape
        c0, c1 = max(int(math.floor(x_lo)), 0), min(int(math.ceil(x_hi)) + 1, cols)
        r0, r1 = max(int(math.floor(y_lo)), 0), min(int(math.ceil(y_hi)) + 1, rows)
        if c1 <= c0 or r1 <= r0:
            return None
        x = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
        y = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
        f = np.asarray(field(x, y), dtype=np.float64)
        f = np.where(f > 0, f, 0.0)
        if not np.any(f > 0):
            return None
        self.img[r0:r1, c0:c1] += f.astype(np.float32)
        rr, cc = np.nonzero(f > 0)
        return [float(c0 + cc.min()), float(r0 + rr.min()), float(c0 + cc.max() + 1), float(r0 + rr.max() + 1)]


def _shape(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        rows = cols = int(image_size)
    else:
        rows, cols = (int(v) for v in image_size)
    if rows < 32 or cols < 32:
        raise ValueError(f"image_size must be at least 32 x 32 pixels, got {image_size}.")
    return rows, cols


_TEMPLATES: dict[int, np.ndarray] = {}


def _template(side: int) -> np.ndarray:
    if side not in _TEMPLATES:
        if len(_TEMPLATES) > 4:
            _TEMPLATES.clear()
        _TEMPLATES[side] = chest_radiograph_anatomy(side, int(np.ceil(_MAX_SHIFT * side)))
    return _TEMPLATES[side]


def _background(
    image_size: int | Sequence[int], rng: np.random.Generator
) -> tuple[_Canvas, dict[str, Any]]:
    """A chest background on a canvas, before noise: the anatomy, shifted, cropped to ``image_size`` (rows, cols).

    Returns the canvas (``canvas.img`` float32 grey levels ~0-255, bright = attenuating; ``canvas.at(fx, fy)`` maps
    anatomy fractions to pixels) and the finishing draws: ``{"smooth": (rows, cols) noise, "fine": noise,
    "contrast", "brightness", "heart": (cx, cy, rx, ry, amplitude)}`` that :func:`_finish` applies. Every draw
    comes from ``rng`` in a fixed order, whatever is painted afterwards.
    """
    rows, cols = _shape(image_size)
    side = max(rows, cols)
    pad = int(np.ceil(_MAX_SHIFT * side))
    sx, sy = (int(v) for v in rng.integers(-pad, pad + 1, size=2))
    ox, oy = (side - cols) // 2, (side - rows) // 2
    tmpl = _template(side)
    img = tmpl[pad + sy + oy : pad + sy + oy + rows, pad + sx + ox : pad + sx + ox + cols].copy()
    canvas = _Canvas(img, side, sx + ox, sy + oy)
    coarse = rng.normal(0.0, 1.0, size=(8, 8)).astype(np.float32)
    smooth = 7.0 * np.asarray(Image.fromarray(coarse).resize((cols, rows), Image.BICUBIC), dtype=np.float32)
    fine = rng.normal(0.0, 3.0, size=(rows, cols)).astype(np.float32)
    hx, hy = canvas.at(_HEART[0] + rng.uniform(-0.01, 0.01), _HEART[1] + rng.uniform(-0.01, 0.01))
    hrx = rng.uniform(0.125, 0.14) * side
    heart = (hx, hy, hrx, hrx * rng.uniform(0.72, 0.8), rng.uniform(32.0, 40.0))
    draws = {
        "smooth": smooth,
        "fine": fine,
        "contrast": rng.uniform(0.9, 1.1),
        "brightness": rng.uniform(-10.0, 10.0),
        "heart": heart,
    }
    return canvas, draws


def _ellipse_field(cx: float, cy: float, rx: float, ry: float, amp: float, edge: float = 0.25):
    def field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return amp * np.clip((1.0 - d) / edge, 0.0, 1.0)

    return field


def _paint_heart(canvas: _Canvas, heart: tuple[float, ...], scale: tuple[float, float] = (1.0, 1.0)) -> list[float]:
    cx, cy, rx, ry, amp = heart
    rx, ry = rx * scale[0], ry * scale[1]
    box = canvas.paint(cx - rx, cx + rx, cy - ry, cy + ry, _ellipse_field(cx, cy, rx, ry, amp))
    assert box is not None
    return box


def _round_field(cx: float, cy: float, radius: float, amp: float, power: float):
    def field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        q = 1.0 - ((x - cx) ** 2 + (y - cy) ** 2) / radius**2
        return amp * np.clip(q, 0.0, None) ** power

    return field


def _paint_round(canvas: _Canvas, cx: float, cy: float, radius: float, amp: float, power: float) -> list[float] | None:
    return canvas.paint(cx - radius, cx + radius, cy - radius, cy + radius, _round_field(cx, cy, radius, amp, power))


def _lung_point(
    canvas: _Canvas, rng: np.random.Generator, radius: float, taken: list[tuple[float, float, float]]
) -> tuple[float, float] | None:
    """A nodule centre in a lung field, at least ``radius`` inside its full-darkening zone and clear of ``taken``."""
    for _ in range(50):
        lcx, lcy, lrx, lry = CXR_LUNG_FIELDS[int(rng.integers(0, 2))]
        cx, cy = canvas.at(lcx, lcy)
        ax = max(0.75 * lrx * canvas.side - radius, 1.0)
        ay = max(0.75 * lry * canvas.side - radius, 1.0)
        t, rr = rng.uniform(0, 2 * np.pi), math.sqrt(rng.random())
        px, py = cx + ax * rr * math.cos(t), cy + ay * rr * math.sin(t)
        rows, cols = canvas.img.shape
        if not (radius <= px <= cols - radius and radius <= py <= rows - radius):
            continue
        if all(math.hypot(px - qx, py - qy) > radius + qr + 2.0 for qx, qy, qr in taken):
            return px, py
    return None


def _finish(canvas: _Canvas, draws: dict[str, Any]) -> np.ndarray:
    """Noise and the global jitter; the 12-bit stored values (uint16, 0-4095)."""
    img = canvas.img + draws["smooth"] + draws["fine"]
    img = (img - 100.0) * draws["contrast"] + 100.0 + draws["brightness"]
    return np.clip(np.rint(img * _LEVELS), 0, 4095).astype(np.uint16)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ----------------------------------------------------------------------------------------------------------
# NODE21
# ----------------------------------------------------------------------------------------------------------
def _write_mha_2d(path: Path, pixels: np.ndarray, spacing: float) -> None:
    """A 2D MetaImage ``.mha`` (header + data in one file): ``pixels`` (rows, cols) uint16, x (columns) fastest."""
    rows, cols = pixels.shape
    sp = np.format_float_positional(float(spacing), trim="-")
    header = (
        "ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        "TransformMatrix = 1 0 0 1\nOffset = 0 0\nCenterOfRotation = 0 0\n"
        f"ElementSpacing = {sp} {sp}\nDimSize = {cols} {rows}\nElementType = MET_USHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode("ascii") + np.ascontiguousarray(pixels, dtype="<u2").tobytes())


def _check_pair(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low < lo <= hi:
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max, got {tuple(value)}.")
    return lo, hi


def generate_node21(
    root: str | os.PathLike,
    n_images: int,
    image_size: int = 1024,
    positive_fraction: float = 0.25,
    seed: int = 0,
    diameter_range_mm: Sequence[float] = NODE21_DIAMETER_RANGE_MM,
    nodule_contrast: Sequence[float] = (18.0, 35.0),
    max_nodules: int = 3,
    field_of_view_mm: float = 370.0,
) -> dict[str, Any]:
    """Write a synthetic NODE21 training set (``metadata.csv`` + ``images/*.mha``) under ``root``.

    Args:
        root: Output folder (created); files of the same names are overwritten.
        n_images: Number of images, ``c0001.mha`` ... (NODE21's public set has 4,882).
        image_size: Side in pixels (NODE21's preprocessed images are 1024; the demo uses 256).
        positive_fraction: Share of images with nodules (exactly ``round(positive_fraction * n_images)``; NODE21: 1,134
            of 4,882, 23 %). A positive image has 1, 2 or 3 nodules (probabilities 0.75, 0.2, 0.05: 1.3 per image,
            as NODE21's 1,476 nodules on 1,134 images), at most ``max_nodules``.
        seed: Seed of everything.
        diameter_range_mm: Nodule diameters, drawn log-uniformly (default 6-30 mm, the NODE21 protocol's range).
        nodule_contrast: Peak added grey level of a nodule (on the ~0-255 scale of the background; noise sd ~3 fine +
            ~7 smooth): faint but visible.
        max_nodules: At most this many nodules per image (NODE21 excluded images with more than three).
        field_of_view_mm: Image side in mm; ``ElementSpacing`` = ``field_of_view_mm / image_size`` on both axes.

    Returns:
        dict: ``root``, ``n_images``, ``n_positive``, ``n_nodules``, ``image_size``, ``spacing_mm``,
        ``diameters_mm`` (list), ``lesions``: ``{image_id: [{"box": [x_min, y_min, x_max, y_max] pixels,
        "diameter_mm": float}]}`` for the positive images.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}.")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}.")
    if max_nodules < 1:
        raise ValueError(f"max_nodules must be >= 1, got {max_nodules}.")
    d_lo, d_hi = _check_pair("diameter_range_mm", diameter_range_mm)
    c_lo, c_hi = _check_pair("nodule_contrast", nodule_contrast)
    if not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be one int (NODE21 images are square), got {image_size!r}.")
    size = _shape(image_size)[0]
    spacing = float(field_of_view_mm) / size
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng([int(seed), 21])
    order = master.permutation(n_images)
    positive = np.zeros(n_images, dtype=bool)
    positive[order[: int(round(float(positive_fraction) * n_images))]] = True

    rows_out: list[list[Any]] = []
    lesions: dict[str, list[dict[str, Any]]] = {}
    diameters: list[float] = []
    for i in range(n_images):
        name = f"c{i + 1:04d}"
        canvas, draws = _background(size, np.random.default_rng([int(seed), i, 0]))
        _paint_heart(canvas, draws["heart"])
        found: list[dict[str, Any]] = []
        if positive[i]:
            rng = np.random.default_rng([int(seed), i, 1])
            n_nod = min(int(rng.choice([1, 2, 3], p=[0.75, 0.2, 0.05])), int(max_nodules))
            taken: list[tuple[float, float, float]] = []
            for _ in range(n_nod):
                d_mm = _log_uniform(rng, d_lo, d_hi)
                radius = max(0.5 * d_mm / spacing, 1.0)
                amp = rng.uniform(c_lo, c_hi)
                pt = _lung_point(canvas, rng, radius, taken)
                if pt is None:
                    continue
                box = _paint_round(canvas, pt[0], pt[1], radius, amp, 0.75)
                if box is None:
                    continue
                taken.append((pt[0], pt[1], radius))
                found.append({"box": box, "diameter_mm": d_mm})
                diameters.append(d_mm)
        _write_mha_2d(root / "images" / f"{name}.mha", _finish(canvas, draws), spacing)
        if found:
            lesions[name] = found
            for f in found:
                x0, y0, x1, y1 = (int(v) for v in f["box"])
                rows_out.append([f"{name}.mha", x0, y0, x1 - x0, y1 - y0, 1])
        else:
            rows_out.append([f"{name}.mha", 0, 0, 0, 0, 0])
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["img_name", "x", "y", "width", "height", "label"])
        w.writerows(rows_out)
    return {
        "root": str(root),
        "n_images": int(n_images),
        "n_positive": len(lesions),
        "n_nodules": len(diameters),
        "image_size": size,
        "spacing_mm": spacing,
        "diameters_mm": diameters,
        "lesions": lesions,
    }


# ----------------------------------------------------------------------------------------------------------
# VinDr-CXR
# ----------------------------------------------------------------------------------------------------------
def vindr_image_id(seed: int, index: int) -> str:
    """A deterministic VinDr-like image id: 32 hex digits."""
    return hashlib.md5(f"medbundle-vindr-{int(seed)}-{int(index)}".encode()).hexdigest()


def _write_vindr_dicom(
    path: Path, stored: np.ndarray, spacing: float, index: int, monochrome1: bool, uid_seed: str
) -> None:
    """One DX DICOM file: 12 bits stored in 16, unsigned; the displayed picture is ``stored`` (bright = dense)."""
    from pydicom.uid import generate_uid

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, tag])

    ds = new_dataset(_DX_PRESENTATION_UID, uid("sop"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    set_synthetic_patient(ds, f"SYN{index:08d}", f"{index:08d}")
    ds.ViewPosition = "PA"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    sp = [ds_string(spacing), ds_string(spacing)]
    if index % 3 != 2:
        ds.PixelSpacing = sp
    if index % 3 != 1:
        ds.ImagerPixelSpacing = sp
    if index % 4 == 1:  # a window mapping 0..4095 linearly onto the display range (PS3.3 C.11.2.1.2)
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = ds_string(2048.0), ds_string(4096.0), "LINEAR"
    pixels = (4095 - stored) if monochrome1 else stored
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    save_dicom(ds, path)


def _jittered(box: list[float], rng: np.random.Generator, jitter: float, rows: int, cols: int) -> list[float]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0.0, jitter, size=4) * np.array([w, h, w, h])
    a, b, c, e = (float(np.rint(v)) for v in (x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]))
    a, c = sorted((min(max(a, 0.0), cols - 1.0), min(max(c, 1.0), float(cols))))
    b, e = sorted((min(max(b, 0.0), rows - 1.0), min(max(e, 1.0), float(rows))))
    return [a, b, max(c, a + 1.0), max(e, b + 1.0)]


def _prevalences(classes: Sequence[str], prevalence: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(prevalence, Mapping):
        unknown = set(prevalence) - set(classes)
        if unknown:
            raise ValueError(f"prevalence names classes not drawn: {sorted(unknown)}; classes are {list(classes)}.")
        out = {c: float(prevalence.get(c, 0.0)) for c in classes}
    else:
        out = {c: float(prevalence) for c in classes}
    for c, p in out.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prevalence of {c!r} must be in [0, 1], got {p}.")
    return out


def generate_vindr(
    root: str | os.PathLike,
    n_images: int,
    image_size: int | Sequence[int] = 1024,
    n_readers: int = 3,
    seed: int = 0,
    classes: Sequence[str] = VINDR_SYNTHETIC_CLASSES,
    prevalence: float | Mapping[str, float] = 0.2,
    miss_rate: float = 0.2,
    jitter: float = 0.05,
    n_radiologists: int = 17,
    field_of_view_mm: float = 400.0,
) -> dict[str, Any]:
    """Write a synthetic VinDr-CXR training set (Kaggle layout: ``train.csv`` + ``train/*.dicom``) under ``root``.

    Args:
        root: Output folder (created); files of the same names are overwritten.
        n_images: Number of images.
        image_size: ``size`` (square) or ``(rows, cols)`` in pixels; VinDr's originals are ~2000-3000 px, the demo
            uses 256.
        n_readers: Radiologists per image (VinDr-CXR training set: 3), drawn from ``R1`` .. ``R<n_radiologists>``.
        seed: Seed of everything.
        classes: Findings to draw, a subset of :data:`VINDR_SYNTHETIC_CLASSES`; ``class_id`` is VinDr's.
        prevalence: Share of images with each finding (one value, or per class): exactly ``round(p * n_images)``
            images per class, drawn independently, so an image can have several findings.
        miss_rate: Chance that a reader does not mark a finding (at least one reader marks each).
        jitter: Standard deviation of each reader's box corners, as a fraction of the true box's width/height.
        n_radiologists: Size of the reader pool.
        field_of_view_mm: The longer image side in mm; PixelSpacing = ``field_of_view_mm / max(rows, cols)``.

    Returns:
        dict: ``root``, ``n_images``, ``image_size`` ``[rows, cols]``, ``spacing_mm``, ``n_readers``, ``n_rows``,
        ``n_monochrome1``, ``findings`` ``{class_name: images}``, ``lesions``: ``{image_id: [{"class_name",
        "class_id", "box": [x_min, y_min, x_max, y_max] true pixels}]}``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}.")
    if not 1 <= int(n_readers) <= int(n_radiologists):
        raise ValueError(f"n_readers must be in 1..n_radiologists ({n_radiologists}), got {n_readers}.")
    if not 0.0 <= float(miss_rate) < 1.0:
        raise ValueError(f"miss_rate must be in [0, 1), got {miss_rate}.")
    classes = list(classes)
    unknown = [c for c in classes if c not in VINDR_SYNTHETIC_CLASSES]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {list(VINDR_SYNTHETIC_CLASSES)}, got {classes}.")
    prev = _prevalences(classes, prevalence)
    rows, cols = _shape(image_size)
    spacing = float(field_of_view_mm) / max(rows, cols)
    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng([int(seed), 22])
    has = {c: np.zeros(n_images, dtype=bool) for c in VINDR_SYNTHETIC_CLASSES}
    for c in VINDR_SYNTHETIC_CLASSES:  # fixed order: one class's draw does not depend on which classes are asked for
        perm = master.permutation(n_images)
        if c in prev:
            has[c][perm[: int(round(prev[c] * n_images))]] = True

    csv_rows: list[list[str]] = []
    lesions: dict[str, list[dict[str, Any]]] = {}
    n_mono1 = 0
    for i in range(n_images):
        image_id = vindr_image_id(seed, i)
        canvas, draws = _background((rows, cols), np.random.default_rng([int(seed), i, 0]))
        rng = np.random.default_rng([int(seed), i, 1])
        found: list[dict[str, Any]] = []

        def add(name: str, box: list[float] | None, found: list[dict[str, Any]] = found) -> None:
            if box is not None:
                found.append({"class_name": name, "class_id": VINDR_CLASSES.index(name), "box": box})

        if has["Cardiomegaly"][i]:
            add("Cardiomegaly", _paint_heart(canvas, draws["heart"], (rng.uniform(1.35, 1.5), rng.uniform(1.12, 1.25))))
        else:
            _paint_heart(canvas, draws["heart"])
        if has["Aortic enlargement"][i]:
            ax, ay = canvas.at(0.5 + rng.uniform(0.065, 0.085), rng.uniform(0.26, 0.31))
            add("Aortic enlargement", _paint_round(canvas, ax, ay, rng.uniform(0.04, 0.055) * canvas.side,
                                                   rng.uniform(30.0, 40.0), 0.5))
        if has["Pleural effusion"][i]:
            add("Pleural effusion", _paint_effusion(canvas, rng))
        if has["Nodule/Mass"][i]:
            taken: list[tuple[float, float, float]] = []
            for _ in range(int(rng.choice([1, 2], p=[0.8, 0.2]))):
                radius = max(0.5 * _log_uniform(rng, 8.0, 45.0) / spacing, 1.0)
                amp = rng.uniform(25.0, 45.0)
                pt = _lung_point(canvas, rng, radius, taken)
                if pt is not None:
                    taken.append((pt[0], pt[1], radius))
                    add("Nodule/Mass", _paint_round(canvas, pt[0], pt[1], radius, amp, 0.75))

        mono1 = i % 5 == 2
        n_mono1 += int(mono1)
        _write_vindr_dicom(root / "train" / f"{image_id}.dicom", _finish(canvas, draws), spacing, i, mono1,
                           f"medbundle-vindr-{seed}-{i}")
        if found:
            lesions[image_id] = found

        read = np.random.default_rng([int(seed), i, 2])
        rads = [f"R{int(k) + 1}" for k in read.choice(int(n_radiologists), size=int(n_readers), replace=False)]
        marks: dict[str, list[tuple[dict[str, Any], list[float]]]] = {r: [] for r in rads}
        for f in found:
            seen = read.random(len(rads)) >= float(miss_rate)
            if not seen.any():
                seen[int(read.integers(0, len(rads)))] = True
            for r, s in zip(rads, seen):
                if s:
                    marks[r].append((f, _jittered(f["box"], read, float(jitter), rows, cols)))
        for r in rads:
            if not marks[r]:
                csv_rows.append([image_id, VINDR_NO_FINDING, str(VINDR_NO_FINDING_ID), r, "", "", "", ""])
            for f, b in marks[r]:
                csv_rows.append([image_id, f["class_name"], str(f["class_id"]), r, *(f"{v:.1f}" for v in b)])

    order = master.permutation(len(csv_rows))
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        w.writerows(csv_rows[k] for k in order.tolist())
    return {
        "root": str(root),
        "n_images": int(n_images),
        "image_size": [rows, cols],
        "spacing_mm": spacing,
        "n_readers": int(n_readers),
        "n_rows": len(csv_rows),
        "n_monochrome1": n_mono1,
        "findings": {c: int(has[c].sum()) for c in classes},
        "lesions": lesions,
    }


def _paint_effusion(canvas: _Canvas, rng: np.random.Generator) -> list[float] | None:
    """Fluid in one lung base: below a level that rises laterally (meniscus), it fills most of the lung's darkening
    (the lung field's own soft profile, so no rim appears at the lung edge)."""
    side = int(rng.integers(0, 2))
    lcx, lcy, lrx, lry = CXR_LUNG_FIELDS[side]
    cx, cy = canvas.at(lcx, lcy)
    rx, ry = lrx * canvas.side, lry * canvas.side
    level = cy + ry * rng.uniform(0.45, 0.65)
    rise = 0.3 * ry * rng.uniform(0.8, 1.2)
    amp = _LUNG_DARKENING * rng.uniform(0.75, 0.95)
    lateral = -1.0 if side == 0 else 1.0  # image-left lung: lateral is towards x = 0

    def field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        top = level - rise * np.clip(lateral * (x - cx) / rx, 0.0, 1.0) ** 2
        alpha = np.clip((y - top) / (0.06 * ry), 0.0, 1.0) * np.clip((1.0 - d) / 0.3, 0.0, 1.0)
        return amp * alpha

    return canvas.paint(cx - rx, cx + rx, level - rise - 1.0, cy + ry, field)
