"""Synthetic chest radiographs written in the NIH ChestX-ray14 on-disk layout.

No public chest X-ray data can be downloaded here, so this generator writes files that the
:mod:`medbundle.xray.adapters` adapter, the MONAI readers and the chest X-ray bundle read exactly as they
read the real release:

- ``root/images/<8-digit patient>_<3-digit follow-up>.png``: 8-bit grayscale, ``size x size``;
- ``root/Data_Entry_2017.csv`` with the real header (comma-containing bracketed names, and an empty
  trailing field on every row, as in some copies);
- ``root/train_val_list.txt`` / ``root/test_list.txt``, split by patient (about 20 % of patients in test);
- some images stored instead as DICOM (``<stem>.dcm``, no PNG; the CSV still lists ``<stem>.png`` and the
  adapter resolves the stem), in five encodings: 12- and 16-bit stored values, MONOCHROME1 (inverted),
  RescaleSlope/Intercept (also signed pixels), with or without WindowCenter/WindowWidth (one with two
  windows, of which the first is the one to apply). :class:`medbundle.io.dicom.XrayDicomReader` decodes
  each of them back to the intended 8-bit picture (within 1 grey level).

The learnable signal: a chest-like background (body, two darker lung fields, brighter mediastinum, faint
rib stripes, smooth noise, global brightness/contrast jitter, whole-anatomy shift of up to 4 % of the size)
and, for each of the 14 findings present, a clearly visible finding-specific pattern (disc, ring, bar,
cross, checker, stripes, ...; radius 5.5-7 % of the size) in a finding-specific cell of a 4 x 4 grid over
the chest, with position jitter of up to 2.5 % and amplitude jitter of +-20 %. Patterns are several pixels
wide at 128 px, so they survive downsampling.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medbundle.io.dicom_write import ds_string, new_dataset, save_dicom, set_synthetic_patient
from medbundle.phantoms import chest_radiograph_anatomy
from medbundle.xray.adapters import CHESTXRAY14_FINDINGS

__all__ = [
    "DEFAULT_PREVALENCES",
    "CHESTXRAY14_HEADER",
    "DICOM_VARIANTS",
    "generate_chestxray14",
    "render_chest_image",
    "write_xray_dicom",
]

#: Prevalences of the 14 findings, close to those of the NIH release (from under 1 % to about 20 %).
DEFAULT_PREVALENCES: dict[str, float] = {
    "Atelectasis": 0.11,
    "Cardiomegaly": 0.025,
    "Effusion": 0.13,
    "Infiltration": 0.20,
    "Mass": 0.05,
    "Nodule": 0.06,
    "Pneumonia": 0.012,
    "Pneumothorax": 0.05,
    "Consolidation": 0.04,
    "Edema": 0.02,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.03,
    "Hernia": 0.008,
}

#: The header line of ``Data_Entry_2017.csv`` exactly as NIH wrote it (not CSV-quoted).
CHESTXRAY14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)

#: DICOM encodings used by :func:`write_xray_dicom` (index -> short description).
DICOM_VARIANTS: dict[int, str] = {
    0: "MONOCHROME2, 12-bit unsigned, window applied",
    1: "MONOCHROME1 (inverted), 16-bit unsigned, window applied",
    2: "MONOCHROME2, 12-bit unsigned, RescaleSlope 2 / Intercept -1024, two windows (first applies)",
    3: "MONOCHROME1 (inverted), 12-bit unsigned, no window (full stored range)",
    4: "MONOCHROME2, 16-bit signed, RescaleSlope 0.5 / Intercept 100, no window (full stored range)",
}

_GRID = (0.23, 0.41, 0.59, 0.77)  # centres of the 4 x 4 grid, as fractions of the size
_CELLS = [(r, c) for r in range(4) for c in range(4) if (r, c) not in ((0, 0), (0, 3))]  # 14 cells
_RADIUS = (0.06, 0.065, 0.07, 0.06, 0.06, 0.065, 0.065, 0.07, 0.06, 0.055, 0.055, 0.065, 0.065, 0.065)
_AMPLITUDE = 60.0  # grey levels before the +-20 % jitter
_MAX_SHIFT = 0.04
_POS_JITTER = 0.025
_DX_PRESENTATION_UID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# ----------------------------------------------------------------------------------------------------------
# image synthesis
# ----------------------------------------------------------------------------------------------------------
def _pattern(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Finding ``k``'s pattern on local coordinates (u, v) in units of its radius; values in [-1, 1]."""
    d = np.sqrt(u**2 + v**2)
    inside_sq = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if k == 0:  # Atelectasis: bright disc
        p = d <= 1.0
    elif k == 1:  # Cardiomegaly: dark disc
        p = -1.0 * (d <= 1.0)
    elif k == 2:  # Effusion: bright ring
        p = np.abs(d - 0.7) <= 0.3
    elif k == 3:  # Infiltration: horizontal bar
        p = (np.abs(v) <= 0.45) & (np.abs(u) <= 1.0)
    elif k == 4:  # Mass: vertical bar
        p = (np.abs(u) <= 0.45) & (np.abs(v) <= 1.0)
    elif k == 5:  # Nodule: plus sign
        p = ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & inside_sq
    elif k == 6:  # Pneumonia: diagonal cross
        p = ((np.abs(u - v) <= 0.4) | (np.abs(u + v) <= 0.4)) & (d <= 1.0)
    elif k == 7:  # Pneumothorax: dark ring
        p = -1.0 * (np.abs(d - 0.7) <= 0.3)
    elif k == 8:  # Consolidation: 4 x 4 checkerboard, bright/dark
        p = np.where((np.floor(2 * u) + np.floor(2 * v)) % 2 == 0, 1.0, -1.0) * inside_sq
    elif k == 9:  # Edema: bright square
        p = inside_sq
    elif k == 10:  # Emphysema: dark square
        p = -1.0 * inside_sq
    elif k == 11:  # Fibrosis: three horizontal stripes
        p = (np.floor(1.5 * (v + 1.0)) % 2 == 0) & inside_sq
    elif k == 12:  # Pleural_Thickening: bright triangle (apex up)
        p = (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    else:  # Hernia: bull's eye, bright annulus with dark centre
        p = np.where(d <= 0.45, -1.0, 1.0) * (d <= 1.0)
    return np.asarray(p, dtype=np.float32)


def render_chest_image(
    labels: Sequence[float], size: int = 256, rng: np.random.Generator | None = None, template: Any = None
) -> np.ndarray:
    """Draw one synthetic chest radiograph.

    Args:
        labels: 14 values over :data:`~medbundle.xray.adapters.CHESTXRAY14_FINDINGS`; a finding is drawn where its value
            is > 0.5.
        size: Output side in pixels.
        rng: Random generator for the jitters and noise (a fresh default one if None).
        template: Cached :func:`medbundle.phantoms.chest_radiograph_anatomy` output for this ``size`` with
            ``pad = ceil(0.04 size)`` (speeds up batches); built if None.

    Returns:
        np.ndarray, uint8, shape (size, size) as (rows, columns), grey levels 0-255 (bright = attenuating).
    """
    rng = np.random.default_rng() if rng is None else rng
    pad = int(np.ceil(_MAX_SHIFT * size))
    tmpl = chest_radiograph_anatomy(size, pad) if template is None else template
    sx, sy = rng.integers(-pad, pad + 1, size=2)
    img = tmpl[pad + sy : pad + sy + size, pad + sx : pad + sx + size].copy()

    coarse = rng.normal(0.0, 1.0, size=(8, 8)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    img += 7.0 * smooth + rng.normal(0.0, 3.0, size=(size, size)).astype(np.float32)

    # jitters are drawn for all 14 findings whether present or not, so the background (and every other
    # pattern) of an image does not depend on its labels: two label vectors with one rng seed differ only
    # in the patterns of the findings that differ
    jitter = rng.uniform(-_POS_JITTER, _POS_JITTER, size=(len(_CELLS), 2))
    amps = _AMPLITUDE * rng.uniform(0.8, 1.2, size=len(_CELLS))
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-10.0, 10.0)
    for k, present in enumerate(labels):
        if present <= 0.5:
            continue
        row, col = _CELLS[k]
        cy = (_GRID[row] + jitter[k, 0]) * size + sy
        cx = (_GRID[col] + jitter[k, 1]) * size + sx
        r = _RADIUS[k] * size
        amp = amps[k]
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
        v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / r
        u = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / r
        img[y0:y1, x0:x1] += amp * _pattern(k, u, v)

    img = (img - 100.0) * contrast + 100.0 + brightness
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# DICOM writing (pydicom 2.4 and 3.x)
# ----------------------------------------------------------------------------------------------------------
def write_xray_dicom(
    path: str | os.PathLike,
    image: np.ndarray,
    variant: int = 0,
    patient_number: int = 1,
    pixel_spacing: float = 0.143,
    view_position: str = "PA",
    uid_seed: str | None = None,
) -> Path:
    """Write an 8-bit picture as a single-frame DX DICOM file whose displayed image is that picture.

    Args:
        path: Output ``.dcm`` path (parent folders must exist).
        image: uint8 array, shape (rows, columns): the picture as it should be displayed (bright = attenuating).
        variant: Encoding, a key of :data:`DICOM_VARIANTS`. Windowed variants use a linear window (PS3.3 C.11.2.1.2)
            that maps the stored range back onto 0-255 exactly; unwindowed ones fill the whole range the stored bits can
            hold.
        patient_number: Makes the synthetic identifiers ``PatientID = "SYN%08d"`` and ``PatientName =
            "Synthetic^%08d"``.
        pixel_spacing: ImagerPixelSpacing and PixelSpacing in mm (both axes).
        uid_seed: Text that makes the Study/Series/SOP Instance UIDs deterministic (random UIDs if None).

    Returns:
        The path written. Encoding is Explicit VR Little Endian with a 128-byte preamble and file meta.
    """
    from pydicom.uid import generate_uid

    if variant not in DICOM_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(DICOM_VARIANTS)}, got {variant}.")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"image must be a 2D uint8 array, got {img.dtype} with shape {img.shape}.")
    x = img.astype(np.float64)

    signed = False
    photometric = "MONOCHROME2"
    slope, intercept = 1.0, 0.0
    window: tuple[list[float], list[float]] | None = None
    if variant == 0:
        bits, stored = 12, x * 16.0
        window = ([2040.5], [4081.0])
    elif variant == 1:
        bits, stored, photometric = 16, (255.0 - x) * 257.0, "MONOCHROME1"
        window = ([32768.0], [65536.0])
    elif variant == 2:
        bits, stored, slope, intercept = 12, x * 16.0, 2.0, -1024.0
        window = ([3056.5, 400.0], [8161.0, 1500.0])
    elif variant == 3:
        bits, stored, photometric = 12, (255.0 - x) * (4095.0 / 255.0), "MONOCHROME1"
    else:
        bits, signed, slope, intercept = 16, True, 0.5, 100.0
        stored = x * (65535.0 / 255.0) - 32768.0
    pixels = np.rint(stored).astype("<i2" if signed else "<u2")

    def uid(tag: str) -> str:
        return generate_uid() if uid_seed is None else generate_uid(entropy_srcs=[uid_seed, tag])

    sop_uid = uid("sop")
    ds = new_dataset(_DX_PRESENTATION_UID, sop_uid)
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    set_synthetic_patient(ds, f"SYN{patient_number:08d}", f"{patient_number:08d}")
    ds.ViewPosition = view_position
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.ImagerPixelSpacing = [ds_string(pixel_spacing), ds_string(pixel_spacing)]
    ds.PixelSpacing = [ds_string(pixel_spacing), ds_string(pixel_spacing)]
    if variant in (2, 4):
        ds.RescaleSlope = ds_string(slope)
        ds.RescaleIntercept = ds_string(intercept)
        ds.RescaleType = "US"
    if window is not None:
        centers, widths = window
        ds.WindowCenter = [ds_string(c) for c in centers] if len(centers) > 1 else ds_string(centers[0])
        ds.WindowWidth = [ds_string(w) for w in widths] if len(widths) > 1 else ds_string(widths[0])
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = pixels.tobytes()

    path = save_dicom(ds, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# the data set
# ----------------------------------------------------------------------------------------------------------
def _prevalence_vector(prevalences: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    if prevalences is None:
        prevalences = DEFAULT_PREVALENCES
    if isinstance(prevalences, Mapping):
        unknown = set(prevalences) - set(CHESTXRAY14_FINDINGS)
        if unknown:
            raise ValueError(
                f"prevalences names unknown findings {sorted(unknown)}; use {CHESTXRAY14_FINDINGS}."
            )
        vec = np.array([float(prevalences.get(n, DEFAULT_PREVALENCES[n])) for n in CHESTXRAY14_FINDINGS])
    else:
        vec = np.asarray(prevalences, dtype=float)
        if vec.shape != (len(CHESTXRAY14_FINDINGS),):
            raise ValueError(f"prevalences must have 14 values, got shape {vec.shape}.")
    if np.any((vec < 0) | (vec > 1)):
        raise ValueError(f"prevalences must be in [0, 1], got {vec.tolist()}.")
    return vec


def _force_min_positives(labels: np.ndarray, rows: np.ndarray, min_pos: int, rng: np.random.Generator) -> int:
    """Make each finding positive on at least ``min_pos`` of ``rows`` (fewer only if the split is smaller);
    returns how many labels were switched on."""
    forced = 0
    for k in range(labels.shape[1]):
        have = int(labels[rows, k].sum())
        need = min(min_pos, len(rows)) - have
        if need <= 0:
            continue
        candidates = rows[labels[rows, k] == 0]
        pick = rng.choice(candidates, size=need, replace=False)
        labels[pick, k] = 1
        forced += need
    return forced


def generate_chestxray14(
    root: str | os.PathLike,
    n_patients: int = 500,
    images_per_patient: tuple[int, int] = (1, 3),
    size: int = 256,
    n_dicom: int = 20,
    seed: int = 0,
    prevalences: Mapping[str, float] | Sequence[float] | None = None,
    min_pos_per_split: int = 4,
    test_fraction: float = 0.2,
    trailing_empty_field: bool = True,
) -> dict[str, Any]:
    """Write a synthetic data set in the ChestX-ray14 layout under ``root``.

    Args:
        root: Output folder (created). Existing files of the same names are overwritten.
        n_patients: Number of patients; patient ``i`` (1-based) has images ``%08d_%03d.png`` with follow-ups 0, 1, ...
        images_per_patient: Inclusive (min, max) of images per patient, drawn uniformly.
        size: Image side in pixels (the real release is 1024).
        n_dicom: How many images (chosen at random) are written as ``<stem>.dcm`` instead of PNG, cycling over the
            encodings of :data:`DICOM_VARIANTS` (so with ``n_dicom >= 5`` every encoding occurs; about 2 in 5 are
            MONOCHROME1).
        seed: Everything (labels, splits, pixels, UIDs) is a function of the arguments; same seed, same bytes.
        prevalences: Per-finding probability (mapping by name, or 14 values in CHESTXRAY14_FINDINGS order); defaults to
            :data:`DEFAULT_PREVALENCES`. Findings are drawn independently per image.
        min_pos_per_split: After drawing, each finding is switched on in extra randomly chosen images until it has at
            least this many positives in the test split and in the train+val split, so that held-out AUROC is defined
            for every finding. This raises low prevalences somewhat on small sets; the counts are in the returned
            summary.
        test_fraction: Fraction of patients listed in ``test_list.txt``; the rest go to ``train_val_list.txt``.
        trailing_empty_field: End each CSV row (and the header) with an empty field, as some copies of the CSV do.

    Returns:
        dict with ``root`` (str), ``n_patients``, ``n_images``, ``n_dicom``, ``n_dicom_monochrome1``,
        ``n_forced_positives`` and ``positives``: ``{"train_val": {finding: count}, "test": {finding: count}}``.
    """
    if n_patients < 2:
        raise ValueError(f"n_patients must be >= 2 (one for each split), got {n_patients}.")
    lo, hi = int(images_per_patient[0]), int(images_per_patient[1])
    if not 1 <= lo <= hi:
        raise ValueError(
            f"images_per_patient must be (min, max) with 1 <= min <= max, got {images_per_patient}."
        )
    prev = _prevalence_vector(prevalences)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    counts = rng.integers(lo, hi + 1, size=n_patients)
    patient_of = np.repeat(np.arange(1, n_patients + 1), counts)
    follow_up = np.concatenate([np.arange(c) for c in counts])
    n_images = len(patient_of)
    n_test_patients = min(max(int(round(test_fraction * n_patients)), 1), n_patients - 1)
    test_patients = set((rng.permutation(n_patients)[:n_test_patients] + 1).tolist())
    is_test = np.array([p in test_patients for p in patient_of])

    labels = (rng.random((n_images, len(CHESTXRAY14_FINDINGS))) < prev).astype(np.int64)
    forced = _force_min_positives(labels, np.flatnonzero(is_test), min_pos_per_split, rng)
    forced += _force_min_positives(labels, np.flatnonzero(~is_test), min_pos_per_split, rng)

    ages = rng.integers(18, 90, size=n_patients)
    sexes = rng.choice(["M", "F"], size=n_patients)
    views = rng.choice(["PA", "AP"], size=n_images, p=[0.6, 0.4])
    dicom_idx = rng.permutation(n_images)[: min(n_dicom, n_images)]
    variant_of = {int(i): j % len(DICOM_VARIANTS) for j, i in enumerate(sorted(dicom_idx.tolist()))}
    spacing = 0.143 * 1024 / size

    template = chest_radiograph_anatomy(size, int(np.ceil(_MAX_SHIFT * size)))
    names: list[str] = []
    rows: list[list[str]] = []
    for i in range(n_images):
        pid = int(patient_of[i])
        stem = f"{pid:08d}_{int(follow_up[i]):03d}"
        names.append(stem + ".png")
        img = render_chest_image(labels[i], size, np.random.default_rng([seed, i]), template)
        if i in variant_of:
            write_xray_dicom(
                root / "images" / f"{stem}.dcm",
                img,
                variant=variant_of[i],
                patient_number=pid,
                pixel_spacing=spacing,
                view_position=str(views[i]),
                uid_seed=f"medbundle-synthetic-{seed}-{stem}",
            )
        else:
            Image.fromarray(img).save(root / "images" / f"{stem}.png", compress_level=1)
        found = [n for n, v in zip(CHESTXRAY14_FINDINGS, labels[i]) if v]
        row = [
            stem + ".png",
            "|".join(found) if found else "No Finding",
            str(int(follow_up[i])),
            str(pid),
            str(int(ages[pid - 1])),
            str(sexes[pid - 1]),
            str(views[i]),
            str(size),
            str(size),
            f"{spacing:.6g}",
            f"{spacing:.6g}",
        ]
        rows.append(row + [""] if trailing_empty_field else row)

    with open(root / "Data_Entry_2017.csv", "w", newline="", encoding="utf-8") as f:
        f.write((CHESTXRAY14_HEADER if trailing_empty_field else CHESTXRAY14_HEADER.rstrip(",")) + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    with open(root / "train_val_list.txt", "w", encoding="utf-8") as f:
        f.writelines(n + "\n" for n, t in zip(names, is_test) if not t)
    with open(root / "test_list.txt", "w", encoding="utf-8") as f:
        f.writelines(n + "\n" for n, t in zip(names, is_test) if t)

    def per_finding(mask: np.ndarray) -> dict[str, int]:
        return {n: int(labels[mask, k].sum()) for k, n in enumerate(CHESTXRAY14_FINDINGS)}

    return {
        "root": str(root),
        "n_patients": int(n_patients),
        "n_images": int(n_images),
        "n_dicom": len(variant_of),
        "n_dicom_monochrome1": sum(1 for v in variant_of.values() if v in (1, 3)),
        "n_test_images": int(is_test.sum()),
        "n_forced_positives": int(forced),
        "positives": {"train_val": per_finding(~is_test), "test": per_finding(is_test)},
    }
