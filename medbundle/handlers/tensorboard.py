"""TensorBoard logging for bundle training: a writer that opens its file on first use, and a learning-rate writer.

The train configs log, as the MONAI model zoo's bundles do, with MONAI's ``TensorBoardStatsHandler``: the
training loss per iteration (``train_loss``) and, per epoch, the learning rate (``learning_rate``) and the
validation metrics (``val_...``), all into ``eval/tensorboard`` under ``bundle_root``::

    tensorboard --logdir eval/tensorboard

:class:`LazySummaryWriter` is the ``summary_writer`` the handlers share. ``torch.utils.tensorboard``'s
``SummaryWriter`` creates its event file when it is built; a bundle config builds its handlers on every
``torchrun`` rank and :func:`medbundle.handlers.distributed.rank_handlers` then keeps the TensorBoard handlers
on rank 0 only, so the lazy writer makes sure only rank 0, which writes, gets an event file.

:class:`LearningRateWriter` is an ``epoch_event_writer`` for the trainer's ``TensorBoardStatsHandler``. Put that
handler before ``LrScheduleHandler`` in ``train#handlers``: handlers run in list order at the end of an epoch,
so the rate written for epoch ``e`` is then the one the optimizer used during epoch ``e``.
"""

from __future__ import annotations

import os
from typing import Any

from monai.utils import is_scalar

__all__ = ["LazySummaryWriter", "LearningRateWriter"]


class LazySummaryWriter:
    """A ``torch.utils.tensorboard.SummaryWriter`` created, with its event file, on the first call.

    Every attribute (``add_scalar``, ``flush``, ``close``, ...) is the real writer's; the real writer is built
    with ``log_dir`` and ``kwargs`` when the first one is used.

    Args:
        log_dir: folder of the event files (created when needed).
        kwargs: further ``SummaryWriter`` arguments (e.g. ``flush_secs``).
    """

    def __init__(self, log_dir: str | os.PathLike, **kwargs: Any) -> None:
        self.log_dir = str(log_dir)
        self.kwargs = kwargs
        self._writer: Any = None

    @property
    def opened(self) -> bool:
        """Whether the event file exists (something was written, or the writer was asked for)."""
        return self._writer is not None

    @property
    def writer(self) -> Any:
        """The real ``SummaryWriter`` (built now if it was not yet)."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # the tensorboard package is a dependency of medbundle
                raise RuntimeError(
                    f"cannot write TensorBoard logs to {self.log_dir}: the `tensorboard` package is not installed "
                    f"({err}); pip install tensorboard"
                ) from err
            self._writer = SummaryWriter(log_dir=self.log_dir, **self.kwargs)
        return self._writer

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickling and copying look up dunders before __init__ ran
            raise AttributeError(name)
        return getattr(self.writer, name)

    def close(self) -> None:
        """Close the real writer if it was opened (nothing to do otherwise)."""
        if self._writer is not None:
            self._writer.close()


class LearningRateWriter:
    """``epoch_event_writer`` of a trainer's ``TensorBoardStatsHandler``: metrics and learning rate per epoch.

    Writes what MONAI's default epoch writer writes (every scalar of ``engine.state.metrics``) and the
    optimizer's learning rate at step ``engine.state.epoch``, as ``tag`` (one parameter group) or
    ``tag/group<i>``, then flushes.

    Args:
        optimizer: the optimizer; default the engine's ``optimizer``.
        tag: the learning rate's tag.
    """

    def __init__(self, optimizer: Any = None, tag: str = "learning_rate") -> None:
        self.optimizer = optimizer
        self.tag = tag

    def __call__(self, engine: Any, writer: Any) -> None:
        epoch = engine.state.epoch
        for name, value in engine.state.metrics.items():
            if is_scalar(value):
                writer.add_scalar(name, value, epoch)
        optimizer = self.optimizer if self.optimizer is not None else getattr(engine, "optimizer", None)
        groups = list(getattr(optimizer, "param_groups", []))
        for i, group in enumerate(groups):
            writer.add_scalar(self.tag if len(groups) == 1 else f"{self.tag}/group{i}", float(group["lr"]), epoch)
        writer.flush()
