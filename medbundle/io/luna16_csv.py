"""The LUNA16 challenge's CSV files, read without pandas.

``annotations.csv`` / ``annotations_excluded.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``), a
submission (``seriesuid,coordX,coordY,coordZ,probability``) and ``seriesuids.csv`` (one UID per line).
Columns are found by name; every error names the file, and the row and column that is wrong.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["ANNOTATION_COLUMNS", "RESULT_COLUMNS", "Table", "read_luna16_annotations", "read_luna16_results",
           "read_seriesuids"]

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
RESULT_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")

#: a CSV as ``{column: array}``
Table = dict[str, np.ndarray]


def _read_table(path: str | os.PathLike, columns: Sequence[str]) -> Table:
    """Read a CSV with a header row into ``{column: array}``; ``seriesuid`` as str, the rest as float64."""
    path = os.fspath(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise OSError(f"cannot open {path}: {err.strerror or err}") from err
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header row with columns {', '.join(columns)}.")
        names = [cell.strip() for cell in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(
                f"{path} is missing column(s) {', '.join(missing)}; its header is {','.join(names)} "
                f"but LUNA16 files need {','.join(columns)}."
            )
        idx = [names.index(c) for c in columns]
        values: list[list[str]] = [[] for _ in columns]
        for line_no, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(idx):
                raise ValueError(
                    f"{path}, line {line_no}: {len(row)} field(s) but the header has {len(names)}; "
                    "fix or remove the truncated row."
                )
            for k, i in enumerate(idx):
                values[k].append(row[i].strip())
    table: Table = {columns[0]: np.asarray(values[0], dtype=str)}
    for k, name in enumerate(columns[1:], start=1):
        col = np.empty(len(values[k]), dtype=np.float64)
        for j, text in enumerate(values[k]):
            try:
                col[j] = float(text)
            except ValueError:
                raise ValueError(
                    f"{path}: column {name} holds {text!r} in data row {j + 1}, which is not a number."
                ) from None
        if not np.all(np.isfinite(col)):
            j = int(np.flatnonzero(~np.isfinite(col))[0])
            raise ValueError(f"{path}: column {name} is NaN or infinite in data row {j + 1}.")
        table[name] = col
    return table


def read_luna16_annotations(path: str | os.PathLike) -> Table:
    """Read ``annotations.csv`` or ``annotations_excluded.csv`` (LUNA16 layout).

    Args:
        path (str or path-like): CSV with header ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (other columns are
            ignored).

    Returns:
        dict of str to np.ndarray: ``seriesuid`` (str array, shape (N,)); ``coordX``, ``coordY``, ``coordZ`` (float64,
        world mm); ``diameter_mm`` (float64; negative values are kept, :func:`luna16_froc` reads them as 10 mm).

    Raises:
        ValueError: Naming the file and the missing column, or the row and column that is not a number.
    """
    return _read_table(path, ANNOTATION_COLUMNS)


def read_luna16_results(path: str | os.PathLike) -> Table:
    """Read a LUNA16 submission ``seriesuid,coordX,coordY,coordZ,probability`` (one row per CAD mark).

    Returns:
        dict of str to np.ndarray: ``seriesuid`` (str, shape (K,)); ``coordX``, ``coordY``, ``coordZ`` (float64, world
        mm); ``probability`` (float64, any monotone score; higher is more suspicious).
    """
    return _read_table(path, RESULT_COLUMNS)


def read_seriesuids(path: str | os.PathLike) -> list[str]:
    """Read ``seriesuids.csv``: one series UID per line in the first field, no header.

    A first line reading ``seriesuid`` is taken as a header and skipped; blank lines are skipped.

    Returns:
        list of str: The UIDs in file order (duplicates kept; :func:`luna16_froc` drops them with a warning).
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    except OSError as err:
        raise OSError(f"cannot open {path}: {err.strerror or err}") from err
    if rows and rows[0].lower() == "seriesuid":
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path} lists no series UIDs; expected one UID per line.")
    return rows
