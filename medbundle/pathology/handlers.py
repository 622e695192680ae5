"""Ignite handlers for whole-slide attention MIL: slide report, per-slide outputs, quadratic kappa.

They read the per-slide attention the :class:`~medbundle.pathology.inference.SlideMILInferer` keeps
(``engine.inferer.last_results``), so no attention has to travel through the engine's output dict.

- :class:`SlideReport`: :class:`~medbundle.handlers.classification.ClassificationReport` (AUROC with
  DeLong CI, sensitivity/specificity at validation thresholds, all from :mod:`medbundle.metrics`) plus
  slide-level keys: ``slide_auroc`` (binary; the positive class), or ``quadratic_kappa``,
  ``grade_confusion_matrix`` and ``cancer_auroc`` (graded, ordinal decision); and, when items carry
  tumour outlines (``"annotation"``, ASAP XML), how many of the ``top_k`` most attended patches of each
  tumour slide have their centre inside the tumour (``attention_top_k_in_tumour_fraction``), next to
  the fraction of all tissue patches inside the tumour (what random picks would give).
- :class:`SlideOutputsWriter`: ``predictions.csv``/``.json`` (one row per slide), per slide an attention
  heatmap over the thumbnail (PNG), the patches as GeoJSON for QuPath, a mosaic of the ``top_k`` most
  attended patches, ``top_patches.csv``; ``skipped.csv`` lists slides that were unreadable or had no
  tissue, with the reason; with an enabled SR writer (``--write_sr True``), per DICOM slide a DICOM SR
  (``sr/<slide>.dcm``: one finding per class with its probability and the call, referencing the slide's
  instances, carrying its patient and study).
- :class:`QuadraticKappa`: quadratic-weighted kappa as a key metric for graded models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.utils import min_version, optional_import

from medbundle.data.failures import failure_reason
from medbundle.data.streaming import InferencePlan
from medbundle.distributed import is_rank0
from medbundle.handlers.classification import ClassificationReport, load_thresholds
from medbundle.handlers.streaming import StreamingWriter, batch_field, engine_outputs
from medbundle.io.results import SKIPPED_TABLE, ResultTables, TableSpec
from medbundle.metrics.roc import midgap_youden_thresholds
from medbundle.pathology.decisions import QuadraticKappaMetric, check_label_mode, decide
from medbundle.utils import as_bool, safe_stem, to_jsonable

if TYPE_CHECKING:
    from medbundle.handlers.dicom_sr import SRWriter

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = [
    "QuadraticKappa",
    "SlideOutputsWriter",
    "SlideReport",
]

logger = logging.getLogger("medbundle.handlers")


def _results(engine) -> list:
    res = getattr(getattr(engine, "inferer", None), "last_results", None)
    if res is None:
        raise RuntimeError("the evaluator's inferer keeps no slide results; "
                           "use medbundle.pathology.inference.SlideMILInferer")
    return res


def _batch_list(engine, key: str, n: int) -> list:
    """``key`` of each item of the current batch (collated dict, or the list of dicts that MONAI's
    decollation leaves in ``engine.state.batch``); None where absent."""
    batch = engine.state.batch
    if isinstance(batch, (list, tuple)):
        vals = [it.get(key) if isinstance(it, dict) else None for it in batch]
        return (vals + [None] * n)[:n]
    v = batch.get(key) if isinstance(batch, dict) else None
    if v is None:
        return [None] * n
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


class QuadraticKappa(IgniteMetricHandler):
    """Quadratic kappa as an Ignite metric (``key_val_metric`` of graded models)."""

    def __init__(self, label_mode: str = "graded", output_transform: Callable = from_engine(["pred", "label"])) -> None:
        super().__init__(metric_fn=QuadraticKappaMetric(label_mode), output_transform=output_transform)


class SlideReport(ClassificationReport):
    """Slide-level classification report (see the module docstring).

    Args:
        class_names, output_dir, thresholds_file, save_thresholds_to, split_name, confidence, plot: as
            :class:`~medbundle.handlers.classification.ClassificationReport`.
        label_mode: ``"binary"`` (softmax over ``class_names``) or ``"graded"`` (ordinal grades; ``pred`` holds the
            class probabilities from :class:`~medbundle.pathology.transforms.OrdinalProbabilitiesd`).
        positive_class: index of the class whose AUROC is ``slide_auroc`` (binary).
        top_k: patches per tumour slide checked against the tumour outline.
        annotation_key: item key of the tumour outline file (ASAP XML).
        threshold_rule: thresholds saved during training: ``"youden"`` (the highest of the equally good validation
            scores) or ``"youden_midgap"`` (:func:`midgap_youden_thresholds`).
    """

    def __init__(self, class_names: Sequence[str], output_dir: str | Path | None = None,
                 thresholds_file: str | Path | None = None, save_thresholds_to: str | Path | None = None,
                 split_name: str = "test", confidence: float = 0.95, plot: bool = True, label_mode: str = "binary",
                 positive_class: int = 1, top_k: int = 8, annotation_key: str = "annotation",
                 threshold_rule: str = "youden_midgap") -> None:
        self.label_mode = check_label_mode(label_mode)
        if threshold_rule not in ("youden", "youden_midgap"):
            raise ValueError(f"threshold_rule must be 'youden' or 'youden_midgap', got {threshold_rule!r}")
        super().__init__(class_names, output_dir=output_dir, thresholds_file=thresholds_file,
                         save_thresholds_to=save_thresholds_to, split_name=split_name, confidence=confidence,
                         plot=plot, multiclass=False)
        self.threshold_rule = threshold_rule
        self.positive_class = int(positive_class)
        self.top_k = int(top_k)
        self.annotation_key = annotation_key
        self._loc: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_attention)

    def _reset(self, engine) -> None:
        super()._reset(engine)
        self._loc = []

    def _collect_attention(self, engine) -> None:
        if self.output_dir is None:
            return
        from medbundle.pathology.adapters import points_in_annotations, read_asap_xml

        results = _results(engine)
        anns = _batch_list(engine, self.annotation_key, len(results))
        for res, ann in zip(results, anns):
            if not ann:
                continue
            polys = read_asap_xml(ann)
            inside = points_in_annotations(res.grid.centres_xy(), polys)
            top = res.top_k(self.top_k)
            self._loc.append({"slide": res.path, "annotation": str(ann), "n_patches": len(res.grid),
                              "top_k": int(top.size), "top_k_in_tumour": int(inside[top].sum()),
                              "patches_in_tumour": int(inside.sum())})

    def _save_midgap_thresholds(self, engine) -> None:
        buf = self._buffer.get_buffer()
        best_epoch = getattr(engine.state, "best_metric_epoch", -1)
        if buf is None or best_epoch not in (-1, engine.state.epoch) or not is_rank0():
            return
        y_score, y_true = (b.numpy() for b in buf)
        content = {
            "method": "Youden's J on the validation split, moved to the middle of the score gap below it "
                      "(same validation sensitivity and specificity)",
            "epoch": int(engine.state.epoch),
            "key_metric": to_jsonable(getattr(engine.state, "best_metric", None)),
            "thresholds": dict(zip(self.class_names, to_jsonable(midgap_youden_thresholds(y_true, y_score)))),
        }
        with open(self.save_thresholds_to, "w") as f:
            json.dump(content, f, indent=2)

    def _complete(self, engine) -> None:
        super()._complete(engine)
        if self.save_thresholds_to is not None and self.threshold_rule == "youden_midgap":
            self._save_midgap_thresholds(engine)
        if self.output_dir is None or self.report is None or not is_rank0():
            return
        from medbundle.metrics.classification import cohen_kappa_quadratic, multiclass_summary
        from medbundle.metrics.roc import delong_auc_ci

        y_score, y_true = (b.numpy() for b in self._buffer.get_buffer())
        truth = y_true.argmax(1)
        rep = dict(self.report)
        rep["label_mode"] = self.label_mode
        if self.label_mode == "binary":
            name = self.class_names[self.positive_class]
            pc = rep["per_class"][name]
            thr = [c.get("threshold") for c in (rep["per_class"][n] for n in self.class_names)]
            decision = decide(y_score, "binary", thr if None not in thr else None, self.positive_class)
            summary = multiclass_summary(truth, decision, y_score.shape[1])
            rep.update({"positive_class": name, "slide_auroc": pc["auroc"], "slide_auroc_ci_low": pc["auroc_ci_low"],
                        "slide_auroc_ci_high": pc["auroc_ci_high"], "sensitivity": pc.get("sensitivity"),
                        "specificity": pc.get("specificity"), "threshold": pc.get("threshold"),
                        "confusion_matrix": summary["confusion_matrix"],
                        "confusion_matrix_axes": f"rows = true class, columns = predicted class ({name} when its "
                                                 "probability reaches its threshold), class_names order",
                        "accuracy": summary["accuracy"], "balanced_accuracy": summary["balanced_accuracy"]})
        else:
            grades = decide(y_score, "graded")
            summary = multiclass_summary(truth, grades, y_score.shape[1])
            cancer = delong_auc_ci(truth > 0, 1.0 - y_score[:, 0], confidence=self.confidence) \
                if 0 < (truth > 0).sum() < truth.size else {"auc": float("nan"), "ci_low": float("nan"),
                                                             "ci_high": float("nan")}
            rep.update({
                "quadratic_kappa": cohen_kappa_quadratic(truth, grades, num_classes=y_score.shape[1]),
                "grade_decision": "ordinal: number of cumulative probabilities P(grade > k) above 0.5",
                "grade_confusion_matrix": summary["confusion_matrix"], "grade_accuracy": summary["accuracy"],
                "cancer_auroc": cancer["auc"], "cancer_auroc_ci_low": cancer["ci_low"],
                "cancer_auroc_ci_high": cancer["ci_high"],
            })
        if self._loc:
            hits = sum(r["top_k_in_tumour"] for r in self._loc)
            tot = sum(r["top_k"] for r in self._loc)
            in_t = sum(r["patches_in_tumour"] for r in self._loc)
            n_all = sum(r["n_patches"] for r in self._loc)
            rep.update({
                "attention_top_k": self.top_k,
                "attention_top_k_in_tumour_fraction": hits / tot if tot else None,
                "attention_chance_fraction": in_t / n_all if n_all else None,
                "attention_localisation_slides": len(self._loc),
                "attention_localisation": self._loc,
                "attention_localisation_rule": "a patch is in the tumour when its centre lies inside an annotated "
                                               "tumour polygon (and outside exclusion polygons)",
            })
        self.report = to_jsonable(rep)
        out = self.output_dir / f"{self.prefix}metrics.json"
        with open(out, "w") as f:
            json.dump(self.report, f, indent=2)
        head = (f"slide AUROC {rep.get('slide_auroc', float('nan')):.4f}" if self.label_mode == "binary"
                else f"quadratic kappa {rep.get('quadratic_kappa', float('nan')):.4f}")
        loc = rep.get("attention_top_k_in_tumour_fraction")
        loc_text = "" if loc is None else f", top-{self.top_k} attention in tumour {loc:.3f}"
        logger.info("wrote %s (%s%s)", out, head, loc_text)


class SlideOutputsWriter(StreamingWriter):
    """Write each slide's prediction and attention maps as soon as the slide is done.

    Outputs in ``output_dir``: ``predictions.csv`` (``file, n_patches, <class probabilities>, predicted``;
    graded adds ``expected_grade``; the ledger: a slide's row is written after its maps and patch rows),
    ``top_patches.csv`` (the ``top_k`` most attended patches of each slide), ``skipped.csv`` (slides that
    could not be read, had no tissue or failed in the network, with the reason), per slide (when
    ``save_maps``) ``<slide>_heatmap.png``, ``<slide>_attention.geojson``, ``<slide>_top_patches.png``, and
    at the end ``predictions.json`` built from the merged table. With a ``plan`` a re-run skips the slides
    in ``predictions.csv`` and ``torchrun`` ranks write parts that rank 0 merges
    (:class:`~medbundle.handlers.streaming.StreamingWriter`). With an enabled ``sr`` writer each DICOM slide (a
    folder or ``.dcm`` of a VL Whole Slide Microscopy series) also gets ``<sr output_dir>/<slide>.dcm``, a DICOM SR
    from :func:`medbundle.io.dicom_sr.classification_sr`, written before the slide's row: one finding per class
    with the probability of ``predictions.csv`` and the call (the predicted class present, the others absent),
    referencing every pyramid level instance of the slide and carrying the slide's patient and study (the
    patient identity goes nowhere else).

    Args:
        output_dir: destination folder.
        class_names: one per class probability.
        label_mode: ``"binary"`` or ``"graded"`` (decides ``predicted``, see :func:`decide`).
        thresholds_file: validation thresholds (binary decision); 0.5 / arg-max without.
        dataset: optional dataset with a ``skipped`` list (``DiskCacheDataset``).
        save_maps: write the per-slide PNG/GeoJSON files (a map that fails is logged and left out).
        top_k: most attended patches shown and listed.
        max_side: longest side of the heatmap PNG.
        max_maps: write maps for the first this many slides of the input (None: all).
        backend: reader backend for the top-k patches (default: the grid's).
        positive_class: binary: the class called when its probability reaches its threshold.
        plan: the run's :class:`~medbundle.data.streaming.InferencePlan`.
        progress, fsync: see :class:`~medbundle.handlers.streaming.StreamingWriter`.
        sr: the :class:`~medbundle.handlers.dicom_sr.SRWriter` of the DICOM SRs (None or disabled: none written).
    """

    extra_outputs = ("predictions.json",)
    top_header = ("file", "rank", "patch_index", "x", "y", "size_level0", "attention", "attention_relative")

    def __init__(self, output_dir: str | Path, class_names: Sequence[str], label_mode: str = "binary",
                 thresholds_file: str | Path | None = None, dataset=None, save_maps: bool = True, top_k: int = 8,
                 max_side: int = 2048, max_maps: int | None = None, backend: str | None = None,
                 positive_class: int = 1, plan: InferencePlan | None = None, progress: bool = True,
                 fsync: bool = False, sr: SRWriter | None = None) -> None:
        super().__init__(output_dir, plan=plan, dataset=dataset, progress=progress, fsync=fsync, unit="slide")
        self.sr = sr
        self.class_names = list(class_names)
        self.label_mode = check_label_mode(label_mode)
        thr, self.thresholds_source = load_thresholds(thresholds_file, self.class_names)
        self.thresholds = thr if self.thresholds_source.endswith(".json") else None
        self.save_maps = as_bool(save_maps)
        self.top_k = int(top_k)
        self.max_side = int(max_side)
        self.max_maps = None if max_maps is None else int(max_maps)
        self.backend = backend
        self.positive_class = int(positive_class)
        if plan is not None and plan.done_table != "predictions.csv":
            raise ValueError(f"the plan's done_table is {plan.done_table!r}, this writer's ledger is 'predictions.csv'")
        graded = ("expected_grade",) if self.label_mode == "graded" else ()
        self.table = TableSpec("predictions.csv", ("file", "n_patches", *self.class_names, "predicted", *graded), 0)
        self.top_table = TableSpec("top_patches.csv", self.top_header, 0)
        self.results = ResultTables(self.output_dir, self.table, (self.top_table,), SKIPPED_TABLE)
        self._maps_written = 0

    def start(self, engine=None) -> None:
        self._maps_written = 0
        super().start(engine)

    def _wants_maps(self, key: str) -> bool:
        if not self.save_maps:
            return False
        if self.max_maps is None:
            return True
        if self.plan is not None:
            return self.plan.position.get(key, self.max_maps) < self.max_maps
        return self._maps_written < self.max_maps

    def item_results(self, engine):
        results = _results(engine)
        outputs = engine_outputs(engine)
        if len(outputs) != len(results):
            raise RuntimeError(f"{len(outputs)} outputs for {len(results)} slide results")
        keys = batch_field(engine, self.key_field, len(results))
        for res, out, key in zip(results, outputs, keys):
            key = key or res.path
            p = torch.as_tensor(out["pred"]).detach().float().cpu().reshape(-1).numpy()
            if p.shape[0] != len(self.class_names):
                raise ValueError(f"model gives {p.shape[0]} probabilities for {len(self.class_names)} class names")
            k = int(decide(p[None], self.label_mode, self.thresholds, self.positive_class)[0])
            top = res.top_k(self.top_k)
            if self._wants_maps(key):
                self._maps_written += 1
                try:
                    self._maps(res, top, safe_stem(res.path), dict(zip(self.class_names, p.tolist())))
                except Exception as exc:  # noqa: BLE001 - a map that fails leaves the prediction standing
                    logger.warning("no attention maps for %s: %s", key, failure_reason(exc))
            row = [key, len(res.grid), *[f"{v:.6f}" for v in p], self.class_names[k]]
            if self.label_mode == "graded":
                row.append(f"{float((p * np.arange(p.size)).sum()):.4f}")
            if self.sr is not None and self.sr.enabled:
                self._sr(res.path, key, row)
            top_rows = []
            for r, i in enumerate(top, start=1):
                y, x = (int(v) for v in res.grid.coords[i])
                top_rows.append([key, r, int(i), x, y, int(round(res.grid.footprint)), float(res.attention[i]),
                                 float(res.attention[i] * len(res.grid))])
            yield row, {self.top_table.name: top_rows}

    def _sr(self, slide: str, key: str, row: list) -> None:
        """Hand the slide's SR to :attr:`sr`: the probabilities and call of its table ``row`` (as written, 6
        decimals), referencing the slide's instances (:func:`~medbundle.pathology.dicom_wsi.dicom_slide_source`: its
        folder, or its level-0 file when the folder holds other series too). A TIFF or SVS slide gets none."""
        from medbundle.pathology.dicom_wsi import dicom_slide_source, is_dicom_slide

        n = len(self.class_names)
        probabilities = {c: float(v) for c, v in zip(self.class_names, row[2:2 + n])}
        calls = {c: c == row[2 + n] for c in self.class_names}
        source = slide
        if is_dicom_slide(slide):
            try:
                source = str(dicom_slide_source(slide))
            except ValueError as exc:  # read a moment ago; changed since
                logger.warning("no DICOM SR for %s: %s", key, failure_reason(exc))
                return
        self.sr.write(key, source, "classification", probabilities=probabilities, calls=calls)

    def close(self) -> None:
        """Close the part files; wait for the DICOM SRs still being made."""
        super().close()
        if self.sr is not None:
            self.sr.wait()

    def _maps(self, res, top: np.ndarray, stem: str, probs: dict) -> dict[str, str]:
        from PIL import Image

        from medbundle.pathology.reader import open_slide, read_patches
        from medbundle.pathology.viz import attention_geojson, save_attention_heatmap, top_patch_mosaic, write_geojson

        self.output_dir.mkdir(parents=True, exist_ok=True)
        heat = save_attention_heatmap(res.grid, res.attention, self.output_dir / f"{stem}_heatmap.png",
                                      max_side=self.max_side)
        geo = write_geojson(attention_geojson(res.grid, res.attention, top_k=self.top_k, probabilities=probs),
                            self.output_dir / f"{stem}_attention.geojson")
        with open_slide(res.path, self.backend or res.grid.backend) as (reader, wsi):
            patches = read_patches(reader, wsi, res.grid, top)
        mosaic = self.output_dir / f"{stem}_top_patches.png"
        Image.fromarray(top_patch_mosaic(patches, res.attention[top], len(res.grid))).save(mosaic)
        return {"heatmap": str(heat), "geojson": str(geo), "top_patches": str(mosaic)}

    def records(self) -> list[dict[str, Any]]:
        """The ``predictions.json`` records, read back from the merged ``predictions.csv``."""
        n = len(self.class_names)
        out = []
        for r in self.results.read(self.table):
            rec: dict[str, Any] = {"file": r[0], "n_patches": int(r[1]), "predicted": r[2 + n],
                                   "predicted_index": self.class_names.index(r[2 + n])}
            if self.label_mode == "graded":
                rec["expected_grade"] = float(r[3 + n])
            if self.save_maps:
                stem = safe_stem(r[0])
                for name, suffix in (("heatmap", "_heatmap.png"), ("geojson", "_attention.geojson"),
                                     ("top_patches", "_top_patches.png")):
                    if (self.output_dir / f"{stem}{suffix}").is_file():
                        rec[name] = str(self.output_dir / f"{stem}{suffix}")
            rec["probabilities"] = {c: float(v) for c, v in zip(self.class_names, r[2:2 + n])}
            out.append(rec)
        return out

    def finish(self, counts) -> None:
        skipped = self.results.read(SKIPPED_TABLE)
        with open(self.output_dir / "predictions.json", "w") as f:
            json.dump({"label_mode": self.label_mode, "thresholds_source": self.thresholds_source,
                       "predictions": self.records(),
                       "skipped": [{"file": n, "reason": why} for n, why in skipped]}, f, indent=1)
        if not skipped:
            (self.output_dir / SKIPPED_TABLE.name).unlink(missing_ok=True)
        logger.info("wrote %d slide predictions to %s (%d skipped: unreadable, no tissue or failed)",
                    counts.get(self.table.name, 0), self.output_dir / self.table.name, len(skipped))
