"""Locate the project's bundles and summarise their metadata."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RUN_STATE_FILES", "BundleInfo", "bundle_dir", "bundles_root", "list_bundles", "task_type"]

#: Files under a bundle's ``models/`` that belong to one training run, not to the bundle others use: the resume
#: checkpoint (optimizer, random states, ...). Packages and MONAI Label apps leave them out. (MONAI Label 0.8.5
#: offers every ``models/*.pt`` and loads the shortest name first: a resume file named ``last.pt`` would win
#: over ``model.pt``, which is why it is ``last_epoch.pt``.)
RUN_STATE_FILES: tuple[str, ...] = ("last_epoch.pt",)

_TASK_WORDS = ("deepedit", "deepgrow", "detection", "segmentation", "classification")


def bundles_root() -> Path:
    """The folder holding the bundles: ``$MEDBUNDLE_BUNDLES`` if set, else ``bundles/`` of the checkout."""
    env = os.environ.get("MEDBUNDLE_BUNDLES")
    root = Path(env) if env else Path(__file__).resolve().parent.parent / "bundles"
    if not root.is_dir():
        raise FileNotFoundError(
            f"bundle folder not found: {root}. Install medbundle from a clone with `pip install -e .`, "
            "or set MEDBUNDLE_BUNDLES to the folder that holds the bundles."
        )
    return root


def bundle_dir(name: str) -> Path:
    """Path of bundle ``name`` (a folder name under :func:`bundles_root`, or a path to a bundle)."""
    p = Path(name)
    if (p / "configs" / "metadata.json").is_file():
        return p.resolve()
    d = bundles_root() / name
    if not (d / "configs" / "metadata.json").is_file():
        known = ", ".join(b.name for b in list_bundles()) or "none"
        raise ValueError(f"unknown bundle {name!r}; known bundles: {known}")
    return d


def task_type(name: str) -> str:
    """The task type MONAI Label derives from a bundle folder name (first keyword found, else segmentation)."""
    low = name.lower()
    for w in _TASK_WORDS:
        if w in low:
            return w
    return "segmentation"


@dataclass
class BundleInfo:
    name: str
    path: Path
    version: str
    task: str
    task_type: str
    input: str
    output: str


def _describe_io(fmt: dict, kind: str) -> str:
    items = fmt.get(kind, {})
    parts = []
    for key, v in items.items():
        shape = "x".join(str(s) for s in v.get("spatial_shape", []))
        if kind == "inputs":
            what = v.get("modality", v.get("type", ""))
            parts.append(f"{key}: {what} {v.get('num_channels', '?')}ch {shape}".strip())
        else:
            parts.append(f"{key}: {v.get('num_channels', '?')} {v.get('type', '')}")
    return "; ".join(parts)


def list_bundles() -> list[BundleInfo]:
    """Every bundle under :func:`bundles_root`, sorted by name."""
    out = []
    for meta_path in sorted(bundles_root().glob("*/configs/metadata.json")):
        with open(meta_path) as f:
            meta = json.load(f)
        fmt = meta.get("network_data_format", {})
        d = meta_path.parent.parent
        out.append(
            BundleInfo(
                name=d.name,
                path=d,
                version=str(meta.get("version", "?")),
                task=str(meta.get("task", "")),
                task_type=task_type(d.name),
                input=_describe_io(fmt, "inputs"),
                output=_describe_io(fmt, "outputs"),
            )
        )
    return out
