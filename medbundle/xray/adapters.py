"""Adapters from the public chest X-ray layouts (NIH ChestX-ray14, Stanford CheXpert) to MONAI datalists.

MONAI's ``load_decathlon_datalist`` reads a datalist JSON but nothing turns the public CSVs into one. This
module does that, with the details the public files need:

- ChestX-ray14's ``Data_Entry_2017.csv`` header has bracketed names that contain commas
  (``OriginalImage[Width,Height]``) and some copies end every row with an empty field, so columns are
  located by name, never by a fixed position.
- Splits are made **by patient** (no patient in two of training / validation / testing), deterministic
  for a seed; the official ChestX-ray14 ``train_val_list.txt`` / ``test_list.txt`` are honoured.
- Images are indexed by file name across ``images/`` and the ``images_001/images`` ... folders of the NIH
  download; a ``.dcm`` file with the same stem stands in for a missing ``.png``.
- CheXpert's uncertain (-1) and blank labels are mapped by an explicit policy; "ignore" gives NaN, which
  the ``medbundle`` losses and metrics mask.

Datalist items are ``{"image": <absolute path str>, "label": [float, ...], "patient_id": str}``; the
label order is the datalist's ``"labels"`` list.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.io.datalist import column_index, open_csv

__all__ = [
    "CHESTXRAY14_FINDINGS",
    "CHEXPERT_COMPETITION",
    "CHEXPERT_LABELS",
    "read_chestxray14_entries",
    "chestxray14_datalist",
    "read_chexpert_entries",
    "chexpert_datalist",
    "split_by_patient",
]

#: The 14 ChestX-ray14 findings, in the order of the NIH release (the label vector order).
CHESTXRAY14_FINDINGS: list[str] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]

#: The 5 labels reported in the CheXpert competition.
CHEXPERT_COMPETITION: list[str] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
]

#: All 14 CheXpert observation columns, in the order of ``train.csv``.
CHEXPERT_LABELS: list[str] = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]

_NO_FINDING = "No Finding"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_DICOM_SUFFIXES = (".dcm", ".dicom")


# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------


def _cell(row: Sequence[str], index: int | None) -> str:
    if index is None or index >= len(row):
        return ""
    return row[index].strip()


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_age(text: str) -> float | None:
    """Ages are plain numbers in the 2020 CSV and like ``058Y`` in older copies; None if unreadable."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", text, flags=re.IGNORECASE)
    if m is None:
        return None
    value = float(m.group(1))
    unit = m.group(2).upper()
    return value / {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}[unit]


def _rng_order(ids: Iterable[str], seed: int) -> list[str]:
    """Deterministic shuffled order of the unique ``ids`` (sorted first, so input order does not matter)."""
    unique = sorted(set(ids))
    perm = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in perm]


