"""Process-group helpers for configs that run the same way with and without ``torchrun``.

``torchrun --nproc_per_node=N`` starts N processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; a
plain ``python -m monai.bundle run`` sets none. :func:`init_process_group` starts the default process group
only in the first case, so one inference config serves both::

    "initialize": ["$medbundle.distributed.init_process_group()"],
    "finalize": ["$medbundle.distributed.destroy_process_group()"]

The other helpers (:func:`rank_and_world_size`, :func:`barrier`, :func:`broadcast_object`) do nothing (or
the obvious thing) when no group is initialised.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_object",
    "gather_unique",
    "barrier",
    "broadcast_object",
    "destroy_process_group",
    "init_process_group",
    "is_distributed",
    "is_rank0",
    "local_device",
    "rank_and_world_size",
]

logger = logging.getLogger("medbundle.distributed")


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised group, else ``(0, 1)``."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank0() -> bool:
    """Whether this process is rank 0 of the initialised group (True without one): the process that writes
    reports and logs."""
    return rank_and_world_size()[0] == 0


def init_process_group(backend: str = "gloo", timeout_s: float = 7 * 24 * 3600.0,
                       quiet_other_ranks: bool = True) -> bool:
    """Initialise the default process group when started by ``torchrun`` with ``WORLD_SIZE > 1``.

    Args:
        backend: ``"gloo"`` (default; inference ranks exchange only small Python objects, which gloo carries on CPU and
            GPU machines alike) or ``"nccl"``.
        timeout_s: how long a collective waits for the slowest rank. Inference shards can finish hours apart (slides and
            volumes differ in size), and the last step waits for every rank, so the default is a week rather than
            PyTorch's 30 minutes; ``torchrun`` still stops every rank when one fails.
        quiet_other_ranks: raise the root logger of ranks other than 0 to WARNING (their warnings, such as skipped
            items, still show).

    Returns:
        True when this process is one of several ranks (the group is, or already was, initialised).
    """
    if is_distributed():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not dist.is_available():
        return False
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    if quiet_other_ranks and dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info("process group initialised: %d ranks, backend %s", dist.get_world_size(), backend)
    return True


def destroy_process_group() -> None:
    """Wait for every rank, then destroy the default process group (nothing when there is none)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """``torch.distributed.barrier()`` when distributed; nothing otherwise."""
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_unique(records: list[dict], key: str) -> list[dict]:
    """Every rank's ``records`` in rank order, each value of ``records[i][key]`` once (the first): a
    ``DistributedSampler`` pads the ranks' shares with repeated items, which must count once in a metric."""
    merged = [r for part in all_gather_object(records) for r in part]
    seen: set = set()
    out = []
    for r in merged:
        if r[key] not in seen:
            seen.add(r[key])
            out.append(r)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects); ``obj`` itself when not distributed."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (``cuda:0`` without torchrun; ranks beyond the number of
    GPUs share them round-robin), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count())
    return torch.device("cpu")
