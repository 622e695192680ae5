"""Base of the inference writers: each item's result on disk as soon as it is done, one merge at the end.

A :class:`StreamingWriter` keeps its tables with :class:`~medbundle.io.results.ResultTables`:

- ``STARTED``: rank 0 either deletes the earlier results (``overwrite``, or no plan: a fresh run) or merges
  what an interrupted run left (final files and parts; rows of items that never got their ledger row are
  dropped, so those items are written again cleanly), and records the plan's model files; every rank
  waits for it, then opens its part.
- ``ITERATION_COMPLETED``: for each finished item, the subclass writes its per-item files and gives its
  rows; the rows of the other tables go first and the ledger row last, each appended and flushed, so an
  item counts as done only when everything of it is on disk. Each failed item
  (``engine.state.failed_items``, :mod:`medbundle.engines.streaming`) becomes a row of ``skipped.csv``.
  Handlers that write other per-item files (Grad-CAM) must be attached *before* the writer.
- ``COMPLETED``: every rank closes its part and waits; rank 0 merges all into the final files, in input
  order, and writes the summary files (:meth:`StreamingWriter.finish`).

With an :class:`~medbundle.data.streaming.InferencePlan` the writer resumes and shards as the plan says
and rank 0 shows a :class:`~medbundle.progress.Progress` over the items.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import min_version, optional_import

from medbundle.data.streaming import FailedItem, InferencePlan
from medbundle.distributed import barrier, rank_and_world_size
from medbundle.io.results import ResultAppender, ResultTables
from medbundle.progress import Progress

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["StreamingWriter", "batch_field", "engine_outputs"]

logger = logging.getLogger("medbundle.handlers")


def engine_outputs(engine: Any) -> list:
    """``engine.state.output`` as a list of per-item outputs (empty when every item of the batch failed)."""
    out = engine.state.output
    if out is None:
        return []
    return out if isinstance(out, list) else [out]


def batch_field(engine: Any, key: str, n: int) -> list:
    """Field ``key`` of each of the ``n`` items of the current batch (the decollated list of dicts MONAI
    leaves in ``engine.state.batch``, or a collated dict of lists); None where absent. For an absent
    ``"filename"``, the image's ``filename_or_obj`` meta data is used."""
    batch = engine.state.batch
    if isinstance(batch, (list, tuple)):
        items = list(batch)
    elif isinstance(batch, Mapping):
        v = batch.get(key)
        items = [{key: x} for x in v] if isinstance(v, (list, tuple)) else [{key: v}] * n
    else:
        items = []
    values = []
    for i in range(n):
        item = items[i] if i < len(items) else {}
        value = item.get(key) if isinstance(item, Mapping) else None
        if value is None and key == "filename" and isinstance(item, Mapping) and hasattr(item.get("image"), "meta"):
            value = item["image"].meta.get("filename_or_obj")
        values.append(None if value is None else str(value))
    return values


