"""Evaluators for inference over many items, where one item's failure must not end the run.

:class:`SkipFailedItemsMixin` overrides a MONAI workflow's ``_iteration``:

- it unpacks the :class:`~medbundle.data.streaming.ItemBatch` that
  :class:`~medbundle.data.streaming.SkipFailedCollate` makes (items that could not be read or
  preprocessed arrive as :class:`~medbundle.data.streaming.FailedItem` markers beside the collated rest);
- when the network, the inferer or the postprocessing raises (a corrupt volume, out of memory on a huge
  one), a batch of several items is run again one item at a time, so that only the failing item is lost;
- every failed item is logged once (``skipping <file> (<stage>): <reason>``) and left for the handlers in
  ``engine.state.failed_items`` (a list of :class:`FailedItem`, reset every iteration), beside
  ``engine.state.output`` / ``engine.state.batch``, which then hold the items that succeeded (possibly
  none: empty lists);
- a run over no items at all (every item done earlier, or an empty share of a ``torchrun`` split) still
  fires ``STARTED`` and ``COMPLETED``, so the writers take part in the final merge on every rank (MONAI's
  workflow would skip the run).

:class:`StreamingEvaluator` is MONAI's :class:`~monai.engines.SupervisedEvaluator` with the mixin (chest,
CT and slide inference); :class:`medbundle.detection.engines.StreamingDetectionEvaluator` is the detector's
evaluator with it. Evaluation configs keep the plain
evaluators: there a failing item should stop the metrics, not thin them silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import decollate_batch
from monai.engines import SupervisedEvaluator
from monai.utils import min_version, optional_import

from medbundle.data.failures import failure_reason
from medbundle.data.streaming import FailedItem, ItemBatch, item_fields

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["FAILED_ITEMS", "SkipFailedItemsMixin", "StreamingEvaluator"]

logger = logging.getLogger("medbundle.engines")

#: name of the ``engine.state`` attribute that lists the current iteration's failed items
FAILED_ITEMS = "failed_items"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        return list(decollate_batch(value, detach=True))
    return [value]


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _as_item_batch(batchdata: Any) -> ItemBatch | None:
    """An :class:`ItemBatch` for what the loader gave: as is, or from a plain list of items that may
    hold markers (a loader with ``no_collation`` and no :class:`SkipFailedCollate`); None otherwise."""
    if isinstance(batchdata, ItemBatch):
        return batchdata
    if isinstance(batchdata, list) and all(isinstance(b, Mapping) or isinstance(b, FailedItem) for b in batchdata):
        good = [b for b in batchdata if not isinstance(b, FailedItem)]
        return ItemBatch(data=good or None, failed=[b for b in batchdata if isinstance(b, FailedItem)],
                         fields=[item_fields(b) for b in good], items=good if len(good) > 1 else None,
                         collate_fn=list)
    return None


class SkipFailedItemsMixin:
    """Failure isolation per item for a MONAI workflow (see the module docstring); put it first in the
    bases, before the workflow class."""

    def _record_failure(self, engine: Any, failed: FailedItem) -> None:
        logger.warning("skipping %s (%s): %s", failed.name(), failed.stage, failed.reason)
        getattr(engine.state, FAILED_ITEMS).append(failed)

    @staticmethod
    def _nothing_done(engine: Any) -> list:
        """No item of the batch succeeded: empty output, and no stale per-call results of the inferer."""
        engine.state.batch, engine.state.output = [], []
        inferer = getattr(engine, "inferer", None)
        if inferer is not None and hasattr(inferer, "last_results"):
            inferer.last_results = []
        return []

    def _iteration(self, engine: Any, batchdata: Any) -> Any:
        setattr(engine.state, FAILED_ITEMS, [])
        batch = _as_item_batch(batchdata)
        if batch is None:  # not a batch of items this mixin knows: no isolation
            return super()._iteration(engine, batchdata)  # type: ignore[misc]
        for failed in batch.failed:
            self._record_failure(engine, failed)
        if batch.data is None:
            return self._nothing_done(engine)
        engine.state.batch = batch.data
        try:
            return super()._iteration(engine, batch.data)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - any failure is one item's (or the batch's) problem
            reason = failure_reason(exc)  # keep the text only: the traceback would keep the batch's tensors alive
        _free_accelerator_memory()
        if len(batch) <= 1:
            self._record_failure(engine, FailedItem(batch.fields[0] if batch.fields else {}, reason, "inference"))
            return self._nothing_done(engine)
        logger.info("a batch of %d items failed (%s); running them one at a time", len(batch), reason)
        return self._one_at_a_time(engine, batch)

    def _one_at_a_time(self, engine: Any, batch: ItemBatch) -> list:
        outputs: list = []
        batches: list = []
        kept: list = []
        inferer = getattr(engine, "inferer", None)
        batch.data = None  # the failed collated batch; the items are collated again one by one
        for data, fields in batch.singles():
            engine.state.batch = data
            reason = None
            try:
                out = super()._iteration(engine, data)  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001
                reason = failure_reason(exc)
            if reason is not None:
                _free_accelerator_memory()
                self._record_failure(engine, FailedItem(fields, reason, "inference"))
                continue
            outputs.extend(_as_list(out))
            batches.extend(_as_list(engine.state.batch))
            kept.extend(getattr(inferer, "last_results", None) or [])
        if inferer is not None and hasattr(inferer, "last_results"):
            inferer.last_results = kept  # per-call results of inferers that keep them (SlideMILInferer)
        engine.state.batch, engine.state.output = batches, outputs
        return outputs

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Run; with no items at all, fire only ``STARTED`` and ``COMPLETED`` (see the module docstring)."""
        if getattr(self, "data_loader", None) is not None and self.state.epoch_length == 0:  # type: ignore[attr-defined]
            setattr(self.state, FAILED_ITEMS, [])  # type: ignore[attr-defined]
            self.fire_event(Events.STARTED)  # type: ignore[attr-defined]
            self.fire_event(Events.COMPLETED)  # type: ignore[attr-defined]
            return
        super().run(*args, **kwargs)  # type: ignore[misc]


class StreamingEvaluator(SkipFailedItemsMixin, SupervisedEvaluator):
    """MONAI's :class:`~monai.engines.SupervisedEvaluator` that skips and records failing items (same
    arguments); see the module docstring."""


