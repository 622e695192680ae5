"""LUNA16 layout -> MONAI detection datalist, world <-> image box conversion, LUNA16 result CSVs.

The LUNA16 layout (``subset0`` .. ``subset9`` folders of ``<seriesuid>.mhd`` + ``.raw``, ``annotations.csv``,
``annotations_excluded.csv``, ``seriesuids.csv``; see :mod:`medbundle.detection.synthetic`, which writes
it) is turned into the datalist MONAI's detection recipes read (:func:`luna16_datalist`)::

    {"training": [{"image": "/abs/subset3/<uid>.mhd", "box": [[cx, cy, cz, d, d, d], ...],
                   "label": [0, ...], "seriesuid": "<uid>", "subset": 3}, ...],
     "validation": [...], "testing": [...], "excluded": {"<uid>": [[x, y, z, d], ...]}}

Boxes are in **world mm, LPS** (as the CSV), box mode ``cccwhd`` (centre, then size; a nodule of diameter
``d`` is the cube of side ``d``).

Boxes and images: a MONAI detection pipeline maps the world boxes to voxel boxes with
``ConvertBoxToStandardModed(box_keys="box", mode="cccwhd")`` (-> ``xyzxyz`` corners) and
``AffineBoxToImageCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True)``. The
image's ``meta["affine"]`` is RAS (MONAI readers, including :class:`~medbundle.io.metaimage.MetaImageReader`
and ``ITKReader``, flip ITK's LPS to RAS), while the LUNA16 boxes are LPS: ``affine_lps_to_ras=True`` makes
that transform flip the affine back to LPS (``orientation_ras_lps``, negating the first two rows) before
inverting it, and it maps the two box corners through the inverse and takes their min/max. The functions
:func:`world_to_image_boxes` / :func:`image_to_world_boxes` do the same in numpy, in ``cccwhd`` on both
sides; they serve the inference writer (voxel boxes -> world LPS centres for the LUNA16 CSV) and tests. Use
the affine the boxes refer to (after ``Orientationd``/``Spacingd``, the image's current ``meta["affine"]``).
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.detection.boxes import as_cccwhd_boxes
from medbundle.io.luna16_csv import RESULT_COLUMNS, read_luna16_annotations
from medbundle.io.metaimage import luna16_readers
from medbundle.utils import to_numpy

__all__ = [
    "LUNA16_SCAN_SUFFIXES",
    "find_luna16_scans",
    "luna16_datalist",
    "detections_to_luna16_rows",
    "write_luna16_results",
    "luna16_readers",
]

#: Scan file suffixes found under ``subsetK/`` (the first is LUNA16's own; the others for converted copies).
LUNA16_SCAN_SUFFIXES: tuple[str, ...] = (".mhd", ".mha", ".nii.gz", ".nii")
_SUBSET_RE = re.compile(r"^subset(\d+)$")
#: Diameter the LUNA16 evaluation gives excluded findings written with a negative diameter (mm).
_DEFAULT_EXCLUDED_DIAMETER = 10.0


# ----------------------------------------------------------------------------------------------------------
# datalist
# ----------------------------------------------------------------------------------------------------------
def find_luna16_scans(root: str | os.PathLike) -> dict[str, tuple[Path, int]]:
    """Map series UID -> (scan path, subset number) for the scans in ``root/subsetK/`` folders.

    A scan is a file ``<seriesuid><suffix>`` with a suffix of :data:`LUNA16_SCAN_SUFFIXES` (``.raw`` data
    files are not scans). Other folders under ``root`` are ignored.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no ``subsetK`` folder with scans.
        ValueError: The same UID in two places (the message names both).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LUNA16 root folder not found.")
    scans: dict[str, tuple[Path, int]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _SUBSET_RE.match(p.name)):
        k = int(_SUBSET_RE.match(folder.name).group(1))  # type: ignore[union-attr]
        for f in sorted(folder.iterdir()):
            low = f.name.lower()
            suffix = next((s for s in LUNA16_SCAN_SUFFIXES if low.endswith(s)), None)
            if suffix is None or not f.is_file():
                continue
            uid = f.name[: -len(suffix)]
            if uid in scans:
                raise ValueError(f"series {uid} appears twice: {scans[uid][0]} and {f}; keep one copy.")
            scans[uid] = (f.resolve(), k)
    if not scans:
        raise FileNotFoundError(
            f"{root}: no scans found in subset0 .. subsetN folders (expected <seriesuid>.mhd files as in LUNA16)."
        )
    return scans


