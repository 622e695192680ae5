"""Base of the evaluation reports: collect an evaluator run, publish its figures, write files for the best epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["EvaluationReport"]


class EvaluationReport:
    """Collect the per-item records of an evaluator run; at its end put the run's figures into
    ``engine.state.metrics`` and write the report files, during training only for the best epoch.

    Subclasses implement :meth:`records` (evaluator output -> records), :meth:`evaluate_epoch` (records -> figures
    and whatever :meth:`write_epoch` needs) and :meth:`write_epoch`.

    Args:
        output_dir: Folder of the report files (None: figures only).
        save_best_metric_key: None: write after every run. A name in ``engine.state.metrics`` (e.g. the evaluator's
            key metric): write only when its value is the best so far, so that the files describe the best epoch.
        metric_prefix: The figures go into ``engine.state.metrics`` as ``<prefix><name>``.
        output_transform: Maps ``engine.state.output`` to what :meth:`records` reads.

    The best value is part of :meth:`state_dict`, so a resumed training rewrites the files only for a better epoch.
    """

    def __init__(self, output_dir: str | Path | None, save_best_metric_key: str | None, metric_prefix: str,
                 output_transform: Callable) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.save_best_metric_key = save_best_metric_key
        self.metric_prefix = metric_prefix
        self.output_transform = output_transform
        self._records: list[dict] = []
        self._best = -math.inf
        self.report: dict | None = None

    # ------------------------------------------------------------------------------------------------ subclass API
    def records(self, output: Any, start: int) -> list[dict]:
        """The records of one evaluator output (``start``: records collected before it)."""
        raise NotImplementedError

    def evaluate_epoch(self) -> tuple[Mapping[str, float], Any]:
        """``(figures for engine.state.metrics, result handed to write_epoch)`` of what was collected."""
        raise NotImplementedError

    def write_epoch(self, result: Any, epoch: int) -> Any:
        """Write the report files of an epoch worth keeping."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- engine wiring
    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine: Any) -> None:
        self._records = []

    def state_dict(self) -> dict[str, float]:
        """The best ``save_best_metric_key`` value written so far (kept by a resumed training)."""
        return {"best": float(self._best)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from :meth:`state_dict`: files are rewritten only for a better epoch."""
        self._best = float(state["best"])

    def _collect(self, engine: Any) -> None:
        self.collect(self.output_transform(engine.state.output))

    def collect(self, output: Any) -> None:
        """Add an evaluator output (its list of per-item dicts) to the run."""
        self._records.extend(self.records(output, len(self._records)))

    def _complete(self, engine: Any) -> None:
        figures, result = self.evaluate_epoch()
        for key, value in figures.items():
            engine.state.metrics[f"{self.metric_prefix}{key}"] = value
        if self.save_best_metric_key is not None:
            value = engine.state.metrics.get(self.save_best_metric_key)
            if value is None or not math.isfinite(float(value)) or float(value) <= self._best:
                return
            self._best = float(value)
        self.write_epoch(result, int(engine.state.epoch))
