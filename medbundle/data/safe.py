"""Datasets that report and skip unreadable items instead of failing the whole run.

MONAI's :class:`~monai.data.CacheDataset` raises on the first item whose deterministic transforms fail
(an unreadable file, a corrupt DICOM, a wrong dimensionality), which aborts a training or inference run
over thousands of images. :class:`SafeCacheDataset` runs the same deterministic transforms once, when the
cache is filled, logs one line per failing item naming the file and the root cause, and drops that item,
so the rest of the batch work completes and its results are written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from multiprocessing.pool import ThreadPool
from typing import Any

from monai.data import CacheDataset
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["SafeCacheDataset", "describe_item", "root_cause"]

logger = logging.getLogger("medbundle.data")


def root_cause(exc: BaseException) -> BaseException:
    """Return the innermost exception of a chain (MONAI wraps transform errors several times)."""
    seen = set()
    while (exc.__cause__ is not None or exc.__context__ is not None) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def describe_item(item: Any, keys: Sequence[str] = ("image",)) -> str:
    """A short human-readable name for a datalist item: its file path(s) if it has them."""
    if isinstance(item, dict):
        for k in keys:
            v = item.get(k)
            if isinstance(v, (str, bytes)) or hasattr(v, "__fspath__"):
                return str(v)
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
                return str(v[0]) + (f" (+{len(v) - 1} files)" if len(v) > 1 else "")
        return str({k: v for k, v in item.items() if isinstance(v, (str, int, float))})[:200]
    return str(item)[:200]


class SafeCacheDataset(CacheDataset):
    """A :class:`~monai.data.CacheDataset` that skips items its deterministic transforms cannot process.

    When the cache is filled, every item (also those beyond ``cache_rate`` when ``check_uncached`` is
    true) goes through the transforms up to the first random one. An item that raises is logged once as
    ``skipping <file>: <reason>`` on the ``medbundle.data`` logger and removed from the dataset; the
    list of skipped items is kept in :attr:`skipped` as ``(name, reason)`` pairs.

    Args:
        data: MONAI datalist, a sequence of dicts.
        transform: a :class:`~monai.transforms.Compose` (or a sequence of transforms).
        cache_rate: fraction of the (readable) items whose deterministic result is kept in memory.
        num_workers: threads used to fill the cache.
        check_uncached: also run the deterministic transforms once on items that are not cached, so an
            unreadable one is found before the epoch starts (costs one extra read of those items).
        name_keys: item keys whose value names the item in the log line (first one present wins).
        kwargs: passed to :class:`~monai.data.CacheDataset` (``hash_as_key`` and ``runtime_cache`` are
            not supported, as the filtering happens when the cache is filled).

    Raises:
        ValueError: when no item at all can be read.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable,
        cache_rate: float = 1.0,
        num_workers: int | None = 1,
        check_uncached: bool = True,
        name_keys: Sequence[str] = ("image",),
        progress: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("hash_as_key") or kwargs.get("runtime_cache"):
            raise ValueError("SafeCacheDataset does not support hash_as_key or runtime_cache.")
        self.check_uncached = check_uncached
        self.name_keys = tuple(name_keys)
        self.skipped: list[tuple[str, str]] = []
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        super().__init__(
            data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress, **kwargs
        )

    def _first_random(self) -> int | None:
        return self.transform.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )

    def _try_item(self, item: Any) -> tuple[Any, BaseException | None]:
        try:
            out = self.transform(item, end=self._first_random(), threading=True)
        except Exception as exc:  # noqa: BLE001 - any failure of a single item is reported, not fatal
            return None, exc
        return out, None

    def set_data(self, data: Sequence) -> None:
        data = list(data)
        n_cache = min(int(self.set_num), int(len(data) * self.set_rate), len(data))
        n_check = len(data) if self.check_uncached else n_cache
        keep: list[Any] = []
        cache: list[Any] = []
        self.skipped = []
        workers = max(1, int(self.num_workers or 1))
        with ThreadPool(workers) as pool:
            results = pool.imap(lambda i: self._try_item(data[i]), range(n_check))
            for i, (out, err) in enumerate(results):
                if err is not None:
                    cause = root_cause(err)
                    name = describe_item(data[i], self.name_keys)
                    reason = f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:300]
                    logger.warning("skipping %s: %s", name, reason)
                    self.skipped.append((name, reason))
                    continue
                keep.append(data[i])
                if len(cache) < n_cache:
                    cache.append(out)
        keep.extend(data[n_check:])
        if not keep:
            raise ValueError(
                f"none of the {len(data)} items could be read; first problem: "
                f"{self.skipped[0][0] if self.skipped else '?'}: {self.skipped[0][1] if self.skipped else '?'}"
            )
        self.data = keep
        self.cache_num = len(cache)
        self._hash_keys = []
        self._cache = cache
