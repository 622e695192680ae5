"""Files that are either the old version or the complete new one, and torch files that load without code.

Every long-running writer of the project (disk-cache entries, resume checkpoints, merged result tables)
writes through :func:`atomic_write`: a temporary file in the target's folder, renamed over the target with
``os.replace`` (atomic on POSIX and Windows), so a process killed at any moment leaves the previous file or
the new one, never a part of one, under the final name; at most a ``.<name>.*.tmp`` file is left over.

:func:`to_weights_only` turns a checkpoint or cache entry into the types that
``torch.load(..., weights_only=True)`` accepts, and :func:`load_weights_only` reads them back that way, so
loading a file never runs code from it.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = ["atomic_write", "load_weights_only", "save_atomic", "to_weights_only"]


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without error.

    Args:
        path: the target file (its folder is created).
        mode: ``"wb"`` or ``"w"``.
        fsync: flush the file to the disk before the rename (survives a power loss, not only a killed process).
        open_kwargs: passed to ``open`` (e.g. ``encoding``, ``newline`` for text).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: str | os.PathLike, fsync: bool = False) -> int:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`; returns the file size in bytes."""
    with atomic_write(path, "wb", fsync=fsync) as fh:
        torch.save(obj, fh)
    return Path(path).stat().st_size


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only."""
    return torch.load(path, map_location=map_location, weights_only=True)


def to_weights_only(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` in types that ``torch.load(..., weights_only=True)`` reads back.

    NumPy scalars become Python numbers, NumPy arrays and tensor subclasses (e.g. ``MetaTensor``) plain
    tensors, named tuples plain tuples; dicts (``OrderedDict`` kept), lists and tuples are converted item by
    item.

    Args:
        obj: the object to store.
        where: where ``obj`` sits, for the error message.

    Raises:
        TypeError: ``obj`` holds something else (a class instance, a function, ...), named by its place.
    """
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass that pickles as NumPy
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().as_subclass(torch.Tensor) if type(obj) is not torch.Tensor else obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: an object array cannot be stored")
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, Mapping):
        out: dict = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; only str and int keys can be stored")
            out[k] = to_weights_only(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_weights_only(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a file that loads "
        "with torch.load(weights_only=True)"
    )
