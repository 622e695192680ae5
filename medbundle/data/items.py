"""Turn what a user points inference at (a file, a folder, a datalist JSON) into a MONAI datalist."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "inference_items"]

#: File endings picked up when inference is pointed at a folder (2D and 3D image formats).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz", ".mhd", ".nrrd", ".tif", ".tiff", ".svs",
)


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def inference_items(
    source: str | Path | Sequence[str],
    key: str = "image",
    split: str = "testing",
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    recursive: bool = True,
) -> list[dict]:
    """Build the inference datalist ``[{key: path, "filename": path}, ...]``.

    Args:
        source: one image file; a folder (every file ending in one of ``suffixes``, sorted, recursing
            into sub-folders when ``recursive``); a MONAI datalist JSON (its ``split`` list, or a bare
            list); or a list of paths.
        key: the item key that holds the path.
        split: which list of a datalist JSON to use.
        suffixes: file endings that count as images when scanning a folder.
        recursive: scan sub-folders.

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
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and _has_suffix(p, suffixes))
            items = [{key: str(p)} for p in files]
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
