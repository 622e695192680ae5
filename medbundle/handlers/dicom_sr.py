"""One DICOM SR per inferred item, next to the CSV/JSON results: the part the result writers share.

The prediction writers (:class:`~medbundle.handlers.inference.PredictionsWriter`, the detection writers) hold an
:class:`SRWriter` and hand it, for each finished item, the item key, the item's source (file or series folder)
and the report's content; :func:`medbundle.io.dicom_sr.write_report` reads the source headers, builds the report
with highdicom and saves it.

Order and speed: by default (``workers=0``) each report is made in the calling thread, before the item's ledger
row, so a run stopped at any point never leaves an item marked done without its SR. Building and saving a report
costs about 0.1-0.3 s of Python (highdicom), as much as reading and classifying a radiograph on a GPU; where that
matters, ``workers=1`` makes the reports in a worker thread while inference goes on (torch, the decoders and CUDA
release the GIL) and the writer waits for them when the run ends (:meth:`SRWriter.wait`, from the writer's
``close``). Then a run killed before its end may leave items done without their SR, and a re-run with
``--overwrite True`` writes them. A thread, not a process: nothing is pickled and nothing re-imports the caller's
main module (MONAI Label, notebooks).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medbundle.data.failures import failure_reason
from medbundle.utils import as_bool, safe_stem

__all__ = ["SRWriter"]

logger = logging.getLogger("medbundle.handlers")


class SRWriter:
    """Write ``<output_dir>/<item key>.dcm``, a DICOM SR of an item's results, when enabled and the item is DICOM.

    Args:
        output_dir: Folder of the SR files (bundles: ``@output_dir + '/sr'``).
        enabled: Switch for configs (``--write_sr True``); when false nothing is read or written.
        algorithm_name, algorithm_version: The model named in every report (bundles: their metadata's name and
            version).
        min_score: Detections scoring below it are left out of the detectors' reports (classifiers report every
            class).
        workers: 0 (default): each report in the calling thread, before the item's ledger row (a stopped run loses
            no SR); 1 or more: worker threads make the reports while inference goes on (see the module docstring).

    A source that is not DICOM (PNG, NIfTI, MetaImage) gets one info line and no SR. A report that cannot be
    built (a header without the UIDs it must reference) is logged as a warning and left out; the item's CSV/JSON
    results stand. Log lines name the item key only, never a header value.

    Raises:
        ImportError: enabled without highdicom (``pip install 'medbundle[dicom]'``).
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = False, algorithm_name: str = "medbundle",
                 algorithm_version: str = "", min_score: float = 0.0, workers: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = as_bool(enabled)
        self.algorithm_name = str(algorithm_name)
        self.algorithm_version = str(algorithm_version)
        self.min_score = float(min_score)
        self.workers = int(workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[str, Future]] = []
        #: SR files written since the writer was made
        self.written: list[Path] = []
        if self.enabled:
            from medbundle.io.dicom_sr import check_installed

            check_installed()  # fail at start, not at the first DICOM item, when highdicom is missing

    def path(self, key: str) -> Path:
        """The SR file of item ``key`` (a file name, path or UID; made safe with ``safe_stem``)."""
        return self.output_dir / f"{safe_stem(str(key))}.dcm"

    def write(self, key: str, source: str | os.PathLike | None, kind: str, **fields: Any) -> None:
        """Make the SR of one item (see :func:`medbundle.io.dicom_sr.write_report` for ``kind`` and ``fields``)."""
        if not self.enabled:
            return
        from medbundle.io.dicom_sr import is_dicom_source, write_report

        if source is None or not is_dicom_source(source):
            logger.info("no DICOM SR for %s: its source is not DICOM", key)
            return
        args = (kind, str(source), str(self.path(key)), self.algorithm_name, self.algorithm_version, fields)
        if self.workers <= 0:
            try:
                self.written.append(Path(write_report(*args)))
            except Exception as exc:  # noqa: BLE001 - one report that fails leaves the item's other results standing
                logger.warning("no DICOM SR for %s: %s", key, failure_reason(exc))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dicom-sr")
        self._pending.append((key, self._pool.submit(write_report, *args)))
        self._collect(block=False)

    def _collect(self, block: bool) -> None:
        """Record the finished reports (all of them, waiting, with ``block``) and log the ones that failed."""
        keep = []
        for key, future in self._pending:
            if not block and not future.done():
                keep.append((key, future))
                continue
            try:
                self.written.append(Path(future.result()))
            except Exception as exc:  # noqa: BLE001
                logger.warning("no DICOM SR for %s: %s", key, failure_reason(exc))
        self._pending = keep

    def wait(self) -> None:
        """Wait for the reports still being made and stop the worker threads."""
        self._collect(block=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