def split_by_patient(
    items: Sequence[dict], fraction: float, seed: int = 0, key: str = "patient_id"
) -> tuple[list[dict], list[dict]]:
    """Split ``items`` into (rest, held_out) so that no patient is in both.

    Args:
        items: Dicts with a patient id under ``key``.
        fraction: Fraction of **patients** (not images) that go to ``held_out``, in [0, 1). At least one patient is held
            out when ``fraction > 0`` and there are two or more patients.
        seed: Seed of the shuffle; the same items and seed always give the same split.

    Returns:
        (rest, held_out), each keeping the input order of the items.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}.")
    order = _rng_order((str(it[key]) for it in items), seed)
    n_out = int(round(fraction * len(order)))
    if fraction > 0 and n_out == 0 and len(order) >= 2:
        n_out = 1
    held = set(order[:n_out])
    rest = [it for it in items if str(it[key]) not in held]
    out = [it for it in items if str(it[key]) in held]
    return rest, out


# ----------------------------------------------------------------------------------------------------------
# ChestX-ray14
# ----------------------------------------------------------------------------------------------------------
def _findings_to_multihot(text: str, path: Path, line: int) -> list[float]:
    labels = [0.0] * len(CHESTXRAY14_FINDINGS)
    names = [t.strip() for t in text.split("|") if t.strip()]
    if not names:
        raise ValueError(f"{path}, line {line}: empty 'Finding Labels'; expected 'No Finding' or findings.")
    for name in names:
        if name == _NO_FINDING:
            continue
        try:
            labels[CHESTXRAY14_FINDINGS.index(name)] = 1.0
        except ValueError:
            raise ValueError(
                f"{path}, line {line}: unknown finding {name!r} in 'Finding Labels' {text!r}; "
                f"known findings are {CHESTXRAY14_FINDINGS} or 'No Finding'."
            ) from None
    return labels


def read_chestxray14_entries(csv_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse ChestX-ray14's ``Data_Entry_2017.csv`` into one dict per image.

    Columns are located by name, so the comma-splitting bracketed names
    (``OriginalImage[Width,Height]``, ``OriginalImagePixelSpacing[x,y]``) and an optional empty trailing
    field on every row are handled.

    Args:
        csv_path: Path of ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``).

    Returns:
        list of dict, in file order, with keys
        - ``image`` (str): file name, e.g. ``"00000001_000.png"``;
        - ``patient_id`` (str): the ``Patient ID`` cell as written (e.g. ``"1"``);
        - ``labels`` (list of 14 float in {0.0, 1.0}): multi-hot over :data:`CHESTXRAY14_FINDINGS`,: all zeros for ``No
        Finding``;
        - ``follow_up`` (int or None), ``view_position`` (str, e.g. ``"PA"``), ``age`` (float years or None),: ``sex``
        (str, ``"M"``/``"F"``), ``original_size`` ([width, height] int or None) and ``pixel_spacing`` ([x, y] float mm
            or None).

    Raises:
        ValueError: The file lacks a required column (``Image Index``, ``Finding Labels``, ``Patient ID``), or a row
            names a finding that is not one of the 14 (the message gives the line).
        FileNotFoundError: ``csv_path`` does not exist.
    """
    path = Path(csv_path)
    with open_csv(path, "ChestX-ray14 label file (Data_Entry_2017.csv)",
                  "the Data_Entry_2017.csv header and rows") as (header, reader):
        i_img = column_index(header, "Image Index", path)
        i_lab = column_index(header, "Finding Labels", path)
        i_pid = column_index(header, "Patient ID", path)
        i_fup = column_index(header, "Follow-up #", path, required=False)
        i_age = column_index(header, "Patient Age", path, required=False)
        i_sex = column_index(header, "Patient Gender", path, required=False)
        i_view = column_index(header, "View Position", path, required=False)
        i_w = column_index(header, "OriginalImage[Width", path, required=False)
        i_sp = column_index(header, "OriginalImagePixelSpacing[x", path, required=False)

        entries: list[dict[str, Any]] = []
        for line, row in reader:
            image = _cell(row, i_img)
            if not image:
                raise ValueError(f"{path}, line {line}: empty 'Image Index'.")
            w, h = _to_float(_cell(row, i_w)), _to_float(_cell(row, None if i_w is None else i_w + 1))
            sx, sy = _to_float(_cell(row, i_sp)), _to_float(_cell(row, None if i_sp is None else i_sp + 1))
            fup = _to_float(_cell(row, i_fup))
            entries.append(
                {
                    "image": image,
                    "patient_id": _cell(row, i_pid),
                    "labels": _findings_to_multihot(_cell(row, i_lab), path, line),
                    "follow_up": None if fup is None else int(fup),
                    "view_position": _cell(row, i_view),
                    "age": _parse_age(_cell(row, i_age)),
                    "sex": _cell(row, i_sex),
                    "original_size": None if w is None or h is None else [int(w), int(h)],
                    "pixel_spacing": None if sx is None or sy is None else [sx, sy],
                }
            )
    return entries


