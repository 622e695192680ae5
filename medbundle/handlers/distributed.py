"""Handlers for multi-process (DDP) training: which handlers each rank runs, and a shard recorder.

:func:`rank_handlers` picks a rank's handlers by *type*: rank 0 runs all of them; the other ranks drop the
MONAI handlers that only log or write files (stats, checkpoints, TensorBoard, MLflow, metric savers) and
keep everything else (LR schedule, validation, metric and report handlers, which take part in collective
communication, checkpoint loaders, and :class:`medbundle.handlers.checkpoint.ResumeCheckpoint`, which
gathers every rank's random states and lets rank 0 write). Selecting by position would break as soon as a
list is reordered or extended: MONAI Label's bundle trainer inserts a ``CheckpointLoader`` at the front of
``train#handlers``.

:class:`ShardRecorder` shows how a distributed sampler split the training set: it wraps the sampler behind
the trainer's data loader, records the dataset indices actually drawn in one epoch, and writes
``<output_dir>/rank<k>.json`` with each index's identifier (``dataset.data[i][id_key]``, e.g. the image path
or ``seriesuid``). It is off unless added to ``train#handlers``, e.g. on the command line::

    torchrun --nproc_per_node=2 -m monai.bundle run training --config_file "[...]" \\
        --train#handlers "$@train#handlers + [medbundle.handlers.distributed.ShardRecorder(@bundle_root + '/shards')]"

It adds no collective communication, so it may run on some ranks only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["RANK0_ONLY_HANDLERS", "ShardRecorder", "rank_handlers"]


def _rank0_only_types() -> tuple[type, ...]:
    from monai import handlers as h

    names = ("StatsHandler", "CheckpointSaver", "TensorBoardStatsHandler", "TensorBoardImageHandler",
             "MLFlowHandler", "ClearMLStatsHandler", "ClearMLImageHandler", "MetricsSaver", "ClassificationSaver")
    return tuple(getattr(h, n) for n in names if hasattr(h, n))


#: handler classes that only log or write files; other ranks than 0 do not run them
RANK0_ONLY_HANDLERS: tuple[type, ...] = _rank0_only_types()


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def rank_handlers(handlers: list | tuple | None, is_rank0: bool | None = None) -> list:
    """The handlers this rank runs: all of them on rank 0, the others less :data:`RANK0_ONLY_HANDLERS`.

    Args:
        handlers: a trainer's or evaluator's handler list (instantiated objects).
        is_rank0: whether this process is rank 0; default: from the initialised process group, else the ``RANK``
            environment variable.
    """
    handlers = list(handlers or [])
    if (_rank() == 0) if is_rank0 is None else is_rank0:
        return handlers
    return [h for h in handlers if not isinstance(h, RANK0_ONLY_HANDLERS)]


class _RecordingSampler:
    """Iterates the wrapped sampler and keeps the indices of its latest pass (one pass per epoch).

    Recording per pass, not per engine event, matters with ``ThreadDataLoader``: its thread may start drawing
    before the engine fires ``EPOCH_STARTED``.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        current: list[int] = []
        self.indices = current
        for i in self.sampler:
            current.append(int(i))
            yield i

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:  # set_epoch and the like reach the real sampler
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


class ShardRecorder:
    """Write the identifiers of the training items this rank drew in epoch ``epoch``.

    Args:
        output_dir: folder of ``rank<k>.json``; ``k`` is the process's global rank.
        epoch: the (1-based) epoch to record.
        id_key: key of ``dataset.data[i]`` that names an item; the index itself when the item lacks it.

    ``rank<k>.json``: ``{"rank", "world_size", "epoch", "dataset_size", "indices": [...], "ids": [...]}`` in
    the order drawn; repeats are kept (a sampler may pad a rank with repeated items).
    """

    def __init__(self, output_dir: str | os.PathLike, epoch: int = 1, id_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.epoch = int(epoch)
        self.id_key = id_key
        self._recorder: _RecordingSampler | None = None

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self._wrap)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _wrap(self, engine: Any) -> None:
        batch_sampler = getattr(engine.data_loader, "batch_sampler", None)
        if batch_sampler is None or not hasattr(batch_sampler, "sampler"):
            raise ValueError("ShardRecorder needs a data loader that batches with a sampler (batch_size set).")
        if not isinstance(batch_sampler.sampler, _RecordingSampler):
            batch_sampler.sampler = _RecordingSampler(batch_sampler.sampler)
        self._recorder = batch_sampler.sampler

    def _write(self, engine: Any) -> None:
        if self._recorder is None or engine.state.epoch != self.epoch:
            return
        data = getattr(engine.data_loader.dataset, "data", None)
        indices = list(self._recorder.indices)
        ids = []
        for i in indices:
            item = data[i] if data is not None else None
            ident = item.get(self.id_key) if isinstance(item, dict) else None
            ids.append(str(ident) if ident is not None else str(i))
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.output_dir.mkdir(parents=True, exist_ok=True)
        content = {"rank": _rank(), "world_size": world, "epoch": self.epoch,
                   "dataset_size": len(engine.data_loader.dataset), "indices": indices, "ids": ids}
        with open(self.output_dir / f"rank{_rank()}.json", "w") as fh:
            json.dump(content, fh, indent=1)
