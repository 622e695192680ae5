"""Synthetic chest CT volumes for volume classification, written as NIfTI and as DICOM series.

No public CT data can be downloaded here, so this generator writes what a CT classification bundle reads:

- ``root/volumes/<case_id>.nii.gz``: int16 HU, RAS affine ``diag(sx, sy, sz)`` in mm (qform = sform,
  code 1); shape and spacing vary by up to ``jitter`` (default 10 %) per axis and case, so resampling
  matters;
- ``root/dicom/<case_id>/IM_0001.dcm ...`` for ``n_dicom_series`` cases: CT Image Storage, one axial slice
  per file, LPS geometry (``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]``) describing the *same physical
  volume* as the case's NIfTI (which is also written). File names and the order files are written in are
  shuffled; InstanceNumber runs feet -> head in even-numbered series and head -> feet in odd ones
  (``scramble_instance_numbers=True`` makes it a random permutation, which only position-sorting readers
  such as :class:`medbundle.io.ct_series.CTSeriesReader` read correctly; MONAI's ``PydicomReader`` stacks
  by InstanceNumber). Pixel encodings alternate between uint16 with RescaleIntercept -1024 and int16 with
  intercept 0;
- ``root/masks/<case_id>.nii.gz``: uint8 lesion mask on the same grid (1 = finding; all 0 for "normal");
- ``root/labels.csv`` (``image,label``; image relative to root, the DICOM folder for DICOM cases; label
  as class name), ``root/classes.txt`` (class names in index order) and ``root/splits.json``
  (``{"train": [...], "test": [...]}`` case ids).

Array axes (NIfTI and after ``LoadImage`` + ``Orientation("RAS")``): ``(X, Y, Z)`` = right, anterior,
superior. Anatomy: air (-1000 HU) around an elliptical body (soft tissue ~40 HU with a fat rim ~-90 HU),
two lungs (~-850 HU), a vertebral column (~700 HU) posteriorly, and 6-12 thin vessels (radius 0.8-1.6 mm,
~-50..40 HU) per lung as distractors. Findings per class: ``"nodule"``: 1-3 solid spheres of radius
4-10 mm (~30 HU) inside the lungs; ``"consolidation"``: a patchy region (-120..0 HU) of 14-22 mm half-axes
in one lung; ``"normal"``: vessels only. Findings are several voxels wide at 1.5 mm, so a 48^3 training
patch around them shows them.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medbundle.io.dicom_write import ds_string, new_dataset, save_dicom, set_synthetic_patient
from medbundle.phantoms import CT_CLASS_NAMES, render_ct_volume

__all__ = [
    "DEFAULT_CT_PREVALENCES",
    "generate_ct_dataset",
    "write_ct_dicom_series",
    "write_nifti",
]

#: Default class prevalences (imbalanced).
DEFAULT_CT_PREVALENCES: dict[str, float] = {"normal": 0.6, "nodule": 0.25, "consolidation": 0.15}

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"




# ----------------------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------------------
def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (its dtype kept) with ``affine`` (RAS, mm) as qform and sform (code 1, scanner)."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    nib.save(img, str(path))
    return path


def write_ct_dicom_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    affine: np.ndarray,
    case_id: str,
    rng: np.random.Generator,
    encoding: int = 0,
    numbering: str = "ascending",
) -> list[Path]:
    """Write a RAS volume as an axial CT DICOM series describing the same physical volume.

    Args:
        folder: Output folder (created), one ``IM_%04d.dcm`` file per slice; the file numbers are a random permutation
            of the slices and files are written in random order.
        volume: int16 HU, shape ``(X, Y, Z)`` with axes right, anterior, superior.
        affine: The volume's RAS affine; must be diagonal with positive entries (as :func:`generate_ct_dataset` writes).
        case_id: Makes the synthetic patient id and the deterministic UIDs.
        rng: Random generator of the file-name permutation and write order.
        encoding: 0: uint16 stored = HU + 1024 (BitsStored 12, RescaleIntercept -1024); 1: int16 stored = HU (BitsStored
            16, RescaleIntercept 0).
        numbering: ``"ascending"``: InstanceNumber 1 is the most inferior slice; ``"descending"``: the most superior;
            ``"scrambled"``: a random permutation (not in position order).

    Returns:
        The file paths, in slice (position) order from inferior to superior.
        Geometry: DICOM is LPS, so row direction ``[1, 0, 0]`` (towards the patient's left) is the NIfTI ``-X``
        axis and column direction ``[0, 1, 0]`` (posterior) is ``-Y``: the DICOM pixel ``(row r, column c)`` of
        slice ``k`` is ``volume[X - 1 - c, Y - 1 - r, k]``; ``PixelSpacing = [sy, sx]`` (between rows,
        between columns).
    """
    from pydicom.uid import generate_uid

    vol = np.asarray(volume)
    aff = np.asarray(affine, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"{case_id}: volume must be 3D (X, Y, Z), got shape {vol.shape}.")
    if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))) or np.any(np.diag(aff)[:3] <= 0):
        raise ValueError(f"{case_id}: write_ct_dicom_series needs a diagonal RAS affine with positive spacing.")
    if numbering not in ("ascending", "descending", "scrambled"):
        raise ValueError(f"numbering must be 'ascending', 'descending' or 'scrambled', got {numbering!r}.")
    nx, ny, nz = vol.shape
    sx, sy, sz = (float(v) for v in np.diag(aff)[:3])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=["medbundle-synthetic-ct", case_id, tag])

    study, series, frame = uid("study"), uid("series"), uid("frame")
    if numbering == "ascending":
        instance = np.arange(1, nz + 1)
    elif numbering == "descending":
        instance = np.arange(nz, 0, -1)
    else:
        instance = rng.permutation(nz) + 1
    file_number = rng.permutation(nz) + 1
    paths = [folder / f"IM_{int(file_number[k]):04d}.dcm" for k in range(nz)]
    # world RAS of voxel (X-1, Y-1, k) -> LPS: the first transmitted pixel of slice k
    corner = aff @ np.array([nx - 1, ny - 1, 0, 1.0])
    for k in rng.permutation(nz):
        k = int(k)
        pixels = vol[::-1, ::-1, k].T  # (rows = Y reversed, columns = X reversed)
        sop = uid(f"sop{k}")
        ds = new_dataset(_CT_IMAGE_STORAGE, sop)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        set_synthetic_patient(ds, f"SYN-{case_id}", case_id)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber = 1
        ds.InstanceNumber = int(instance[k])
        ds.ImagePositionPatient = [ds_string(-corner[0]), ds_string(-corner[1]), ds_string(corner[2] + k * sz)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = ds_string(corner[2] + k * sz)
        ds.PixelSpacing = [ds_string(sy), ds_string(sx)]
        ds.SliceThickness = ds_string(sz)
        ds.SpacingBetweenSlices = ds_string(sz)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        if encoding == 0:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.RescaleIntercept = "-1024"
            stored = (pixels.astype(np.int32) + 1024).astype("<u2")
        else:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            ds.RescaleIntercept = "0"
            stored = pixels.astype("<i2")
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        save_dicom(ds, paths[k])
    return paths


# ----------------------------------------------------------------------------------------------------------
# the data set
# ----------------------------------------------------------------------------------------------------------
def _draw_labels(
    n: int, n_test: int, prev: np.ndarray, min_per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Class index per case and a test flag; each class gets >= min_per_class cases in each split."""
    k = len(prev)
    labels = rng.choice(k, size=n, p=prev / prev.sum())
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.permutation(n)[:n_test]] = True
    forced = 0
    for rows in (np.flatnonzero(is_test), np.flatnonzero(~is_test)):
        if len(rows) < min_per_class * k:
            raise ValueError(
                f"a split of {len(rows)} cases cannot hold {min_per_class} cases of each of {k} classes; "
                "raise n_volumes, change test_fraction or lower min_per_class."
            )
        for c in range(k):
            need = min_per_class - int(np.sum(labels[rows] == c))
            for _ in range(max(need, 0)):
                counts = np.bincount(labels[rows], minlength=k)
                donors = rows[(labels[rows] != c) & (counts[labels[rows]] > min_per_class)]
                labels[rng.choice(donors)] = c
                forced += 1
    return labels, is_test, forced


