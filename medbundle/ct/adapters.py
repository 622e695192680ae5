"""Adapters from CT volume classification layouts to MONAI datalists.

MONAI reads a datalist JSON (``load_decathlon_datalist``) but nothing builds one from the layouts CT
classification data comes in. This module does, for:

- a generic CSV ``image,label`` (labels as class names or integer indices; images are NIfTI files or
  DICOM series folders, relative to the CSV's folder or a given root), with a stratified, deterministic
  validation split and an optional fixed test list (:func:`csv_datalist`);
- the output of :func:`medbundle.ct.synthetic.generate_ct_dataset` (:func:`synthetic_ct_datalist`);
- MedMNIST 3D ``.npz`` archives (``nodulemnist3d.npz``, ``organmnist3d.npz``, ...), written out as NIfTI
  volumes with the published train/val/test splits (:func:`medmnist3d_datalist`).

Items are ``{"image": absolute path str (file or DICOM folder), "label": int class index,
"case_id": str}`` (+ ``"mask"`` where a lesion mask exists); the class order is the datalist's
``"labels"``. Write and read the JSON with :func:`write_datalist` / :func:`load_datalist` (re-exported
from :mod:`medbundle.xray.adapters`).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.io.datalist import column_index, load_datalist, write_datalist

__all__ = [
    "MEDMNIST_KEYS",
    "case_id_from_path",
    "csv_datalist",
    "synthetic_ct_datalist",
    "medmnist3d_datalist",
    "write_datalist",
    "load_datalist",
]

#: Arrays a MedMNIST 3D ``.npz`` must hold.
MEDMNIST_KEYS: tuple[str, ...] = (
    "train_images",
    "train_labels",
    "val_images",
    "val_labels",
    "test_images",
    "test_labels",
)
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".dcm")


def case_id_from_path(path: str | os.PathLike) -> str:
    """Case id of an image: its file name without the volume suffix (``.nii.gz``, ...), or the folder name."""
    name = Path(str(path).rstrip("/\\")).name
    low = name.lower()
    for suffix in _VOLUME_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_test_ids(path: Path) -> set[str]:
    """Case ids (or relative image paths) listed in a test split file: JSON ``{"test": [...]}`` or text."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: test split file not found.")
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: not valid JSON ({e}); expected {{"test": [case ids]}}.') from e
        if isinstance(content, dict):
            if "test" not in content:
                raise ValueError(f"{path}: no 'test' list; found keys {sorted(content)}.")
            content = content["test"]
        if not isinstance(content, list):
            raise ValueError(f"{path}: expected a list of case ids under 'test'.")
        return {str(v) for v in content}
    return {line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()}


def _parse_labels(cells: list[str], class_names: Sequence[str] | None, path: Path) -> tuple[list[int], list[str]]:
    """Class index per cell, and the class names (inferred when None)."""

    def as_int(text: str) -> int | None:
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None

    if class_names is None:
        ints = [as_int(c) for c in cells]
        if cells and all(v is not None for v in ints):
            if min(ints) < 0:  # type: ignore[type-var]
                raise ValueError(f"{path}: negative integer label {min(ints)}; class indices start at 0.")
            names = [str(i) for i in range(max(ints) + 1)]  # type: ignore[type-var]
            return [int(v) for v in ints], names  # type: ignore[arg-type]
        names = sorted(set(cells))
    else:
        names = [str(c) for c in class_names]
    index = {n: i for i, n in enumerate(names)}
    out = []
    for line, cell in enumerate(cells, start=2):
        if cell in index:
            out.append(index[cell])
            continue
        k = as_int(cell)
        if k is None or not 0 <= k < len(names):
            raise ValueError(
                f"{path}, line {line}: label {cell!r} is neither one of the classes {names} nor an index "
                f"0..{len(names) - 1}; fix the CSV or pass class_names."
            )
        out.append(k)
    return out, names


