"""Adapters from public whole-slide datasets to MONAI datalists, and their tumour annotations.

- **Camelyon16** (lymph-node metastases, binary): ``training/normal/normal_NNN.tif`` (label 0) and
  ``training/tumor/tumor_NNN.tif`` (label 1), tumour outlines as ASAP XML in
  ``training/lesion_annotations/tumor_NNN.xml`` (or ``lesion_annotations/`` at the root); test slides
  ``testing/images/test_NNN.tif`` labelled by ``testing/reference.csv`` (``test_NNN,Tumor|Normal,...``,
  no header as published; a header row is tolerated), with test outlines in
  ``testing/lesion_annotations/`` when present. :func:`camelyon16_datalist` keeps the official test set
  as ``"testing"`` and draws a stratified ``"validation"`` split from training.
- **PANDA** (prostate biopsies, ISUP grade 0-5): ``train.csv`` with
  ``image_id,data_provider,isup_grade,gleason_score`` and ``train_images/<image_id>.tiff`` (optionally
  ``train_label_masks/<image_id>_mask.tiff``). PANDA publishes no test labels, so
  :func:`panda_datalist` draws stratified ``"validation"`` and ``"testing"`` splits by grade.

Items are ``{"image": path, "label": int, "slide_id": ...}`` plus ``"annotation"`` (ASAP XML, Camelyon16
tumour slides) or ``"mask"``/``"data_provider"``/``"gleason_score"`` (PANDA). A slide listed but missing on
disk is logged, left out, and recorded under the datalist's ``"missing"`` key; a malformed label stops
the adapter with the file, line and value.

A slide may also be a DICOM whole-slide image: a folder named as the slide (``training/normal/normal_001/``,
``train_images/<image_id>/``) holding the VL Whole Slide Microscopy instances of its pyramid levels; the item's
``"image"`` is then that folder (:mod:`medbundle.pathology.dicom_wsi`).
"""

from __future__ import annotations

import csv
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.io.datalist import load_datalist, write_datalist
from medbundle.pathology.dicom_wsi import is_dicom_slide

__all__ = [
    "CAMELYON16_CLASSES",
    "PANDA_CLASSES",
    "build_datalist",
    "camelyon16_datalist",
    "load_datalist",
    "panda_datalist",
    "points_in_annotations",
    "read_asap_xml",
    "write_datalist",
]

logger = logging.getLogger("medbundle.data")

CAMELYON16_CLASSES: list[str] = ["normal", "tumor"]
PANDA_CLASSES: list[str] = [f"ISUP {g}" for g in range(6)]

#: ASAP groups that mark regions *excluded* from the tumour outline (Camelyon16 uses ``_2``).
EXCLUSION_GROUPS = ("_2", "exclusion", "Exclusion", "None-tumor", "non-tumor")


# ----------------------------------------------------------------------------------------------------------
# annotations
# ----------------------------------------------------------------------------------------------------------
def read_asap_xml(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Polygons of an ASAP annotation file: ``[{"name", "group", "type", "polygon": (K, 2) x, y}]`` in
    level-0 pixels. Raises ``ValueError`` naming the file when it is not ASAP XML."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"{path}: not a readable ASAP annotation XML ({e})") from e
    out = []
    for ann in root.iter("Annotation"):
        coords = []
        for c in ann.iter("Coordinate"):
            try:
                coords.append((int(c.get("Order", len(coords))), float(c.get("X")), float(c.get("Y"))))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: annotation {ann.get('Name')!r} has a bad coordinate {c.attrib}") from e
        if len(coords) < 3:
            continue
        coords.sort()
        out.append({"name": ann.get("Name", ""), "group": ann.get("PartOfGroup", ""), "type": ann.get("Type", ""),
                    "polygon": np.array([(x, y) for _, x, y in coords], dtype=np.float64)})
    return out


def points_in_annotations(points_xy: np.ndarray, annotations: Sequence[dict[str, Any]],
                          exclusion_groups: Sequence[str] = EXCLUSION_GROUPS) -> np.ndarray:
    """Which level-0 points ``(M, 2)`` lie inside a tumour polygon and outside every exclusion polygon."""
    from matplotlib.path import Path as MplPath

    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(pts), bool)
    excluded = np.zeros(len(pts), bool)
    for a in annotations:
        hit = MplPath(a["polygon"]).contains_points(pts)
        if a.get("group") in exclusion_groups:
            excluded |= hit
        else:
            inside |= hit
    return inside & ~excluded


