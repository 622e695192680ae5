"""Result tables of long inference runs: written item by item, resumable, merged in input order.

An inference over an archive writes, per item, a few CSV rows (a prediction, the marks of a scan, the
most attended patches of a slide). This module keeps those tables so that a run killed at any moment
loses at most the items in flight, a re-run knows which items are done, several processes can write at
once, and the final files list every item once, in input order, exactly as one uninterrupted run would.
It needs neither torch nor Ignite.

Terms:

- **item key**: a string naming one input item (an image path, a series UID).
- **table**: a CSV file (optionally with a header line) whose rows hold the item key in one column
  (:class:`TableSpec`).
- **ledger**: the table whose row for an item is written *last*, after the item's other rows and files;
  an item is done when its ledger row is on disk. ``predictions.csv`` is the ledger of the classifiers,
  ``seriesuids.csv`` that of the detector (a scan without marks has no row in ``results.csv``).
- **row tables**: tables with any number of rows per item (``results.csv``, ``top_patches.csv``).
- **skipped table**: ``skipped.csv``, one row per item that failed, with the reason.
- **parts**: while ``W > 1`` processes write, process ``k`` appends to ``<stem>.rank<k><suffix>`` next to
  the final file; a single process appends to the final file itself, so it can be watched as it grows.

Every append is one ``write`` of whole lines followed by a flush (and ``fsync`` if asked), so a killed
process leaves at most one partly written last line, which the next reader ignores and the next writer
cuts off. :meth:`ResultTables.merge` reads the final files and all parts, keeps one ledger row per key
(the first), the row-table rows written by the same process as that ledger row (rows of an item whose
ledger row never came are dropped), the latest skipped row of each key not done, orders everything by
the given input order (dropping keys not in it), writes each final file atomically (temporary file,
then ``os.replace``; the ledger last) and removes the parts.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medbundle.io.files import atomic_write

__all__ = [
    "SKIPPED_TABLE",
    "ResultAppender",
    "ResultTables",
    "TableAppender",
    "TableSpec",
    "done_keys",
    "part_path",
    "read_rows",
    "repair_tail",
    "write_rows_atomic",
]

logger = logging.getLogger("medbundle.io")

Row = Sequence[str]


@dataclass(frozen=True)
class TableSpec:
    """One result table.

    Attributes:
        name: file name inside the output folder, e.g. ``"predictions.csv"``.
        header: column names written as the first line; None for a table without a header line (LUNA16's
            ``seriesuids.csv``).
        key_column: index of the column that holds the item key.
    """

    name: str
    header: tuple[str, ...] | None = None
    key_column: int = 0

    def __post_init__(self) -> None:
        if self.header is not None:
            object.__setattr__(self, "header", tuple(str(h) for h in self.header))
            if not 0 <= self.key_column < len(self.header):
                raise ValueError(f"{self.name}: key column {self.key_column} outside its {len(self.header)} columns")


#: ``skipped.csv``: ``file, reason`` keyed by the file (the classifiers' item key).
SKIPPED_TABLE = TableSpec("skipped.csv", ("file", "reason"), 0)


def part_path(path: str | os.PathLike, rank: int) -> Path:
    """The part file that process ``rank`` appends to: ``predictions.csv`` -> ``predictions.rank1.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{int(rank)}{path.suffix}")


def _parts(path: Path) -> list[tuple[int, Path]]:
    """Existing part files of ``path`` as ``(rank, path)``, by rank."""
    pattern = re.compile(re.escape(path.stem) + r"\.rank(\d+)" + re.escape(path.suffix) + "$")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def repair_tail(path: str | os.PathLike) -> int:
    """Cut off a partly written last line (a file that does not end in a newline); returns bytes removed.

    A process killed while appending leaves such a line; everything before the last newline is whole.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        # find the last newline, reading backwards in blocks
        pos, block, keep = size, 65536, 0
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        fh.truncate(keep)
    return size - keep


def _complete_text(path: Path) -> str:
    """The file's text up to and including its last newline (a torn last line is left out)."""
    data = path.read_bytes()
    end = data.rfind(b"\n")
    return data[: end + 1].decode("utf-8") if end >= 0 else ""


def _header_error(path: Path, found: Sequence[str], expected: Sequence[str]) -> ValueError:
    return ValueError(
        f"{path}: columns {list(found)} differ from this run's {list(expected)}; the folder holds results of "
        "another configuration (other class names or outputs): pass --overwrite True or choose another --output_dir"
    )


