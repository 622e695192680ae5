"""Ignite handlers that put :mod:`medbundle.metrics` into MONAI bundle workflows.

- :class:`MultiLabelAUROC` is a key metric (checkpoint on best mean AUROC).
- :class:`ClassificationReport` gathers probabilities and labels over an evaluator run and writes the
  full medical report (per-class AUROC with DeLong CI, AP, sensitivity/specificity/PPV/NPV at stored
  operating points) to ``metrics.json`` plus a ROC plot; during training it stores the Youden
  thresholds of the best epoch so evaluation and inference use thresholds chosen on validation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import Cumulative
from monai.utils import min_version, optional_import

from medbundle.distributed import is_rank0
from medbundle.metrics.cumulative import MultiLabelAUROCMetric, labels_as_matrix
from medbundle.utils import to_jsonable

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
idist, _ = optional_import("ignite", "0.4.11", min_version, "distributed")

__all__ = ["ClassificationReport", "MultiLabelAUROC", "load_thresholds"]

logger = logging.getLogger("medbundle.handlers")


class MultiLabelAUROC(IgniteMetricHandler):
    """Mean (NaN-masked) AUROC over classes as an Ignite metric, for ``key_val_metric``.

    Args:
        average: ``"macro"`` (mean over classes with both labels present) or ``"none"``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``; the default reads the ``pred`` and ``label``
            keys of decollated outputs.
    """

    def __init__(
        self, average: str = "macro", output_transform: Callable = from_engine(["pred", "label"])
    ) -> None:
        super().__init__(metric_fn=MultiLabelAUROCMetric(average=average), output_transform=output_transform)




def load_thresholds(path: str | Path | None, class_names: Sequence[str]) -> tuple[list[float], str]:
    """Read per-class thresholds written by :class:`ClassificationReport` (``{"thresholds": {name: t}}``).

    Returns the thresholds in ``class_names`` order and a description of where they came from. A
    missing file gives 0.5 for every class, with a warning, so inference still runs.
    """
    if path is not None and Path(path).is_file():
        with open(path) as f:
            content = json.load(f)
        table = content.get("thresholds", content)
        missing = [c for c in class_names if c not in table]
        if missing:
            raise ValueError(f"{path}: no threshold for {missing}; it was written for other classes")
        return [0.5 if table[c] is None else float(table[c]) for c in class_names], str(path)
    logger.warning("no thresholds file at %s; using 0.5 for every class", path)
    return [0.5] * len(class_names), "default 0.5 (no thresholds file)"


def _decision_summary(y_true: np.ndarray, y_score: np.ndarray, thresholds: Sequence[float] | None) -> dict:
    """Confusion matrix (rows = true class), accuracy and balanced accuracy of the class decision
    (:func:`~medbundle.metrics.classification.multiclass_decision`: largest margin over the validation
    thresholds, else arg-max)."""
    from medbundle.metrics.classification import multiclass_decision, multiclass_summary

    t, p = y_true.argmax(1), multiclass_decision(y_score, thresholds)
    rule = "largest margin over the per-class thresholds, else arg-max" if thresholds is not None else "arg-max"
    summary = multiclass_summary(t, p, y_score.shape[1])
    return {
        "confusion_matrix": summary["confusion_matrix"],
        "confusion_matrix_axes": f"rows = true class, columns = predicted class ({rule}), class_names order",
        "accuracy": summary["accuracy"],
        "balanced_accuracy": summary["balanced_accuracy"],
        "recall_per_class": summary["recall"],
    }



class ClassificationReport:
    """Collect ``pred`` (probabilities, (C,)) and ``label`` ((C,), NaN = unknown) over an evaluator run
    and write the medical classification report.

    Args:
        class_names: one name per output channel.
        output_dir: where ``metrics.json`` (or ``<prefix>metrics.json``) and ``roc.png`` go; None writes no report
            (useful during training, where only the thresholds are wanted).
        thresholds_file: thresholds chosen on validation, used for sensitivity/specificity/PPV/NPV. If None or missing,
            thresholds are chosen on the data of this run by Youden's J and the report says so (that is optimistic, and
            only meant as a fallback).
        save_thresholds_to: when given, after each evaluator epoch that is the best so far by the evaluator's key
            metric, write the Youden thresholds of that epoch here (with the epoch and the metric), so evaluation and
            inference use thresholds chosen on validation.
        split_name: the name of the evaluated split, recorded in the report.
        confidence: confidence level of the AUROC intervals.
        plot: write ``roc.png``.
        multiclass: labels are class indices of a softmax classifier: the report adds the confusion matrix of the class
            decision (rows = true class; largest margin over the thresholds, else arg-max), accuracy and balanced
            accuracy; the per-class figures are one-vs-rest.
        output_transform: maps a decollated output item to ``(pred, label)``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | Path | None = None,
        thresholds_file: str | Path | None = None,
        save_thresholds_to: str | Path | None = None,
        split_name: str = "test",
        confidence: float = 0.95,
        plot: bool = True,
        prefix: str = "",
        multiclass: bool = False,
        output_transform: Callable | None = None,
    ) -> None:
        self.class_names = list(class_names)
        self.multiclass = bool(multiclass)
        self.output_dir = Path(output_dir) if output_dir else None
        self.thresholds_file = thresholds_file
        self.save_thresholds_to = save_thresholds_to
        self.split_name = split_name
        self.confidence = confidence
        self.plot = plot
        self.prefix = prefix
        self.output_transform = output_transform or from_engine(["pred", "label"])
        self._buffer = Cumulative()
        self.report: dict | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine) -> None:
        self._buffer.reset()

    def _collect(self, engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        preds = torch.stack([torch.as_tensor(p).float().reshape(-1) for p in preds])
        labels = torch.stack([torch.as_tensor(y).float().reshape(-1) for y in labels])
        labels = labels_as_matrix(labels, preds.shape[1])
        self._buffer.extend(preds.detach().cpu(), labels.detach().cpu())

    def _complete(self, engine) -> None:
        from medbundle.metrics.classification import multilabel_classification_report
        from medbundle.metrics.roc import youden_thresholds

        buf = self._buffer.get_buffer()
        if buf is None:
            logger.warning("ClassificationReport: no outputs were collected")
            return
        y_score, y_true = (b.numpy() for b in buf)
        if y_score.shape[1] != len(self.class_names):
            raise ValueError(
                f"model gives {y_score.shape[1]} outputs but {len(self.class_names)} class names were given"
            )
        if not is_rank0():
            return
        youden = youden_thresholds(y_true, y_score)
        if self.save_thresholds_to is not None:
            best_epoch = getattr(engine.state, "best_metric_epoch", -1)
            if best_epoch in (-1, engine.state.epoch):
                Path(self.save_thresholds_to).parent.mkdir(parents=True, exist_ok=True)
                content = {
                    "method": "Youden's J on the validation split",
                    "epoch": int(engine.state.epoch),
                    "key_metric": to_jsonable(getattr(engine.state, "best_metric", None)),
                    "thresholds": dict(zip(self.class_names, to_jsonable(youden))),
                }
                with open(self.save_thresholds_to, "w") as f:
                    json.dump(content, f, indent=2)
        if self.output_dir is None:
            return
        if self.thresholds_file is not None and Path(self.thresholds_file).is_file():
            thresholds, source = load_thresholds(self.thresholds_file, self.class_names)
        else:
            thresholds, source = list(youden), f"Youden's J on this {self.split_name} set (no validation file)"
            logger.warning("thresholds file %s not found: operating points chosen on the evaluated set",
                           self.thresholds_file)
        report = multilabel_classification_report(
            y_true, y_score, self.class_names, thresholds=thresholds, confidence=self.confidence
        )
        report = {"split": self.split_name, "n_images": int(y_true.shape[0]), "thresholds_source": source,
                  **report}
        if self.multiclass:
            report.update(_decision_summary(y_true, y_score, thresholds))
        self.report = to_jsonable(report)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        out = self.output_dir / f"{self.prefix}metrics.json"
        with open(out, "w") as f:
            json.dump(self.report, f, indent=2)
        logger.info("wrote %s (mean AUROC %.4f)", out, report.get("mean_auroc", float("nan")))
        if self.plot:
            from medbundle.viz.roc import plot_roc_curves

            plot_roc_curves(y_true, y_score, self.class_names, self.output_dir / f"{self.prefix}roc.png")