def _read_name_list(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [line.strip() for line in f if line.strip()]


def _index_images(dirs: Sequence[Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Map name -> path of raster images and stem -> path of DICOM files in ``dirs`` (not recursive)."""
    by_name: dict[str, Path] = {}
    dicom_by_stem: dict[str, Path] = {}
    for d in dirs:
        with os.scandir(d) as it:
            for e in it:
                if not e.is_file():
                    continue
                low = e.name.lower()
                if low.endswith(_IMAGE_SUFFIXES):
                    by_name.setdefault(e.name, Path(e.path).resolve())
                elif low.endswith(_DICOM_SUFFIXES):
                    dicom_by_stem.setdefault(os.path.splitext(e.name)[0], Path(e.path).resolve())
    return by_name, dicom_by_stem


def _chestxray14_image_dirs(root: Path, image_dir: str) -> list[Path]:
    dirs = []
    if (root / image_dir).is_dir():
        dirs.append(root / image_dir)
    for sub in sorted(root.glob("images_*")):  # the NIH download: images_001/images ... images_012/images
        if (sub / "images").is_dir():
            dirs.append(sub / "images")
        elif sub.is_dir():
            dirs.append(sub)
    return dirs


def chestxray14_datalist(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_dir: str = "images",
    split_files: bool = True,
    test_fraction: float = 0.2,
    csv_name: str = "Data_Entry_2017.csv",
) -> dict[str, Any]:
    """Build a MONAI datalist from a ChestX-ray14 folder.

    Args:
        root: Dataset folder holding ``Data_Entry_2017.csv`` and the images, in ``root/<image_dir>/`` and/or
            ``root/images_*/images/`` (the NIH download's twelve folders); both are indexed by file name. A ``.dcm``
            file with the same stem as the CSV's ``.png`` name is used when the ``.png`` is absent.
        val_fraction: Fraction of the train+val **patients** moved to ``"validation"``.
        seed: Seed of the patient shuffles; the same folder and seed give the same datalist.
        split_files: Use the official ``train_val_list.txt`` / ``test_list.txt`` when both exist. Images listed in
            neither file are left out. Otherwise (or when ``False``) ``test_fraction`` of the patients, drawn at random
            with ``seed``, form ``"testing"``.
        test_fraction: Fraction of patients in ``"testing"`` when the official split files are not used.
        csv_name: Name of the label CSV inside ``root`` (``Data_Entry_2017_v2020.csv`` for the 2020 copy).

    Returns:
        dict: ``{"training": [...], "validation": [...], "testing": [...], "labels": CHESTXRAY14_FINDINGS}``; each item
            is ``{"image": absolute path str, "label": list of 14 float in {0, 1}, "patient_id": str}``. No patient
            appears in two splits (given official lists that are split by patient, as the NIH lists are). Items whose
            image file is missing are dropped, with one warning that counts them.
    """
    root = Path(root).expanduser().resolve()
    csv_path = root / csv_name
    entries = read_chestxray14_entries(csv_path)
    dirs = _chestxray14_image_dirs(root, image_dir)
    if not dirs:
        raise ValueError(
            f"{root}: no image folder found; expected {root / image_dir} or {root}/images_*/images "
            "holding the ChestX-ray14 PNG files."
        )
    by_name, dicom_by_stem = _index_images(dirs)

    items: list[dict[str, Any]] = []
    missing = 0
    for e in entries:
        p = by_name.get(e["image"]) or dicom_by_stem.get(os.path.splitext(e["image"])[0])
        if p is None:
            missing += 1
            continue
        items.append(
            {"image": str(p), "label": list(e["labels"]), "patient_id": e["patient_id"], "_name": e["image"]}
        )
    if missing:
        warnings.warn(
            f"{csv_path}: {missing} of {len(entries)} listed images were not found under "
            f"{', '.join(str(d) for d in dirs)} and were left out of the datalist.",
            stacklevel=2,
        )

    tv_file, test_file = root / "train_val_list.txt", root / "test_list.txt"
    if split_files and tv_file.is_file() and test_file.is_file():
        test_names, tv_names = set(_read_name_list(test_file)), set(_read_name_list(tv_file))
        testing = [it for it in items if it["_name"] in test_names]
        train_val = [it for it in items if it["_name"] in tv_names and it["_name"] not in test_names]
        unlisted = len(items) - len(testing) - len(train_val)
        if unlisted:
            warnings.warn(
                f"{root}: {unlisted} images are in neither {tv_file.name} nor {test_file.name} "
                "and were left out of the datalist.",
                stacklevel=2,
            )
    else:
        train_val, testing = split_by_patient(items, test_fraction, seed=seed)
    training, validation = split_by_patient(train_val, val_fraction, seed=seed + 1)
    for it in items:
        del it["_name"]
    return {
        "training": training,
        "validation": validation,
        "testing": testing,
        "labels": list(CHESTXRAY14_FINDINGS),
    }


# ----------------------------------------------------------------------------------------------------------
# CheXpert
# ----------------------------------------------------------------------------------------------------------
_PATIENT_RE = re.compile(r"(patient\d+)", flags=re.IGNORECASE)
_UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
_BLANK_POLICIES = ("zeros", "ignore")


def _chexpert_value(text: str, uncertain: str, blank: str, path: Path, line: int, column: str) -> float:
    if text == "":
        return 0.0 if blank == "zeros" else math.nan
    v = _to_float(text)
    if v is None or v not in (1.0, 0.0, -1.0):
        raise ValueError(
            f"{path}, line {line}: column {column!r} holds {text!r}; "
            "CheXpert labels are 1.0, 0.0, -1.0 or empty."
        )
    if v == -1.0:
        return {"ignore": math.nan, "ones": 1.0, "zeros": 0.0}[uncertain]
    return v


def read_chexpert_entries(
    csv_path: str | os.PathLike,
    labels: Sequence[str] = CHEXPERT_COMPETITION,
    uncertain: str = "ignore",
    blank: str = "zeros",
    frontal_only: bool = True,
) -> list[dict[str, Any]]:
    """Parse a CheXpert ``train.csv`` / ``valid.csv``.

    Args:
        csv_path: The CSV, with the original columns ``Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...``.
        labels: Observation columns to keep, in label-vector order.
        uncertain: Policy for -1.0 (uncertain): ``"ignore"`` -> NaN (masked by the medbundle losses and metrics),
            ``"ones"`` -> 1.0 (U-Ones), ``"zeros"`` -> 0.0 (U-Zeros).
        blank: Policy for an empty cell (not mentioned in the report): ``"zeros"`` -> 0.0 or ``"ignore"`` -> NaN.
        frontal_only: Keep only rows whose ``Frontal/Lateral`` is ``Frontal``.

    Returns:
        list of dict with ``path`` (the CSV's relative path str), ``patient_id`` (e.g. ``"patient00001"``,
        parsed from the path), ``labels`` (list of float: 0.0, 1.0 or NaN), ``sex``, ``age`` (float or None),
        ``view`` (``Frontal``/``Lateral``) and ``projection`` (``AP``/``PA``/...).
    """
    if uncertain not in _UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {_UNCERTAIN_POLICIES}, got {uncertain!r}.")
    if blank not in _BLANK_POLICIES:
        raise ValueError(f"blank must be one of {_BLANK_POLICIES}, got {blank!r}.")
    path = Path(csv_path)
    with open_csv(path, "CheXpert label file", "the CheXpert header (Path,Sex,Age,...)") as (header, reader):
        i_path = column_index(header, "Path", path)
        i_fl = column_index(header, "Frontal/Lateral", path, required=frontal_only)
        i_sex = column_index(header, "Sex", path, required=False)
        i_age = column_index(header, "Age", path, required=False)
        i_ap = column_index(header, "AP/PA", path, required=False)
        i_labels = [column_index(header, name, path) for name in labels]
        out: list[dict[str, Any]] = []
        for line, row in reader:
            view = _cell(row, i_fl)
            if frontal_only and view.lower() != "frontal":
                continue
            rel = _cell(row, i_path)
            m = _PATIENT_RE.search(rel)
            if m is None:
                raise ValueError(
                    f"{path}, line {line}: cannot parse a patient id from Path {rel!r}; "
                    "expected .../patientNNNNN/studyN/viewN_frontal.jpg."
                )
            age = _to_float(_cell(row, i_age))
            out.append(
                {
                    "path": rel,
                    "patient_id": m.group(1),
                    "labels": [
                        _chexpert_value(_cell(row, i), uncertain, blank, path, line, name)
                        for i, name in zip(i_labels, labels)
                    ],
                    "sex": _cell(row, i_sex),
                    "age": age,
                    "view": view,
                    "projection": _cell(row, i_ap),
                }
            )
    return out


def _resolve_chexpert_path(rel: str, root: Path) -> Path | None:
    """CSV paths start with the dataset folder name (``CheXpert-v1.0-small/train/...``): try root, its
    parent, and root with the first component dropped."""
    p = Path(rel)
    if p.is_absolute():
        return p if p.is_file() else None
    candidates = [root.parent / p, root / p]
    if len(p.parts) > 1:
        candidates.append(root / Path(*p.parts[1:]))
    for c in candidates:
        if c.is_file():
            return c
    return None


def _chexpert_items(entries: list[dict[str, Any]], root: Path, csv_path: Path) -> list[dict[str, Any]]:
    items, missing = [], 0
    for e in entries:
        p = _resolve_chexpert_path(e["path"], root)
        if p is None:
            missing += 1
            continue
        items.append({"image": str(p.resolve()), "label": e["labels"], "patient_id": e["patient_id"]})
    if missing:
        warnings.warn(
            f"{csv_path}: {missing} of {len(entries)} listed images were not found under {root} or "
            f"{root.parent} and were left out of the datalist.",
            stacklevel=3,
        )
    return items


def chexpert_datalist(
    root: str | os.PathLike,
    csv: str = "train.csv",
    labels: Sequence[str] = CHEXPERT_COMPETITION,
    uncertain: str = "ignore",
    blank: str = "zeros",
    frontal_only: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    valid_csv: str | None = "valid.csv",
) -> dict[str, Any]:
    """Build a MONAI datalist from a CheXpert folder (e.g. ``CheXpert-v1.0-small``).

    Args:
        root: The dataset folder holding ``train.csv``, ``valid.csv``, ``train/`` and ``valid/``. CSV paths
            (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``) are resolved against ``root.parent``,
            then ``root``, then ``root`` without the path's first folder.
        csv, valid_csv: File names inside ``root``. ``valid_csv`` (the official validation set) becomes ``"testing"``
            when it exists; pass ``None`` to skip it.
        labels, uncertain, blank, frontal_only: See :func:`read_chexpert_entries`.
        val_fraction, seed: Fraction of the ``csv`` patients held out as ``"validation"`` (split by patient,
            deterministic).

    Returns:
        dict: ``{"training", "validation", "testing", "labels"}``; items are ``{"image": absolute path str, "label":
            list of float in {0, 1} or NaN, "patient_id": "patientNNNNN"}``. Rows whose image file is missing are
            dropped with one warning per CSV. Write with :func:`write_datalist` (NaN -> null).
    """
    root = Path(root).expanduser().resolve()
    kw = {"labels": list(labels), "uncertain": uncertain, "blank": blank, "frontal_only": frontal_only}
    train_csv = root / csv
    train_items = _chexpert_items(read_chexpert_entries(train_csv, **kw), root, train_csv)
    testing: list[dict[str, Any]] = []
    if valid_csv is not None and (root / valid_csv).is_file():
        testing = _chexpert_items(read_chexpert_entries(root / valid_csv, **kw), root, root / valid_csv)
    training, validation = split_by_patient(train_items, val_fraction, seed=seed)
    return {"training": training, "validation": validation, "testing": testing, "labels": list(labels)}


# ----------------------------------------------------------------------------------------------------------
# JSON I/O
# ----------------------------------------------------------------------------------------------------------


