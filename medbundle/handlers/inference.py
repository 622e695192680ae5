"""Handlers that write inference results: a predictions table and Grad-CAM overlays."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import min_version, optional_import

from medbundle.handlers.classification import load_thresholds, to_jsonable

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["GradCAMSaver", "PredictionsWriter"]

logger = logging.getLogger("medbundle.handlers")


def as_bool(value) -> bool:
    """A config switch as bool; command-line overrides arrive as text unless written as Python literals."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _batch_items(engine) -> list[dict]:
    batch = engine.state.batch
    return batch if isinstance(batch, list) else [batch]


def _filenames(engine, n: int, key: str) -> list[str]:
    items = _batch_items(engine)
    names = []
    for i in range(n):
        item = items[i] if i < len(items) else {}
        name = item.get(key) if isinstance(item, dict) else None
        if name is None and isinstance(item, dict) and hasattr(item.get("image"), "meta"):
            name = item["image"].meta.get("filename_or_obj")
        names.append(str(name))
    return names


def _safe_stem(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".png", ".jpg", ".jpeg", ".dcm", ".nii", ".mhd", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "image"


class PredictionsWriter:
    """Write one row per image: file, probability per class, positive call per class.

    Rows are collected over the evaluator run and written at the end as ``predictions.csv`` (and
    ``predictions.json``), with the thresholds that made the calls; items the dataset skipped as
    unreadable are listed in ``skipped.csv`` with the reason.

    Args:
        output_dir: folder for the outputs.
        class_names: one name per output channel.
        thresholds_file: JSON written by training (``{"thresholds": {name: t}}``); 0.5 if missing.
        filename_key: the datalist key holding the file name.
        dataset: optional dataset with a ``skipped`` list of ``(name, reason)`` (``SafeCacheDataset``).
        multiclass: softmax outputs: instead of one call per class, one ``predicted`` column: the class
            exceeding its stored threshold by the largest margin, else the arg-max
            (:func:`~medbundle.metrics.classification.multiclass_decision`).
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        thresholds_file: str | Path | None = None,
        filename_key: str = "filename",
        dataset=None,
        csv_name: str = "predictions.csv",
        multiclass: bool = False,
    ) -> None:
        self.multiclass = bool(multiclass)
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.thresholds, self.thresholds_source = load_thresholds(thresholds_file, self.class_names)
        self.filename_key = filename_key
        self.dataset = dataset
        self.csv_name = csv_name
        self.rows: list[tuple[str, np.ndarray]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _collect(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        preds = [torch.as_tensor(o["pred"]).detach().float().cpu().reshape(-1).numpy() for o in outputs]
        for name, p in zip(_filenames(engine, len(preds), self.filename_key), preds):
            if p.shape[0] != len(self.class_names):
                raise ValueError(f"model gives {p.shape[0]} outputs for {len(self.class_names)} class names")
            self.rows.append((name, p))

    def _predicted(self, p: np.ndarray) -> str:
        from medbundle.metrics.classification import multiclass_decision

        thr = self.thresholds if self.thresholds_source.endswith(".json") else None
        return self.class_names[int(multiclass_decision(p[None], thr)[0])]

    def write(self, engine=None) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.csv_name
        thr = np.asarray(self.thresholds)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            if self.multiclass:
                w.writerow(["file", *self.class_names, "predicted"])
                for name, p in self.rows:
                    w.writerow([name, *[f"{v:.6f}" for v in p], self._predicted(p)])
            else:
                w.writerow(["file", *self.class_names, *[f"{c}_positive" for c in self.class_names]])
                for name, p in self.rows:
                    w.writerow([name, *[f"{v:.6f}" for v in p], *[int(v) for v in (p >= thr)]])
        records = [
            {"file": n, "probabilities": dict(zip(self.class_names, to_jsonable(p))),
             **({"predicted": self._predicted(p)} if self.multiclass else
                {"positive": [c for c, v, t in zip(self.class_names, p, thr) if v >= t]})}
            for n, p in self.rows
        ]
        skipped = list(getattr(self.dataset, "skipped", []) or [])
        with open(self.output_dir / "predictions.json", "w") as f:
            json.dump({"thresholds": dict(zip(self.class_names, to_jsonable(thr))),
                       "thresholds_source": self.thresholds_source, "predictions": records,
                       "skipped": [{"file": n, "reason": r} for n, r in skipped]}, f, indent=1)
        if skipped:
            with open(self.output_dir / "skipped.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "reason"])
                w.writerows(skipped)
        logger.info("wrote %d predictions to %s (%d unreadable skipped)", len(self.rows), path, len(skipped))
        return path


class GradCAMSaver:
    """Save Grad-CAM overlays (MONAI's :class:`~monai.visualize.GradCAM`) for 2D classifiers.

    For each image, the map of every class called positive (at most ``max_classes``, highest
    probability first; the top class when none is positive) is blended over the network input and
    written as ``<output_dir>/<image stem>_<class>.png``.

    Args:
        network: the classifier (the same module the evaluator runs).
        target_layers: name of the layer whose activations and gradients make the map, e.g.
            ``"class_layers.relu"`` for MONAI's DenseNet121.
        class_names: one per output channel.
        output_dir: where the PNGs go.
        thresholds_file: decides which classes are "positive".
        enabled: switch for configs; when false the handler does nothing.
        max_classes: most maps per image.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        target_layers: str,
        class_names: Sequence[str],
        output_dir: str | Path,
        thresholds_file: str | Path | None = None,
        enabled: bool = True,
        max_classes: int = 3,
        filename_key: str = "filename",
    ) -> None:
        self.network = network
        self.target_layers = target_layers
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.thresholds = np.asarray(load_thresholds(thresholds_file, self.class_names)[0])
        self.enabled = as_bool(enabled)
        self.max_classes = max_classes
        self.filename_key = filename_key

    def attach(self, engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._save)

    def _save(self, engine) -> None:
        from monai.visualize import GradCAM

        from medbundle.viz.overlay import save_heatmap_overlay

        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        names = _filenames(engine, len(outputs), self.filename_key)
        cam = GradCAM(nn_module=self.network, target_layers=self.target_layers)
        was_training = self.network.training
        self.network.eval()
        for name, out in zip(names, outputs):
            image = torch.as_tensor(out["image"]).float()
            probs = torch.as_tensor(out["pred"]).detach().float().cpu().reshape(-1).numpy()
            order = np.argsort(-probs)
            chosen = [int(c) for c in order if probs[c] >= self.thresholds[c]][: self.max_classes] or [int(order[0])]
            x = image.unsqueeze(0).to(next(self.network.parameters()).device)
            for c in chosen:
                with torch.enable_grad():
                    heat = cam(x=x.clone().requires_grad_(True), class_idx=c)
                path = self.output_dir / f"{_safe_stem(name)}_{self.class_names[c]}.png"
                save_heatmap_overlay(image[0].cpu().numpy(), heat[0, 0].detach().cpu().numpy(), path)
        self.network.train(was_training)
