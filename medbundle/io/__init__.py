"""Reading and writing files that more than one domain uses: atomic files, weights-only torch files, result
tables of long inference runs."""

from medbundle.io.files import atomic_write, load_weights_only, save_atomic, to_weights_only
from medbundle.io.results import (
    SKIPPED_TABLE,
    ResultAppender,
    ResultTables,
    TableAppender,
    TableSpec,
    done_keys,
    part_path,
    read_rows,
    repair_tail,
    write_rows_atomic,
)

__all__ = [
    "SKIPPED_TABLE",
    "atomic_write",
    "load_weights_only",
    "save_atomic",
    "to_weights_only",
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
