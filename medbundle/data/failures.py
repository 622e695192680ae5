"""Naming a failed item and its cause in one line, for the datasets and engines that skip it.

MONAI wraps a transform's error several times (``RuntimeError: applying transform ...``); the innermost
exception names the real problem (``UnidentifiedImageError: cannot identify image file ...``). Training's
:class:`~medbundle.data.DiskCacheDataset` and inference's :class:`~medbundle.data.SafeDataset` and engines
report an item they skip as ``<file>: <reason>`` with these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["describe_item", "failure_reason", "root_cause"]

def root_cause(exc: BaseException) -> BaseException:
    """Return the innermost exception of a chain (MONAI wraps transform errors several times)."""
    seen = set()
    while (exc.__cause__ is not None or exc.__context__ is not None) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def describe_item(item: Any, keys: Sequence[str] = ("image",)) -> str:
    """A short human-readable name for a datalist item: its file path(s) if it has them."""
    if isinstance(item, dict):
        for k in keys:
            v = item.get(k)
            if isinstance(v, (str, bytes)) or hasattr(v, "__fspath__"):
                return str(v)
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
                return str(v[0]) + (f" (+{len(v) - 1} files)" if len(v) > 1 else "")
        return str({k: v for k, v in item.items() if isinstance(v, (str, int, float))})[:200]
    return str(item)[:200]


def failure_reason(exc: BaseException, max_len: int = 300) -> str:
    """One line: the innermost exception's type and the first line of its message."""
    cause = root_cause(exc)
    text = f"{type(cause).__name__}: {cause}".strip().splitlines()
    return (text[0] if text else type(cause).__name__)[:max_len]
