"""Ignite handlers that evaluate and write the detections of a 2D (radiograph) detector, in pixels.

The 3D handlers (:mod:`medbundle.detection.handlers`) map boxes to world millimetres and score them with the
LUNA16 FROC. A radiograph has no world frame that matters to its readers: boxes are read and scored in the
pixels of the image as stored (NODE21, VinDr-CXR), and in millimetres only where the file states its pixel
spacing. This module gives the 2D counterparts:

- :func:`image_detection_records`: an evaluator output (boxes in pixels of the *preprocessed* image) mapped back
  to pixels of the image as read, with the pixel spacing when the reader found one;
- :func:`evaluate_image_detections`: COCO AP/AR (IoU 0.5:0.95, 0.5 and 0.4, per class), the FROC over images
  with bootstrap intervals, and the image-level AUROC (highest box score per image) with its DeLong interval;
- :class:`ImageDetectionMetric` (``key_val_metric``), :class:`ImageDetectionReport` (``metrics.json``, the COCO
  ground-truth and detection JSON files, FROC and precision-recall plots) and :class:`ImageDetectionWriter`
  (inference: one JSON of boxes per image, one CSV for the run, optional overlay PNGs).

Coordinates. Boxes are ``[x_min, y_min, x_max, y_max]`` in pixel-region coordinates (pixel ``i`` covers ``[i, i +
1)``; ``x`` = column of the image as displayed), the convention of NODE21's and VinDr-CXR's CSVs, COCO and
torchvision. The bundle's deterministic preprocessing may only resize the image (no crop or pad), so the map back
to the stored image is the ratio of the shapes in ``image_meta`` (``spatial_shape`` as read, ``shape`` now).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import min_version, optional_import

from medbundle.data.streaming import FailedItem, InferencePlan
from medbundle.distributed import gather_unique, is_rank0
from medbundle.handlers.dicom_sr import SRWriter
from medbundle.handlers.report import EvaluationReport
from medbundle.handlers.streaming import StreamingWriter, batch_field
from medbundle.io.results import ResultTables, TableSpec
from medbundle.utils import to_jsonable, to_numpy

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Metric, _ = optional_import("ignite.metrics", "0.4.11", min_version, "Metric")

__all__ = [
    "COCO_IOUS",
    "FROC_RATES",
    "ImageDetectionMetric",
    "ImageDetectionReport",
    "ImageDetectionWriter",
    "evaluate_image_detections",
    "image_detection_records",
    "image_id_of",
]

logger = logging.getLogger("medbundle.handlers")

#: IoU thresholds scored: 0.4 (the VinBigData competition) and COCO's 0.5:0.05:0.95
COCO_IOUS: tuple[float, ...] = (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
#: false positives per image at which the FROC is read (1/8 ... 8, as LUNA16; NODE21 reports 1/4)
FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

_SUFFIX_RE = re.compile(r"(\.nii\.gz|\.nii|\.mhd|\.mha|\.nrrd|\.dcm|\.dicom|\.png|\.jpe?g|\.tiff?)$", re.IGNORECASE)
_KEYS = ("froc", "sens_at_1fp", "sens_at_quarter_fp", "auroc", "map", "ap50", "ap40", "mar")


def image_id_of(item: Mapping[str, Any], n: int = 0) -> str:
    """The id of an image item: its ``image_id``, else its file name without the image suffix, else ``image_<n>``."""
    iid = item.get("image_id")
    if iid is not None and str(iid):
        return str(iid)
    fname = item.get("filename") or item.get("image")
    if isinstance(fname, (str, Path)) and str(fname):
        return _SUFFIX_RE.sub("", Path(str(fname)).name)
    return f"image_{n}"


def _scale(meta: Mapping[str, Any]) -> np.ndarray:
    """Per-axis factor (x, y) from pixels of the stored image to pixels of the preprocessed one."""
    shape = np.asarray(meta.get("shape"), dtype=np.float64).reshape(-1)[:2]
    read = np.asarray(meta.get("spatial_shape", shape), dtype=np.float64).reshape(-1)[:2]
    if shape.size != 2 or read.size != 2 or np.any(read <= 0):
        raise ValueError(f"image meta data without a 2D shape: shape={meta.get('shape')}, "
                         f"spatial_shape={meta.get('spatial_shape')}")
    return shape / read


def _spacing(meta: Mapping[str, Any]) -> np.ndarray | None:
    sp = meta.get("spacing")
    if sp is None:
        return None
    sp = to_numpy(sp, dtype=np.float64).reshape(-1)[:2]
    return sp if sp.size == 2 and np.all(np.isfinite(sp)) and np.all(sp > 0) else None


def image_detection_records(output: Any, start: int = 0) -> list[dict[str, Any]]:
    """Turn a :class:`~medbundle.detection.engines.DetectionEvaluator` output of 2D images into records.

    Args:
        output: The evaluator's list of per-image dicts (``pred_box`` ``(K, 4)`` in pixels of the preprocessed
            image, ``pred_score``, ``pred_label``, ``image_meta``, and ``box`` / ``label`` when the item had ground
            truth).
        start: Number of records before these (names ``image_<n>`` of images without id or file).

    Returns:
        list of dict, one per image: ``image_id``, ``filename``, ``size`` ``[width, height]`` of the stored image
        (pixels), ``spacing`` (``(2,)`` mm per pixel along x, y, or None when the file does not say),
        ``pred_box`` ``(K, 4)`` float64 pixels of the stored image, ``pred_score`` ``(K,)``, ``pred_label``
        ``(K,)`` int64, ``gt_box`` ``(N, 4)``, ``gt_label`` ``(N,)``, ``has_gt``.
    """
    if isinstance(output, Mapping):
        output = [output]
    records = []
    for n, o in enumerate(output, start=start):
        meta = o.get("image_meta") or {}
        scale = np.tile(_scale(meta), 2)
        pred = to_numpy(o["pred_box"], dtype=np.float64).reshape(-1, 4) / scale
        rec = {
            "image_id": str(o["image_id"]) if o.get("image_id") else image_id_of(
                {"filename": meta.get("filename_or_obj")}, n),
            "filename": meta.get("filename_or_obj"),
            "size": [int(round(v)) for v in np.asarray(meta.get("spatial_shape"), dtype=np.float64).reshape(-1)[:2]],
            "spacing": _spacing(meta),
            "pred_box": pred,
            "pred_score": to_numpy(o["pred_score"], dtype=np.float64).reshape(-1),
            "pred_label": to_numpy(o.get("pred_label", np.zeros(pred.shape[0])), dtype=np.int64).reshape(-1),
            "has_gt": o.get("box") is not None,
        }
        gt = to_numpy(o["box"], dtype=np.float64).reshape(-1, 4) / scale if rec["has_gt"] else np.zeros((0, 4))
        rec["gt_box"] = gt
        rec["gt_label"] = to_numpy(o.get("label", np.zeros(gt.shape[0])) if rec["has_gt"] else np.zeros(0),
                                   dtype=np.int64).reshape(-1)
        records.append(rec)
    return records


def _mean(values: Iterable[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def evaluate_image_detections(
    records: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    froc_iou: float = 0.2,
    fp_rates: Sequence[float] = FROC_RATES,
    n_bootstraps: int = 0,
    seed: int = 0,
    max_detections: int = 100,
    curves: bool = False,
) -> dict[str, Any]:
    """COCO AP/AR, the FROC over images and the image-level AUROC of :func:`image_detection_records`.

    - COCO: :func:`medbundle.metrics.detection.coco_detection_metrics` at IoU 0.4 and 0.5:0.05:0.95, per class
      (pycocotools' AP, checked in the tests); ``map`` = AP@[.5:.95], ``ap50``, ``ap40``, ``mar`` = AR@[.5:.95]
      with ``max_detections`` boxes per image and class.
    - FROC: :func:`medbundle.metrics.froc.image_froc` over all classes together (a lesion is hit by a box of any
      class with IoU >= ``froc_iou``), read at ``fp_rates`` false positives per image; ``froc`` = mean sensitivity
      over the rates, with ``n_bootstraps`` image-bootstrap intervals.
    - Image level: score = the highest box score of the image (0 without boxes), truth = the image has a
      ground-truth box; ``auroc`` with the DeLong 95 % interval (:mod:`medbundle.metrics.roc`).

    Returns:
        dict: ``n_images``, ``n_lesions``, ``coco`` (the COCO dict, with ``ap_per_class`` ``{class: {"ap_50_95",
        "ap50", "ap40", "ar_50_95"}}``), ``froc_result`` (the FROC dict), ``image_level`` (``auroc``,
        ``auroc_ci``, ``n_positive``, ``n_negative``), and the headline floats ``froc``, ``sens_at_1fp``,
        ``sens_at_quarter_fp``, ``auroc``, ``map``, ``ap50``, ``ap40``, ``mar`` (NaN when undefined). With
        ``curves``: ``pr_curves`` ``{class: {"recall", "precision"}}`` at IoU 0.5.
    """
    from medbundle.metrics.detection import coco_detection_metrics
    from medbundle.metrics.froc import image_froc
    from medbundle.metrics.roc import delong_auc_ci, roc_auc

    records = [r for r in records if r.get("has_gt", True)]
    out: dict[str, Any] = {"n_images": len(records), "n_lesions": int(sum(r["gt_box"].shape[0] for r in records)),
                           "coco": None, "froc_result": None, "image_level": None}
    out.update({k: math.nan for k in _KEYS})
    if not records:
        return out
    coco = coco_detection_metrics(
        [r["pred_box"] for r in records], [r["pred_score"] for r in records], [r["pred_label"] for r in records],
        [r["gt_box"] for r in records], [r["gt_label"] for r in records], classes=list(classes),
        iou_thresholds=COCO_IOUS, max_detections=max_detections, return_curves=curves,
    )
    keys = {t: f"{round(t, 6):g}" for t in COCO_IOUS}
    coco_range = [keys[t] for t in COCO_IOUS if t >= 0.5]
    per_class = {}
    for c in classes:
        ap, rc = coco["ap"][c], coco["recall"][c]
        per_class[c] = {"ap_50_95": _mean(ap[k] for k in coco_range), "ap50": ap[keys[0.5]], "ap40": ap[keys[0.4]],
                        "ar_50_95": _mean(rc[k] for k in coco_range)}
    coco["ap_per_class"] = per_class
    out["coco"] = coco
    for key, field in (("map", "ap_50_95"), ("ap50", "ap50"), ("ap40", "ap40"), ("mar", "ar_50_95")):
        out[key] = _mean(per_class[c][field] for c in classes)
    if curves:
        out["pr_curves"] = {c: coco["curves"][c][keys[0.5]] for c in classes if c in coco.get("curves", {})}
    if out["n_lesions"]:
        f = image_froc([r["pred_box"] for r in records], [r["pred_score"] for r in records],
                       [r["gt_box"] for r in records], fp_rates=fp_rates, iou_threshold=froc_iou,
                       n_bootstraps=n_bootstraps, seed=seed)
        out["froc_result"] = f
        rates = [float(x) for x in f["fp_rates"]]
        out["froc"] = float(f["mean_sensitivity"])
        if 1.0 in rates:
            out["sens_at_1fp"] = float(f["sensitivities"][rates.index(1.0)])
        if 0.25 in rates:
            out["sens_at_quarter_fp"] = float(f["sensitivities"][rates.index(0.25)])
    y = np.asarray([r["gt_box"].shape[0] > 0 for r in records], dtype=np.int64)
    s = np.asarray([float(r["pred_score"].max()) if r["pred_score"].size else 0.0 for r in records])
    level: dict[str, Any] = {"n_positive": int(y.sum()), "n_negative": int((1 - y).sum()), "auroc": math.nan,
                             "auroc_ci": None, "score": "highest box score of the image (0 without boxes)"}
    if 0 < y.sum() < y.size:
        level["auroc"] = float(roc_auc(y, s))
        level["auroc_ci"] = delong_auc_ci(y, s)
    out["image_level"], out["auroc"] = level, level["auroc"]
    return out


class ImageDetectionMetric(Metric):  # type: ignore[misc, valid-type]
    """One figure of :func:`evaluate_image_detections` over an evaluator run, for ``key_val_metric``.

    Args:
        key: ``"froc"`` (mean FROC sensitivity over 1/8 ... 8 FP per image), ``"sens_at_1fp"``,
            ``"sens_at_quarter_fp"``, ``"auroc"``, ``"map"`` (AP@[.5:.95]), ``"ap50"``, ``"ap40"`` or ``"mar"``.
        classes, froc_iou: See :func:`evaluate_image_detections`.
        output_transform: Maps ``engine.state.output`` to the evaluator's list of per-image dicts.

    Computed on the outputs of every rank; an undefined value is 0.0 so that the best-model comparison works.
    """

    required_output_keys = None

    def __init__(self, key: str = "froc", classes: Sequence[str] = ("nodule",), froc_iou: float = 0.2,
                 output_transform: Callable = lambda x: x) -> None:
        if key not in _KEYS:
            raise ValueError(f"key must be one of {list(_KEYS)}, got {key!r}.")
        self.key, self.classes, self.froc_iou = key, list(classes), float(froc_iou)
        self._records: list[dict] = []
        super().__init__(output_transform=output_transform, device="cpu")

    def reset(self) -> None:
        self._records = []

    def update(self, output: Any) -> None:
        self._records.extend(image_detection_records(output, start=len(self._records)))

    def compute(self) -> float:
        records = gather_unique(self._records, "image_id")
        value = float(evaluate_image_detections(records, self.classes, self.froc_iou)[self.key])
        return value if math.isfinite(value) else 0.0


class ImageDetectionReport(EvaluationReport):
    """Collect an evaluator run of a 2D detector; write ``metrics.json``, COCO JSON files and plots.

    Args:
        output_dir: Folder of the files (rank 0 writes); None: metrics only.
        classes: Class names; label ``i`` is ``classes[i]``.
        froc_iou, fp_rates: See :func:`evaluate_image_detections`.
        n_bootstraps, seed: Image bootstrap of the FROC intervals in ``metrics.json``.
        save_best_metric_key: None: write after every run; a metric name (e.g. ``"val_froc"``): write only when that
            value of ``engine.state.metrics`` is the best so far.
        metric_prefix: ``engine.state.metrics`` gets ``<prefix><key>`` for every headline key.
        output_transform: Maps ``engine.state.output`` to the evaluator's list of per-image dicts.

    Files: ``metrics.json`` (headline figures, COCO per class and IoU, FROC with intervals, image-level AUROC with
    DeLong interval), ``coco_ground_truth.json`` and ``coco_detections.json`` (COCO format, pixels of the stored
    images, any COCO tool re-scores them), ``froc.png`` and ``pr_curves.png``.

    Attributes:
        report: The last report (JSON-ready dict), or None.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        classes: Sequence[str] = ("nodule",),
        froc_iou: float = 0.2,
        fp_rates: Sequence[float] = FROC_RATES,
        n_bootstraps: int = 1000,
        seed: int = 0,
        save_best_metric_key: str | None = None,
        metric_prefix: str = "val_",
        output_transform: Callable = lambda x: x,
    ) -> None:
        super().__init__(output_dir, save_best_metric_key, metric_prefix, output_transform)
        self.classes = list(classes)
        self.froc_iou = float(froc_iou)
        self.fp_rates = tuple(float(r) for r in fp_rates)
        self.n_bootstraps = int(n_bootstraps)
        self.seed = seed

    def records(self, output: Any, start: int) -> list[dict]:
        """:func:`image_detection_records` of an evaluator output."""
        return image_detection_records(output, start=start)

    def compute(self, n_bootstraps: int | None = None, curves: bool = False) -> tuple[dict[str, Any], list[dict]]:
        """Evaluate what every rank collected; returns the result and the records."""
        records = gather_unique(self._records, "image_id")
        result = evaluate_image_detections(
            records, self.classes, self.froc_iou, self.fp_rates,
            n_bootstraps=self.n_bootstraps if n_bootstraps is None else n_bootstraps, seed=self.seed, curves=curves)
        return result, records

    def evaluate_epoch(self) -> tuple[dict[str, float], None]:
        """The headline figures without bootstrap; the written report computes its intervals itself."""
        result, _ = self.compute(n_bootstraps=0)
        return {key: result[key] for key in _KEYS}, None

    def write_epoch(self, result: None, epoch: int) -> dict[str, Any]:
        return self.write(epoch=epoch)

    def write(self, epoch: int | None = None) -> dict[str, Any]:
        """Compute (with bootstrap intervals and curves) and, on rank 0 with an ``output_dir``, write the files."""
        result, records = self.compute(curves=True)
        froc = result["froc_result"]
        report = {
            "epoch": epoch,
            "n_images": result["n_images"],
            "n_lesions": result["n_lesions"],
            "classes": self.classes,
            "box_frame": "pixels of the stored image, [x_min, y_min, x_max, y_max], pixel i covers [i, i + 1)",
            **{k: result[k] for k in _KEYS},
            "coco": result["coco"] and {k: v for k, v in result["coco"].items() if k != "curves"},
            "froc_iou": self.froc_iou,
            "froc_result": froc and {k: v for k, v in froc.items()
                                     if k not in ("fps_per_image", "sensitivity", "thresholds", "bootstrap_curve")},
            "image_level": result["image_level"],
        }
        self.report = to_jsonable(report)
        if self.output_dir is None or not is_rank0():
            return self.report
        from medbundle.io.coco import coco_detections, coco_ground_truth, write_coco_json

        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.json", "w") as fh:
            json.dump(self.report, fh, indent=2)
        names = [r["image_id"] for r in records]
        write_coco_json(coco_ground_truth(names, [r["size"] for r in records], [r["gt_box"] for r in records],
                                          [r["gt_label"] for r in records], self.classes),
                        self.output_dir / "coco_ground_truth.json")
        write_coco_json(coco_detections([r["pred_box"] for r in records], [r["pred_score"] for r in records],
                                        [r["pred_label"] for r in records]),
                        self.output_dir / "coco_detections.json")
        from medbundle.viz.detection import plot_pr_curves
        from medbundle.viz.froc import plot_froc

        if froc is not None:
            plot_froc(froc, self.output_dir / "froc.png")
        if result.get("pr_curves"):
            plot_pr_curves(result["pr_curves"], result["coco"]["ap_per_class"], self.output_dir / "pr_curves.png")
        logger.info("wrote %s (FROC %.4f, sensitivity %.3f at 1 FP/image, %.3f at 1/4; image AUROC %.4f; "
                    "AP50 %.4f, AP40 %.4f, mAP %.4f)", self.output_dir / "metrics.json", result["froc"],
                    result["sens_at_1fp"], result["sens_at_quarter_fp"], result["auroc"], result["ap50"],
                    result["ap40"], result["map"])
        return self.report


