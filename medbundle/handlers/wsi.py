"""Ignite handlers for whole-slide attention MIL: slide report, per-slide outputs, quadratic kappa.

They read the per-slide attention the :class:`~medbundle.wsi_inference.SlideMILInferer` keeps
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
  tissue, with the reason.
- :class:`QuadraticKappa`: quadratic-weighted kappa as a key metric for graded models.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import CumulativeIterationMetric
from monai.utils import min_version, optional_import

from medbundle.handlers.classification import ClassificationReport, _is_rank0, load_thresholds, to_jsonable
from medbundle.handlers.inference import _safe_stem, as_bool

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = [
    "QuadraticKappa",
    "QuadraticKappaMetric",
    "SlideOutputsWriter",
    "SlideReport",
    "decide",
    "midgap_youden_thresholds",
]

logger = logging.getLogger("medbundle.handlers")


def decide(probs: np.ndarray, label_mode: str, thresholds: Sequence[float] | None = None,
           positive_class: int = 1) -> np.ndarray:
    """Class decision per slide.

    - graded: the ordinal grade (how many cumulative probabilities ``P(grade > k)`` exceed 0.5);
    - binary: ``positive_class`` when its probability reaches its threshold (the other class otherwise);
      arg-max without thresholds.
    """
    from medbundle.losses.mil import grade_from_class_probabilities

    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    if label_mode == "graded":
        return grade_from_class_probabilities(torch.as_tensor(p)).numpy().astype(np.int64)
    if thresholds is None or p.shape[1] != 2:
        return p.argmax(1).astype(np.int64)
    pos = int(positive_class)
    return np.where(p[:, pos] >= float(thresholds[pos]), pos, 1 - pos).astype(np.int64)


def midgap_youden_thresholds(y_true: np.ndarray, y_score: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class: Youden's J threshold (:func:`medbundle.metrics.roc.threshold_youden`, the highest of the
    equally good observed scores) moved to the middle of the gap down to the next lower observed score.

    Every threshold in that gap gives the same sensitivity and specificity on the validation slides; the
    middle is less tied to one validation score, which matters for MIL models whose slide probabilities
    are near 0 or 1 (with a handful of validation slides the Youden score is the lowest tumour score).
    """
    from medbundle.metrics.roc import threshold_youden

    out = []
    for c in range(y_score.shape[1]):
        known = ~np.isnan(y_true[:, c])
        yc, sc = y_true[known, c], y_score[known, c]
        t = threshold_youden(yc, sc)["threshold"] if known.any() else float("nan")
        if not np.isfinite(t):
            out.append(float(default))
            continue
        lower = sc[sc < t]
        out.append(float((t + lower.max()) / 2.0) if lower.size else float(t))
    return out


def _check_mode(label_mode: str) -> str:
    if label_mode not in ("binary", "graded"):
        raise ValueError(f"label_mode must be 'binary' or 'graded', got {label_mode!r}")
    return label_mode


def _results(engine) -> list:
    res = getattr(getattr(engine, "inferer", None), "last_results", None)
    if res is None:
        raise RuntimeError("the evaluator's inferer keeps no slide results; "
                           "use medbundle.wsi_inference.SlideMILInferer")
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


class QuadraticKappaMetric(CumulativeIterationMetric):
    """Quadratic-weighted Cohen's kappa (:func:`medbundle.metrics.cohen_kappa_quadratic`) of the slide
    decision (:func:`decide`) from class probabilities ``(B, K)`` against grades ``(B,)``."""

    def __init__(self, label_mode: str = "graded") -> None:
        super().__init__()
        self.label_mode = _check_mode(label_mode)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        return y_pred.float(), torch.as_tensor(y).reshape(-1, 1).float().to(y_pred.device)

    def aggregate(self) -> float:  # type: ignore[override]
        from medbundle.metrics.classification import cohen_kappa_quadratic

        y_pred, y = self.get_buffer()
        p = y_pred.cpu().numpy()
        grades = decide(p, self.label_mode)
        return cohen_kappa_quadratic(y.cpu().numpy().reshape(-1).astype(np.int64), grades, num_classes=p.shape[1])


class QuadraticKappa(IgniteMetricHandler):
    """Quadratic kappa as an Ignite metric (``key_val_metric`` of graded models)."""

    def __init__(self, label_mode: str = "graded", output_transform: Callable = from_engine(["pred", "label"])) -> None:
        super().__init__(metric_fn=QuadraticKappaMetric(label_mode), output_transform=output_transform)


class SlideReport(ClassificationReport):
    """Slide-level classification report (see the module docstring).

    Args:
        class_names, output_dir, thresholds_file, save_thresholds_to, split_name, confidence, plot: as
            :class:`~medbundle.handlers.classification.ClassificationReport`.
        label_mode: ``"binary"`` (softmax over ``class_names``) or ``"graded"`` (ordinal grades; ``pred``
            holds the class probabilities from :class:`~medbundle.transforms.wsi.OrdinalProbabilitiesd`).
        positive_class: index of the class whose AUROC is ``slide_auroc`` (binary).
        top_k: patches per tumour slide checked against the tumour outline.
        annotation_key: item key of the tumour outline file (ASAP XML).
        threshold_rule: thresholds saved during training: ``"youden"`` (the highest of the equally good
            validation scores) or ``"youden_midgap"`` (:func:`midgap_youden_thresholds`).
    """

    def __init__(self, class_names: Sequence[str], output_dir: str | Path | None = None,
                 thresholds_file: str | Path | None = None, save_thresholds_to: str | Path | None = None,
                 split_name: str = "test", confidence: float = 0.95, plot: bool = True, label_mode: str = "binary",
                 positive_class: int = 1, top_k: int = 8, annotation_key: str = "annotation",
                 threshold_rule: str = "youden_midgap") -> None:
        self.label_mode = _check_mode(label_mode)
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
        from medbundle.data.pathology import points_in_annotations, read_asap_xml

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
        if buf is None or best_epoch not in (-1, engine.state.epoch) or not _is_rank0():
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
        if self.output_dir is None or self.report is None or not _is_rank0():
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


