"""Stable fingerprints of datalist items and transform chains, for naming disk-cache entries.

A disk cache of preprocessed items is only safe when its entries are named by everything that decides
their content: the item (its fields and the files it points to) and the preprocessing (every transform's
class and parameters). MONAI's :class:`~monai.data.PersistentDataset` hashes the item alone unless given a
``hash_transform``, whose default hashes pickled transform objects; pickles of objects holding sets or
dict views change from one process to the next (string hash randomisation). :func:`describe` turns a
transform chain into plain, ordered JSON (class names and public and private parameters, random states
and device placement left out) so the fingerprint is the same in every process, and changes when a
parameter such as the image size does.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["describe", "file_stamp", "item_fingerprint", "stable_hash", "transform_fingerprint"]

#: Attributes that do not change what a transform computes (random state, laziness, device placement,
#: tracing of applied operations, logging), left out of the description.
_IGNORED_ATTRS = frozenset({
    "R", "_do_transform", "lazy", "_lazy", "tracing", "overrides", "device", "_device", "logger", "_logger",
    "log_stats", "unpack_items", "map_items", "callable_name",
})
_MAX_DEPTH = 8


def _qualname(obj: Any) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def describe(obj: Any, _depth: int = 0, _seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-able, process-independent description of ``obj`` (a transform, reader, list of them, ...).

    Numbers, strings and None describe themselves; sequences and mappings are described element-wise
    (sets sorted); arrays and tensors by dtype, shape and a hash of their bytes; functions and classes by
    their qualified names; other objects by their class and their attributes (except random states, device
    placement and other attributes in ``_IGNORED_ATTRS``), to a depth of 8.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, enum.Enum):
        return f"{_qualname(obj)}.{obj.name}"
    if isinstance(obj, (torch.dtype, torch.device, np.dtype)):
        return str(obj)
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return str(np.dtype(obj))
    if isinstance(obj, np.generic):
        return describe(obj.item())
    if isinstance(obj, (bytes, bytearray)):
        return hashlib.sha1(obj).hexdigest()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        arr = np.ascontiguousarray(arr)
        return {"array": str(arr.dtype), "shape": list(arr.shape), "sha1": hashlib.sha1(arr.tobytes()).hexdigest()}
    if isinstance(obj, (os.PathLike,)):
        return os.fspath(obj)
    if _depth > _MAX_DEPTH or id(obj) in _seen:
        return _qualname(obj)
    seen = _seen | {id(obj)}
    if isinstance(obj, Mapping):
        return {str(k): describe(v, _depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v, _depth + 1, seen) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [describe(v, _depth + 1, seen) for v in obj]
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return _qualname(obj) if isinstance(obj, type) else getattr(obj, "__qualname__", _qualname(obj))
    if isinstance(obj, (logging.Logger, type(threading.Lock()), threading.Thread)):
        return _qualname(obj)
    if hasattr(obj, "__code__"):  # plain functions and lambdas: their code, so a changed lambda is noticed
        code = obj.__code__
        return {"function": getattr(obj, "__qualname__", "?"), "code": hashlib.sha1(code.co_code).hexdigest(),
                "consts": describe([c for c in code.co_consts if not hasattr(c, "co_code")], _depth + 1, seen)}
    attrs = getattr(obj, "__dict__", None)
    if attrs is None:
        return _qualname(obj)
    return {"class": _qualname(obj),
            **{k: describe(v, _depth + 1, seen) for k, v in sorted(attrs.items()) if k not in _IGNORED_ATTRS}}


def stable_hash(obj: Any, length: int = 32) -> str:
    """Hex SHA-256 (first ``length`` characters) of the canonical JSON of :func:`describe` (obj)."""
    text = json.dumps(describe(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def transform_fingerprint(transforms: Sequence[Any]) -> str:
    """Fingerprint of a chain of transforms (what a disk cache entry's content depends on)."""
    return stable_hash(list(transforms), 16)


def file_stamp(value: Any) -> Any:
    """``[size, mtime_ns]`` of an existing file (``[mtime_ns]`` of a folder) named by ``value``; else None."""
    if not isinstance(value, (str, os.PathLike)):
        return None
    text = os.fspath(value)
    if not text or len(text) > 4096 or "\n" in text:
        return None
    try:
        st = os.stat(text)
    except (OSError, ValueError):
        return None
    return [st.st_mtime_ns] if Path(text).is_dir() else [st.st_size, st.st_mtime_ns]


def _stamps(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _stamps(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stamps(v) for v in value] if any(isinstance(v, (str, os.PathLike)) for v in value) else None
    return file_stamp(value)


def item_fingerprint(item: Any) -> str:
    """Fingerprint of a datalist item: its fields, and the size and modification time of files it names.

    A file replaced under the same name (new size or time) gets a new fingerprint, so stale cache entries
    are never read for it.
    """
    return stable_hash({"item": item, "files": _stamps(item)}, 32)