class StreamingWriter:
    """Write each finished item's result at once; resume, shard and merge through result tables.

    Subclasses set :attr:`results` (their :class:`~medbundle.io.results.ResultTables`) and implement
    :meth:`item_results` and :meth:`finish`; :meth:`skipped_row` and :attr:`extra_outputs` may be
    overridden.

    Args:
        output_dir: folder of the outputs.
        plan: the run's :class:`~medbundle.data.streaming.InferencePlan` (resume, shards, input order, progress). None:
            every run starts afresh, rows are ordered as they arrive and the process group (if any) decides the rank.
        dataset: optional dataset with a ``skipped`` list of ``(name, reason)``
            (:class:`~medbundle.data.DiskCacheDataset`), added to ``skipped.csv``.
        progress: show progress on rank 0 (with a plan).
        fsync: ``os.fsync`` every append (survives a power cut; a killed process needs only the flush).
        unit: name of one item in the progress line.
    """

    #: the table that marks an item done, and the others; set by the subclass
    results: ResultTables
    #: summary files (besides the tables) that ``overwrite`` deletes, relative to ``output_dir``
    extra_outputs: tuple[str, ...] = ()

    def __init__(self, output_dir: str | os.PathLike, plan: InferencePlan | None = None, dataset: Any = None,
                 progress: bool = True, fsync: bool = False, unit: str = "item") -> None:
        self.output_dir = Path(output_dir)
        self.plan = plan
        self.dataset = dataset
        self.progress = bool(progress)
        self.fsync = bool(fsync)
        self.unit = unit
        self._appender: ResultAppender | None = None
        #: outputs handed to :meth:`item_results` since the run started (names items without a key: ``image_<n>``)
        self.n_seen = 0
        self._progress: Progress | None = None
        if plan is not None and Path(plan.output_dir).resolve() != self.output_dir.resolve():
            raise ValueError(f"the plan looks for results in {plan.output_dir} but the writer writes to "
                             f"{self.output_dir}; give both the same output_dir")

    # ---------------------------------------------------------------------------------------------- subclass API
    def item_results(self, engine: Any) -> Iterable[tuple[Sequence[str], Mapping[str, Sequence[Sequence[str]]]]]:
        """Write the per-item files of the items that finished in this iteration and yield, per item,
        ``(ledger row, {row table name: rows})``; called once per iteration."""
        raise NotImplementedError

    def skipped_row(self, failed: FailedItem) -> list[str]:
        """The ``skipped.csv`` row of a failed item (default ``[item key or file, reason]``)."""
        key = failed.item.get(self.key_field) if self.key_field else None
        return [str(key) if key is not None else failed.name(), failed.reason]

    def finish(self, counts: Mapping[str, int]) -> None:
        """Rank 0, after the merge: write summary files and log what was written (``counts``: rows per table)."""

    # ---------------------------------------------------------------------------------------------- engine wiring
    #: the item field that identifies an item when the subclass fixes it (e.g. ``"seriesuid"``); None: the plan's key
    item_key: str | None = None

    @property
    def key_field(self) -> str:
        """The item field that identifies an item (:attr:`item_key`, else the plan's key, else ``"filename"``)."""
        if self.item_key is not None:
            return self.item_key
        return self.plan.key if self.plan is not None else "filename"

    def _rank_world(self) -> tuple[int, int]:
        return (self.plan.rank, self.plan.world_size) if self.plan is not None else rank_and_world_size()

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_iteration)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    def start(self, engine: Any = None) -> None:
        """Remove or merge earlier results (rank 0), wait for it, open this rank's part; :attr:`n_seen` restarts."""
        self.n_seen = 0
        rank, world = self._rank_world()
        if rank == 0:
            if self.plan is None or self.plan.overwrite:
                self.results.remove()
                for name in self.extra_outputs:
                    (self.output_dir / name).unlink(missing_ok=True)
            else:
                self.results.merge(order=self.plan.keys)
            if self.plan is not None:
                self.plan.save_state()
        barrier()
        self.close()
        self._appender = self.results.open(rank, world, fsync=self.fsync)
        if rank == 0:
            for name, reason in list(getattr(self.dataset, "skipped", None) or []):
                self._appender.skip(self._dataset_skipped_row(name, reason))
            if self.plan is not None and self.progress:
                if world > 1:
                    self._progress = Progress(len(self.plan.items), f"inference (rank 0's share of {world})",
                                              unit=self.unit)
                else:
                    self._progress = Progress(self.plan.n_total, "inference", unit=self.unit,
                                              initial=self.plan.n_done)

    def _dataset_skipped_row(self, name: str, reason: str) -> list[str]:
        return self.skipped_row(FailedItem({self.key_field: name}, reason))

    def write_iteration(self, engine: Any) -> None:
        """Record the iteration's failed items and commit its finished ones."""
        if self._appender is None:
            raise RuntimeError(f"{type(self).__name__}: no open result tables (was STARTED fired?)")
        for f in list(getattr(engine.state, "failed_items", None) or []):
            self._appender.skip(self.skipped_row(f))
            if self._progress is not None:
                self._progress.update(done=0, skipped=1)
        for ledger_row, rows in self.item_results(engine):
            self._appender.commit(ledger_row, rows)
            if self._progress is not None:
                self._progress.update(done=1)

    def skip(self, failed: FailedItem) -> None:
        """Log and record an item the writer itself cannot write (from :meth:`item_results`)."""
        if self._appender is None:
            raise RuntimeError(f"{type(self).__name__}: no open result tables (was STARTED fired?)")
        logger.warning("skipping %s (%s): %s", failed.name(), failed.stage, failed.reason)
        self._appender.skip(self.skipped_row(failed))
        if self._progress is not None:
            self._progress.update(done=0, skipped=1)

    def complete(self, engine: Any = None) -> None:
        """Close this rank's part, wait for every rank; rank 0 merges and calls :meth:`finish`."""
        self.close()
        barrier()
        rank, _ = self._rank_world()
        if rank == 0:
            counts = self.results.merge(order=self.plan.keys if self.plan is not None else None)
            self.finish(counts)

    def close(self) -> None:
        """Close the open part files and the progress display."""
        if self._appender is not None:
            self._appender.close()
            self._appender = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