class SlideOutputsWriter:
    """Write slide predictions and attention maps at the end of an inference (or evaluation) run.

    Outputs in ``output_dir``: ``predictions.csv`` (``file, n_patches, <class probabilities>, predicted``;
    graded adds ``expected_grade``), ``predictions.json``, ``skipped.csv`` (slides the dataset could not
    read or found no tissue on, with the reason), ``top_patches.csv`` and, per slide (when
    ``save_maps``): ``<slide>_heatmap.png``, ``<slide>_attention.geojson``, ``<slide>_top_patches.png``.

    Args:
        output_dir: destination folder.
        class_names: one per class probability.
        label_mode: ``"binary"`` or ``"graded"`` (decides ``predicted``, see :func:`decide`).
        thresholds_file: validation thresholds (binary decision); 0.5 / arg-max without.
        dataset: the dataset, for its ``skipped`` list.
        save_maps: write the per-slide PNG/GeoJSON files.
        top_k: most attended patches shown and listed.
        max_side: longest side of the heatmap PNG.
        max_maps: write maps for at most this many slides (None: all).
        backend: reader backend for the top-k patches (default: the grid's).
        positive_class: binary: the class called when its probability reaches its threshold.
    """

    def __init__(self, output_dir: str | Path, class_names: Sequence[str], label_mode: str = "binary",
                 thresholds_file: str | Path | None = None, dataset=None, save_maps: bool = True, top_k: int = 8,
                 max_side: int = 2048, max_maps: int | None = None, backend: str | None = None,
                 positive_class: int = 1) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.label_mode = _check_mode(label_mode)
        thr, self.thresholds_source = load_thresholds(thresholds_file, self.class_names)
        self.thresholds = thr if self.thresholds_source.endswith(".json") else None
        self.dataset = dataset
        self.save_maps = as_bool(save_maps)
        self.top_k = int(top_k)
        self.max_side = int(max_side)
        self.max_maps = None if max_maps is None else int(max_maps)
        self.backend = backend
        self.positive_class = int(positive_class)
        self.rows: list[dict[str, Any]] = []
        self.top_rows: list[list[Any]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _start(self, engine) -> None:
        self.rows.clear()
        self.top_rows.clear()

    def _collect(self, engine) -> None:
        results = _results(engine)
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        if len(outputs) != len(results):
            raise RuntimeError(f"{len(outputs)} outputs for {len(results)} slide results")
        for res, out in zip(results, outputs):
            p = torch.as_tensor(out["pred"]).detach().float().cpu().reshape(-1).numpy()
            if p.shape[0] != len(self.class_names):
                raise ValueError(f"model gives {p.shape[0]} probabilities for {len(self.class_names)} class names")
            k = int(decide(p[None], self.label_mode, self.thresholds, self.positive_class)[0])
            row = {"file": res.path, "n_patches": len(res.grid), "probabilities": p, "predicted": self.class_names[k],
                   "predicted_index": k, "seconds": round(res.seconds, 3)}
            if self.label_mode == "graded":
                row["expected_grade"] = float((p * np.arange(p.size)).sum())
            top = res.top_k(self.top_k)
            stem = _safe_stem(res.path)
            for r, i in enumerate(top, start=1):
                y, x = (int(v) for v in res.grid.coords[i])
                self.top_rows.append([res.path, r, int(i), x, y, int(round(res.grid.footprint)),
                                      float(res.attention[i]), float(res.attention[i] * len(res.grid))])
            if self.save_maps and (self.max_maps is None or len(self.rows) < self.max_maps):
                row.update(self._maps(res, top, stem, dict(zip(self.class_names, p.tolist()))))
            self.rows.append(row)

    def _maps(self, res, top: np.ndarray, stem: str, probs: dict) -> dict[str, str]:
        from PIL import Image

        from medbundle.data.wsi import open_slide, read_patches
        from medbundle.viz.wsi import attention_geojson, save_attention_heatmap, top_patch_mosaic, write_geojson

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

    def write(self, engine=None) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "predictions.csv"
        graded = self.label_mode == "graded"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "n_patches", *self.class_names, "predicted", *(["expected_grade"] if graded else [])])
            for r in self.rows:
                w.writerow([r["file"], r["n_patches"], *[f"{v:.6f}" for v in r["probabilities"]], r["predicted"],
                            *([f"{r['expected_grade']:.4f}"] if graded else [])])
        with open(self.output_dir / "top_patches.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "rank", "patch_index", "x", "y", "size_level0", "attention", "attention_relative"])
            w.writerows(self.top_rows)
        skipped = list(getattr(self.dataset, "skipped", []) or [])
        records = [{**{k: v for k, v in r.items() if k != "probabilities"},
                    "probabilities": dict(zip(self.class_names, to_jsonable(r["probabilities"])))} for r in self.rows]
        with open(self.output_dir / "predictions.json", "w") as f:
            json.dump({"label_mode": self.label_mode, "thresholds_source": self.thresholds_source,
                       "predictions": to_jsonable(records),
                       "skipped": [{"file": n, "reason": why} for n, why in skipped]}, f, indent=1)
        if skipped:
            with open(self.output_dir / "skipped.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "reason"])
                w.writerows(skipped)
        logger.info("wrote %d slide predictions to %s (%d skipped: unreadable or no tissue)", len(self.rows), path,
                    len(skipped))
        return path