def _stratified_holdout(labels: Sequence[int], fraction: float, seed: int, stratify: bool) -> set[int]:
    """Indices held out: round(fraction * n) per class (>= 1 for classes with >= 2 items) or overall."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    if fraction == 0 or not labels:
        return set()
    groups = (
        {c: [i for i, v in enumerate(labels) if v == c] for c in sorted(set(labels))}
        if stratify
        else {0: list(range(len(labels)))}
    )
    held: set[int] = set()
    for members in groups.values():
        n_out = int(round(fraction * len(members)))
        if n_out == 0 and len(members) >= 2:
            n_out = 1
        perm = rng.permutation(len(members))
        held.update(members[i] for i in perm[:n_out])
    return held


def csv_datalist(
    csv_path: str | os.PathLike,
    image_col: str = "image",
    label_col: str = "label",
    class_names: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_split_file: str | os.PathLike | None = None,
    seed: int = 0,
    stratify: bool = True,
    mask_col: str | None = None,
) -> dict[str, Any]:
    """Build a MONAI classification datalist from a CSV of images and labels.

    Args:
        csv_path: CSV with a header; columns are found by name (case and whitespace insensitive).
        image_col, label_col: Column of the image path (a NIfTI/MetaImage/DICOM file or a DICOM series folder) and of
            the label.
        class_names: Classes in index order. Labels may be these names or integer indices into them. When None: integer
            labels give names ``"0" .. "max"`` (the index is kept); otherwise the sorted unique names.
        root: Folder relative image paths are resolved against; default the CSV's folder.
        val_fraction: Fraction of the non-test items moved to ``"validation"``, per class when ``stratify`` (at least
            one item of each class with two or more items), deterministic for ``seed``.
        test_split_file: Items whose case id (or image path as written in the CSV) is listed go to ``"testing"``: a JSON
            file ``{"test": [...]}`` (as ``splits.json``) or a text file with one id per line. None: no testing.
        seed: Seed of the validation draw.
        stratify: Stratify the validation split by class.
        mask_col: Optional column of a lesion/foreground mask path (resolved like images), added as ``"mask"``.

    Returns:
        dict: ``{"training", "validation", "testing", "labels": class_names}``; items ``{"image": absolute path str,
            "label": int, "case_id": str}`` (+ ``"mask"``), in CSV order within each list. ``case_id`` is the file name
            without its volume suffix, or the folder name. Rows whose image (or mask) is missing are dropped with one
            warning that counts them.

    Raises:
        FileNotFoundError: ``csv_path`` (or ``test_split_file``) does not exist.
        ValueError: A required column is missing, a label is unknown or out of range, or the CSV has no rows.
    """
    path = Path(csv_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label CSV not found.")
    base = Path(root).expanduser().resolve() if root is not None else path.parent
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: file is empty; expected a header with {image_col!r} and {label_col!r}.")
    header, body = rows[0], rows[1:]
    if not body:
        raise ValueError(f"{path}: no data rows below the header.")
    i_img = column_index(header, image_col, path)
    i_lab = column_index(header, label_col, path)
    i_mask = column_index(header, mask_col, path) if mask_col is not None else None

    def cell(row: list[str], i: int | None) -> str:
        return row[i].strip() if i is not None and i < len(row) else ""

    labels, names = _parse_labels([cell(r, i_lab) for r in body], class_names, path)
    test_ids = _read_test_ids(Path(test_split_file)) if test_split_file is not None else set()

    def resolve(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    items, is_test, missing = [], [], 0
    for row, label in zip(body, labels):
        rel = cell(row, i_img)
        image = resolve(rel)
        mask = resolve(cell(row, i_mask)) if i_mask is not None else None
        if not rel or not image.exists() or (mask is not None and not mask.exists()):
            missing += 1
            continue
        item: dict[str, Any] = {"image": str(image), "label": int(label), "case_id": case_id_from_path(rel)}
        if mask is not None:
            item["mask"] = str(mask)
        items.append(item)
        is_test.append(item["case_id"] in test_ids or rel in test_ids)
    if missing:
        warnings.warn(
            f"{path}: {missing} of {len(body)} rows name an image{' or mask' if mask_col else ''} that was not "
            f"found under {base} and were left out of the datalist.",
            stacklevel=2,
        )
    testing = [it for it, t in zip(items, is_test) if t]
    rest = [it for it, t in zip(items, is_test) if not t]
    held = _stratified_holdout([it["label"] for it in rest], val_fraction, seed, stratify)
    training = [it for i, it in enumerate(rest) if i not in held]
    validation = [it for i, it in enumerate(rest) if i in held]
    return {"training": training, "validation": validation, "testing": testing, "labels": list(names)}


def synthetic_ct_datalist(root: str | os.PathLike, val_fraction: float = 0.15, seed: int = 0) -> dict[str, Any]:
    """Datalist of a folder written by :func:`medbundle.ct.synthetic.generate_ct_dataset`.

    Reads ``labels.csv`` (classes from ``classes.txt``), takes ``"testing"`` from ``splits.json`` and
    draws a stratified validation split from the rest. Items get ``"mask"`` (``masks/<case_id>.nii.gz``)
    when that file exists. DICOM cases point at their series folder: load with
    ``LoadImaged(reader=medbundle.io.ct_series.ct_readers())``.
    """
    root = Path(root).expanduser().resolve()
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise FileNotFoundError(f"{classes_file}: not found; is {root} a folder written by generate_ct_dataset?")
    names = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    splits = root / "splits.json"
    data = csv_datalist(
        root / "labels.csv",
        class_names=names,
        root=root,
        val_fraction=val_fraction,
        test_split_file=splits if splits.is_file() else None,
        seed=seed,
    )
    for key in ("training", "validation", "testing"):
        for item in data[key]:
            mask = root / "masks" / f"{item['case_id']}.nii.gz"
            if mask.is_file():
                item["mask"] = str(mask)
    return data


def medmnist3d_datalist(
    npz_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a MedMNIST 3D ``.npz`` as NIfTI volumes and return the datalist of its published splits.

    Args:
        npz_path: A MedMNIST 3D archive with :data:`MEDMNIST_KEYS`; images ``(N, D, D, D)`` uint8 (D = 28 or 64), labels
            ``(N, 1)`` (or ``(N,)``) integer class indices.
        out_dir: Volumes are written to ``out_dir/{train,val,test}/<index>.nii.gz`` (index zero-padded to 5 digits, the
            row in the split's array).
        spacing: Voxel size in mm written into the affine ``diag(spacing)`` (MedMNIST stores none; its volumes were
            resampled to roughly isotropic voxels).
        class_names: Class names in index order; default ``"0" .. str(max label)``. (The names are in MedMNIST's
            ``INFO`` dict, e.g. NoduleMNIST3D ``benign``, ``malignant``.)

    Returns:
        dict: ``{"training": train, "validation": val, "testing": test, "labels": class_names}``; items ``{"image":
            absolute path str, "label": int, "case_id": "<split>_<index>"}``.

    Note:
        Axis order: MedMNIST does not record orientation, so each ``images[n]`` is written unchanged (dtype
        kept): NIfTI axis ``i, j, k`` = array axis 0, 1, 2, and ``nibabel.load(...).get_fdata()`` or MONAI's
        ``LoadImage(reader="NibabelReader")`` returns exactly ``images[n]``. Do not add ``Orientationd`` for
        these volumes (the identity-like affine already reads as RAS, so it is a no-op).

    Raises:
        ValueError: A key is missing (the message names the file and the key), images are not 4D, or the number of
            labels differs from the number of images.
    """
    import nibabel as nib

    path = Path(npz_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MedMNIST .npz not found.")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive values in mm, got {spacing}.")
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    out = Path(out_dir).expanduser().resolve()
    result: dict[str, Any] = {}
    max_label = -1
    with np.load(path, allow_pickle=False) as npz:
        for key in MEDMNIST_KEYS:
            if key not in npz.files:
                raise ValueError(
                    f"{path}: key {key!r} missing (found {sorted(npz.files)}); a MedMNIST 3D archive holds "
                    f"{list(MEDMNIST_KEYS)}."
                )
        for split, list_key in (("train", "training"), ("val", "validation"), ("test", "testing")):
            images, labels = npz[f"{split}_images"], np.asarray(npz[f"{split}_labels"])
            if images.ndim != 4:
                raise ValueError(
                    f"{path}: {split}_images has shape {images.shape}; expected (N, D, D, D) 3D volumes "
                    "(a 2D MedMNIST archive is not a 3D one)."
                )
            labels = labels.reshape(len(labels), -1)
            if labels.shape != (len(images), 1):
                raise ValueError(
                    f"{path}: {split}_labels has shape {npz[f'{split}_labels'].shape}; expected "
                    f"({len(images)}, 1) class indices for {len(images)} images."
                )
            folder = out / split
            folder.mkdir(parents=True, exist_ok=True)
            items = []
            for n in range(len(images)):
                file = folder / f"{n:05d}.nii.gz"
                img = nib.Nifti1Image(np.ascontiguousarray(images[n]), affine)
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                img.header.set_xyzt_units("mm")
                nib.save(img, str(file))
                label = int(labels[n, 0])
                max_label = max(max_label, label)
                items.append({"image": str(file), "label": label, "case_id": f"{split}_{n:05d}"})
            result[list_key] = items
    if class_names is None:
        names = [str(i) for i in range(max_label + 1)]
    else:
        names = [str(c) for c in class_names]
        if max_label >= len(names):
            raise ValueError(f"{path}: label {max_label} found but only {len(names)} class_names given: {names}.")
    result["labels"] = names
    return result
