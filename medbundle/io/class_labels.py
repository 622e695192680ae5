"""Image-level class labels stored as files, as a MONAI Label datastore keeps them.

A MONAI Label server trains a bundle on its datastore's labelled images: it replaces the train config's
``train#dataset#data`` with items ``{"image": <image file>, "label": <label file>}``. MONAI Label defines
label *files* for segmentation and detection (masks, markup JSON) but none for image-level classes, so
this module fixes one, a small JSON file beside nothing else (``<image id>.json`` under the datastore's
``labels/final/``), in any of these forms:

- ``{"labels": ["Cardiomegaly", "Effusion"]}`` or ``["Cardiomegaly", "Effusion"]``: the names of the
  classes present (an empty list: none of them, e.g. "No Finding"); names match ``class_names``
  ignoring case, spaces and underscores;
- ``{"label": [0, 1, 0, ...]}`` or ``[0, 1, 0, ...]``: a class vector of ``len(class_names)`` numbers
  (``null`` for an unknown class);
- ``{"label": 1}`` or ``1`` or ``"consolidation"``: one class (single-label bundles).

:func:`read_class_label` turns any of these (or an in-memory label, which passes through) into what the
bundles' datalists hold: a float vector for multi-label bundles, a class index for single-label ones.
:func:`resolve_class_labels` does it for a whole datalist (label counts for the loss, balanced sampling);
:class:`medbundle.monailabel.transforms.LoadClassLabeld` does it inside a transform chain.
:func:`write_class_label` writes the file a client would upload with ``PUT /datastore/label``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["is_label_file", "read_class_label", "resolve_class_labels", "write_class_label"]


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-")


def is_label_file(label: Any) -> bool:
    """True when ``label`` is a path (``str`` or ``PathLike``) rather than an in-memory label."""
    return isinstance(label, (str, os.PathLike))


def _index(name: str, class_names: Sequence[str], source: str) -> int:
    lookup = {_norm(c): i for i, c in enumerate(class_names)}
    key = _norm(name)
    if key not in lookup:
        raise ValueError(f"{source}: unknown class {name!r}; the bundle's classes are {list(class_names)}")
    return lookup[key]


def _from_content(content: Any, class_names: Sequence[str], multi_label: bool, source: str) -> Any:
    if isinstance(content, dict):
        if "labels" in content:
            content = content["labels"]
        elif "label" in content:
            content = content["label"]
        else:
            raise ValueError(f"{source}: a class label object needs a 'labels' (class names) or 'label' "
                             f"(class vector or index) entry; found {sorted(content)}")
    n = len(class_names)
    if isinstance(content, str):
        content = [content] if multi_label else _index(content, class_names, source)
    if isinstance(content, list) and all(isinstance(v, str) for v in content) and (content or multi_label):
        idx = sorted({_index(v, class_names, source) for v in content})
        if multi_label:
            return [1.0 if i in idx else 0.0 for i in range(n)]
        if len(idx) != 1:
            raise ValueError(f"{source}: a single-label bundle needs exactly one class name, got {content}")
        return idx[0]
    if isinstance(content, list):
        if len(content) != n:
            raise ValueError(f"{source}: a class vector needs {n} values (one per class {list(class_names)}), "
                             f"got {len(content)}")
        vec = [None if v is None else float(v) for v in content]
        if multi_label:
            return vec
        if any(v is None for v in vec) or sorted(vec) != [0.0] * (n - 1) + [1.0]:
            raise ValueError(f"{source}: a single-label bundle needs a one-hot vector, got {content}")
        return vec.index(1.0)
    if isinstance(content, (int, float)) and not isinstance(content, bool) and not multi_label:
        if int(content) != content or not 0 <= int(content) < n:
            raise ValueError(f"{source}: class index {content} is not one of 0..{n - 1}")
        return int(content)
    kind = "class names or a class vector" if multi_label else "a class name, index or one-hot vector"
    raise ValueError(f"{source}: cannot read {content!r} as a class label; expected {kind}")


def read_class_label(label: Any, class_names: Sequence[str], multi_label: bool = True) -> Any:
    """The in-memory label for ``label``: a JSON label file is read, anything else is returned unchanged.

    Args:
        label: a path to a JSON class-label file (see the module docstring), or an already loaded label.
        class_names: the bundle's classes, in output order.
        multi_label: True: return a float vector of ``len(class_names)`` (``None`` where unknown); False: return the
            class index.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not JSON, or names a class the bundle does not have, or has the wrong number of values
            (the message names the file and the bundle's classes).
    """
    if not is_label_file(label):
        return label
    path = Path(label)
    if not path.is_file():
        raise FileNotFoundError(f"class label file {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: a class label file must be JSON ({e})") from e
    return _from_content(content, class_names, multi_label, str(path))


def resolve_class_labels(
    datalist: Sequence[dict], class_names: Sequence[str], multi_label: bool = True, label_key: str = "label"
) -> list[dict]:
    """``datalist`` with every label file under ``label_key`` replaced by its label (new dicts; others
    unchanged), e.g. before :func:`medbundle.sampling.label_counts` on a MONAI Label datastore's items."""
    out = []
    for item in datalist:
        if label_key in item and is_label_file(item[label_key]):
            item = {**item, label_key: read_class_label(item[label_key], class_names, multi_label)}
        out.append(item)
    return out


def write_class_label(path: str | os.PathLike, labels: Sequence[str] | Sequence[float] | int | str) -> Path:
    """Write a class-label file: class names present, a class vector, or one class name or index."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(labels, (str, int)):
        content: dict = {"label": labels}
    elif all(isinstance(v, str) for v in labels):
        content = {"labels": list(labels)}
    else:
        content = {"label": [None if v is None else float(v) for v in labels]}
    path.write_text(json.dumps(content) + "\n")
    return path
