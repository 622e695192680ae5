"""Datalist JSON files and the CSV column lookup that every public-layout adapter uses.

MONAI's ``load_decathlon_datalist`` reads a datalist but keeps ``null`` labels as ``None`` and cannot write
one. This module adds the two ends the adapters need: :func:`write_datalist` (strict JSON, NaN labels as
``null``) and :func:`load_datalist` (``null`` labels back to NaN), plus :func:`column_index`, which finds a
CSV column by name whatever its case, spacing or byte-order mark.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medbundle.utils import to_jsonable

__all__ = ["column_index", "load_datalist", "open_csv", "write_datalist"]


def _normalise(name: str) -> str:
    """Normalise a column name for matching: lower case, single spaces, no BOM."""
    return " ".join(name.replace("\ufeff", "").strip().lower().split())


def column_index(header: Sequence[str], name: str, path: Path, required: bool = True) -> int | None:
    """Index of column ``name`` in ``header`` (case and whitespace insensitive); ValueError if required."""
    wanted = _normalise(name)
    for i, field in enumerate(header):
        if _normalise(field) == wanted:
            return i
    if required:
        raise ValueError(
            f"{path}: required column {name!r} not found in the header {list(header)!r}; "
            "check that this is the dataset's original CSV (first line must be the header)."
        )
    return None




@contextmanager
def open_csv(path: str | os.PathLike, what: str, header_hint: str
             ) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """Open a CSV file (UTF-8, with or without a byte-order mark) and give its header and an iterator of
    ``(line number, row)`` below it, blank rows skipped; rows are read as the caller goes, so large label files
    stream.

    Args:
        path: the file.
        what: what the file is, for the message when it is missing (e.g. ``"CheXpert label file"``).
        header_hint: what its header should hold, for the message when the file is empty.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it and ``what``).
        ValueError: the file has no header row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = ((i, r) for i, r in enumerate(csv.reader(f), start=1) if r and any(c.strip() for c in r))
        first = next(rows, None)
        if first is None:
            raise ValueError(f"{path}: file is empty; expected {header_hint}.")
        yield first[1], rows


def write_datalist(datalist: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a datalist as JSON, NaN labels written as ``null`` (JSON has no NaN).

    Strict JSON readers reject Python's ``NaN`` token, so every NaN float (an ignored CheXpert label) is
    written as ``null``. Read the file back with :func:`load_datalist`, which turns ``null`` entries of
    ``"label"`` lists into ``float("nan")``; MONAI's ``load_decathlon_datalist`` would keep them as
    ``None``. Parent folders are created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(datalist), f, indent=1, allow_nan=False)
    return path


def load_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON written by :func:`write_datalist`; ``null`` in ``"label"`` lists -> NaN."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: not valid JSON ({e}); expected a datalist written by write_datalist."
            ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'training'/'validation'/'testing' lists.")
    for key, value in data.items():
        if key == "labels" or not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("label"), list):
                item["label"] = [math.nan if v is None else v for v in item["label"]]
    return data
