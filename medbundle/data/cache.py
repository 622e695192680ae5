"""A dataset whose deterministic preprocessing lives on disk, with a bounded share in memory.

MONAI's :class:`~monai.data.CacheDataset` keeps every preprocessed item in memory (ChestX-ray14 at 512 px
in float32 needs ~100 GB) and :class:`~monai.data.PersistentDataset` keeps them on disk in full precision,
names entries by the item alone unless told otherwise, recomputes nothing it cannot read and stops the run
on the first unreadable file. :class:`DiskCacheDataset` adds what a run over a whole public dataset needs:

- entries named by the item *and* its files' size and modification time *and* a fingerprint of the
  cached transforms' classes and parameters (:mod:`medbundle.data.fingerprint`), so a changed file or
  config never reads a stale entry; each config's entries sit in their own folder
  ``<cache_dir>/<fingerprint>/`` (with ``transforms.json`` describing it), so old ones can be deleted whole;
- compact storage dtypes per key (uint8/uint16 quantised intensities, float16, bfloat16), loaded back
  with ``weights_only=True``, written atomically (:mod:`medbundle.data.compact`);
- a memory share bounded in megabytes (and by ``cache_rate``) holding compact entries, filled in the
  order items are first used; the operating system's page cache does the rest;
- failure isolation: an item whose cached transforms fail is reported once on the ``medbundle.data``
  logger (``skipping <file>: <reason>``), recorded in ``failed.jsonl`` so later runs drop it up front
  (until its file changes), and replaced in training by the next readable item; with ``precheck`` every
  item is prepared when the dataset is built and unreadable ones are dropped (validation, evaluation);
- :meth:`prepare`: fill the disk cache ahead of training, in parallel, with progress and a size report.

The cached part of ``transform`` ends before its first random transform (MONAI's rule) or before the first
transform that moves data to a device (``EnsureTyped``/``ToDeviced`` with ``device``), whichever comes
first; the rest runs on every access.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

from monai.data import Dataset
from monai.transforms import Compose, RandomizableTrait, Transform

from medbundle.data.compact import pack, packed_nbytes, read_entry, unpack, write_entry
from medbundle.data.failures import describe_item, failure_reason
from medbundle.data.fingerprint import describe, item_fingerprint, stable_hash, transform_fingerprint
from medbundle.progress import Progress

__all__ = ["DiskCacheDataset", "cached_prefix_length"]

logger = logging.getLogger("medbundle.data")

_FAILED = "failed.jsonl"


def _moves_to_device(t: Any) -> bool:
    converter = getattr(t, "converter", None)
    return getattr(converter, "device", None) is not None or type(t).__name__ in ("ToDeviced", "ToDevice")


def cached_prefix_length(transform: Compose) -> int:
    """Number of leading transforms of ``transform`` whose result can be cached.

    The prefix stops at the first random transform, the first callable that is not a MONAI ``Transform``
    (whose determinism is unknown), or the first transform that moves data to a device.
    """
    for i, t in enumerate(transform.transforms):
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform) or _moves_to_device(t):
            return i
    return len(transform.transforms)


class DiskCacheDataset(Dataset):
    """A MONAI dataset that caches its deterministic preprocessing on disk and a bounded share in memory.

    Args:
        data: MONAI datalist, a sequence of dicts.
        transform: a :class:`~monai.transforms.Compose` (or a sequence of transforms).
        cache_dir: folder of the disk cache; None keeps only the memory share (and recomputes the rest), for results
            that cannot be stored safely (e.g. whole-slide grids, whose transforms keep their own disk caches).
        ram_cache_mb: most megabytes of (compact) entries held in memory.
        cache_rate: most fraction of the items held in memory (MONAI's meaning; 0 disables the share).
        storage_dtypes: storage dtype per key of the cached result, e.g. ``{"image": "uint8"}`` (values in [0, 1]
            quantised), ``"float16"``, ``"bfloat16"``, ``"uint16"``; see :mod:`medbundle.data.compact`.
        precheck: prepare every item when the dataset is built and drop those that fail (a dataset whose items must all
            be seen, such as validation); otherwise items are prepared when first used and a failing one is replaced by
            the next readable item.
        num_workers: threads that prepare items (precheck and :meth:`prepare`).
        name_keys: item keys whose value names the item in messages (first one present wins).
        progress: show progress while prechecking (None: when there are more than 50 items to prepare).
        copy_cache: memory-only mode (no ``cache_dir``): hand out deep copies of the held results, so the random
            transforms cannot change them (False when nothing downstream modifies them in place). With a ``cache_dir``,
            entries are compact and every access builds new tensors anyway.

    Attributes:
        skipped: ``(name, reason)`` of every item dropped or replaced because it could not be prepared.
        fingerprint: the cached transforms' fingerprint (the entry folder's name).

    Raises:
        ValueError: no item at all can be prepared.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable,
        cache_dir: str | os.PathLike | None = None,
        ram_cache_mb: float = 1024.0,
        cache_rate: float = 1.0,
        storage_dtypes: Mapping[str, str] | None = None,
        precheck: bool = False,
        num_workers: int | None = 1,
        name_keys: Sequence[str] = ("image",),
        progress: bool | None = None,
        copy_cache: bool = True,
    ) -> None:
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        super().__init__(data=[], transform=transform)
        self.cache_end = cached_prefix_length(transform)
        self.cached_transforms = Compose(transform.transforms[: self.cache_end])
        self.fingerprint = transform_fingerprint(self.cached_transforms.transforms)
        self.entry_dir = Path(cache_dir) / self.fingerprint if cache_dir else None
        self.ram_budget = max(float(ram_cache_mb), 0.0) * 2**20
        self.cache_rate = float(cache_rate)
        self.storage_dtypes = dict(storage_dtypes or {})
        self.precheck = bool(precheck)
        self.num_workers = max(int(num_workers or 1), 1)
        self.name_keys = tuple(name_keys)
        self.progress = progress
        self.copy_cache = bool(copy_cache)
        self.skipped: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._ram: dict[int, Any] = {}
        self._ram_bytes = 0
        self._failed_now: set[int] = set()
        self._ram_items = 0
        if self.entry_dir is not None:
            self.entry_dir.mkdir(parents=True, exist_ok=True)
            desc = self.entry_dir / "transforms.json"
            if not desc.is_file():
                desc.write_text(json.dumps(describe(self.cached_transforms.transforms), indent=1, sort_keys=True))
        self.set_data(data)

    # ------------------------------------------------------------------ public
    def set_data(self, data: Sequence) -> None:
        """Use ``data``: drop items recorded as failing on earlier runs; with ``precheck`` prepare the rest."""
        self._ram.clear()
        self._ram_bytes = 0
        self._failed_now = set()
        self.skipped = []
        items = self._drop_recorded_failures(list(data))
        self._ram_items = int(self.cache_rate * len(items))
        if self.precheck:
            items = self._prepare_items(items, fill_ram=True, desc="preparing")
        if not items and len(data):
            first = f"{self.skipped[0][0]}: {self.skipped[0][1]}" if self.skipped else "?"
            raise ValueError(f"none of the {len(data)} items could be read; first problem: {first}")
        self.data = items

    def prepare(self, num_workers: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Write every item's cache entry that is missing, in parallel; drop the items that fail.

        Returns:
            ``{"items", "prepared", "already_cached", "failed", "bytes_written", "cache_bytes", "seconds",
            "cache_dir"}``: counts of this call, bytes it wrote and the size of the whole entry folder.
        """
        if num_workers is not None:
            self.num_workers = max(int(num_workers), 1)
        start = time.monotonic()
        self._remove_stale_temporaries()
        n_before = len(self.data)
        stats = {"prepared": 0, "already_cached": 0, "bytes_written": 0}
        self.data = self._prepare_items(list(self.data), fill_ram=False, desc="prepare", stats=stats,
                                        show=progress)
        self._ram.clear()
        self._ram_bytes = 0
        return {"items": n_before, **stats, "failed": n_before - len(self.data), "cache_bytes": self.cache_bytes(),
                "seconds": round(time.monotonic() - start, 2), "cache_dir": str(self.entry_dir or "")}

    def cache_bytes(self) -> int:
        """Bytes on disk of this config's cache entries."""
        if self.entry_dir is None or not self.entry_dir.is_dir():
            return 0
        total = 0
        for sub in os.scandir(self.entry_dir):
            if sub.is_dir():
                total += sum(e.stat().st_size for e in os.scandir(sub.path) if e.name.endswith(".pt"))
        return total

    def cached_item(self, index: int) -> Any:
        """Item ``index`` after the cached transforms only (restored from its entry), without the random part.

        What the loader hands to the random transforms; for inspecting entries and timing the cached part.
        """
        return self._restore(self._entry(index))

    @property
    def ram_bytes(self) -> int:
        """Bytes of entries held in memory now."""
        return self._ram_bytes

    # ------------------------------------------------------------------ item access
    def _transform(self, index: int) -> Any:
        tries = 0
        while True:
            try:
                packed = self._entry(index)
                break
            except Exception as exc:  # noqa: BLE001 - one bad item is reported, not fatal
                self._record_failure(index, exc)
                if self.precheck:
                    raise
                tries += 1
                if tries >= len(self.data):
                    raise ValueError("no item of the dataset can be read; see the log lines above") from exc
                index = self._next_readable(index)
        item = self._restore(packed)
        if self.cache_end < len(self.transform.transforms):
            item = self.transform(item, start=self.cache_end)
        return item

    def _next_readable(self, index: int) -> int:
        n = len(self.data)
        for step in range(1, n + 1):
            j = (index + step) % n
            if j not in self._failed_now:
                return j
        return index

    def _entry_path(self, item: Any) -> Path | None:
        if self.entry_dir is None:
            return None
        key = item_fingerprint(item)
        return self.entry_dir / key[:2] / f"{key}.pt"

    def _compute(self, item: Any) -> Any:
        out = self.cached_transforms(deepcopy(item), threading=True)
        return pack(out, self.storage_dtypes) if self.entry_dir is not None else out

    def _entry(self, index: int) -> Any:
        hit = self._ram.get(index)
        if hit is not None:
            return hit
        packed = self._load_or_compute(self.data[index])[0]
        self._offer_ram(index, packed)
        return packed

    def _restore(self, entry: Any) -> Any:
        """The item from an entry: unpacked from its compact form, or (memory only) a copy of it."""
        if self.entry_dir is not None:
            return unpack(entry)
        return deepcopy(entry) if self.copy_cache else entry

    def _load_or_compute(self, item: Any) -> tuple[Any, int]:
        """(packed entry, bytes written: 0 when it was read from disk)."""
        path = self._entry_path(item)
        if path is not None and path.is_file():
            try:
                return read_entry(path), 0
            except Exception as exc:  # noqa: BLE001 - an unreadable entry is recomputed, never trusted
                logger.warning("cache entry %s is unreadable (%s); recomputing it", path, failure_reason(exc))
                path.unlink(missing_ok=True)
        packed = self._compute(item)
        written = write_entry(path, packed) if path is not None else 0
        return packed, written

    def _offer_ram(self, index: int, packed: Any) -> None:
        if self.ram_budget <= 0 or self.cache_rate <= 0:
            return
        nbytes = packed_nbytes(packed)
        with self._lock:
            if index in self._ram or len(self._ram) >= self._ram_items:
                return
            if self._ram_bytes + nbytes <= self.ram_budget:
                self._ram[index] = packed
                self._ram_bytes += nbytes

    # ------------------------------------------------------------------ failures
    def _item_name(self, item: Any) -> str:
        return describe_item(item, self.name_keys)

    def _record_failure(self, index: int, exc: BaseException) -> None:
        item = self.data[index]
        with self._lock:
            if index in self._failed_now:
                return
            self._failed_now.add(index)
        self._note_failure(item, failure_reason(exc))

    def _note_failure(self, item: Any, reason: str) -> None:
        name = self._item_name(item)
        logger.warning("skipping %s: %s", name, reason)
        self.skipped.append((name, reason))
        if self.entry_dir is None:
            return
        record = {"id": stable_hash(item), "key": item_fingerprint(item), "name": name, "reason": reason}
        line = json.dumps(record) + "\n"
        with self._lock, open(self.entry_dir / _FAILED, "a") as f:
            f.write(line)

    def _drop_recorded_failures(self, items: list) -> list:
        path = self.entry_dir / _FAILED if self.entry_dir is not None else None
        if path is None or not path.is_file():
            return items
        records: dict[str, dict] = {}
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["id"]] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a killed run
        if not records:
            return items
        keep = []
        for item in items:
            rec = records.get(stable_hash(item))
            if rec is not None and rec.get("key") == item_fingerprint(item):
                name, reason = self._item_name(item), str(rec.get("reason", "?"))
                logger.warning("skipping %s: %s (recorded in %s)", name, reason, path)
                self.skipped.append((name, reason))
                continue
            keep.append(item)
        return keep

    # ------------------------------------------------------------------ bulk preparation
    def _prepare_one(self, item: Any, keep_packed: bool) -> tuple[Any, int, str | None, bool]:
        """(packed or None, bytes written, failure reason or None, was already on disk)."""
        try:
            path = self._entry_path(item)
            if path is not None and path.is_file() and not keep_packed:
                return None, 0, None, True
            packed, written = self._load_or_compute(item)
        except Exception as exc:  # noqa: BLE001 - reported per item
            return None, 0, failure_reason(exc), False
        return (packed if keep_packed else None), written, None, written == 0 and path is not None

    def _prepare_items(self, items: list, fill_ram: bool, desc: str, stats: dict | None = None,
                       show: bool | None = None) -> list:
        show = self.progress if show is None else show
        show = len(items) > 50 if show is None else show
        keep: list = []
        with Progress(len(items), f"{desc} {len(items)} items", unit="item", mode=None if show else "off") as bar, \
                ThreadPool(self.num_workers) as pool:
            for item, (packed, written, reason, cached) in zip(
                items, pool.imap(lambda it: self._prepare_one(it, fill_ram), items, chunksize=1)
            ):
                if reason is not None:
                    self._note_failure(item, reason)
                    bar.update(0, skipped=1)
                    continue
                if fill_ram and packed is not None:
                    self._offer_ram(len(keep), packed)
                keep.append(item)
                if stats is not None:
                    stats["already_cached" if cached else "prepared"] += 1
                    stats["bytes_written"] += written
                bar.update(1)
        return keep

    def _remove_stale_temporaries(self, older_than_s: float = 600.0) -> None:
        """Delete temporary files that runs killed while writing left behind."""
        if self.entry_dir is None:
            return
        now = time.time()
        for sub in os.scandir(self.entry_dir):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                if e.name.endswith(".tmp") and now - e.stat().st_mtime > older_than_s:
                    Path(e.path).unlink(missing_ok=True)