def read_rows(path: str | os.PathLike, header: Sequence[str] | None = None, has_header: bool | None = None) -> list[
        list[str]]:
    """The complete rows of a result CSV, without its header line; ``[]`` when the file does not exist.

    Args:
        path: the CSV file.
        header: the expected header line; a file that starts with another one raises.
        has_header: whether the first line is a header (default: ``header is not None``); with ``header=None,
            has_header=True`` the first line is skipped unchecked.

    Raises:
        ValueError: the header differs from ``header`` (the message names the file and both headers).
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = list(csv.reader(io.StringIO(_complete_text(path), newline="")))
    if has_header is None:
        has_header = header is not None
    if has_header and rows:
        first = rows.pop(0)
        if header is not None and tuple(first) != tuple(header):
            raise _header_error(path, first, header)
    return [r for r in rows if r]


def _to_text(rows: Iterable[Row]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[str(v) for v in r] for r in rows])
    return buf.getvalue()


def write_rows_atomic(path: str | os.PathLike, header: Sequence[str] | None, rows: Iterable[Row],
                      fsync: bool = True) -> Path:
    """Write a CSV file so that readers see the old or the new file, never a part of one.

    The rows go to a temporary file in the same folder, which then replaces ``path`` (``os.replace``).
    """
    path = Path(path)
    with atomic_write(path, "w", fsync=fsync, newline="", encoding="utf-8") as fh:
        fh.write(_to_text(([list(header)] if header is not None else []) + [list(r) for r in rows]))
    return path


class TableAppender:
    """Append rows to one result CSV, flushing after every call.

    Opening repairs a partly written last line (:func:`repair_tail`), checks the header of a file that
    already has content and writes the header into an empty one.

    Args:
        path: the CSV file (created with its folder when missing).
        header: the header line, or None for a table without one.
        fsync: also ``os.fsync`` after every append (survives a power cut, not only a killed process).

    Raises:
        ValueError: the existing file starts with another header.
    """

    def __init__(self, path: str | os.PathLike, header: Sequence[str] | None = None, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = bool(fsync)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        removed = repair_tail(self.path)
        if removed:
            logger.info("%s: removed a partly written last line (%d bytes) left by an interrupted run",
                        self.path, removed)
        has_content = self.path.is_file() and self.path.stat().st_size > 0
        if has_content and header is not None:
            with open(self.path, newline="", encoding="utf-8") as fh:
                first = next(csv.reader(fh), [])
            if tuple(first) != tuple(header):
                raise _header_error(self.path, first, header)
        self._fh: io.TextIOWrapper | None = open(self.path, "a", newline="", encoding="utf-8")
        if not has_content and header is not None:
            self.append([list(header)])

    def append(self, rows: Iterable[Row]) -> None:
        """Write whole lines in one call, then flush (and fsync)."""
        if self._fh is None:
            raise ValueError(f"{self.path}: appender is closed")
        text = _to_text(rows)
        if not text:
            return
        self._fh.write(text)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def done_keys(path: str | os.PathLike, key_column: int = 0, has_header: bool = True) -> list[str]:
    """Item keys in a ledger and its part files (first occurrence order); torn last lines are ignored."""
    path = Path(path)
    seen: dict[str, None] = {}
    for p in [path] + [p for _, p in _parts(path)]:
        for row in read_rows(p, has_header=has_header):
            if len(row) > key_column:
                seen.setdefault(row[key_column], None)
    return list(seen)


class ResultAppender:
    """What one process writes: its part of every table of a :class:`ResultTables`.

    Use :meth:`commit` once per finished item (row tables first, ledger row last) and :meth:`skip` per
    failed item.
    """

    def __init__(self, tables: ResultTables, rank: int, world_size: int, fsync: bool = False) -> None:
        self.tables = tables
        single = int(world_size) <= 1

        def path(spec: TableSpec) -> Path:
            final = tables.path(spec)
            return final if single else part_path(final, rank)

        self._ledger = TableAppender(path(tables.ledger), tables.ledger.header, fsync)
        self._rows = {s.name: TableAppender(path(s), s.header, fsync) for s in tables.row_tables}
        self._skipped = (TableAppender(path(tables.skipped), tables.skipped.header, fsync)
                         if tables.skipped is not None else None)

    def commit(self, ledger_row: Row, rows: Mapping[str, Iterable[Row]] | None = None) -> None:
        """Write one item's rows: every row table's rows first, then its ledger row (the item is then done).

        Args:
            ledger_row: the item's ledger row (holds the item key in the ledger's key column).
            rows: row-table name -> that item's rows (each holding the key in the table's key column).
        """
        for name, table_rows in (rows or {}).items():
            if name not in self._rows:
                raise KeyError(f"no row table {name!r}; tables: {sorted(self._rows)}")
            self._rows[name].append(table_rows)
        self._ledger.append([ledger_row])

    def skip(self, row: Row) -> None:
        """Record a failed item in the skipped table."""
        if self._skipped is None:
            raise ValueError("these result tables have no skipped table")
        self._skipped.append([row])

    def close(self) -> None:
        for a in [self._ledger, *self._rows.values(), *([self._skipped] if self._skipped else [])]:
            a.close()


class ResultTables:
    """The result tables of one writer in one output folder: a ledger, row tables and a skipped table.

    Args:
        folder: the output folder.
        ledger: the table whose row marks an item done (one row per item).
        row_tables: tables with any number of rows per item, written before the ledger row.
        skipped: the table of failed items (None: none).
    """

    def __init__(self, folder: str | os.PathLike, ledger: TableSpec, row_tables: Sequence[TableSpec] = (),
                 skipped: TableSpec | None = SKIPPED_TABLE) -> None:
        self.folder = Path(folder)
        self.ledger = ledger
        self.row_tables = tuple(row_tables)
        self.skipped = skipped
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names repeat: {names}")

    @property
    def specs(self) -> tuple[TableSpec, ...]:
        return (self.ledger, *self.row_tables, *([self.skipped] if self.skipped is not None else []))

    def path(self, spec: TableSpec) -> Path:
        """The final file of a table."""
        return self.folder / spec.name

    def _sources(self, spec: TableSpec) -> list[tuple[int | None, Path]]:
        """``(writer, path)``: the final file (writer None) and the parts (writer = rank)."""
        final = self.path(spec)
        return [(None, final)] + _parts(final)

    def done_keys(self) -> list[str]:
        """Keys of the items done (ledger rows in the final file and the parts)."""
        return done_keys(self.path(self.ledger), self.ledger.key_column, self.ledger.header is not None)

    def remove(self) -> None:
        """Delete every final file and part (``--overwrite``)."""
        for spec in self.specs:
            for _, p in self._sources(spec):
                p.unlink(missing_ok=True)

    def open(self, rank: int = 0, world_size: int = 1, fsync: bool = False) -> ResultAppender:
        """The appender of process ``rank`` of ``world_size`` (``world_size`` 1 appends to the final files)."""
        return ResultAppender(self, rank, world_size, fsync)

    def merge(self, order: Sequence[str] | None = None) -> dict[str, int]:
        """Merge the final files and all parts into the final files (atomically) and remove the parts.

        Args:
            order: every item key of the input, in input order; rows of other keys are dropped. None: keep every key, in
                the order first seen (final file first, then the parts by rank).

        Returns:
            Rows written per table name.

        Raises:
            ValueError: a file's header differs from its table's (see :func:`read_rows`).
        """
        lk = self.ledger.key_column
        ledger: dict[str, tuple[int | None, list[str]]] = {}
        for writer, p in self._sources(self.ledger):
            for row in read_rows(p, self.ledger.header):
                if len(row) > lk:
                    ledger.setdefault(row[lk], (writer, row))
        keys = [k for k in dict.fromkeys(order) if k in ledger] if order is not None else list(ledger)
        counts: dict[str, int] = {}
        for spec in self.row_tables:
            grouped: dict[tuple[int | None, str], list[list[str]]] = {}
            for writer, p in self._sources(spec):
                for row in read_rows(p, spec.header):
                    if len(row) > spec.key_column:
                        grouped.setdefault((writer, row[spec.key_column]), []).append(row)
            out = [r for k in keys for r in grouped.get((ledger[k][0], k), [])]
            write_rows_atomic(self.path(spec), spec.header, out)
            counts[spec.name] = len(out)
        if self.skipped is not None:
            sk = self.skipped.key_column
            latest: dict[str, list[str]] = {}
            for _, p in self._sources(self.skipped):
                for row in read_rows(p, self.skipped.header):
                    if len(row) > sk and row[sk] not in ledger:
                        latest.pop(row[sk], None)  # the latest attempt wins, and sets the order when not given
                        latest[row[sk]] = row
            skipped_keys = [k for k in dict.fromkeys(order) if k in latest] if order is not None else list(latest)
            write_rows_atomic(self.path(self.skipped), self.skipped.header, [latest[k] for k in skipped_keys])
            counts[self.skipped.name] = len(skipped_keys)
        write_rows_atomic(self.path(self.ledger), self.ledger.header, [ledger[k][1] for k in keys])
        counts[self.ledger.name] = len(keys)
        for spec in self.specs:
            for writer, p in self._sources(spec):
                if writer is not None:
                    p.unlink(missing_ok=True)
        return counts

    def read(self, spec: TableSpec) -> list[list[str]]:
        """The rows of a table's final file (after :meth:`merge`)."""
        return read_rows(self.path(spec), spec.header)
