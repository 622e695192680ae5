"""Progress of long work over many items: a bar on a terminal, a periodic log line otherwise.

tqdm draws a bar well on a terminal but writes unreadable carriage-return lines into log files and CI
output. :class:`Progress` picks the form from where the output goes: a tqdm bar when standard error is
a terminal, otherwise one log line every ``log_every_s`` seconds (and a last one at the end) with the
items done, skipped, the rate and the time left. ``MEDBUNDLE_PROGRESS=bar|log|off`` forces one form.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

__all__ = ["Progress", "format_duration", "progress_mode"]

logger = logging.getLogger("medbundle.progress")


def progress_mode() -> str:
    """``"bar"``, ``"log"`` or ``"off"``: ``MEDBUNDLE_PROGRESS`` if set, else bar on a terminal, else log."""
    forced = os.environ.get("MEDBUNDLE_PROGRESS", "").strip().lower()
    if forced in ("bar", "log", "off"):
        return forced
    try:
        return "bar" if sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):  # closed or replaced stream
        return "log"


def format_duration(seconds: float | None) -> str:
    """``"1h02m"``, ``"3m05s"``, ``"12s"``; ``"?"`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Count items done and skipped out of a known total and show it.

    Args:
        total: number of items expected (None when unknown: no time left is shown).
        desc: what is being done, e.g. ``"inference"``; starts every log line.
        unit: name of one item in the rate, e.g. ``"image"``.
        log: logger of the periodic lines (default ``medbundle.progress``).
        log_every_s: seconds between log lines when there is no terminal.
        mode: ``"bar"``, ``"log"`` or ``"off"``; default :func:`progress_mode`.
        initial: items already done before this run (e.g. found on disk by a resumed run); counted in the total but not
            in the rate.

    Use as a context manager, or call :meth:`close`; the last log line is written on close.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "item",
        log: logging.Logger | None = None,
        log_every_s: float = 30.0,
        mode: str | None = None,
        initial: int = 0,
    ) -> None:
        self.total = None if total is None else int(total)
        self.desc = desc
        self.unit = unit
        self.log = log or logger
        self.log_every_s = float(log_every_s)
        self.mode = mode or progress_mode()
        self.initial = int(initial)
        self.done = 0
        self.skipped = 0
        self.start = time.monotonic()
        self._last_log = self.start
        self._bar: Any = None
        self._closed = False
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=desc, unit=unit, dynamic_ncols=True,
                             leave=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def rate(self) -> float | None:
        """Items (done or skipped) per second in this run."""
        elapsed = time.monotonic() - self.start
        n = self.done + self.skipped
        return n / elapsed if elapsed > 0 and n else None

    @property
    def remaining_s(self) -> float | None:
        """Estimated seconds left, from this run's rate."""
        rate = self.rate
        if self.total is None or not rate:
            return None
        return max(self.total - self.initial - self.done - self.skipped, 0) / rate

    def update(self, done: int = 1, skipped: int = 0) -> None:
        """Count ``done`` finished and ``skipped`` failed items."""
        self.done += int(done)
        self.skipped += int(skipped)
        if self._bar is not None:
            if self.skipped:
                self._bar.set_postfix(skipped=self.skipped, refresh=False)
            self._bar.update(int(done) + int(skipped))
        elif self.mode == "log" and time.monotonic() - self._last_log >= self.log_every_s:
            self._emit()

    def line(self) -> str:
        """The status as one line of text."""
        count = self.initial + self.done
        total = f"/{self.total}" if self.total is not None else ""
        rate = self.rate
        rate_txt = f"{rate:.2f} {self.unit}/s" if rate else f"? {self.unit}/s"
        parts = [f"{self.desc}: {count}{total} done", f"{self.skipped} skipped", rate_txt,
                 f"elapsed {format_duration(time.monotonic() - self.start)}"]
        if self.total is not None:
            parts.append(f"left {format_duration(self.remaining_s)}")
        return ", ".join(parts)

    def _emit(self) -> None:
        self._last_log = time.monotonic()
        self.log.info("%s", self.line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.mode != "off":
            self._emit()