#: columns of the inference CSV
DETECTION_COLUMNS = ("image_id", "class", "score", "x_min", "y_min", "x_max", "y_max",
                     "x_min_mm", "y_min_mm", "x_max_mm", "y_max_mm")


class ImageDetectionWriter(StreamingWriter):
    """Write each radiograph's detections as soon as it is done: a JSON per image and one CSV for the run.

    Args:
        output_dir: Folder of ``<image_id>_boxes.json``, ``detections.csv``, ``images.csv`` and overlays.
        classes: Class names; label ``i`` is ``classes[i]``.
        score_threshold: Boxes below this score are left out of the CSV and the overlay (the JSON keeps all).
        overlays: Also write ``overlays/<image_id>.png``: the preprocessed image with its boxes above the threshold.
        plan: The run's :class:`~medbundle.data.streaming.InferencePlan` (``done_table="images.csv"``,
            ``key="image_id"``, ``default_key=image_id_of``): resume, shards, input order, progress.
        output_transform, progress, fsync: See :class:`~medbundle.handlers.streaming.StreamingWriter`.
        sr: Optional :class:`~medbundle.handlers.dicom_sr.SRWriter`: for an image read from DICOM, a TID 1500 SR whose
            findings are the rows of the CSV (score at least ``score_threshold`` and ``sr.min_score``), each box a
            rectangle on the source image in its pixels, with class and score
            (:func:`medbundle.io.dicom_sr.detection_sr`).
        note_key: An item field (e.g. ``"note"``, filled by :class:`~medbundle.transforms.fields.MetaToFieldd` with
            the reader's ``colour_converted``) written, when not empty, as the image JSON's ``"note"``.

    Files: ``<image_id>_boxes.json``: ``{"image_id", "image", "size": [width, height], "spacing_mm": [x, y] or null,
    "detections": [{"class", "label", "score", "box": [x_min, y_min, x_max, y_max] (pixels of the stored image),
    "box_mm": [...] or null (the same from the image's top-left corner, in mm), "size_mm": [w, h] or null}, ...]}``
    highest score first; ``detections.csv`` (:data:`DETECTION_COLUMNS`, mm columns empty without spacing);
    ``images.csv``: one image id per line, the ledger a re-run reads; ``skipped.csv``: failed images and why.
    """

    item_key = "image_id"

    def __init__(
        self,
        output_dir: str | Path,
        classes: Sequence[str] = ("nodule",),
        score_threshold: float = 0.0,
        overlays: bool = False,
        plan: InferencePlan | None = None,
        output_transform: Callable = lambda x: x,
        progress: bool = True,
        fsync: bool = False,
        sr: SRWriter | None = None,
        note_key: str | None = None,
    ) -> None:
        super().__init__(output_dir, plan=plan, progress=progress, fsync=fsync, unit="image")
        self.sr = sr
        self.note_key = note_key
        if plan is not None and (plan.done_table != "images.csv" or plan.key != "image_id"):
            raise ValueError(f"the plan must find done images in 'images.csv' by 'image_id'; it has "
                             f"done_table={plan.done_table!r}, key={plan.key!r}")
        self.classes = list(classes)
        self.score_threshold = float(score_threshold)
        self.overlays = bool(overlays)
        self.output_transform = output_transform
        self.table = TableSpec("detections.csv", DETECTION_COLUMNS, 0)
        self.results = ResultTables(self.output_dir, TableSpec("images.csv", None, 0), (self.table,),
                                    TableSpec("skipped.csv", ("file", "reason", "image_id"), 2))

    def skipped_row(self, failed: FailedItem) -> list[str]:
        return [failed.name(), failed.reason, image_id_of(failed.item)]

    def _class(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)

    def item_results(self, engine: Any) -> Iterable[tuple[list[str], dict[str, list[list[str]]]]]:
        """Write the JSON (and overlay) of every image in the iteration's output; yield its ledger and CSV rows."""
        output = self.output_transform(engine.state.output)
        records = image_detection_records(output, start=self.n_seen)
        ids = batch_field(engine, "image_id", len(records))
        sources = batch_field(engine, "filename", len(records))
        notes = batch_field(engine, self.note_key, len(records)) if self.note_key else []
        self.n_seen += len(records)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(records):
            iid = str(ids[i]) if i < len(ids) and ids[i] else r["image_id"]
            if not (np.isfinite(r["pred_box"]).all() and np.isfinite(r["pred_score"]).all()):
                self.skip(FailedItem({"filename": str(r["filename"]), "image_id": iid},
                                     "non-finite box coordinates or scores from the detector", "inference"))
                continue
            order = np.argsort(-r["pred_score"], kind="stable")
            sp = r["spacing"]
            dets, rows = [], []
            for k in order:
                box = r["pred_box"][k]
                box_mm = None if sp is None else box * np.tile(sp, 2)
                label = int(r["pred_label"][k])
                score = float(r["pred_score"][k])
                dets.append({"class": self._class(label), "label": label, "score": score, "box": box,
                             "box_mm": box_mm, "size_mm": None if box_mm is None else box_mm[2:] - box_mm[:2]})
                if score >= self.score_threshold:
                    mm = ["" if box_mm is None else repr(float(v)) for v in (box_mm if box_mm is not None else box)]
                    rows.append([iid, self._class(label), repr(score), *[repr(float(v)) for v in box], *mm])
            content = {"image_id": iid, "image": r["filename"], "size": r["size"],
                       "spacing_mm": None if sp is None else sp, "box_mode": "xyxy pixels of the stored image",
                       "detections": dets}
            if i < len(notes) and notes[i]:
                content["note"] = str(notes[i])  # e.g. "RGB->luminance": a colour capture read as grey values
            with open(self.output_dir / f"{iid}_boxes.json", "w") as fh:
                json.dump(to_jsonable(content), fh, indent=1)
            if self.sr is not None:
                keep = order[r["pred_score"][order] >= max(self.score_threshold, self.sr.min_score)]
                self._write_sr(iid, sources[i] or r["filename"], r, keep)
            if self.overlays:
                self._overlay(engine, i, iid, output[i])
            yield [iid], {self.table.name: rows}

    def _write_sr(self, iid: str, source: Any, r: Mapping[str, Any], keep: np.ndarray) -> None:
        """The image's SR: the boxes ``keep`` (those of the CSV, highest score first) in pixels of the stored image."""
        self.sr.write(iid, source, "detection", boxes=r["pred_box"][keep], scores=r["pred_score"][keep],
                      labels=r["pred_label"][keep], class_names=self.classes)

    def close(self) -> None:
        """Close the part files; wait for the DICOM SRs still being made."""
        super().close()
        if self.sr is not None:
            self.sr.wait()

    def _overlay(self, engine: Any, i: int, iid: str, out: Mapping[str, Any]) -> None:
        from medbundle.viz.detection import save_box_overlay

        batch = engine.state.batch
        items = list(batch) if isinstance(batch, (list, tuple)) else []
        image = items[i].get("image") if i < len(items) and isinstance(items[i], Mapping) else None
        if image is None:
            return
        keep = to_numpy(out["pred_score"], dtype=np.float64).reshape(-1) >= self.score_threshold
        boxes = to_numpy(out["pred_box"], dtype=np.float64).reshape(-1, 4)[keep]
        labels = [self._class(int(v)) for v in to_numpy(out["pred_label"], dtype=np.int64).reshape(-1)[keep]]
        scores = to_numpy(out["pred_score"], dtype=np.float64).reshape(-1)[keep]
        save_box_overlay(to_numpy(image, dtype=np.float32)[0], boxes, scores, labels,
                         self.output_dir / "overlays" / f"{iid}.png")

    def finish(self, counts: Mapping[str, int]) -> None:
        logger.info("wrote %s (%d boxes, %d images in images.csv; %d skipped)", self.output_dir / self.table.name,
                    counts.get(self.table.name, 0), counts.get("images.csv", 0), counts.get("skipped.csv", 0))
        if not counts.get("skipped.csv", 0):
            (self.output_dir / "skipped.csv").unlink(missing_ok=True)
