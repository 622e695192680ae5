"""One DICOM SR per inferred item, next to the CSV/JSON results: the part the result writers share.

The prediction writers (:class:`~medbundle.handlers.inference.PredictionsWriter`, the detection writers) hold an
:class:`SRWriter` and hand it, for each finished item, the item key, the item's source (file or series folder)
and a function that builds the report from the source headers (:mod:`medbundle.io.dicom_sr`). The SR is written
before the item's ledger row, so an item counts as done only with its SR on disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medbundle.data.failures import failure_reason
from medbundle.handlers.inference import as_bool, safe_stem

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

    A source that is not DICOM (PNG, NIfTI, MetaImage) gets one info line and no SR. A report that cannot be
    built (a header without the UIDs it must reference) is logged as a warning and left out; the item's CSV/JSON
    results stand. Log lines name the item key only, never a header value.
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = False, algorithm_name: str = "medbundle",
                 algorithm_version: str = "", min_score: float = 0.0) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = as_bool(enabled)
        self.algorithm_name = str(algorithm_name)
        self.algorithm_version = str(algorithm_version)
        self.min_score = float(min_score)

    def path(self, key: str) -> Path:
        """The SR file of item ``key`` (a file name, path or UID; made safe with ``safe_stem``)."""
        return self.output_dir / f"{safe_stem(str(key))}.dcm"

    def write(self, key: str, source: str | os.PathLike | None, build: Callable[..., Any]) -> Path | None:
        """Build and write the SR of one item; returns its path, or None when disabled, not DICOM, or failed.

        Args:
            key: The item key (names the file and the log lines).
            source: The DICOM file or series folder the item was read from.
            build: ``build(headers, algorithm_name=..., algorithm_version=...) -> pydicom.Dataset`` with ``headers``
                from :func:`medbundle.io.dicom_sr.read_source_headers`.
        """
        if not self.enabled:
            return None
        from medbundle.io.dicom_sr import is_dicom_source, read_source_headers, save_sr

        if source is None or not is_dicom_source(source):
            logger.info("no DICOM SR for %s: its source is not DICOM", key)
            return None
        try:
            headers = read_source_headers(source)
            sr = build(headers, algorithm_name=self.algorithm_name, algorithm_version=self.algorithm_version)
            return save_sr(sr, self.path(key))
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - one report that fails leaves the item's other results standing
            logger.warning("no DICOM SR for %s: %s", key, failure_reason(exc))
            return None
