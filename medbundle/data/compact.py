"""Compact, safely loadable storage of preprocessed items (the entries of a disk cache).

:func:`pack` turns the output of a transform chain (dicts and lists of MONAI ``MetaTensor``, tensors,
arrays, numbers and strings) into plain containers of tensors that ``torch.load(..., weights_only=True)``
accepts, storing chosen keys in a smaller dtype; :func:`unpack` restores MetaTensors (with their
metadata) in their original dtype. :func:`write_entry` writes atomically
(:func:`medbundle.io.files.atomic_write`), so a run killed while writing leaves no half-written entry under
the final name.

Storage dtypes (``dtypes={"image": "uint8"}``):

- ``"float16"``, ``"bfloat16"``: a cast (float16 for intensities in a bounded range such as ``[0, 1]``;
  bfloat16 for large ranges such as sampling weights up to 1e6, 8 bits of mantissa).
- ``"uint8"``, ``"uint16"``: values in ``[0, 1]`` quantised to 255 or 65535 levels (error at most half a
  level); an entry whose values leave ``[0, 1]`` is stored as float16 instead, with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medbundle.io.files import load_weights_only, save_atomic, to_weights_only

__all__ = ["STORAGE_DTYPES", "pack", "packed_nbytes", "read_entry", "unpack", "write_entry"]

logger = logging.getLogger("medbundle.data")

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "uint8": torch.uint8, "uint16": torch.uint16 if hasattr(torch, "uint16") else torch.int32,
}
_LEVELS = {"uint8": 255.0, "uint16": 65535.0}
_TAG = "__medbundle_packed__"
_warned: set[str] = set()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _safe_meta(value: Any) -> Any:
    """Metadata values in types a weights-only load accepts; what has no such form (an enum, a reader
    object) is kept as its text."""
    if isinstance(value, Mapping):
        return {str(k): _safe_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe_meta(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    try:
        return to_weights_only(value)
    except TypeError:
        return str(value)


def _pack_tensor(t: torch.Tensor, key: str, store: str | None) -> dict[str, Any]:
    meta = None
    if isinstance(t, MetaTensor):
        meta = {k: _safe_meta(v) for k, v in t.meta.items()}
        t = t.as_tensor()
    t = t.detach().cpu()
    out: dict[str, Any] = {_TAG: "tensor", "dtype": _dtype_name(t.dtype), "meta": meta, "levels": None}
    if store is None or not t.is_floating_point():
        out["data"] = t.contiguous()
        return out
    if store in _LEVELS:
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if lo >= -1e-6 and hi <= 1.0 + 1e-6:
            levels = _LEVELS[store]
            q = torch.round(t.float().clamp(0.0, 1.0) * levels)
            out["data"] = q.to(STORAGE_DTYPES[store]).contiguous()
            out["levels"] = levels
            return out
        if key not in _warned:
            _warned.add(key)
            logger.warning("cache: %r has values in [%.4g, %.4g], outside [0, 1] that %s storage needs; "
                           "stored as float16 instead", key, lo, hi, store)
        store = "float16"
    out["data"] = t.to(STORAGE_DTYPES[store]).contiguous()
    return out


def pack(obj: Any, dtypes: Mapping[str, str] | None = None, _key: str = "") -> Any:
    """A weights-only-loadable copy of a preprocessed item, with the keys in ``dtypes`` stored compactly.

    Args:
        obj: a dict (or list of dicts) of tensors, MetaTensors, arrays, numbers, strings and containers.
        dtypes: storage dtype per top-level key (see the module notes); other tensors keep their dtype.

    Raises:
        TypeError: a value that cannot be stored safely (an arbitrary object), naming its key.
    """
    dtypes = dtypes or {}
    if isinstance(obj, torch.Tensor):
        return _pack_tensor(obj, _key, dtypes.get(_key))
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"cache: {_key!r} is an object array, which cannot be stored safely")
        packed = _pack_tensor(torch.from_numpy(np.ascontiguousarray(obj)), _key, dtypes.get(_key))
        packed[_TAG] = "ndarray"
        return packed
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): pack(v, dtypes, str(k) if not _key else _key) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {_TAG: "tuple", "items": [pack(v, dtypes, _key) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, dtypes, _key) for v in obj]
    raise TypeError(
        f"cache: {_key or 'item'!r} holds a {type(obj).__module__}.{type(obj).__qualname__}, which cannot be "
        "stored in a disk cache safely (tensors, arrays, numbers, strings and containers only); end the cached "
        "transforms before the transform that makes it, or use no cache_dir (memory only)"
    )


def unpack(obj: Any) -> Any:
    """The item :func:`pack` stored: tensors in their original dtype, MetaTensors with their metadata."""
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag in ("tensor", "ndarray"):
            data: torch.Tensor = obj["data"]
            dtype = getattr(torch, obj["dtype"])
            t = data.to(torch.float32) / obj["levels"] if obj["levels"] else data
            t = t.to(dtype) if t.dtype != dtype else t.clone() if t is data else t
            if tag == "ndarray":
                return t.numpy()
            return MetaTensor(t, meta=dict(obj["meta"])) if obj["meta"] is not None else t
        if tag == "tuple":
            return tuple(unpack(v) for v in obj["items"])
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v) for v in obj]
    return obj


def packed_nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes of tensor and array data in an item, packed or not (what it costs in memory)."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.numel()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if _depth > 4:
        return 0
    if isinstance(obj, Mapping):
        return sum(packed_nbytes(v, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(packed_nbytes(v, _depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(packed_nbytes(v, _depth + 1) for v in vars(obj).values())
    return 0


def write_entry(path: str | os.PathLike, packed: Any) -> int:
    """Write a packed item to ``path`` atomically; returns the file size in bytes."""
    return save_atomic(packed, path)


def read_entry(path: str | os.PathLike) -> Any:
    """Load a packed item written by :func:`write_entry` (``weights_only=True``: no code runs on load)."""
    return load_weights_only(path)