# ----------------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------------
def _stratified(labels: Sequence[int], fraction: float, rng: np.random.Generator,
                pool: Sequence[int] | None = None) -> set[int]:
    """Indices (from ``pool``) held out: ``round(fraction * n)`` per label, >= 1 for labels with >= 2 items."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fractions must be in [0, 1), got {fraction}")
    pool = list(range(len(labels))) if pool is None else list(pool)
    held: set[int] = set()
    if fraction == 0:
        return held
    for c in sorted({labels[i] for i in pool}):
        members = [i for i in pool if labels[i] == c]
        n_out = int(round(fraction * len(members)))
        if n_out == 0 and len(members) >= 2:
            n_out = 1
        held.update(members[j] for j in rng.permutation(len(members))[:n_out])
    return held


def _slide_path(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """``folder/<stem><suffix>`` for the first suffix that exists, else the DICOM slide folder ``folder/<stem>/``."""
    for s in suffixes:
        if (folder / f"{stem}{s}").is_file():
            return folder / f"{stem}{s}"
    d = folder / stem
    return d if d.is_dir() and is_dicom_slide(d) else None


def _is_slide(p: Path, suffixes: Sequence[str]) -> bool:
    return (p.is_file() and p.suffix.lower() in suffixes) or (p.is_dir() and is_dicom_slide(p))


def _find_annotation(dirs: Sequence[Path], stem: str) -> str | None:
    for d in dirs:
        p = d / f"{stem}.xml"
        if p.is_file():
            return str(p)
    return None


# ----------------------------------------------------------------------------------------------------------
# Camelyon16
# ----------------------------------------------------------------------------------------------------------
def _subdir(parent: Path, name: str) -> Path | None:
    if not parent.is_dir():
        return None
    for p in parent.iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def camelyon16_datalist(
    root: str | os.PathLike,
    val_fraction: float = 0.15,
    seed: int = 0,
    suffixes: Sequence[str] = (".tif", ".tiff"),
) -> dict[str, Any]:
    """Datalist of a Camelyon16 folder (see the module docstring for the layout).

    Returns:
        ``{"training", "validation", "testing", "labels": ["normal", "tumor"], "missing": [...]}``.

    Raises:
        FileNotFoundError: no ``training/normal`` or ``training/tumor`` folder under ``root``.
        ValueError: ``reference.csv`` has a label other than Tumor/Normal (file, line, value named).
    """
    root = Path(root).expanduser().resolve()
    training = _subdir(root, "training") or root
    normal_dir, tumor_dir = _subdir(training, "normal"), _subdir(training, "tumor")
    if normal_dir is None and tumor_dir is None:
        raise FileNotFoundError(
            f"{root}: no training/normal or training/tumor folder; is this the Camelyon16 root "
            "(training/normal/normal_001.tif, training/tumor/tumor_001.tif, testing/images/test_001.tif)?"
        )
    ann_dirs = [d for d in (_subdir(training, "lesion_annotations"), _subdir(root, "lesion_annotations"),
                            _subdir(root, "annotations")) if d is not None]
    items: list[dict[str, Any]] = []
    for folder, label in ((normal_dir, 0), (tumor_dir, 1)):
        if folder is None:
            continue
        for p in sorted(folder.iterdir()):
            if _is_slide(p, suffixes):
                it = {"image": str(p), "label": label, "slide_id": p.stem if p.is_file() else p.name}
                ann = _find_annotation(ann_dirs, p.stem) if label == 1 else None
                if ann:
                    it["annotation"] = ann
                items.append(it)
    if not items:
        raise FileNotFoundError(f"{root}: no slides ({', '.join(suffixes)} or DICOM slide folders) in "
                                "training/normal or training/tumor")
    rng = np.random.default_rng(seed)
    held = _stratified([it["label"] for it in items], val_fraction, rng)
    out: dict[str, Any] = {
        "training": [it for i, it in enumerate(items) if i not in held],
        "validation": [it for i, it in enumerate(items) if i in held],
        "testing": [],
        "labels": list(CAMELYON16_CLASSES),
        "missing": [],
    }
    testing = _subdir(root, "testing")
    ref = None
    if testing is not None:
        for cand in (testing / "reference.csv", testing / "reference" / "reference.csv"):
            if cand.is_file():
                ref = cand
                break
    if ref is not None:
        img_dir = _subdir(testing, "images") or testing
        test_ann = [d for d in (_subdir(testing, "lesion_annotations"), _subdir(testing, "annotations")) if d]
        with open(ref, newline="", encoding="utf-8-sig") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip():
                    continue
                name, kind = row[0].strip(), (row[1].strip() if len(row) > 1 else "")
                if line == 1 and kind.lower() not in ("tumor", "normal"):
                    if name.lower() in ("image", "name", "slide", "id", "image_id"):
                        continue  # a header row
                if kind.lower() not in ("tumor", "normal"):
                    raise ValueError(f"{ref}, line {line}: label {kind!r} for {name!r}; expected Tumor or Normal")
                stem = Path(name).stem
                path = _slide_path(img_dir, stem, suffixes)
                if path is None:
                    logger.warning("%s, line %d: slide %s not found in %s; left out", ref, line, stem, img_dir)
                    out["missing"].append(str(img_dir / f"{stem}.tif"))
                    continue
                it = {"image": str(path), "label": int(kind.lower() == "tumor"), "slide_id": stem}
                ann = _find_annotation(test_ann, stem) if it["label"] == 1 else None
                if ann:
                    it["annotation"] = ann
                out["testing"].append(it)
    return out


# ----------------------------------------------------------------------------------------------------------
# PANDA
# ----------------------------------------------------------------------------------------------------------
_PANDA_COLUMNS = ("image_id", "data_provider", "isup_grade", "gleason_score")


def panda_datalist(
    root: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    csv_name: str = "train.csv",
    image_dir: str = "train_images",
    mask_dir: str = "train_label_masks",
    suffixes: Sequence[str] = (".tiff", ".tif"),
) -> dict[str, Any]:
    """Datalist of a PANDA folder: ``train.csv`` plus ``train_images/<image_id>.tiff``.

    ``"testing"`` (``test_fraction``) and ``"validation"`` (``val_fraction`` of the whole set) are drawn
    stratified by ISUP grade; ``"labels"`` is ``["ISUP 0", ..., "ISUP 5"]``.

    Raises:
        FileNotFoundError: no ``train.csv``.
        ValueError: a required column is missing, or an ``isup_grade`` is not 0-5 (file and line named).
    """
    root = Path(root).expanduser().resolve()
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: not found; a PANDA folder holds train.csv and train_images/")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing_cols = [c for c in ("image_id", "isup_grade") if c not in header]
        if missing_cols:
            raise ValueError(f"{csv_path}: missing column(s) {missing_cols}; expected {','.join(_PANDA_COLUMNS)}, "
                             f"found {header}")
        rows = [({(k or "").strip(): (v or "").strip() for k, v in r.items()}, line)
                for line, r in enumerate(reader, start=2)]
    items: list[dict[str, Any]] = []
    missing: list[str] = []
    img_root, mask_root = root / image_dir, root / mask_dir
    for r, line in rows:
        image_id = r["image_id"]
        if not image_id:
            raise ValueError(f"{csv_path}, line {line}: empty image_id")
        try:
            grade = float(r["isup_grade"])
        except ValueError:
            grade = float("nan")
        if not (grade == grade and grade.is_integer() and 0 <= grade <= 5):
            raise ValueError(f"{csv_path}, line {line}: isup_grade {r['isup_grade']!r} for {image_id}; expected 0-5")
        path = _slide_path(img_root, image_id, suffixes)
        if path is None:
            logger.warning("%s, line %d: slide %s not found in %s; left out", csv_path, line, image_id, img_root)
            missing.append(str(img_root / f"{image_id}.tiff"))
            continue
        it = {"image": str(path), "label": int(grade), "slide_id": image_id}
        for k in ("data_provider", "gleason_score"):
            if r.get(k):
                it[k] = r[k]
        mask = mask_root / f"{image_id}_mask.tiff"
        if mask.is_file():
            it["mask"] = str(mask)
        items.append(it)
    if not items:
        raise FileNotFoundError(f"{csv_path}: none of the {len(rows)} slides was found in {img_root}")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    labels = [it["label"] for it in items]
    rng = np.random.default_rng(seed)
    test = _stratified(labels, test_fraction, rng)
    rest = [i for i in range(len(items)) if i not in test]
    val = _stratified(labels, val_fraction / (1.0 - test_fraction) if test_fraction else val_fraction, rng, rest)
    return {
        "training": [items[i] for i in rest if i not in val],
        "validation": [items[i] for i in sorted(val)],
        "testing": [items[i] for i in sorted(test)],
        "labels": list(PANDA_CLASSES),
        "missing": missing,
    }


def build_datalist(layout: str, root: str | os.PathLike, val_fraction: float = 0.15, test_fraction: float = 0.2,
                   seed: int = 0) -> dict[str, Any]:
    """Datalist of a dataset folder in a public ``layout``: ``"camelyon16"`` or ``"panda"``."""
    layout = str(layout).lower()
    if layout == "camelyon16":
        return camelyon16_datalist(root, val_fraction=val_fraction, seed=seed)
    if layout == "panda":
        return panda_datalist(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    raise ValueError(f"unknown data layout {layout!r}; use 'camelyon16' or 'panda' (or pass a datalist_file)")
