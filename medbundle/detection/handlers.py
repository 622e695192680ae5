"""Ignite handlers that evaluate and write the detections of :class:`medbundle.detection.engines.DetectionEvaluator`.

- :class:`DetectionMetric` (and :class:`CPMMetric`) is an Ignite metric for ``key_val_metric``: LUNA16 CPM
  (or COCO mAP / mAR) of one evaluator run, so ``CheckpointSaver(save_key_metric=True)`` keeps the best model.
- :class:`DetectionReport` writes ``metrics.json`` (COCO mAP/mAR per IoU threshold and the LUNA16 FROC
  summary, with bootstrap intervals) and ``froc.png``, and puts ``val_cpm``, ``val_map``, ``val_mar`` into
  ``engine.state.metrics``.
- :class:`DetectionWriter` writes each image's boxes in world coordinates as JSON and one LUNA16 results CSV.

Coordinates. The evaluator gives boxes in voxel coordinates of the *preprocessed* image, ``xyzxyz`` (MONAI
``StandardMode``: ``[i0, j0, k0, i1, j1, k1]`` along the array axes). They are mapped to world mm with that
image's ``meta["affine"]``, which MONAI readers give in RAS. With ``affine_lps_to_ras=True`` (default, as
MONAI's LUNA16 recipe) the affine's first two rows are negated (RAS -> LPS) and the two box corners are mapped
through it, the world box being their min/max: exactly :func:`medbundle.detection.boxes.image_to_world_boxes`
(and MONAI's ``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)``). The world boxes are ``cccwhd``
``[x, y, z, w, h, d]`` in **LPS mm, the frame of LUNA16's annotations.csv**. With ``affine_lps_to_ras=False``
they stay in the affine's own frame (RAS).
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
from medbundle.detection.boxes import (
    corner_boxes_to_world,
    corners_from_centre_size,
)
from medbundle.detection.luna16 import detections_to_luna16_rows
from medbundle.distributed import gather_unique, is_rank0
from medbundle.handlers.dicom_sr import SRWriter
from medbundle.handlers.report import EvaluationReport
from medbundle.handlers.streaming import StreamingWriter, batch_field
from medbundle.io.luna16_csv import RESULT_COLUMNS
from medbundle.io.results import ResultTables, TableSpec
from medbundle.utils import to_jsonable, to_numpy

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Metric, _ = optional_import("ignite.metrics", "0.4.11", min_version, "Metric")

__all__ = [
    "CPMMetric",
    "DetectionMetric",
    "DetectionReport",
    "DetectionWriter",
    "detection_records",
    "evaluate_detections",
    "item_seriesuid",
]

logger = logging.getLogger("medbundle.handlers")

_SUFFIX_RE = re.compile(r"(\.nii\.gz|\.nii|\.mhd|\.mha|\.nrrd|\.dcm|\.npy|\.npz|\.pt)$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------------


def _stem(meta: Mapping, n: int) -> str:
    fname = meta.get("filename_or_obj") if meta else None
    if not fname:
        return f"image_{n}"
    return _SUFFIX_RE.sub("", Path(str(fname)).name)


# ----------------------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------------------
def detection_records(output: Any, affine_lps_to_ras: bool = True, start: int = 0) -> list[dict[str, Any]]:
    """Turn a :class:`~medbundle.detection.engines.DetectionEvaluator` output (list of per-image dicts) into records.

    Returns:
        list of dict, one per image: ``seriesuid`` (the item's, else the file name without suffix, else
        ``image_<n>``), ``filename``, ``affine`` (4 x 4), ``pred_world`` ``(K, 6)`` world cccwhd mm, ``pred_score``
        ``(K,)``, ``pred_label`` ``(K,)``, ``pred_voxel`` ``(K, 6)`` voxel xyzxyz; and ``gt_world`` ``(N, 6)``,
        ``gt_label`` ``(N,)``, ``has_gt`` (False when the output had no ``box``).
    """
    if isinstance(output, Mapping):
        output = [output]
    records = []
    for n, o in enumerate(output, start=start):
        meta = o.get("image_meta") or {}
        affine = to_numpy(meta.get("affine", np.eye(4)), dtype=np.float64).reshape(4, 4)
        mode = str(o.get("box_mode", "xyzxyz")).lower()
        if mode != "xyzxyz":
            raise ValueError(f"detection outputs must hold xyzxyz voxel boxes, got box_mode={mode!r}.")
        pred_voxel = to_numpy(o["pred_box"], dtype=np.float64).reshape(-1, 6)
        rec = {
            "seriesuid": str(o["seriesuid"]) if o.get("seriesuid") is not None else _stem(meta, n),
            "filename": meta.get("filename_or_obj"),
            "affine": affine,
            "pred_voxel": pred_voxel,
            "pred_world": corner_boxes_to_world(pred_voxel, affine, affine_lps_to_ras),
            "pred_score": to_numpy(o["pred_score"], dtype=np.float64).reshape(-1),
            "pred_label": to_numpy(o.get("pred_label", np.zeros(pred_voxel.shape[0])), dtype=np.int64).reshape(-1),
            "has_gt": o.get("box") is not None,
        }
        gt = to_numpy(o["box"], dtype=np.float64).reshape(-1, 6) if rec["has_gt"] else np.zeros((0, 6))
        rec["gt_world"] = corner_boxes_to_world(gt, affine, affine_lps_to_ras)
        gt_label = o.get("label", np.zeros(gt.shape[0])) if rec["has_gt"] else np.zeros(0)
        rec["gt_label"] = to_numpy(gt_label, dtype=np.int64).reshape(-1)
        records.append(rec)
    return records


def _table(uids: list[str], xyz: np.ndarray, last: np.ndarray, last_name: str) -> dict[str, np.ndarray]:
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    return {"seriesuid": np.asarray(uids, dtype=str), "coordX": xyz[:, 0], "coordY": xyz[:, 1],
            "coordZ": xyz[:, 2], last_name: np.asarray(last, dtype=np.float64).reshape(-1)}


def _excluded_table(excluded: Mapping[str, Sequence[Sequence[float]]] | None) -> dict[str, np.ndarray] | None:
    if not excluded:
        return None
    uids, rows = [], []
    for uid, findings in excluded.items():
        for f in findings:
            uids.append(str(uid))
            rows.append([float(v) for v in f][:4])
    rows_a = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return _table(uids, rows_a[:, :3], rows_a[:, 3], "diameter_mm")


def evaluate_detections(
    records: Sequence[Mapping[str, Any]],
    classes: Sequence[str] = ("nodule",),
    iou_thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    froc: bool = True,
    excluded: Mapping[str, Sequence[Sequence[float]]] | None = None,
    n_bootstraps: int = 0,
    seed: int = 0,
    max_detections: int = 100,
    size_edges: Sequence[float] | None = (10.0,),
) -> dict[str, Any]:
    """COCO mAP/mAR and the LUNA16 FROC of :func:`detection_records` (all in world mm).

    COCO: :func:`medbundle.metrics.detection.coco_detection_metrics` on the world boxes (corners). FROC:
    :func:`medbundle.metrics.froc.luna16_froc` with nodules = ground-truth box centres, diameter = mean of the
    box's three sizes (mm), marks = predicted box centres with their scores (all classes), scans = every
    record's ``seriesuid`` (so scans without nodules count in the FP rate); ``excluded``: ``{uid: [[x, y, z,
    diameter_mm], ...]}`` (LPS mm, as ``luna16_datalist(...)["excluded"]``). With ``size_edges`` (mm) the FROC
    sensitivities are also given per nodule-size stratum (:func:`medbundle.metrics.froc.luna16_froc_by_size`,
    the same marks, hits and false positives; the diameter is the one above).

    Returns:
        dict: ``n_images``, ``coco`` (the COCO dict), ``froc`` (the FROC dict, or None when there are no
        ground-truth nodules or ``froc`` is False), ``froc_by_size`` (the per-size dict, or None), ``cpm``, ``map``,
        ``mar`` (floats; NaN when undefined).
    """
    from medbundle.metrics.detection import coco_detection_metrics
    from medbundle.metrics.froc import luna16_froc, luna16_froc_by_size

    records = [r for r in records if r.get("has_gt", True)]
    out: dict[str, Any] = {"n_images": len(records), "coco": None, "froc": None, "froc_by_size": None,
                           "cpm": math.nan, "map": math.nan, "mar": math.nan}
    if not records:
        return out
    coco = coco_detection_metrics(
        [corners_from_centre_size(r["pred_world"]) for r in records],
        [r["pred_score"] for r in records],
        [r["pred_label"] for r in records],
        [corners_from_centre_size(r["gt_world"]) for r in records],
        [r["gt_label"] for r in records],
        classes=list(classes),
        iou_thresholds=iou_thresholds,
        max_detections=max_detections,
    )
    out["coco"], out["map"], out["mar"] = coco, float(coco["map"]), float(coco["mar"])
    n_nodules = sum(r["gt_world"].shape[0] for r in records)
    if froc and n_nodules:
        uids = [r["seriesuid"] for r in records]
        ann = _table(
            [r["seriesuid"] for r in records for _ in range(r["gt_world"].shape[0])],
            np.concatenate([r["gt_world"][:, :3] for r in records]),
            np.concatenate([r["gt_world"][:, 3:].mean(axis=1) for r in records]),
            "diameter_mm",
        )
        res = _table(
            [r["seriesuid"] for r in records for _ in range(r["pred_world"].shape[0])],
            np.concatenate([r["pred_world"][:, :3] for r in records]),
            np.concatenate([r["pred_score"] for r in records]),
            "probability",
        )
        exc = _excluded_table(excluded)
        f = luna16_froc(ann, res, seriesuids=uids, excluded=exc, n_bootstraps=n_bootstraps,
                        seed=seed, max_marks_per_scan=max_detections)
        out["froc"], out["cpm"] = f, float(f["cpm"])
        if size_edges is not None:
            out["froc_by_size"] = luna16_froc_by_size(ann, res, seriesuids=uids, excluded=exc, size_edges=size_edges,
                                                      max_marks_per_scan=max_detections)
    return out


# ----------------------------------------------------------------------------------------------------------
# key metric
# ----------------------------------------------------------------------------------------------------------
class DetectionMetric(Metric):  # type: ignore[misc, valid-type]
    """One detection figure of an evaluator run as an Ignite metric, for ``key_val_metric``.

    Args:
        key: ``"cpm"`` (LUNA16 CPM, needs ground-truth nodules), ``"map"`` or ``"mar"`` (COCO, averaged over
            ``iou_thresholds``).
        classes, iou_thresholds, excluded, affine_lps_to_ras: See :class:`DetectionReport`.
        output_transform: Maps ``engine.state.output`` (the evaluator's list of per-image dicts) to that list.

    The value is computed on the outputs of all ranks (gathered), so every rank sees the same key metric. An
    undefined value (no ground truth) is 0.0, so the best-metric comparison still works.
    """

    required_output_keys = None

    def __init__(
        self,
        key: str = "cpm",
        classes: Sequence[str] = ("nodule",),
        iou_thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
        excluded: Mapping[str, Sequence[Sequence[float]]] | None = None,
        affine_lps_to_ras: bool = True,
        output_transform: Callable = lambda x: x,
    ) -> None:
        if key not in ("cpm", "map", "mar"):
            raise ValueError(f"key must be 'cpm', 'map' or 'mar', got {key!r}.")
        self.key = key
        self.classes = list(classes)
        self.iou_thresholds = tuple(iou_thresholds)
        self.excluded = excluded
        self.affine_lps_to_ras = affine_lps_to_ras
        self._records: list[dict] = []
        super().__init__(output_transform=output_transform, device="cpu")

    def reset(self) -> None:
        self._records = []

    def update(self, output: Any) -> None:
        self._records.extend(detection_records(output, self.affine_lps_to_ras, start=len(self._records)))

    def compute(self) -> float:
        records = gather_unique(self._records, "seriesuid")
        result = evaluate_detections(records, self.classes, self.iou_thresholds, froc=self.key == "cpm",
                                     excluded=self.excluded)
        value = float(result[self.key])
        return 0.0 if not math.isfinite(value) else value


class CPMMetric(DetectionMetric):
    """LUNA16 CPM of an evaluator run (:class:`DetectionMetric` with ``key="cpm"``)."""

    def __init__(
        self,
        excluded: Mapping[str, Sequence[Sequence[float]]] | None = None,
        affine_lps_to_ras: bool = True,
        output_transform: Callable = lambda x: x,
    ) -> None:
        super().__init__("cpm", excluded=excluded, affine_lps_to_ras=affine_lps_to_ras,
                         output_transform=output_transform)


# ----------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------
def _froc_summary(f: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The FROC dict without its curves (those go to the plot)."""
    if f is None:
        return None
    return {k: v for k, v in f.items() if k not in ("fps_per_scan", "sensitivity", "thresholds", "bootstrap_curve")}


def _at_rate(by_size: Mapping[str, Any] | None, rate: float) -> dict[str, float] | None:
    """``{stratum: sensitivity at rate}`` of a :func:`~medbundle.metrics.froc.luna16_froc_by_size` result."""
    if not by_size or rate not in by_size["fp_rates"]:
        return None
    i = by_size["fp_rates"].index(rate)
    return {name: s["sensitivities"][i] for name, s in by_size["strata"].items()}


class DetectionReport(EvaluationReport):
    """Collect an evaluator run's detections and ground truth; write ``metrics.json`` and ``froc.png``.

    Args:
        output_dir: Folder of ``metrics.json`` and ``froc.png`` (rank 0 writes); None writes nothing (metrics only).
        classes: Class names; label ``i`` is ``classes[i]``.
        iou_thresholds: COCO IoU thresholds (IoU of world boxes).
        froc: Compute the LUNA16 FROC / CPM.
        excluded: ``{seriesuid: [[x, y, z, diameter_mm], ...]}`` (LPS mm) findings whose marks are neither hits nor FPs.
        n_bootstraps, seed: Scan bootstrap of the FROC intervals written to ``metrics.json`` (``engine.state.metrics``
            values are computed without it when bootstrapping; they are the same point estimates).
        save_best_metric_key: None: write the files after every run. A metric name (e.g. ``"val_cpm"``, or the
            evaluator's key metric): write only when that value of ``engine.state.metrics`` is the best so far, so the
            files describe the best validation epoch.
        metric_prefix: ``engine.state.metrics`` gets ``<prefix>cpm``, ``<prefix>map``, ``<prefix>mar``.
        affine_lps_to_ras: World frame; see the module docstring.
        output_transform: Maps ``engine.state.output`` to the evaluator's list of per-image dicts.
        size_edges: Nodule diameters (mm) that cut the FROC into size strata (default: under 10 mm and 10 mm or more);
            None for no stratification. ``metrics.json`` gets ``froc_by_size`` (per stratum: nodules, detected,
            sensitivity at every FP rate, CPM; :func:`medbundle.metrics.froc.luna16_froc_by_size`) and
            ``sensitivity_at_1fp_by_size`` (``{"under_10mm": s, "10mm_or_more": s}``, at 1 FP per scan).

    Attributes:
        report: The last report written (JSON-ready dict), or None.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        classes: Sequence[str] = ("nodule",),
        iou_thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
        froc: bool = True,
        excluded: Mapping[str, Sequence[Sequence[float]]] | None = None,
        n_bootstraps: int = 1000,
        seed: int = 0,
        save_best_metric_key: str | None = None,
        metric_prefix: str = "val_",
        affine_lps_to_ras: bool = True,
        output_transform: Callable = lambda x: x,
        size_edges: Sequence[float] | None = (10.0,),
    ) -> None:
        super().__init__(output_dir, save_best_metric_key, metric_prefix, output_transform)
        self.size_edges = None if size_edges is None else tuple(float(e) for e in size_edges)
        self.classes = list(classes)
        self.iou_thresholds = tuple(iou_thresholds)
        self.froc = froc
        self.excluded = excluded
        self.n_bootstraps = int(n_bootstraps)
        self.seed = seed
        self.affine_lps_to_ras = affine_lps_to_ras

    def records(self, output: Any, start: int) -> list[dict]:
        """:func:`detection_records` of an evaluator output."""
        return detection_records(output, self.affine_lps_to_ras, start=start)

    def compute(self, n_bootstraps: int | None = None) -> dict[str, Any]:
        """Evaluate what was collected (all ranks); see :func:`evaluate_detections`."""
        records = gather_unique(self._records, "seriesuid")
        return evaluate_detections(
            records, self.classes, self.iou_thresholds, froc=self.froc, excluded=self.excluded,
            n_bootstraps=self.n_bootstraps if n_bootstraps is None else n_bootstraps, seed=self.seed,
            size_edges=self.size_edges,
        )

    def evaluate_epoch(self) -> tuple[dict[str, float], dict[str, Any]]:
        """CPM, mAP and mAR without bootstrap (the written report bootstraps again when ``n_bootstraps``)."""
        result = self.compute(n_bootstraps=0)
        return {key: result[key] for key in ("cpm", "map", "mar")}, result

    def write_epoch(self, result: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        return self.write(result if self.n_bootstraps == 0 else None, epoch=epoch)

    def write(self, result: dict[str, Any] | None = None, epoch: int | None = None) -> dict[str, Any] | None:
        """Compute (unless ``result`` is given) and, on rank 0 with an ``output_dir``, write the files.

        Returns the JSON-ready report (also on other ranks).
        """
        if result is None:
            result = self.compute()
        report = {
            "epoch": epoch,
            "n_images": result["n_images"],
            "classes": self.classes,
            "world_frame": "LPS mm (LUNA16)" if self.affine_lps_to_ras else "affine frame mm",
            "cpm": result["cpm"],
            "map": result["map"],
            "mar": result["mar"],
            "coco": result["coco"],
            "froc": _froc_summary(result["froc"]),
            "sensitivity_at_1fp_by_size": _at_rate(result.get("froc_by_size"), 1.0),
            "froc_by_size": result.get("froc_by_size"),
        }
        self.report = to_jsonable(report)
        if self.output_dir is None or not is_rank0():
            return self.report
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.json", "w") as fh:
            json.dump(self.report, fh, indent=2)
        if result["froc"] is not None:
            from medbundle.viz.froc import plot_froc

            plot_froc(result["froc"], self.output_dir / "froc.png")
        at_1fp = report["sensitivity_at_1fp_by_size"] or {}
        by_size = "".join(f", sensitivity at 1 FP/scan {k} {v:.3f}" for k, v in at_1fp.items() if math.isfinite(v))
        logger.info("wrote %s (CPM %.4f, mAP %.4f%s)", self.output_dir / "metrics.json", result["cpm"], result["map"],
                    by_size)
        return self.report


# ----------------------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------------------
def item_seriesuid(item: Mapping[str, Any]) -> str:
    """The series UID of an inference item: its ``seriesuid``, else its file (or DICOM series folder) name
    without the image suffix (LUNA16 names each ``.mhd`` by the scan's UID). ``<uid>_boxes.json`` and the
    LUNA16 CSVs use it; :class:`~medbundle.data.streaming.InferencePlan` takes it as ``default_key``."""
    uid = item.get("seriesuid")
    if uid is not None and str(uid):
        return str(uid)
    fname = item.get("filename") or item.get("image")
    if not fname:
        raise ValueError(f"detection item without seriesuid, filename or image: {sorted(item)}")
    return _SUFFIX_RE.sub("", Path(str(fname)).name)


class DetectionWriter(StreamingWriter):
    """Write each image's detections in world coordinates as soon as it is done, and the LUNA16 CSVs.

    Args:
        output_dir: Folder of ``<uid>_boxes.json`` (one per image; every rank writes its own images) and the CSVs.
        results_csv: File name (in ``output_dir``) of the LUNA16 CSV ``seriesuid,coordX,coordY,coordZ,probability``
            (readable by ``medbundle froc``): each scan's marks are appended when the scan is done; at the end the file
            is rewritten with the scans in input order.
        seriesuids_csv: File name (in ``output_dir``) of the list of every scan done, one UID per line (LUNA16's
            ``seriesuids.csv`` form), so scans without marks count in ``medbundle froc --seriesuids``. A scan's line is
            written after its JSON and marks: it is the ledger a re-run reads to skip done scans.
        max_marks: Highest-scoring marks per scan in the CSV (LUNA16 evaluates 100); the JSON keeps every box.
        affine_lps_to_ras: World frame; see the module docstring.
        output_transform: Maps ``engine.state.output`` to the evaluator's list of per-image dicts.
        plan: The run's :class:`~medbundle.data.streaming.InferencePlan` (``done_table`` = ``seriesuids_csv``,
            ``key="seriesuid"``, ``default_key=item_seriesuid``): resume, shards, input order, progress. None
            (evaluation): every run starts afresh and scans are listed in the order they come (a scan that a
            ``DistributedSampler`` gave to two ranks once).
        progress, fsync: See :class:`~medbundle.handlers.streaming.StreamingWriter`.
        sr: Optional :class:`~medbundle.handlers.dicom_sr.SRWriter`: for a scan read from DICOM, a TID 1500 SR whose
            findings are the marks of the CSV (scores at least ``sr.min_score``), each box in the patient frame
            (LPS mm) with its score (:func:`medbundle.io.dicom_sr.detection_sr`).
        classes: Class names of the labels (the SR's finding types).

    Files: ``<uid>_boxes.json``: ``{"seriesuid", "image", "boxes": [[x, y, z, w, h, d], ...] (world mm cccwhd,
    highest score first), "labels", "scores", "box_mode": "cccwhd", "coordinate_system"}``; ``skipped.csv``:
    ``file, reason, seriesuid`` of the scans that failed.
    """

    item_key = "seriesuid"

    def __init__(
        self,
        output_dir: str | Path,
        results_csv: str = "results.csv",
        seriesuids_csv: str = "seriesuids.csv",
        max_marks: int | None = 100,
        affine_lps_to_ras: bool = True,
        output_transform: Callable = lambda x: x,
        plan: InferencePlan | None = None,
        progress: bool = True,
        fsync: bool = False,
        sr: SRWriter | None = None,
        classes: Sequence[str] = ("nodule",),
    ) -> None:
        super().__init__(output_dir, plan=plan, progress=progress, fsync=fsync, unit="scan")
        self.sr = sr
        self.classes = list(classes)
        self.results_csv = results_csv
        self.seriesuids_csv = seriesuids_csv
        self.max_marks = max_marks
        self.affine_lps_to_ras = affine_lps_to_ras
        self.output_transform = output_transform
        if plan is not None and (plan.done_table != seriesuids_csv or plan.key != "seriesuid"):
            raise ValueError(f"the plan must find done scans in {seriesuids_csv!r} by 'seriesuid'; it has "
                             f"done_table={plan.done_table!r}, key={plan.key!r}")
        self.marks_table = TableSpec(results_csv, tuple(RESULT_COLUMNS), 0)
        self.results = ResultTables(self.output_dir, TableSpec(seriesuids_csv, None, 0), (self.marks_table,),
                                    TableSpec("skipped.csv", ("file", "reason", "seriesuid"), 2))

    def skipped_row(self, failed: FailedItem) -> list[str]:
        try:
            uid = item_seriesuid(failed.item)
        except ValueError:
            uid = failed.name()
        return [failed.name(), failed.reason, uid]

    def item_results(self, engine: Any) -> Iterable[tuple[list[str], dict[str, list[list[str]]]]]:
        """Write the JSON of every image in the iteration's output; yield its ledger line and CSV rows."""
        records = detection_records(self.output_transform(engine.state.output), self.affine_lps_to_ras,
                                    start=self.n_seen)
        sources = batch_field(engine, "filename", len(records))
        self.n_seen += len(records)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        frame = "LPS world mm (LUNA16)" if self.affine_lps_to_ras else "world mm (frame of the image affine)"
        for r, source in zip(records, sources):
            uid = r["seriesuid"]
            rows = detections_to_luna16_rows(uid, r["pred_world"], r["pred_score"], self.max_marks)
            values = [[row[c] for c in RESULT_COLUMNS[1:]] for row in rows]
            if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
                self.skip(FailedItem({"filename": str(r["filename"]), "seriesuid": uid},
                                     "non-finite box coordinates or scores from the detector", "inference"))
                continue
            order = np.argsort(-r["pred_score"], kind="stable")
            content = {
                "seriesuid": uid,
                "image": r["filename"],
                "boxes": r["pred_world"][order],
                "labels": r["pred_label"][order],
                "scores": r["pred_score"][order],
                "box_mode": "cccwhd",
                "coordinate_system": frame,
            }
            with open(self.output_dir / f"{uid}_boxes.json", "w") as fh:
                json.dump(to_jsonable(content), fh, indent=1)
            if self.sr is not None:
                self._write_sr(uid, source or r["filename"], r, order)
            yield [uid], {self.results_csv: [[uid, *[repr(float(v)) for v in vals]] for vals in values]}

    def _write_sr(self, uid: str, source: Any, r: Mapping[str, Any], order: np.ndarray) -> None:
        """The scan's SR: its CSV marks (highest scores first, at most ``max_marks``, at least ``sr.min_score``)."""
        keep = order[: self.max_marks] if self.max_marks is not None else order
        keep = keep[r["pred_score"][keep] >= self.sr.min_score]
        boxes = r["pred_world"][keep].copy()
        if not self.affine_lps_to_ras:  # RAS -> LPS, DICOM's patient frame
            boxes[:, :2] *= -1.0
        self.sr.write(uid, source, "detection", boxes=boxes, scores=r["pred_score"][keep],
                      labels=r["pred_label"][keep], class_names=self.classes)

    def close(self) -> None:
        """Close the part files; wait for the DICOM SRs still being made."""
        super().close()
        if self.sr is not None:
            self.sr.wait()

    def finish(self, counts: Mapping[str, int]) -> None:
        logger.info("wrote %s (%d marks, %d scans listed in %s; %d skipped)", self.output_dir / self.results_csv,
                    counts.get(self.results_csv, 0), counts.get(self.seriesuids_csv, 0), self.seriesuids_csv,
                    counts.get("skipped.csv", 0))
        if not counts.get("skipped.csv", 0):
            (self.output_dir / "skipped.csv").unlink(missing_ok=True)
