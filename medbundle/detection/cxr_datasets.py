"""NODE21 and VinDr-CXR layouts -> datalists for 2D lesion detection on chest radiographs.

Both adapters give the same item format, which the chest X-ray detection bundle reads::

    {"image": "/abs/path/c0001.mha", "box": [[x_min, y_min, x_max, y_max], ...], "label": [0, ...],
     "image_id": "c0001"}

Boxes are float pixels in the corner convention (pixel ``i`` covers ``[i, i + 1)``): ``x`` is the column of the
image as displayed, ``y`` the row. MONAI readers return 2D arrays indexed ``(x, y)`` (after the channel axis):
:class:`medbundle.io.metaimage.MetaImageReader` (default ``reverse_indexing=False``, as ITK) for NODE21's ``.mha``
and :func:`medbundle.io.dicom.xray_readers` (default ``reverse_indexing=True``, as MONAI's ``PILReader``) for
VinDr-CXR's DICOM, so a box's ``[x_min, x_max)`` / ``[y_min, y_max)`` index the loaded array's first / second
spatial axis directly. Images without findings have empty ``box`` and ``label`` (they carry the false positives).

Layouts, as checked against the datasets' own code and pages:

- **NODE21** (node21.grand-challenge.org/Data; Zenodo record 4725881; the challenge's detection baseline,
  github.com/node21challenge/node21_detection_baseline, ``training_utils/dataset.py``): ``metadata.csv`` with
  ``img_name,x,y,width,height,label`` (one row per nodule box, ``x, y`` its top-left corner in pixels; label 0 on
  the one row of an image without nodules) next to ``images/`` holding ``<img_name>``; ``img_name`` includes the
  ``.mha`` suffix (the baseline matches it against ``os.listdir("images")``). The Zenodo archive nests both under
  ``cxr_images/proccessed_data/`` (sic; ``original_data/`` holds the unprocessed images), and the baseline's
  README draws the folder as ``Images``. :func:`find_node21_layout` accepts all of these, a name without suffix,
  and extra columns (located by name, e.g. a pandas index column). NODE21 has no public test split, so the
  split is random (stratified by nodule / no nodule) unless the CSV has a ``split`` column.
- **VinDr-CXR**: the Kaggle *VinBigData Chest X-ray Abnormalities Detection* copy has ``train.csv`` with
  ``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max`` and ``train/<image_id>.dicom``; class_id 0-13 are
  the 14 findings of :data:`VINDR_CLASSES`, 14 is "No finding" with empty box fields. Three radiologists read each
  training image, so their boxes of one finding are fused (:func:`medbundle.detection.box_fusion.weighted_box_fusion`).
  The PhysioNet release (physionet.org/content/vindr-cxr/1.0.0) has ``annotations/annotations_train.csv`` (the same
  columns without ``class_id``, and 22 local labels, of which those outside ``classes`` are left out with one
  warning) and ``annotations/annotations_test.csv``: the consensus of five radiologists on ``test/<image_id>.dicom``,
  read as given, without fusion.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.detection.box_fusion import weighted_box_fusion
from medbundle.io.datalist import column_index, open_csv

__all__ = [
    "CXR_DETECTION_LAYOUTS",
    "cxr_detection_datalist",
    "NODE21_CLASSES",
    "VINDR_CLASSES",
    "VINDR_NO_FINDING",
    "VINDR_NO_FINDING_ID",
    "find_node21_layout",
    "find_vindr_layout",
    "node21_datalist",
    "read_node21_metadata",
    "read_vindr_annotations",
    "split_detection_items",
    "vindr_datalist",
]

#: The one NODE21 class.
NODE21_CLASSES: list[str] = ["nodule"]

#: The 14 VinDr-CXR (VinBigData competition) findings; the index is the ``class_id`` of ``train.csv``.
VINDR_CLASSES: list[str] = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
]
#: Class name and ``class_id`` of VinDr-CXR's "no finding" rows (empty box fields).
VINDR_NO_FINDING = "No finding"
VINDR_NO_FINDING_ID = 14

_SPLITS = ("training", "validation", "testing")
_SPLIT_ALIASES = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "testing",
    "testing": "testing",
}
_NODE21_SUFFIXES = (".mha", ".mhd")
_DICOM_SUFFIXES = (".dicom", ".dcm")
_MISSING_POLICIES = ("error", "skip")


# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------
def _cell(row: Sequence[str], index: int | None) -> str:
    if index is None or index >= len(row):
        return ""
    return row[index].strip()


def _number(text: str, path: Path, line: int, column: str, image: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"{path}, line {line} ({image}): column {column!r} holds {text!r}, not a finite number of pixels."
        )
    return value


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}.")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction} + {test_fraction} leaves no training images; keep it < 1."
        )


def split_detection_items(
    items: Sequence[dict[str, Any]], val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Split detection items into (training, validation, testing), deterministic for ``seed``.

    Images with findings (non-empty ``box``) and without are split separately, so each split gets its share of both:
    in each group ``round(test_fraction * n)`` images go to testing and ``round(val_fraction * n)`` to validation,
    drawn by a permutation of the image ids sorted (so the input order does not matter). Each returned list is sorted
    by ``image_id``.
    """
    _check_fractions(val_fraction, test_fraction)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in _SPLITS}
    for stratum, positive in enumerate((True, False)):
        group = sorted((it for it in items if bool(it["box"]) == positive), key=lambda it: str(it["image_id"]))
        n = len(group)
        perm = np.random.default_rng([int(seed), stratum]).permutation(n)
        n_test = int(round(float(test_fraction) * n))
        n_val = min(int(round(float(val_fraction) * n)), n - n_test)
        for rank, k in enumerate(perm.tolist()):
            split = "testing" if rank < n_test else "validation" if rank < n_test + n_val else "training"
            out[split].append(group[k])
    for s in _SPLITS:
        out[s].sort(key=lambda it: str(it["image_id"]))
    return out["training"], out["validation"], out["testing"]


