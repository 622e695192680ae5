"""Progress within each training epoch: a bar on a terminal, a periodic log line otherwise.

:class:`TrainingProgress` follows :func:`medbundle.progress.progress_mode` (``MEDBUNDLE_PROGRESS=bar|log|off``
forces one form). On a terminal it attaches Ignite's ``ProgressBar`` (``Epoch [3/30]: [120/2400] 5%|▌ , loss=0.23
[00:10<03:20]``), cleared at the end of each epoch. Without a terminal (logs, CI, MONAI Label's training
subprocess) a carriage-return bar would fill the log with unreadable lines, so it logs one line every
``log_every_s`` seconds within an epoch, with the iterations done, the rate and the time left for the epoch
and for the whole training (validation not counted); an epoch shorter than ``log_every_s`` adds no line.
Only rank 0 shows progress under ``torchrun``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from monai.handlers import from_engine
from monai.utils import min_version, optional_import

from medbundle.distributed import rank_and_world_size
from medbundle.progress import format_duration, progress_mode

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
ProgressBar, _has_bar = optional_import("ignite.handlers", "0.4.11", min_version, "ProgressBar")
if not _has_bar:  # Ignite before 0.5 keeps it in contrib
    ProgressBar, _has_bar = optional_import("ignite.contrib.handlers", "0.4.11", min_version, "ProgressBar")

__all__ = ["TrainingProgress"]


def _loss(output: Any) -> dict[str, float]:
    """``{"loss": value}`` from a MONAI trainer's output (a decollated list or a dict), or ``{}``."""
    try:
        value = from_engine(["loss"], first=True)(output)
    except (KeyError, IndexError, TypeError):
        return {}
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return {}
        value = value.item()
    return {"loss": float(value)} if isinstance(value, (int, float)) else {}


class TrainingProgress:
    """Show how far each training epoch is: a bar on a terminal, a log line every ``log_every_s`` otherwise.

    Args:
        log_every_s: seconds between log lines within an epoch when there is no terminal.
        mode: ``"bar"``, ``"log"`` or ``"off"``; default :func:`medbundle.progress.progress_mode`.
        output_transform: maps ``engine.state.output`` to the ``{name: value}`` shown beside the bar and in the log
            line; default the loss.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        log_every_s: float = 60.0,
        mode: str | None = None,
        output_transform: Callable[[Any], dict[str, float]] = _loss,
        name: str | None = None,
    ) -> None:
        self.log_every_s = float(log_every_s)
        self.mode = mode
        self.output_transform = output_transform
        self._name = name
        self.logger = logging.getLogger(name)
        self._epoch_start = 0.0
        self._last_line = 0.0

    def attach(self, engine: Any) -> None:
        """Attach the bar or the log lines to ``engine`` (on rank 0 only)."""
        if rank_and_world_size()[0] != 0:
            return
        if self._name is None:
            self.logger = engine.logger
        mode = self.mode or progress_mode()
        if mode == "bar" and _has_bar:
            ProgressBar(persist=False).attach(engine, output_transform=self.output_transform)
        elif mode in ("bar", "log"):
            engine.add_event_handler(Events.EPOCH_STARTED, self._start)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _start(self, engine: Any) -> None:
        self._epoch_start = self._last_line = time.monotonic()

    def _iteration(self, engine: Any) -> None:
        now = time.monotonic()
        if now - self._last_line < self.log_every_s:
            return
        self._last_line = now
        self.logger.info(self.line(engine, now - self._epoch_start))

    def line(self, engine: Any, elapsed: float) -> str:
        """The status line for ``engine`` after ``elapsed`` seconds of the current epoch."""
        state = engine.state
        length = state.epoch_length or 0
        done = (state.iteration - 1) % length + 1 if length else state.iteration
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"Epoch {state.epoch}/{state.max_epochs}: {done}/{length or '?'} iterations"]
        if rate:
            parts.append(f"{rate:.2f} it/s")
        if rate and length:
            left_epoch = (length - done) / rate
            left_all = left_epoch + (state.max_epochs - state.epoch) * length / rate
            parts.append(f"epoch left {format_duration(left_epoch)}, training left ~{format_duration(left_all)}")
        parts += [f"{k} {v:.4f}" for k, v in self.output_transform(state.output).items()]
        return ", ".join(parts)
