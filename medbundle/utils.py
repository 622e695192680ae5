"""Small helpers that many modules share: arrays and JSON. Imports neither torch nor MONAI.

Torch tensors are recognised by their ``detach``/``cpu`` methods, so that modules built on these helpers
(``medbundle.metrics`` among them) stay importable, and fast to import, without torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["as_bool", "safe_stem", "to_jsonable", "to_numpy"]


def to_numpy(x: Any, name: str = "input", dtype: Any = None) -> np.ndarray:
    """``x`` (array-like, or a torch tensor on any device, with or without grad) as a numpy array.

    Args:
        x: the values.
        name: what ``x`` is, for the error message.
        dtype: numpy dtype of the result; ``None`` keeps the input's.

    Raises:
        TypeError: ``x`` is ragged or holds objects rather than numbers.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        x = x.float().numpy() if str(x.dtype) == "torch.bfloat16" else x.numpy()  # numpy has no bfloat16
    arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if arr.dtype == object:
        raise TypeError(f"{name} could not be converted to a numeric array (got ragged or object data); "
                        "pass a numpy array, a list of numbers or a torch tensor.")
    return arr


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy/torch scalars and arrays as JSON types, dict keys as strings, NaN and inf as ``None``.

    The result passes ``json.dumps(..., allow_nan=False)``: strict JSON readers reject ``NaN``.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = to_numpy(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def as_bool(value) -> bool:
    """A config switch as bool; command-line overrides arrive as text unless written as Python literals."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def safe_stem(path: str) -> str:
    """A file name stem safe for output files: ``/a/b/img 1.nii.gz`` -> ``img_1``."""
    name = Path(path).name
    for ext in (".nii.gz", ".png", ".jpg", ".jpeg", ".dcm", ".nii", ".mhd", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "image"