def generate_ct_dataset(
    root: str | os.PathLike,
    n_volumes: int = 120,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    class_names: Sequence[str] = CT_CLASS_NAMES,
    prevalences: Mapping[str, float] | Sequence[float] | None = None,
    n_dicom_series: int = 6,
    seed: int = 0,
    test_fraction: float = 0.25,
    min_per_class: int = 2,
    jitter: float = 0.1,
    write_masks: bool = True,
    scramble_instance_numbers: bool = False,
) -> dict[str, Any]:
    """Write a synthetic chest CT classification data set under ``root`` (layout in the module docstring).

    Args:
        root: Output folder (created; files of the same names are overwritten).
        n_volumes: Number of cases ``case_0001`` ... .
        shape, spacing: Nominal ``(X, Y, Z)`` voxels and mm; each case draws each axis' size and spacing within
            ``+-jitter`` of these (in-plane spacing is the same for X and Y, as in real CT).
        class_names: Classes in index order, a subset of :data:`CT_CLASS_NAMES` (e.g. ``("normal", "nodule")`` for a
            binary task).
        prevalences: Class probabilities (mapping by name or a sequence in ``class_names`` order; normalised to sum 1);
            default :data:`DEFAULT_CT_PREVALENCES` restricted to ``class_names``.
        n_dicom_series: How many cases (chosen at random) are also written as DICOM series; ``labels.csv`` points at
            their DICOM folder.
        seed: Everything is a function of the arguments: same seed, same files.
        test_fraction: Fraction of cases in ``splits.json``'s ``"test"``.
        min_per_class: Each class has at least this many cases in train and in test (labels are switched from the most
            frequent classes where needed; the count is ``n_forced`` in the summary).
        jitter: Relative per-case variation of shape and spacing.
        write_masks: Write ``masks/<case_id>.nii.gz``.
        scramble_instance_numbers: Give the DICOM slices InstanceNumbers in random order (readers must sort by
            position).

    Returns:
        dict with ``root``, ``n_volumes``, ``class_names``, ``counts`` (``{"train": {name: n}, "test": {...}}``),
        ``n_forced``, ``dicom_cases`` (case ids) and ``cases`` (per case: ``case_id``, ``label``, ``split``,
        ``shape``, ``spacing``, ``image`` relative path, ``nifti`` relative path, ``mask`` relative path or
        None, ``dicom`` relative folder or None).
    """
    names = list(class_names)
    unknown = [c for c in names if c not in CT_CLASS_NAMES]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"class_names must be two or more distinct names from {list(CT_CLASS_NAMES)}, got {names}.")
    if prevalences is None:
        prev = np.array([DEFAULT_CT_PREVALENCES[c] for c in names], dtype=np.float64)
    elif isinstance(prevalences, Mapping):
        missing = [c for c in names if c not in prevalences]
        if missing or set(prevalences) - set(names):
            raise ValueError(f"prevalences must give exactly the classes {names}, got {sorted(prevalences)}.")
        prev = np.array([float(prevalences[c]) for c in names])
    else:
        prev = np.asarray(prevalences, dtype=np.float64)
        if prev.shape != (len(names),):
            raise ValueError(f"prevalences must have {len(names)} values (one per class), got {prev.tolist()}.")
    if np.any(prev < 0) or prev.sum() <= 0:
        raise ValueError(f"prevalences must be >= 0 with a positive sum, got {prev.tolist()}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing must have 3 values (X, Y, Z), got {shape} and {spacing}.")

    root = Path(root)
    for sub in ("volumes", "masks", "dicom") if write_masks else ("volumes", "dicom"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_test = int(round(test_fraction * n_volumes))
    labels, is_test, forced = _draw_labels(n_volumes, n_test, prev, min_per_class, rng)
    dicom_idx = set(rng.permutation(n_volumes)[: min(n_dicom_series, n_volumes)].tolist())

    cases: list[dict[str, Any]] = []
    n_dicom_written = 0
    for i in range(n_volumes):
        case_id = f"case_{i + 1:04d}"
        crng = np.random.default_rng([seed, i])
        f = 1.0 + jitter * crng.uniform(-1.0, 1.0, size=5)
        shp = [max(int(round(s * g)), 8) for s, g in zip(shape, f[:3])]
        sp = [spacing[0] * f[3], spacing[1] * f[3], spacing[2] * f[4]]
        sp = [float(ds_string(v)) for v in sp]  # exactly representable in DICOM DS strings
        label = names[int(labels[i])]
        vol, mask = render_ct_volume(label, shp, sp, crng)
        offset = crng.uniform(-20.0, 20.0, size=3)
        origin = [float(ds_string(-(n - 1) / 2.0 * s + o)) for n, s, o in zip(shp, sp, offset)]
        affine = np.diag([*sp, 1.0])
        affine[:3, 3] = origin
        nifti_rel = f"volumes/{case_id}.nii.gz"
        write_nifti(root / nifti_rel, vol, affine)
        mask_rel = None
        if write_masks:
            mask_rel = f"masks/{case_id}.nii.gz"
            write_nifti(root / mask_rel, mask, affine)
        dicom_rel = None
        if i in dicom_idx:
            dicom_rel = f"dicom/{case_id}"
            numbering = "scrambled" if scramble_instance_numbers else ("ascending", "descending")[n_dicom_written % 2]
            write_ct_dicom_series(
                root / dicom_rel, vol, affine, case_id, crng, encoding=n_dicom_written % 2, numbering=numbering
            )
            n_dicom_written += 1
        cases.append(
            {
                "case_id": case_id,
                "label": label,
                "split": "test" if is_test[i] else "train",
                "shape": shp,
                "spacing": sp,
                "image": dicom_rel or nifti_rel,
                "nifti": nifti_rel,
                "mask": mask_rel,
                "dicom": dicom_rel,
            }
        )

    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows([c["image"], c["label"]] for c in cases)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in names), encoding="utf-8")
    splits = {s: [c["case_id"] for c in cases if c["split"] == s] for s in ("train", "test")}
    (root / "splits.json").write_text(json.dumps(splits, indent=1), encoding="utf-8")
    counts = {s: {n: sum(c["label"] == n for c in cases if c["split"] == s) for n in names} for s in splits}
    return {
        "root": str(root),
        "n_volumes": n_volumes,
        "class_names": names,
        "counts": counts,
        "n_forced": forced,
        "dicom_cases": [c["case_id"] for c in cases if c["dicom"]],
        "cases": cases,
    }
