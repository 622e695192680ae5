"""Serve the bundles with MONAI Label: lay out a ``monaibundle``-style app's ``model/`` folder.

MONAI Label's bundle tasks read only ``<app>/model/<name>/configs/inference.json`` and
``models/model.pt``; they do not know about overlays such as ``configs/demo.json`` or command-line
overrides. :func:`prepare_model_dir` therefore copies a bundle and writes a *merged* inference config
(``inference.json`` + overlays + overrides) so that the network it builds matches the trained weights.

Demo recipes (:data:`DEMO_RECIPES`) hold the small synthetic-data settings that the bundle tests use;
:func:`train_demo_bundle` trains one with ``python -m monai.bundle run training`` as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLES_DIR", "DEMO_RECIPES", "make_demo_data", "merged_config", "monaibundle_app_source", "prepare_app",
    "prepare_model_dir", "train_demo_bundle",
]

BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"

# per bundle: overrides shared by training and inference (they shape the network or the input), and
# training-only overrides; all on top of configs/demo.json
DEMO_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "chest_xray_classification": {
        "common": {"image_size": 48},
        "train": {"num_epochs": 2, "batch_size": 16, "cache_rate": 1.0},
    },
    "ct_volume_classification": {
        "common": {"class_names": ["normal", "consolidation"]},
        "train": {"num_epochs": 2, "val_interval": 1, "patches_per_volume": 2},
    },
    "lung_nodule_ct_detection": {
        "common": {"spacing": [2.0, 2.0, 3.0], "patch_size": [48, 48, 32], "val_patch_size": [64, 64, 48],
                   "base_anchor_shapes": [[3, 3, 2], [5, 5, 3]],
                   "box_selector": {"score_thresh": 0.0, "topk_candidates_per_level": 100, "nms_thresh": 0.22,
                                    "detections_per_img": 20}},
        "train": {"crops_per_scan": 2, "num_epochs": 1, "val_interval": 1, "warmup_epochs": 1, "num_workers": 0},
    },
    "wsi_mil_classification": {
        "common": {"patch_size": 32, "bag_size": 16},
        "train": {"num_epochs": 2, "val_interval": 1},
    },
}


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a#b#c`` in a nested dict (list indices allowed), like MONAI's config overrides."""
    parts = key.split("#")
    node: Any = cfg
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def merged_config(
    config: str | os.PathLike, overlays: Sequence[str | os.PathLike] = (), overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` updated with each overlay file (top-level or ``a#b`` keys) and then ``overrides``."""
    cfg = json.loads(Path(config).read_text())
    for overlay in overlays:
        for k, v in json.loads(Path(overlay).read_text()).items():
            _set(cfg, k, v)
    for k, v in (overrides or {}).items():
        _set(cfg, k, v)
    return cfg


def prepare_model_dir(
    bundle_work: str | os.PathLike,
    model_root: str | os.PathLike,
    name: str,
    overlays: Sequence[str] = ("demo.json",),
    overrides: Mapping[str, Any] | None = None,
    bundle_src: str | os.PathLike | None = None,
) -> Path:
    """Write ``<model_root>/<name>/`` for MONAI Label from a bundle and its trained ``bundle_work`` folder.

    Copies the bundle (``configs``, ``docs``, ``LICENSE``) from ``bundle_src`` (default
    ``bundles/<name>``), the trained ``models/`` files (``model.pt``, ``thresholds.json``, ...) from
    ``bundle_work``, and rewrites ``configs/inference.json`` (and ``train.json``) merged with the
    overlay files named in ``overlays`` (looked up in the bundle's ``configs/``) and ``overrides``.
    Returns the new bundle folder.
    """
    src = Path(bundle_src) if bundle_src is not None else BUNDLES_DIR / name
    dest = Path(model_root) / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("models", "eval", "data", "cache", "predictions",
                                                              "__pycache__"))
    models = dest / "models"
    models.mkdir()
    trained = Path(bundle_work) / "models"
    if not (trained / "model.pt").is_file():
        raise FileNotFoundError(f"{trained / 'model.pt'}: no trained checkpoint; train the bundle first")
    for f in trained.iterdir():
        if f.is_file():
            shutil.copy2(f, models / f.name)
    cfg_dir = dest / "configs"
    overlay_paths = [src / "configs" / o for o in overlays]
    for config in ("inference.json", "train.json"):
        if (src / "configs" / config).is_file():
            merged = merged_config(src / "configs" / config, overlay_paths, overrides)
            (cfg_dir / config).write_text(json.dumps(merged, indent=4) + "\n")
    for o in overlays:  # the overlays are now part of the configs; MONAI Label would not read them anyway
        if (cfg_dir / o).is_file():
            (cfg_dir / o).unlink()
    classes = merged_config(src / "configs" / "inference.json", overlay_paths, overrides).get("class_names")
    meta_path = cfg_dir / "metadata.json"
    if isinstance(classes, list) and meta_path.is_file():
        # MONAI Label takes the labels from the first output's channel_def: keep it in step with class_names
        # (a detector's channel_def describes its box columns; MONAI Label wants the classes there too)
        meta = json.loads(meta_path.read_text())
        out = next(iter(meta["network_data_format"]["outputs"].values()))
        if len(out.get("channel_def", {})) != len(classes) or "detection" in name:
            out["channel_def"] = {str(i): c for i, c in enumerate(classes)}
            meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return dest


def monaibundle_app_source(prefix: str | os.PathLike = sys.prefix) -> Path:
    """The ``monaibundle`` sample app that the MONAI Label wheel installs under ``<prefix>/monailabel/``."""
    app = Path(prefix) / "monailabel" / "sample-apps" / "monaibundle"
    if not (app / "main.py").is_file():
        raise FileNotFoundError(f"{app}: no monaibundle sample app; install monailabel into {prefix}")
    return app


def prepare_app(
    app_dir: str | os.PathLike, prefix: str | os.PathLike, bundles: Mapping[str, str | os.PathLike],
) -> Path:
    """Copy MONAI Label's ``monaibundle`` app from the environment at ``prefix`` to ``app_dir`` and fill its
    ``model/`` folder: ``bundles`` maps a bundle name to its trained work folder (demo recipe overrides)."""
    app_dir = Path(app_dir)
    if app_dir.exists():
        shutil.rmtree(app_dir)
    shutil.copytree(monaibundle_app_source(prefix), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    for name, work in bundles.items():
        prepare_model_dir(work, app_dir / "model", name, overrides=DEMO_RECIPES.get(name, {}).get("common"))
    return app_dir


def make_demo_data(name: str, root: str | os.PathLike) -> dict[str, Path]:
    """Write a small synthetic data set for bundle ``name``; returns ``dataset_dir`` (and ``datalist_file``)."""
    root = Path(root)
    if name == "chest_xray_classification":
        from medbundle.data.synthetic_xray import generate_chestxray14

        data = root / "ChestXray14"
        generate_chestxray14(data, n_patients=120, size=96, n_dicom=4, seed=1, min_pos_per_split=2)
        return {"dataset_dir": data}
    if name == "ct_volume_classification":
        from medbundle.data.ct import synthetic_ct_datalist, write_datalist
        from medbundle.data.synthetic_ct import generate_ct_dataset

        data = root / "ct_volumes"
        classes = DEMO_RECIPES[name]["common"]["class_names"]
        generate_ct_dataset(data, n_volumes=24, shape=(64, 64, 40), class_names=tuple(classes),
                            prevalences=dict.fromkeys(classes, 1.0 / len(classes)), n_dicom_series=0, seed=3,
                            min_per_class=3)
        dl = write_datalist(synthetic_ct_datalist(data, val_fraction=0.25, seed=0), root / "ct_datalist.json")
        return {"dataset_dir": data, "datalist_file": Path(dl)}
    if name == "lung_nodule_ct_detection":
        from medbundle.data.synthetic_luna16 import generate_luna16

        data = root / "LUNA16"
        generate_luna16(data, n_scans=10, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0), n_subsets=5, seed=1,
                        nodules_per_scan=(1, 2), diameter_range=(8.0, 20.0), excluded_per_scan=(0, 1))
        return {"dataset_dir": data}
    if name == "wsi_mil_classification":
        from medbundle.data.pathology import camelyon16_datalist, write_datalist
        from medbundle.data.synthetic_wsi import generate_camelyon16

        data = root / "camelyon16"
        generate_camelyon16(data, n_train_normal=4, n_train_tumor=4, n_test_normal=2, n_test_tumor=2, size=768,
                            mpp=1.0, seed=5)
        dl = write_datalist(camelyon16_datalist(data, val_fraction=0.25, seed=0), root / "wsi_datalist.json")
        return {"dataset_dir": data, "datalist_file": Path(dl)}
    raise KeyError(f"no demo recipe for bundle {name!r}; known: {sorted(DEMO_RECIPES)}")


def train_demo_bundle(
    name: str, data: Mapping[str, str | os.PathLike], work: str | os.PathLike, python: str = sys.executable,
    timeout: int = 1800,
) -> subprocess.CompletedProcess:
    """Train bundle ``name`` with its demo overlay and :data:`DEMO_RECIPES` into ``work`` via ``monai.bundle``."""
    cfg = BUNDLES_DIR / name / "configs"
    recipe = DEMO_RECIPES[name]
    args = [python, "-m", "monai.bundle", "run", "training",
            "--config_file", "[" + ",".join(repr(str(cfg / f)) for f in ("train.json", "demo.json")) + "]",
            "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
            "--bundle_root", str(work)]
    for k, v in data.items():
        args += [f"--{k}", str(v)]
    for k, v in {**recipe["common"], **recipe["train"]}.items():
        args += [f"--{k}", repr(v)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
