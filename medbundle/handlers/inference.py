"""Handlers that write inference results: a predictions table and Grad-CAM overlays."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import min_version, optional_import

from medbundle.data.failures import failure_reason
from medbundle.data.streaming import InferencePlan
from medbundle.handlers.classification import load_thresholds
from medbundle.handlers.streaming import StreamingWriter, batch_field, engine_outputs
from medbundle.io.results import SKIPPED_TABLE, ResultTables, TableSpec
from medbundle.utils import as_bool, safe_stem, to_jsonable

if TYPE_CHECKING:
    from medbundle.handlers.dicom_sr import SRWriter

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["GradCAMSaver", "PredictionsWriter"]

logger = logging.getLogger("medbundle.handlers")


class PredictionsWriter(StreamingWriter):
    """Write one row per image: file, probability per class, positive call per class.

    Each image's row is appended to ``predictions.csv`` (and flushed) as soon as the image is done; at the
    end of the run the table is rewritten in input order and ``predictions.json`` is built from it, with
    the thresholds that made the calls. Items that failed (unreadable, or an error in the network) are
    listed in ``skipped.csv`` with the reason. With a ``plan`` a re-run skips the images already in
    ``predictions.csv`` and ``torchrun`` ranks write parts that rank 0 merges
    (:class:`~medbundle.handlers.streaming.StreamingWriter`). Attach it after per-image savers such as
    :class:`GradCAMSaver`.

    Args:
        output_dir: folder for the outputs.
        class_names: one name per output channel.
        thresholds_file: JSON written by training (``{"thresholds": {name: t}}``); 0.5 if missing.
        filename_key: the datalist key holding the file name (without a plan; with one, the plan's key).
        dataset: optional dataset with a ``skipped`` list of ``(name, reason)`` (``DiskCacheDataset``).
        csv_name: file name of the table.
        multiclass: softmax outputs: instead of one call per class, one ``predicted`` column: the class exceeding its
            stored threshold by the largest margin, else the arg-max
            (:func:`~medbundle.metrics.classification.multiclass_decision`).
        plan: the run's :class:`~medbundle.data.streaming.InferencePlan` (resume, shards, input order).
        progress, fsync: see :class:`~medbundle.handlers.streaming.StreamingWriter`.
        unit: name of one item in the progress line (``"image"``, ``"volume"``).
        note_key: an item field (e.g. ``"note"``, filled by :class:`~medbundle.transforms.fields.MetaToFieldd` with the
            reader's ``colour_converted``) shown in a last ``note`` column and, when not empty, as the JSON record's
            ``note``; None: no such column.
        sr: optional :class:`~medbundle.handlers.dicom_sr.SRWriter`: a DICOM SR per item read from DICOM, one finding
            per class with its probability and the call of the table (:func:`medbundle.io.dicom_sr.classification_sr`).

    Raises:
        ValueError: the model gives another number of outputs than ``class_names`` (at the first batch).
    """

    extra_outputs = ("predictions.json",)

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        thresholds_file: str | Path | None = None,
        filename_key: str = "filename",
        dataset=None,
        csv_name: str = "predictions.csv",
        multiclass: bool = False,
        plan: InferencePlan | None = None,
        progress: bool = True,
        fsync: bool = False,
        unit: str = "image",
        note_key: str | None = None,
        sr: SRWriter | None = None,
    ) -> None:
        super().__init__(output_dir, plan=plan, dataset=dataset, progress=progress, fsync=fsync, unit=unit)
        self.sr = sr
        self.multiclass = as_bool(multiclass)
        self.class_names = list(class_names)
        self.thresholds, self.thresholds_source = load_thresholds(thresholds_file, self.class_names)
        self.filename_key = filename_key
        self.note_key = note_key
        self.csv_name = csv_name
        if plan is not None and plan.done_table != csv_name:
            raise ValueError(f"the plan's done_table is {plan.done_table!r} but this writer's table is {csv_name!r}")
        tail = ["predicted"] if self.multiclass else [f"{c}_positive" for c in self.class_names]
        notes = ["note"] if note_key else []
        self.table = TableSpec(csv_name, ("file", *self.class_names, *tail, *notes), 0)
        self.results = ResultTables(self.output_dir, self.table, skipped=SKIPPED_TABLE)

    @property
    def key_field(self) -> str:
        return self.plan.key if self.plan is not None else self.filename_key

    def _predicted(self, p: np.ndarray) -> str:
        from medbundle.metrics.classification import multiclass_decision

        thr = self.thresholds if self.thresholds_source.endswith(".json") else None
        return self.class_names[int(multiclass_decision(p[None], thr)[0])]

    def row(self, name: str, p: np.ndarray, note: str | None = None) -> list[str]:
        """The table row of one image from its probabilities ``(C,)`` (and its note, with ``note_key``)."""
        if p.shape[0] != len(self.class_names):
            raise ValueError(f"model gives {p.shape[0]} outputs for {len(self.class_names)} class names")
        probs = [f"{v:.6f}" for v in p]
        notes = [note or ""] if self.note_key else []
        if self.multiclass:
            return [name, *probs, self._predicted(p), *notes]
        return [name, *probs, *[str(int(v)) for v in (p >= np.asarray(self.thresholds))], *notes]

    def item_results(self, engine) -> Iterable[tuple[list[str], Mapping[str, list]]]:
        outputs = engine_outputs(engine)
        preds = [torch.as_tensor(o["pred"]).detach().float().cpu().reshape(-1).numpy() for o in outputs]
        sources = batch_field(engine, "filename", len(preds))
        notes = batch_field(engine, self.note_key, len(preds)) if self.note_key else [None] * len(preds)
        for name, source, p, note in zip(batch_field(engine, self.key_field, len(preds)), sources, preds, notes):
            row = self.row(str(name), p, note)
            if self.sr is not None:
                self._write_sr(str(name), source or str(name), row)
            yield row, {}

    def _write_sr(self, name: str, source: str, row: list[str]) -> None:
        """The item's SR: the probabilities and calls of its table ``row`` (as written, 6 decimals)."""
        n = len(self.class_names)
        probs = {c: float(v) for c, v in zip(self.class_names, row[1 : 1 + n])}
        if self.multiclass:
            calls = {c: c == row[1 + n] for c in self.class_names}
        else:
            calls = {c: v == "1" for c, v in zip(self.class_names, row[1 + n:])}
        self.sr.write(name, source, "classification", probabilities=probs, calls=calls)

    def close(self) -> None:
        """Close the part files; wait for the DICOM SRs still being made."""
        super().close()
        if self.sr is not None:
            self.sr.wait()

    def records(self) -> list[dict[str, Any]]:
        """The ``predictions.json`` records, read back from the merged table."""
        n = len(self.class_names)
        out = []
        for r in self.results.read(self.table):
            probs = {c: float(v) for c, v in zip(self.class_names, r[1 : 1 + n])}
            rec: dict[str, Any] = {"file": r[0], "probabilities": probs}
            if self.multiclass:
                rec["predicted"] = r[1 + n]
            else:
                rec["positive"] = [c for c, v in zip(self.class_names, r[1 + n:]) if v == "1"]
            if self.note_key and r[-1]:
                rec["note"] = r[-1]
            out.append(rec)
        return out

    def finish(self, counts: Mapping[str, int]) -> None:
        skipped = self.results.read(SKIPPED_TABLE)
        with open(self.output_dir / "predictions.json", "w") as f:
            json.dump({"thresholds": dict(zip(self.class_names, to_jsonable(self.thresholds))),
                       "thresholds_source": self.thresholds_source, "predictions": self.records(),
                       "skipped": [{"file": n, "reason": r} for n, r in skipped]}, f, indent=1)
        if not skipped:
            (self.output_dir / SKIPPED_TABLE.name).unlink(missing_ok=True)
        logger.info("wrote %d predictions to %s (%d skipped)", counts.get(self.csv_name, 0),
                    self.output_dir / self.csv_name, len(skipped))


class GradCAMSaver:
    """Save Grad-CAM overlays (MONAI's :class:`~monai.visualize.GradCAM`) for 2D classifiers.

    For each image, the map of every class called positive (at most ``max_classes``, highest
    probability first; the top class when none is positive) is blended over the network input and
    written as ``<output_dir>/<image stem>_<class>.png``.

    Args:
        network: the classifier (the same module the evaluator runs).
        target_layers: name of the layer whose activations and gradients make the map, e.g. ``"class_layers.relu"`` for
            MONAI's DenseNet121.
        class_names: one per output channel.
        output_dir: where the PNGs go.
        thresholds_file: decides which classes are "positive".
        enabled: switch for configs; when false the handler does nothing.
        max_classes: most maps per image.

    A map that fails is logged (``no Grad-CAM for <file>: <reason>``) and left out; the prediction stands.
    Attach it before :class:`PredictionsWriter`, so an image counts as done only with its maps on disk.
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

        outputs = engine_outputs(engine)
        names = batch_field(engine, self.filename_key, len(outputs))
        cam = GradCAM(nn_module=self.network, target_layers=self.target_layers)
        was_training = self.network.training
        self.network.eval()
        try:
            for name, out in zip(names, outputs):
                try:
                    self._save_one(cam, str(name), out)
                except Exception as exc:  # noqa: BLE001 - a map that fails leaves the prediction standing
                    logger.warning("no Grad-CAM for %s: %s", name, failure_reason(exc))
        finally:
            self.network.train(was_training)

    def _save_one(self, cam, name: str, out: Mapping) -> None:
        from medbundle.viz.overlay import save_heatmap_overlay

        image = torch.as_tensor(out["image"]).float()
        probs = torch.as_tensor(out["pred"]).detach().float().cpu().reshape(-1).numpy()
        order = np.argsort(-probs)
        chosen = [int(c) for c in order if probs[c] >= self.thresholds[c]][: self.max_classes] or [int(order[0])]
        x = image.unsqueeze(0).to(next(self.network.parameters()).device)
        for c in chosen:
            with torch.enable_grad():
                heat = cam(x=x.clone().requires_grad_(True), class_idx=c)
            path = self.output_dir / f"{safe_stem(name)}_{self.class_names[c]}.png"
            save_heatmap_overlay(image[0].cpu().numpy(), heat[0, 0].detach().cpu().numpy(), path)
