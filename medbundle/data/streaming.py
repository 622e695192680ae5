"""Inference over many items: what is left to do, read once, failures kept aside instead of raised.

- :class:`InferencePlan` takes the whole datalist of an inference run and the output folder, leaves out
  the items whose results are already there (unless ``overwrite``), and gives this process its share of
  the rest (every ``world_size``-th item from its ``rank`` under ``torchrun``). It does this *before* the
  dataset exists, so done items are not even read.
- :class:`SafeDataset` is MONAI's :class:`~monai.data.Dataset` (each item is read and preprocessed when
  the loader asks for it, once) that returns a :class:`FailedItem` marker instead of raising when an
  item cannot be read or preprocessed.
- :class:`SkipFailedCollate` wraps a collate function: it collates the readable items of a batch and
  keeps the markers aside in an :class:`ItemBatch`, which :mod:`medbundle.engines.streaming` unpacks.

Wiring in an inference config::

    "plan": {"_target_": "medbundle.data.InferencePlan", "items": "$medbundle.data.inference_items(@input)",
             "output_dir": "@output_dir", "overwrite": "@overwrite"},
    "dataset": {"_target_": "medbundle.data.SafeDataset", "data": "$@plan.items", "transform": "@preprocessing"},
    "dataloader": {"_target_": "ThreadDataLoader", "dataset": "@dataset", "batch_size": 8,
                   "collate_fn": {"_target_": "medbundle.data.SkipFailedCollate"}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.data import Dataset, list_data_collate

from medbundle.data.failures import describe_item, failure_reason
from medbundle.distributed import broadcast_object, is_distributed, rank_and_world_size
from medbundle.io.results import done_keys

__all__ = [
    "FailedItem",
    "InferencePlan",
    "ItemBatch",
    "SafeDataset",
    "SkipFailedCollate",
    "file_fingerprints",
    "item_fields",
]

logger = logging.getLogger("medbundle.data")

#: item keys that name an item in messages and tables, first present wins
NAME_KEYS: tuple[str, ...] = ("filename", "image")


def item_fields(item: Any) -> dict[str, Any]:
    """The plain fields of an item (strings, numbers, paths as strings): its names and keys, no pixels."""
    if not isinstance(item, Mapping):
        return {}
    out: dict[str, Any] = {}
    for k, v in item.items():
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if isinstance(v, (str, int, float, bool)):
            out[str(k)] = v
    return out


@dataclass
class FailedItem:
    """An item that could not be processed.

    Attributes:
        item: the item's plain fields (:func:`item_fields`: file names, keys).
        reason: one line, :func:`failure_reason`.
        stage: ``"read"`` (loading or preprocessing) or ``"inference"`` (network, inferer, postprocessing).
    """

    item: dict[str, Any]
    reason: str
    stage: str = "read"

    def name(self, keys: Sequence[str] = NAME_KEYS) -> str:
        """The item's file name (or other identifying field) for messages and ``skipped.csv``."""
        return describe_item(self.item, keys)


class SafeDataset(Dataset):
    """A MONAI :class:`~monai.data.Dataset` that returns a :class:`FailedItem` for an item it cannot
    read or preprocess.

    Each item is read and transformed when the loader asks for it (nothing up front, nothing twice).
    Nothing is logged here: the engine that meets the marker logs it once and the writers record it.

    Args:
        data: the datalist (for inference: :attr:`InferencePlan.items`).
        transform: the preprocessing.
    """

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as exc:  # noqa: BLE001 - one item's failure of any kind is recorded, not fatal
            return FailedItem(item_fields(self.data[index]), failure_reason(exc), "read")


@dataclass
class ItemBatch:
    """A batch whose unreadable items were kept aside.

    Attributes:
        data: the readable items collated by the wrapped collate function; None when there are none.
        failed: the markers of the unreadable items.
        fields: the plain fields (:func:`item_fields`) of each readable item, in batch order.
        items: the readable items before collation when there are several (so that a batch that fails can be run again
            one item at a time), else None.
        collate_fn: the wrapped collate function.
    """

    data: Any
    failed: list[FailedItem] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    items: list[Any] | None = None
    collate_fn: Callable[[Sequence[Any]], Any] = list_data_collate

    def __len__(self) -> int:
        return len(self.fields)

    def singles(self) -> list[tuple[Any, dict[str, Any]]]:
        """``(collated batch of one item, its fields)`` for each readable item."""
        if self.items is None:
            return [(self.data, self.fields[0])] if self.fields else []
        return [(self.collate_fn([it]), f) for it, f in zip(self.items, self.fields)]


class SkipFailedCollate:
    """Collate function that sets :class:`FailedItem` markers aside and collates the rest.

    Args:
        collate_fn: the collate function of the readable items (default MONAI's ``list_data_collate``;
            ``monai.data.utils.no_collation`` for detection, ``medbundle.pathology.inference.slide_collate`` for
            slides).

    Returns an :class:`ItemBatch`. A class (not a closure) so that worker processes can pickle it.
    """

    def __init__(self, collate_fn: Callable[[Sequence[Any]], Any] | None = None) -> None:
        self.collate_fn = collate_fn if collate_fn is not None else list_data_collate

    def __call__(self, batch: Sequence[Any]) -> ItemBatch:
        good = [b for b in batch if not isinstance(b, FailedItem)]
        failed = [b for b in batch if isinstance(b, FailedItem)]
        return ItemBatch(
            data=self.collate_fn(good) if good else None,
            failed=failed,
            fields=[item_fields(b) for b in good],
            items=good if len(good) > 1 else None,
            collate_fn=self.collate_fn,
        )