def _rows_by_uid(table: Mapping[str, np.ndarray]) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    for uid, x, y, z, d in zip(
        table["seriesuid"].tolist(),
        table["coordX"].tolist(),
        table["coordY"].tolist(),
        table["coordZ"].tolist(),
        table["diameter_mm"].tolist(),
    ):
        out.setdefault(uid, []).append([x, y, z, d])
    return out


def luna16_datalist(
    root: str | os.PathLike,
    val_fold: int | None = None,
    test_fold: int | Sequence[int] | None = None,
    n_folds: int | None = None,
    label: int = 0,
    include_excluded: bool = False,
    annotations: str | os.PathLike | None = None,
    excluded: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build a MONAI detection datalist from a LUNA16-layout folder, split by subset.

    Args:
        root: Folder with ``subset0`` .. ``subsetN`` (scans) and ``annotations.csv``.
        val_fold, test_fold: Fold numbers whose scans form ``"validation"`` and ``"testing"``; all other scans are
            ``"training"``. ``test_fold`` may list several folds (e.g. ``[4, 5, 6]``: a test set large enough that one
            nodule is not a tenth of the sensitivity). ``test_fold=None``: no test scans (``"testing"`` is empty).
            ``val_fold=None``: the last fold that is not a test fold. Cross-validation as in MONAI's LUNA16 recipe:
            ``val_fold=k`` for k in 0..9, ``test_fold=None``.
        n_folds: Fold of a scan = its subset number modulo ``n_folds``; None: one fold per subset (the number of folds
            is the largest subset number found + 1).
        label: Class index written for every nodule.
        include_excluded: Also give each item ``"excluded_box"``: its excluded findings as ``cccwhd`` world LPS boxes (a
            negative diameter becomes 10 mm, the size the LUNA16 evaluation gives them), e.g. to ignore detections
            there. ``"box"``/``"label"`` never hold excluded findings.
        annotations, excluded: CSV paths; default ``root/annotations.csv`` (required) and
            ``root/annotations_excluded.csv`` (optional: no file, no excluded findings).

    Returns:
        dict: ``"training"``, ``"validation"``, ``"testing"``: lists of items ``{"image": absolute path str, "box":
            [[cx, cy, cz, d, d, d], ...] (world mm, LPS, cccwhd), "label": [label, ...], "seriesuid", "subset"}`` sorted
            by subset then UID; scans without nodules are included with empty ``box`` and ``label`` (they carry the
            false positives of a FROC analysis). ``"excluded"``: ``{uid: [[x, y, z, diameter_mm], ...]}`` for the scans
            found. ``"n_folds"``, ``"val_fold"``, ``"test_fold"``: the split actually used (``test_fold`` as given: an
            int, a list of ints or None).

    Raises:
        FileNotFoundError: No scans, or no annotations file (the message names the path).
        ValueError: A fold out of range, ``val_fold`` among the test folds, or a bad CSV (see
            :func:`medbundle.io.luna16_csv.read_luna16_annotations`).

    Warns:
        UserWarning: Annotations of series that have no scan under ``root`` (e.g. subsets not downloaded); they are
            skipped.
    """
    root = Path(root)
    scans = find_luna16_scans(root)
    ann_path = Path(annotations) if annotations is not None else root / "annotations.csv"
    if not ann_path.is_file():
        raise FileNotFoundError(f"{ann_path}: LUNA16 annotations file not found.")
    nodules = _rows_by_uid(read_luna16_annotations(ann_path))
    exc_path = Path(excluded) if excluded is not None else root / "annotations_excluded.csv"
    if excluded is not None and not exc_path.is_file():
        raise FileNotFoundError(f"{exc_path}: LUNA16 excluded-annotations file not found.")
    excl = _rows_by_uid(read_luna16_annotations(exc_path)) if exc_path.is_file() else {}
    missing = sorted(set(nodules) - set(scans))
    if missing:
        warnings.warn(
            f"{ann_path}: {len(missing)} annotated series have no scan under {root} (first: {missing[0]}); "
            "their annotations are skipped.",
            stacklevel=2,
        )

    max_subset = max(k for _, k in scans.values())
    folds = max_subset + 1 if n_folds is None else int(n_folds)
    if folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}.")
    test_folds = set() if test_fold is None else {int(f) for f in np.atleast_1d(np.asarray(test_fold)).tolist()}
    if test_fold is not None and not test_folds:
        raise ValueError("test_fold is an empty list; give fold numbers, or None for no test scans.")
    for name, value in [("val_fold", val_fold)] + [("test_fold", f) for f in sorted(test_folds)]:
        if value is not None and not 0 <= int(value) < folds:
            raise ValueError(f"{name}={value} is out of range: folds are 0..{folds - 1} under {root}.")
    if val_fold is None:
        val_fold = max((f for f in range(folds) if f not in test_folds), default=-1)
        if val_fold < 0:
            raise ValueError(f"{root}: every fold is a test fold; there is no fold left to validate on.")
    if int(val_fold) in test_folds:
        raise ValueError(f"val_fold {val_fold} is also a test fold ({sorted(test_folds)}); pick different folds.")

    out: dict[str, Any] = {"training": [], "validation": [], "testing": []}
    for uid, (path, k) in sorted(scans.items(), key=lambda kv: (kv[1][1], kv[0])):
        rows = nodules.get(uid, [])
        item: dict[str, Any] = {
            "image": str(path),
            "box": [[x, y, z, d, d, d] for x, y, z, d in rows],
            "label": [int(label)] * len(rows),
            "seriesuid": uid,
            "subset": k,
        }
        if include_excluded:
            item["excluded_box"] = [
                [x, y, z, *([d if d > 0 else _DEFAULT_EXCLUDED_DIAMETER] * 3)] for x, y, z, d in excl.get(uid, [])
            ]
        fold = k % folds
        if fold in test_folds:
            split = "testing"
        else:
            split = "validation" if fold == int(val_fold) else "training"
        out[split].append(item)
    out["excluded"] = {uid: excl[uid] for uid in sorted(excl) if uid in scans}
    out["n_folds"], out["val_fold"], out["test_fold"] = folds, int(val_fold), test_fold
    return out


# ----------------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------
def detections_to_luna16_rows(
    seriesuid: str, boxes_world: Any, scores: Any, max_marks: int | None = 100
) -> list[dict[str, Any]]:
    """LUNA16 submission rows of one scan: box centres (world LPS mm) and scores, highest score first.

    ``boxes_world``: ``(N, 6)`` cccwhd world boxes (e.g. from :func:`image_to_world_boxes`); ``scores``:
    ``(N,)``; ``max_marks``: keep at most this many (the LUNA16 evaluation keeps 100 per scan; None: all).
    """
    b = as_cccwhd_boxes(boxes_world, "boxes_world")
    s = to_numpy(scores, "scores", dtype=np.float64)
    s = s.reshape(-1)
    if s.size != b.shape[0]:
        raise ValueError(f"{seriesuid}: {b.shape[0]} boxes but {s.size} scores.")
    order = np.argsort(-s, kind="stable")[: None if max_marks is None else int(max_marks)]
    return [
        {"seriesuid": seriesuid, "coordX": b[i, 0], "coordY": b[i, 1], "coordZ": b[i, 2], "probability": s[i]}
        for i in order.tolist()
    ]


def write_luna16_results(rows: Iterable[Mapping[str, Any] | Sequence[Any]], path: str | os.PathLike) -> Path:
    """Write a LUNA16 submission CSV ``seriesuid,coordX,coordY,coordZ,probability``.

    Args:
        rows: One per CAD mark: a mapping with those five keys, or a sequence in that order. Coordinates are world mm,
            LPS (the ``annotations.csv`` frame); probability is any score, higher = more suspicious.
        path: Output CSV (parent folders are created). Numbers are written with Python's shortest round-trip repr, so
            :func:`medbundle.io.luna16_csv.read_luna16_results` reads back the same float64 values.

    Returns:
        The path written. A header is written even when there are no rows.

    Raises:
        ValueError: A row without one of the fields, an empty UID, or a non-finite number (the message gives the row).
    """
    path = Path(path)
    out_rows: list[list[str]] = []
    for n, row in enumerate(rows, start=1):
        if isinstance(row, Mapping):
            missing = [c for c in RESULT_COLUMNS if c not in row]
            if missing:
                raise ValueError(f"{path}: result row {n} lacks {', '.join(missing)}; it has {sorted(row)}.")
            values = [row[c] for c in RESULT_COLUMNS]
        else:
            values = list(row)
            if len(values) != len(RESULT_COLUMNS):
                raise ValueError(f"{path}: result row {n} has {len(values)} fields; expected {RESULT_COLUMNS}.")
        uid = str(values[0]).strip()
        if not uid:
            raise ValueError(f"{path}: result row {n} has an empty seriesuid.")
        nums = []
        for name, v in zip(RESULT_COLUMNS[1:], values[1:]):
            f = float(v)
            if not math.isfinite(f):
                raise ValueError(f"{path}: result row {n} ({uid}) has {name} = {v}, not a finite number.")
            nums.append(repr(f))
        out_rows.append([uid, *nums])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(RESULT_COLUMNS)
        w.writerows(out_rows)
    return path
