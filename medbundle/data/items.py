"""Turn what a user points inference at (a file, a folder, a datalist JSON) into a MONAI datalist."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from medbundle.io.dicom import is_dicom_file

__all__ = ["IMAGE_SUFFIXES", "inference_items"]

#: File endings picked up when inference is pointed at a folder (2D and 3D image formats).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz", ".mhd", ".nrrd", ".tif", ".tiff", ".svs",
)


_DICOM_SUFFIXES = (".dcm", ".dicom")


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _is_dicom(path: Path, suffixes: Sequence[str]) -> bool:
    """A DICOM file by its name, or, when its name ends in none of ``suffixes`` (PACS exports: ``IM0001``, a UID
    such as ``1.2.840.113619.2.1.7``, ``.dcm`` missing), by its first bytes (preamble + ``DICM``, or a data set
    written without them)."""
    return _has_suffix(path, _DICOM_SUFFIXES) or (not _has_suffix(path, suffixes) and is_dicom_file(path))


def _is_series_folder(path: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> bool:
    """A folder that directly holds DICOM slices (one volume)."""
    return path.is_dir() and any(p.is_file() and _is_dicom(p, suffixes) for p in path.iterdir())


def _scan(path: Path, suffixes: Sequence[str], recursive: bool, dicom_series: bool) -> list[Path]:
    if dicom_series and _is_series_folder(path, suffixes):
        return [path]
    found: list[Path] = []
    for p in sorted(path.iterdir()):
        if p.is_dir():
            if dicom_series and _is_series_folder(p, suffixes):
                found.append(p)
            elif recursive:
                found.extend(_scan(p, suffixes, recursive, dicom_series))
        elif dicom_series:
            if _has_suffix(p, suffixes) and not _has_suffix(p, _DICOM_SUFFIXES):
                found.append(p)
        elif _has_suffix(p, suffixes) or _is_dicom(p, suffixes):
            found.append(p)
    return found


def inference_items(
    source: str | Path | Sequence[str],
    key: str = "image",
    split: str = "testing",
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    recursive: bool = True,
    dicom_series: bool = False,
) -> list[dict]:
    """Build the inference datalist ``[{key: path, "filename": path}, ...]``.

    Args:
        source: one image file; a folder (every file ending in one of ``suffixes``, and every DICOM file whatever
            its name, sorted, recursing into sub-folders when ``recursive``); a MONAI datalist JSON (its ``split``
            list, or a bare list); or a list of paths.
        key: the item key that holds the path.
        split: which list of a datalist JSON to use.
        suffixes: file endings that count as images when scanning a folder.
        recursive: scan sub-folders.
        dicom_series: 3D data: a folder that directly holds DICOM files (``.dcm``, ``.dicom`` or any name with DICOM
            content) is one item (a DICOM series, read by a series reader), and loose DICOM files are not items of
            their own.

    Returns:
        A list of dicts; each keeps every field of a datalist item and adds ``"filename"`` (the path as
        a string), which the prediction writers use to name rows.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a datalist JSON without the ``split`` list, or no images found.
    """
    if not isinstance(source, (str, Path)):
        items = [{key: str(p)} for p in source]
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"inference input not found: {path}")
        if path.is_dir():
            items = [{key: str(p)} for p in _scan(path, suffixes, recursive, dicom_series)]
        elif path.suffix.lower() == ".json":
            with open(path) as f:
                content = json.load(f)
            if isinstance(content, dict):
                if split not in content:
                    raise ValueError(f"{path}: no '{split}' list; found keys {sorted(content)}")
                content = content[split]
            base = path.parent
            items = []
            for it in content:
                it = dict(it) if isinstance(it, dict) else {key: it}
                p = Path(str(it[key]))
                it[key] = str(p if p.is_absolute() else base / p)
                items.append(it)
        else:
            items = [{key: str(path)}]
    if not items:
        raise ValueError(f"no images found in {source} (looked for {', '.join(suffixes)})")
    for it in items:
        it.setdefault("filename", str(it[key]))
    return items