def _index_files(folder: Path, suffixes: Sequence[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(name -> path, stem -> path) of the files in ``folder`` with one of ``suffixes`` (case-insensitive)."""
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for e in it:
            low = e.name.lower()
            suffix = next((s for s in suffixes if low.endswith(s)), None)
            if suffix is None or not e.is_file():
                continue
            p = Path(e.path).resolve()
            by_name[e.name] = p
            by_stem.setdefault(e.name[: -len(suffix)], p)
    return by_name, by_stem


def _report_missing(missing: list[tuple[str, int, str]], csv_path: Path, folder: Path, on_missing: str) -> None:
    """Raise (``on_missing="error"``) or warn once about images listed in ``csv_path`` but not in ``folder``."""
    if not missing:
        return
    name, line, expected = missing[0]
    more = f" ({len(missing)} images are missing in all)" if len(missing) > 1 else ""
    if on_missing == "error":
        raise FileNotFoundError(
            f"{csv_path}, line {line}: image {name!r} not found (expected {expected}){more}; pass "
            "on_missing='skip' to leave missing images out."
        )
    warnings.warn(
        f"{csv_path}: {len(missing)} listed images were not found under {folder} (first: {name!r}, line {line}) and "
        "were left out of the datalist.",
        stacklevel=3,
    )


# ----------------------------------------------------------------------------------------------------------
# NODE21
# ----------------------------------------------------------------------------------------------------------
def find_node21_layout(root: str | os.PathLike) -> tuple[Path, Path]:
    """``(metadata.csv, image folder)`` of a NODE21 download under ``root``.

    Looked for in ``root``, ``root/proccessed_data`` (the archive's spelling), ``root/processed_data``,
    ``root/cxr_images/proccessed_data`` and ``root/cxr_images/processed_data``; the images in ``images/`` or
    ``Images/`` beside the CSV.

    Raises:
        FileNotFoundError: No ``metadata.csv`` with an image folder beside it (the message lists where it looked).
    """
    root = Path(root).expanduser()
    candidates = [
        root,
        root / "proccessed_data",
        root / "processed_data",
        root / "cxr_images" / "proccessed_data",
        root / "cxr_images" / "processed_data",
    ]
    for d in candidates:
        if (d / "metadata.csv").is_file():
            for name in ("images", "Images"):
                if (d / name).is_dir():
                    return (d / "metadata.csv").resolve(), (d / name).resolve()
            raise FileNotFoundError(f"{d}: metadata.csv found but no images/ folder beside it (NODE21 layout).")
    raise FileNotFoundError(
        f"{root}: no NODE21 metadata.csv found in {', '.join(str(c) for c in candidates)} "
        "(expected metadata.csv and images/ as in the NODE21 training archive)."
    )


def read_node21_metadata(
    csv_path: str | os.PathLike, split_column: str | None = "split"
) -> dict[str, dict[str, Any]]:
    """Parse NODE21's ``metadata.csv``: one entry per image, in file order.

    Args:
        csv_path: The CSV (columns ``img_name,x,y,width,height,label`` found by name; others ignored).
        split_column: Name of an optional column assigning each image to ``train``/``val``/``test`` (aliases
            ``training``, ``valid``, ``validation``, ``testing``); ignored when absent. None: never read one.

    Returns:
        ``{img_name: {"box": [[x, y, x + width, y + height], ...], "line": first line, "split": str or None}}``; boxes
        are float pixels (corners). Label-0 rows (an image without nodules) add no box; an image with label-1 rows
        ignores its label-0 rows.

    Raises:
        FileNotFoundError: No file. ValueError: a missing column, an empty ``img_name``, a label other than 0/1, a
        nodule row whose x/y/width/height is not a finite number or whose width/height is not positive, or an unknown
        or conflicting split value; the message names the file, line and image.
    """
    path = Path(csv_path)
    entries: dict[str, dict[str, Any]] = {}
    with open_csv(path, "NODE21 metadata file", "the header img_name,x,y,width,height,label") as (header, rows):
        i_name = column_index(header, "img_name", path)
        i_x, i_y = column_index(header, "x", path), column_index(header, "y", path)
        i_w, i_h = column_index(header, "width", path), column_index(header, "height", path)
        i_lab = column_index(header, "label", path)
        i_split = None if split_column is None else column_index(header, split_column, path, required=False)
        for line, row in rows:
            name = _cell(row, i_name)
            if not name:
                raise ValueError(f"{path}, line {line}: empty 'img_name'.")
            text = _cell(row, i_lab)
            try:
                label = float(text)
            except ValueError:
                label = math.nan
            if label not in (0.0, 1.0):
                raise ValueError(
                    f"{path}, line {line} ({name}): label is {text!r}; NODE21 labels are 1 (a nodule box) or 0 "
                    "(an image without nodules)."
                )
            entry = entries.setdefault(name, {"box": [], "line": line, "split": None})
            if i_split is not None:
                raw = _cell(row, i_split)
                split = _SPLIT_ALIASES.get(raw.lower())
                if split is None:
                    raise ValueError(
                        f"{path}, line {line} ({name}): column {split_column!r} holds {raw!r}; expected one of "
                        f"{sorted(_SPLIT_ALIASES)}."
                    )
                if entry["split"] not in (None, split):
                    raise ValueError(
                        f"{path}, line {line} ({name}): split {raw!r} contradicts {entry['split']!r} on an earlier "
                        "row of the same image."
                    )
                entry["split"] = split
            if label == 0.0:
                continue
            x = _number(_cell(row, i_x), path, line, "x", name)
            y = _number(_cell(row, i_y), path, line, "y", name)
            w = _number(_cell(row, i_w), path, line, "width", name)
            h = _number(_cell(row, i_h), path, line, "height", name)
            if w <= 0 or h <= 0:
                raise ValueError(
                    f"{path}, line {line} ({name}): nodule box has width {w} and height {h}; both must be > 0."
                )
            entry["box"].append([x, y, x + w, y + h])
    return entries


def node21_datalist(
    root: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    csv: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    split_column: str | None = "split",
    on_missing: str = "error",
) -> dict[str, Any]:
    """Build a 2D detection datalist from a NODE21 folder.

    Args:
        root: The NODE21 folder (see :func:`find_node21_layout` for the layouts accepted); unused when both ``csv`` and
            ``image_dir`` are given.
        val_fraction, test_fraction: Shares of the images for validation and testing (split separately among images
            with and without nodules; see :func:`split_detection_items`), used unless the CSV has ``split_column``.
        seed: Seed of the split; the same folder and seed give the same datalist.
        csv, image_dir: Explicit ``metadata.csv`` and image folder (override the search).
        split_column: A CSV column that assigns images to splits, honoured when present (NODE21's public CSV has none).
        on_missing: ``"error"``: a listed image missing from the folder raises; ``"skip"``: it is left out, with one
            warning that counts them.

    Returns:
        ``{"training", "validation", "testing": [items], "classes": ["nodule"]}``; items are ``{"image": absolute
        path str, "box": [[x_min, y_min, x_max, y_max], ...] float pixels, "label": [0, ...], "image_id": img_name
        without suffix}``, sorted by ``image_id``; images without nodules have empty ``box``/``label``.

    Raises:
        FileNotFoundError: No layout found, or (``on_missing="error"``) a listed image missing; the message names the
            CSV line and the expected path. ValueError: a malformed row (see :func:`read_node21_metadata`) or bad
            fractions.
    """
    if on_missing not in _MISSING_POLICIES:
        raise ValueError(f"on_missing must be one of {_MISSING_POLICIES}, got {on_missing!r}.")
    _check_fractions(val_fraction, test_fraction)
    if csv is None or image_dir is None:
        found_csv, found_dir = find_node21_layout(root)
        csv_path = Path(csv) if csv is not None else found_csv
        img_dir = Path(image_dir) if image_dir is not None else found_dir
    else:
        csv_path, img_dir = Path(csv), Path(image_dir)
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir}: NODE21 image folder not found.")
    entries = read_node21_metadata(csv_path, split_column=split_column)
    by_name, by_stem = _index_files(img_dir, _NODE21_SUFFIXES)

    items: list[dict[str, Any]] = []
    missing: list[tuple[str, int, str]] = []
    splits: dict[str, str | None] = {}
    for name, e in entries.items():
        low = name.lower()
        has_suffix = any(low.endswith(s) for s in _NODE21_SUFFIXES)
        p = by_name.get(name) if has_suffix else by_stem.get(name)
        if p is None:
            missing.append((name, e["line"], str(img_dir / (name if has_suffix else name + ".mha"))))
            continue
        stem = next((name[: -len(s)] for s in _NODE21_SUFFIXES if low.endswith(s)), name)
        items.append({"image": str(p), "box": e["box"], "label": [0] * len(e["box"]), "image_id": stem})
        splits[stem] = e["split"]
    _report_missing(missing, Path(csv_path), img_dir, on_missing)

    if items and any(s is not None for s in splits.values()):
        unassigned = [k for k, s in splits.items() if s is None]
        if unassigned:
            raise ValueError(f"{csv_path}: column {split_column!r} is empty for image {unassigned[0]!r}.")
        out = {s: sorted((it for it in items if splits[it["image_id"]] == s), key=lambda it: it["image_id"])
               for s in _SPLITS}
        training, validation, testing = out["training"], out["validation"], out["testing"]
    else:
        training, validation, testing = split_detection_items(items, val_fraction, test_fraction, seed)
    return {"training": training, "validation": validation, "testing": testing, "classes": list(NODE21_CLASSES)}


# ----------------------------------------------------------------------------------------------------------
# VinDr-CXR
# ----------------------------------------------------------------------------------------------------------
def find_vindr_layout(root: str | os.PathLike, split: str = "train") -> tuple[Path, Path] | None:
    """``(annotation CSV, image folder)`` of the VinDr-CXR ``split`` (``"train"`` or ``"test"``) under ``root``.

    Train: ``train.csv`` (Kaggle), ``annotations/annotations_train.csv`` or ``annotations_train.csv`` (PhysioNet);
    test: ``annotations/annotations_test.csv``, ``annotations_test.csv`` or ``test.csv``. Images in
    ``root/<split>/``.

    Returns:
        The pair, or None when the split's CSV or image folder is absent (the Kaggle copy has no test labels).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(root).expanduser()
    names = (
        ("train.csv", "annotations/annotations_train.csv", "annotations_train.csv")
        if split == "train"
        else ("annotations/annotations_test.csv", "annotations_test.csv", "test.csv")
    )
    for name in names:
        if (root / name).is_file() and (root / split).is_dir():
            return (root / name).resolve(), (root / split).resolve()
    return None


def _vindr_class_map(classes: Sequence[str] | None) -> dict[str, int]:
    names = list(VINDR_CLASSES if classes is None else classes)
    if not names:
        raise ValueError("classes is empty; give at least one finding name.")
    if len(set(names)) != len(names):
        raise ValueError(f"classes lists a name twice: {names}.")
    if VINDR_NO_FINDING in names:
        raise ValueError(f"{VINDR_NO_FINDING!r} is not a box class; leave it out of classes.")
    return {n: i for i, n in enumerate(names)}


def read_vindr_annotations(
    csv_path: str | os.PathLike, classes: Sequence[str] | None = None, require_reader: bool = True
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Parse a VinDr-CXR annotation CSV into each image's boxes, reader by reader.

    Args:
        csv_path: ``train.csv`` / ``annotations_train.csv`` / ``annotations_test.csv``: columns ``image_id``,
            ``class_name``, ``x_min``, ``y_min``, ``x_max``, ``y_max`` (found by name), optional ``class_id`` (checked
            against the official id of a known class name) and ``rad_id``.
        classes: Finding names to keep, in label order (default :data:`VINDR_CLASSES`); label = index here.
        require_reader: Raise when there is no ``rad_id`` column; otherwise every row is reader ``"consensus"``.

    Returns:
        ``(images, skipped)``: ``images`` = ``{image_id: {"line": first line, "readers": {rad_id: {"box": [[x_min,
        y_min, x_max, y_max], ...], "label": [int, ...], "no_finding": bool}}}}`` in file order; a reader with only a
        "No finding" row has empty lists. ``skipped`` = ``{class_name: rows}`` of findings not in ``classes`` (their
        readers still count as having read the image).

    Raises:
        FileNotFoundError: No file. ValueError: a missing column, an empty ``image_id``/``class_name``, a ``class_id``
        that contradicts the class name, or a finding whose box is not four finite numbers with ``x_max > x_min`` and
        ``y_max > y_min``; the message names the file, line and image.
    """
    path = Path(csv_path)
    cmap = _vindr_class_map(classes)
    official = {n: i for i, n in enumerate(VINDR_CLASSES)}
    official[VINDR_NO_FINDING] = VINDR_NO_FINDING_ID
    images: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}
    with open_csv(path, "VinDr-CXR annotation file",
                  "the header image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max") as (header, rows):
        i_img = column_index(header, "image_id", path)
        i_cls = column_index(header, "class_name", path)
        i_cid = column_index(header, "class_id", path, required=False)
        i_rad = column_index(header, "rad_id", path, required=require_reader)
        i_box = [column_index(header, c, path) for c in ("x_min", "y_min", "x_max", "y_max")]
        for line, row in rows:
            image_id = _cell(row, i_img)
            if not image_id:
                raise ValueError(f"{path}, line {line}: empty 'image_id'.")
            name = _cell(row, i_cls)
            if not name:
                raise ValueError(f"{path}, line {line} ({image_id}): empty 'class_name'.")
            cid = _cell(row, i_cid)
            if cid and name in official:
                try:
                    cid_ok = float(cid) == official[name]
                except ValueError:
                    cid_ok = False
                if not cid_ok:
                    raise ValueError(
                        f"{path}, line {line} ({image_id}): class_id {cid!r} does not match class_name {name!r} "
                        f"(VinDr-CXR id {official[name]}); is a column shifted?"
                    )
            rad = _cell(row, i_rad) if i_rad is not None else "consensus"
            entry = images.setdefault(image_id, {"line": line, "readers": {}})
            reader = entry["readers"].setdefault(rad or "unknown", {"box": [], "label": [], "no_finding": False})
            if name == VINDR_NO_FINDING:
                reader["no_finding"] = True
                continue
            coords = [_number(_cell(row, i), path, line, c, image_id)
                      for i, c in zip(i_box, ("x_min", "y_min", "x_max", "y_max"))]
            if coords[2] <= coords[0] or coords[3] <= coords[1]:
                raise ValueError(
                    f"{path}, line {line} ({image_id}): {name!r} box {coords} has x_max <= x_min or y_max <= y_min."
                )
            if name not in cmap:
                skipped[name] = skipped.get(name, 0) + 1
                continue
            reader["box"].append(coords)
            reader["label"].append(cmap[name])
    return images, skipped


def _vindr_items(
    images: dict[str, dict[str, Any]],
    csv_path: Path,
    img_dir: Path,
    fuse: bool,
    iou_threshold: float,
    min_readers: int,
    on_missing: str,
) -> list[dict[str, Any]]:
    _, by_stem = _index_files(img_dir, _DICOM_SUFFIXES)
    items: list[dict[str, Any]] = []
    missing: list[tuple[str, int, str]] = []
    for image_id, e in images.items():
        p = by_stem.get(image_id)
        if p is None:
            missing.append((image_id, e["line"], str(img_dir / f"{image_id}.dicom")))
            continue
        readers = list(e["readers"].values())
        if fuse:
            fused = weighted_box_fusion(
                [r["box"] for r in readers], [r["label"] for r in readers],
                iou_threshold=iou_threshold, min_readers=min_readers,
            )
            box, label = fused.boxes.tolist(), fused.labels.tolist()
        else:
            box = [b for r in readers for b in r["box"]]
            label = [lab for r in readers for lab in r["label"]]
        items.append({"image": str(p), "box": box, "label": [int(v) for v in label], "image_id": image_id})
    _report_missing(missing, csv_path, img_dir, on_missing)
    return sorted(items, key=lambda it: it["image_id"])


def vindr_datalist(
    root: str | os.PathLike,
    split: str = "train",
    classes: Sequence[str] | None = None,
    fusion: str = "wbf",
    iou_threshold: float = 0.5,
    min_readers: int = 1,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    csv: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    on_missing: str = "error",
) -> dict[str, Any]:
    """Build a 2D detection datalist from a VinDr-CXR folder (Kaggle or PhysioNet layout).

    Readers: each training image was read by three radiologists (``rad_id``). With ``fusion="wbf"`` the boxes of one
    class are fused by :func:`~medbundle.detection.box_fusion.weighted_box_fusion` (boxes overlapping with IoU >
    ``iou_threshold`` become their mean; a box no other reader matched stays, with one reader) and fused boxes
    marked by fewer than ``min_readers`` distinct readers are dropped. A reader who wrote "No finding" contributes no
    box: with ``min_readers=1`` (default) the marks of the other readers are kept and the image counts as abnormal;
    with ``min_readers=k`` a finding needs ``k`` readers to agree, so "No finding" readers can outvote a single mark.
    An image is normal (empty ``box``/``label``) when no fused box is left. ``fusion="none"`` keeps every reader's
    box as drawn.

    Args:
        root: The dataset folder (see :func:`find_vindr_layout`).
        split: ``"train"``: the training annotations, fused, split into training/validation (``val_fraction``) and,
            when the layout has official test annotations with images (PhysioNet's consensus test set), testing = that
            set read as given; otherwise ``test_fraction`` of the training images form testing. ``"test"``: only the
            official test set, as testing.
        classes: Finding names, in label order (default :data:`VINDR_CLASSES`, label = VinDr ``class_id``); findings of
            other classes are left out, their images kept (one warning counts the rows of names that are not among the
            14, such as PhysioNet's other local labels; another names chosen classes that never occur).
        fusion: ``"wbf"`` or ``"none"`` (training annotations only; the consensus test set is never fused).
        iou_threshold, min_readers: See above.
        val_fraction, test_fraction, seed: The random split (stratified by with/without findings; see
            :func:`split_detection_items`).
        csv, image_dir: Explicit annotation CSV and image folder for ``split`` (override the search).
        on_missing: ``"error"`` (a listed image missing from the folder raises) or ``"skip"`` (left out, one warning).

    Returns:
        ``{"training", "validation", "testing": [items], "classes": [names], "fusion": {"method", "iou_threshold",
        "min_readers"}}``; items are ``{"image": absolute path str, "box": [[x_min, y_min, x_max, y_max], ...] float
        pixels, "label": [int, ...], "image_id": str}`` sorted by ``image_id``.

    Raises:
        FileNotFoundError: No annotations for ``split``, or (``on_missing="error"``) a missing image. ValueError: a
            malformed row (see :func:`read_vindr_annotations`), an unknown ``split``/``fusion``/``on_missing``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if fusion not in ("wbf", "none"):
        raise ValueError(f"fusion must be 'wbf' or 'none', got {fusion!r}.")
    if on_missing not in _MISSING_POLICIES:
        raise ValueError(f"on_missing must be one of {_MISSING_POLICIES}, got {on_missing!r}.")
    if int(min_readers) < 1:
        raise ValueError(f"min_readers must be >= 1, got {min_readers}.")
    _check_fractions(val_fraction, test_fraction)
    names = list(_vindr_class_map(classes))
    root = Path(root).expanduser()

    def layout(which: str) -> tuple[Path, Path] | None:
        found = find_vindr_layout(root, which)
        if which != split or (csv is None and image_dir is None):
            return found
        c = Path(csv) if csv is not None else (found[0] if found else None)
        if c is None:
            raise FileNotFoundError(f"{root}: no VinDr-CXR {which} annotation CSV found; pass csv=.")
        return c, Path(image_dir) if image_dir is not None else (found[1] if found else root / which)

    skipped_all: dict[str, int] = {}

    def read(which: str, fuse: bool) -> list[dict[str, Any]]:
        found = layout(which)
        assert found is not None
        c, d = found
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: VinDr-CXR image folder not found.")
        images, skipped = read_vindr_annotations(c, names, require_reader=fuse)
        for k, v in skipped.items():
            skipped_all[k] = skipped_all.get(k, 0) + v
        return _vindr_items(images, c, d, fuse, iou_threshold, int(min_readers), on_missing)

    training: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    if split == "train":
        if layout("train") is None:
            raise FileNotFoundError(
                f"{root}: no VinDr-CXR training annotations (train.csv or annotations/annotations_train.csv) with a "
                "train/ image folder."
            )
        train_items = read("train", fusion == "wbf")
        if layout("test") is not None:
            testing = read("test", False)
            training, validation, _ = split_detection_items(train_items, val_fraction, 0.0, seed)
        else:
            training, validation, testing = split_detection_items(train_items, val_fraction, test_fraction, seed)
    else:
        if layout("test") is None:
            raise FileNotFoundError(
                f"{root}: no VinDr-CXR test annotations (annotations/annotations_test.csv or test.csv) with a test/ "
                "image folder; the Kaggle copy has no test labels."
            )
        testing = read("test", False)
    foreign = {k: v for k, v in skipped_all.items() if k not in VINDR_CLASSES}
    if foreign:  # e.g. PhysioNet's local labels beyond the 14; a chosen subset of the 14 is left out silently
        warnings.warn(
            f"{root}: rows of findings that are not VinDr-CXR's 14 classes were left out: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(foreign.items())),
            stacklevel=2,
        )
    seen = {lab for it in training + validation + testing for lab in it["label"]}
    absent = [n for i, n in enumerate(names) if i not in seen]
    if classes is not None and absent:
        warnings.warn(f"{root}: no box of {absent} in the datalist; check the class names.", stacklevel=2)
    return {
        "training": training,
        "validation": validation,
        "testing": testing,
        "classes": names,
        "fusion": {"method": fusion, "iou_threshold": float(iou_threshold), "min_readers": int(min_readers)},
    }


#: dataset layouts :func:`cxr_detection_datalist` reads
CXR_DETECTION_LAYOUTS = ("node21", "vindr")


def cxr_detection_datalist(root: str | os.PathLike, layout: str = "node21", **kwargs: Any) -> dict[str, Any]:
    """The datalist of a chest X-ray detection dataset in one of :data:`CXR_DETECTION_LAYOUTS` (a bundle config's
    ``dataset_format`` switch): :func:`node21_datalist` or :func:`vindr_datalist` with ``kwargs``.

    Raises:
        ValueError: An unknown layout (the message lists the known ones).
    """
    name = str(layout).lower().replace("-", "").replace("_", "")
    if name == "node21":
        return node21_datalist(root, **kwargs)
    if name in ("vindr", "vindrcxr", "vinbigdata"):
        return vindr_datalist(root, **kwargs)
    raise ValueError(f"unknown chest X-ray detection layout {layout!r}; use one of {list(CXR_DETECTION_LAYOUTS)}.")