#: file in the output folder that records which model files made the results (hidden: not a result)
RUN_STATE_FILE = ".inference_state.json"


def file_fingerprints(paths: Sequence[str | os.PathLike]) -> dict[str, str | None]:
    """``{file name: SHA-256 of its content}`` (None for a missing file): what identifies a model."""
    out: dict[str, str | None] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            out[p.name] = None
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[p.name] = h.hexdigest()
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class InferencePlan:
    """The items an inference run still has to do, and this process's share of them.

    Done items are found in the ledger table that the run's writer keeps in ``output_dir`` (the final file
    and the parts of an interrupted multi-process run, :mod:`medbundle.io.results`). Under ``torchrun``
    rank 0 reads it and sends the keys to the other ranks, so every rank splits the same list.

    Args:
        items: the whole datalist in input order (e.g. :func:`~medbundle.data.inference_items`).
        output_dir: the run's output folder.
        done_table: the ledger file name in ``output_dir``: ``"predictions.csv"`` for the classifiers,
            ``"seriesuids.csv"`` for the detector.
        key: the item field that identifies an item; the ledger's ``key_column`` holds it.
        key_column: column of the key in the ledger.
        has_header: whether the ledger starts with a header line.
        default_key: fills ``key`` for items without it, from the item (e.g. a series UID from the file name); without
            it such an item raises.
        overwrite: redo every item (the writer deletes the old results when the run starts).
        model_files: files whose content makes the results (checkpoint, thresholds). Their SHA-256 is kept in
            ``output_dir/.inference_state.json`` (:meth:`save_state`); resuming results that other files made raises, so
            one table never mixes two models.
        rank, world_size: this process and the number of processes; default from the initialised process group, else 0
            and 1.

    Attributes:
        items: this process's items, in input order (every ``world_size``-th pending item from ``rank``).
        keys: every input item's key, in input order (each once).
        n_total, n_done, n_pending: input items (unique keys), items done before this run, items left.

    Raises:
        ValueError: an item lacks ``key`` and there is no ``default_key``; or ``output_dir`` holds results that other
            ``model_files`` made and ``overwrite`` is false (the message says which changed).
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        done_table: str = "predictions.csv",
        key: str = "filename",
        key_column: int = 0,
        has_header: bool = True,
        default_key: Callable[[Mapping[str, Any]], str] | None = None,
        overwrite: bool = False,
        model_files: Sequence[str | os.PathLike] = (),
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.done_table = str(done_table)
        self.key = str(key)
        self.overwrite = _as_bool(overwrite)
        dist_rank, dist_world = rank_and_world_size()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        unique: dict[str, dict[str, Any]] = {}
        repeats = 0
        for it in items:
            it = dict(it)
            if it.get(self.key) is None:
                if default_key is None:
                    raise ValueError(f"inference item {describe_item(it, NAME_KEYS)} has no {self.key!r} field")
                it[self.key] = default_key(it)
            k = str(it[self.key])
            it[self.key] = k
            if k in unique:
                repeats += 1
                continue
            unique[k] = it
        if repeats:
            logger.warning("%d input items repeat the %s of an earlier item; each is inferred once", repeats, self.key)
        self.keys: list[str] = list(unique)
        self.position: dict[str, int] = {k: i for i, k in enumerate(self.keys)}
        self.model_files = [Path(p) for p in model_files]
        if is_distributed():
            found, error = broadcast_object(self._read_state(key_column, has_header) if self.rank == 0 else None)
        else:
            found, error = self._read_state(key_column, has_header)
        if error:
            raise ValueError(error)
        done = set(found) & set(unique)
        pending = [it for k, it in unique.items() if k not in done]
        self.n_total, self.n_done, self.n_pending = len(unique), len(done), len(pending)
        self.items: list[dict[str, Any]] = pending[self.rank :: self.world_size]
        if self.rank == 0:
            share = f"; {self.world_size} processes, this one {len(self.items)}" if self.world_size > 1 else ""
            if self.overwrite:
                logger.info("inference over %d items (overwrite: earlier results in %s are redone)%s",
                            self.n_total, self.output_dir, share)
            else:
                logger.info("inference over %d items: %d done earlier in %s, %d to do%s", self.n_total,
                            self.n_done, self.output_dir, self.n_pending, share)

    def __len__(self) -> int:
        return len(self.items)

    def _read_state(self, key_column: int, has_header: bool) -> tuple[list[str], str | None]:
        """(done keys, error message): rank 0 reads the ledger and checks the model files."""
        state_file = self.output_dir / RUN_STATE_FILE
        current = file_fingerprints(self.model_files)
        found = [] if self.overwrite else done_keys(self.output_dir / self.done_table, key_column, has_header)
        if found and state_file.is_file():
            try:
                earlier = json.loads(state_file.read_text()).get("model_files", {})
            except (OSError, ValueError):
                earlier = {}
            changed = sorted(k for k in set(earlier) | set(current) if earlier.get(k) != current.get(k))
            if changed:
                return found, (f"{self.output_dir} holds results of {len(found)} items made with other model files "
                               f"({', '.join(changed)} changed); pass --overwrite True to redo them, or choose "
                               "another --output_dir")
        return found, None

    def save_state(self) -> None:
        """Record the model files' fingerprints in ``output_dir`` (the writer calls it on rank 0 when the
        run starts, after removing or merging the earlier results)."""
        state_file = self.output_dir / RUN_STATE_FILE
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_file.with_name(f"{state_file.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"model_files": file_fingerprints(self.model_files)}, indent=1) + "\n")
        os.replace(tmp, state_file)
