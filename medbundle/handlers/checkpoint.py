"""Resumable training: a last-epoch checkpoint written after every epoch, and ``--resume True`` that continues it.

:class:`ResumeCheckpoint` is an Ignite handler for a MONAI trainer (``SupervisedTrainer``,
:class:`medbundle.detection.engines.DetectionTrainer`). After every completed epoch (put it last in
``train#handlers``, so the epoch's validation and LR step have run) rank 0 writes one file atomically (a
temporary file in the same folder, then ``os.replace``) holding everything an uninterrupted run
would carry into the next epoch:

- ``network``: the plain module's weights (``DistributedDataParallel`` / ``DataParallel`` unwrapped), with
  ``network_class`` for error messages;
- ``optimizer``, ``lr_scheduler``, ``scaler`` (the AMP ``GradScaler``, when AMP is on);
- ``trainer``: the Ignite engine's ``state_dict()`` (``iteration``, ``epoch_length``, ``max_epochs``) and
  ``epoch``;
- ``best_metric``, ``best_metric_epoch``, ``key_metric_name`` of the evaluator, and ``key_metric_savers``: the
  tracking list of each key-metric ``CheckpointSaver`` of the evaluator, so that a resumed run replaces
  ``models/model.pt`` (which stays a plain state dict) only with a better model;
- ``extra``: ``state_dict()`` of further objects named in ``extra_state`` (e.g. a report that writes only on
  the best epoch);
- ``world_size`` and ``rng``, one entry per rank (gathered with ``all_gather_object`` under DDP): Python
  ``random``, NumPy's global generator, torch CPU (and the current CUDA device's) generator, the ``R`` of every
  ``Randomizable`` in the training dataset's transform chain, and the sampler's state
  (see :func:`capture_rng_states`).

Every value is a tensor, number, string, ``None`` or a list / tuple / dict of those
(:func:`medbundle.io.files.to_weights_only`), so the file loads with ``torch.load(..., weights_only=True)``,
which is how it is read back.

With ``resume=True`` the handler loads the file at ``Events.STARTED``, as MONAI's ``CheckpointLoader`` does,
so Ignite continues at the next epoch; the trainer's ``max_epochs`` stays the one configured, so a larger
``num_epochs`` extends training. No file: one log line and a fresh start. A file written for another network:
one ``ValueError`` naming the file and the mismatch. Under ``torchrun`` every rank keeps this handler
(:func:`medbundle.handlers.distributed.rank_handlers` keeps it: it takes part in collective communication),
every rank loads the file and restores its own random states, and rank 0 alone writes.

The LR scheduler continues from its saved state (e.g. a ``CosineAnnealingLR`` keeps the ``T_max`` it was
built with), like any PyTorch resume; a larger ``num_epochs`` adds epochs to that schedule.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import CheckpointSaver
from monai.transforms import Randomizable, Transform
from monai.utils import min_version, optional_import

from medbundle.distributed import all_gather_object, rank_and_world_size
from medbundle.io.files import load_weights_only, save_atomic, to_weights_only

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = [
    "CHECKPOINT_FORMAT",
    "ResumeCheckpoint",
    "capture_rng_states",
    "restore_rng_states",
    "transform_rng_states",
]

#: the ``format`` entry of a resume checkpoint; a file without it is not one
CHECKPOINT_FORMAT = "medbundle.resume/1"


# ------------------------------------------------------------------------------------------- random states
def _pack_mt19937(state: Mapping[str, Any]) -> dict[str, Any]:
    """A NumPy ``MT19937`` state (``get_state(legacy=False)``) with its key as a tensor."""
    return {
        "bit_generator": str(state["bit_generator"]),
        "key": torch.from_numpy(np.asarray(state["state"]["key"], dtype=np.int64)),
        "pos": int(state["state"]["pos"]),
        "has_gauss": int(state["has_gauss"]),
        "gauss": float(state["gauss"]),
    }


def _unpack_mt19937(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The ``set_state`` argument back from :func:`_pack_mt19937`'s result."""
    key = saved["key"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    return {
        "bit_generator": saved["bit_generator"],
        "state": {"key": key.astype(np.uint32), "pos": int(saved["pos"])},
        "has_gauss": int(saved["has_gauss"]),
        "gauss": float(saved["gauss"]),
    }


def _walk_randomizables(obj: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Randomizable]]:
    """``(path, transform)`` for every ``Randomizable`` reachable from ``obj`` through transforms and containers.

    Only MONAI transforms (and lists, tuples and dicts of them) are entered: a transform's attributes may
    hold sub-transforms with their own ``R`` (``RandAffined.rand_affine.rand_affine_grid``), but networks,
    arrays and data are left alone.
    """
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _walk_randomizables(item, f"{path}.{i}" if path else str(i), seen)
        return
    if isinstance(obj, dict):
        for k, item in obj.items():
            if isinstance(k, str):
                yield from _walk_randomizables(item, f"{path}.{k}" if path else k, seen)
        return
    if not isinstance(obj, (Transform, Randomizable)) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield path or "root", obj
    for name, value in getattr(obj, "__dict__", {}).items():
        if name != "R" and not name.startswith("__"):
            yield from _walk_randomizables(value, f"{path}.{name}" if path else name, seen)


def transform_rng_states(transform: Any) -> dict[str, dict[str, Any]]:
    """The ``R`` state of every ``Randomizable`` in a transform chain, keyed by its attribute path.

    A generator shared by several transforms (MONAI's class-level default ``Randomizable.R``) is stored once,
    under the first path that reaches it.

    Args:
        transform: a MONAI ``Compose`` (or any transform, list or dict of transforms).
    """
    states: dict[str, dict[str, Any]] = {}
    seen_rngs: set[int] = set()
    for path, t in _walk_randomizables(transform, "", set()):
        rng = getattr(t, "R", None)
        if isinstance(rng, np.random.RandomState) and id(rng) not in seen_rngs:
            seen_rngs.add(id(rng))
            states[path] = _pack_mt19937(rng.get_state(legacy=False))
    return states


def _restore_transform_rng_states(transform: Any, states: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Set the ``R`` of each transform found under a saved path; returns the paths that did not match."""
    found: dict[str, np.random.RandomState] = {}
    seen_rngs: set[int] = set()
    for path, t in _walk_randomizables(transform, "", set()):
        rng = getattr(t, "R", None)
        if isinstance(rng, np.random.RandomState) and id(rng) not in seen_rngs:
            seen_rngs.add(id(rng))
            found[path] = rng
    for path, state in states.items():
        if path in found:
            found[path].set_state(_unpack_mt19937(state))
    return sorted(set(found) ^ set(states))


def _sampler_state(sampler: Any) -> dict[str, Any] | None:
    if sampler is None:
        return None
    if callable(getattr(sampler, "state_dict", None)) and callable(getattr(sampler, "load_state_dict", None)):
        return {"state_dict": sampler.state_dict()}
    if isinstance(getattr(sampler, "epoch", None), int) and callable(getattr(sampler, "set_epoch", None)):
        return {"epoch": int(sampler.epoch)}  # torch/MONAI DistributedSampler
    return None


def _restore_sampler_state(sampler: Any, state: Mapping[str, Any] | None) -> None:
    if sampler is None or not state:
        return
    if "state_dict" in state and callable(getattr(sampler, "load_state_dict", None)):
        sampler.load_state_dict(state["state_dict"])
    elif "epoch" in state and callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(int(state["epoch"]))


def capture_rng_states(transform: Any = None, sampler: Any = None) -> dict[str, Any]:
    """This process's random states, in types that load with ``weights_only=True``.

    Args:
        transform: the training data's transform chain; every ``Randomizable``'s ``R`` is captured.
        sampler: the training sampler; its ``state_dict()`` when it has one (e.g.
            :class:`medbundle.sampling.ClassBalancedSampler`), else its ``epoch`` when it has ``set_epoch``.

    Returns:
        ``{"python", "numpy", "torch", "cuda", "transforms", "sampler"}``; ``cuda`` is the current device's
        generator state, or None when CUDA has not been initialised.
    """
    version, internal, gauss_next = random.getstate()
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state(torch.cuda.current_device())
    return {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": _pack_mt19937(np.random.get_state(legacy=False)),  # noqa: NPY002 (the legacy global is what is used)
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "transforms": transform_rng_states(transform) if transform is not None else {},
        "sampler": _sampler_state(sampler),
    }


def restore_rng_states(states: Mapping[str, Any], transform: Any = None, sampler: Any = None) -> list[str]:
    """Restore what :func:`capture_rng_states` captured.

    Args:
        states: a :func:`capture_rng_states` result (possibly read back with ``weights_only=True``).
        transform: the training data's transform chain to restore the ``R`` states into.
        sampler: the training sampler to restore.

    Returns:
        Notes on what could not be restored exactly (transforms whose paths differ from the saved ones, a
        CUDA state without CUDA); empty when everything was.
    """
    notes: list[str] = []
    py = states["python"]
    internal = py["state"].tolist() if isinstance(py["state"], torch.Tensor) else list(py["state"])
    random.setstate((int(py["version"]), tuple(int(v) for v in internal), py["gauss_next"]))
    np.random.set_state(_unpack_mt19937(states["numpy"]))  # noqa: NPY002
    torch.set_rng_state(states["torch"].cpu() if isinstance(states["torch"], torch.Tensor) else states["torch"])
    if states.get("cuda") is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(states["cuda"].cpu(), torch.cuda.current_device())
        else:
            notes.append("the checkpoint has a CUDA generator state but CUDA is not available")
    if transform is not None:
        unmatched = _restore_transform_rng_states(transform, states.get("transforms") or {})
        if unmatched:
            notes.append(
                f"the training transforms differ from the checkpoint's ({len(unmatched)} random transforms "
                f"unmatched, e.g. {unmatched[:3]}); their random streams start anew"
            )
    _restore_sampler_state(sampler, states.get("sampler"))
    return notes


# ------------------------------------------------------------------------------------------- the handler
def _plain_module(network: torch.nn.Module) -> torch.nn.Module:
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


def _key_metric_tracker(saver: CheckpointSaver) -> Any:
    """The Ignite ``Checkpoint`` that keeps a ``CheckpointSaver``'s best-model list, or None.

    MONAI restores that list through the public ``CheckpointSaver.load_state_dict`` but offers no way to read
    it other than ``key_metric_save_state=True``, which would put it into ``model.pt`` and make that file more
    than a state dict; so it is read here from the saver's attribute.
    """
    return getattr(saver, "_key_metric_checkpoint", None)


def _check_network(current: Mapping[str, torch.Tensor], saved: Mapping[str, Any], path: Path,
                   saved_class: str | None, current_class: str) -> None:
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k}: {tuple(saved[k].shape)} in the file, {tuple(v.shape)} here" for k, v in current.items()
              if k in saved and isinstance(saved[k], torch.Tensor) and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of this network's {len(current)} tensors are missing from the file "
                     f"(e.g. {missing[:2]})")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's tensors are not in this network (e.g. {unexpected[:2]})")
    if shapes:
        parts.append(f"{len(shapes)} differ in shape (e.g. {shapes[0]})")
    if saved_class and saved_class != current_class:
        what = f"a {saved_class} network, not this {current_class}"
    else:
        what = f"a {current_class} of another configuration"
    raise ValueError(
        f"{path}: this resume checkpoint was written for {what}: "
        + "; ".join(parts)
        + ". Resume with the configuration that wrote it, or train without --resume True (the file is then "
        "overwritten after the first epoch)."
    )


class ResumeCheckpoint:
    """Write the last completed epoch's training state, and continue from it with ``resume=True``.

    See the module docstring for the file's contents. Attach it to the trainer, last in ``train#handlers``::

        {"_target_": "medbundle.handlers.ResumeCheckpoint", "filepath": "$@ckpt_dir + '/last_epoch.pt'",
         "resume": "@resume", "lr_scheduler": "@lr_scheduler", "evaluator": "@validate#evaluator",
         "evaluator_handlers": "@validate#handlers"}

    The network, optimizer and AMP scaler are the trainer's (``engine.network``, ``engine.optimizer``,
    ``engine.scaler``); the sampler is ``engine.data_loader.sampler`` and the transform chain
    ``engine.data_loader.dataset.transform`` unless ``transform`` is given.

    Args:
        filepath: the checkpoint file (e.g. ``models/last_epoch.pt``).
        resume: load ``filepath`` at ``Events.STARTED`` and continue from it; without the file, log it and start afresh.
        lr_scheduler: the LR scheduler stepped by ``LrScheduleHandler``; None: none.
        evaluator: the validation evaluator whose ``best_metric`` / ``best_metric_epoch`` are kept.
        evaluator_handlers: the evaluator's handlers; the tracking state of each ``CheckpointSaver`` among them that
            saves on the key metric is kept, so a resumed run overwrites the best model only with a better one.
        extra_state: further objects with ``state_dict()`` / ``load_state_dict()`` to keep, by name.
        transform: the training transform chain whose random states are kept; default the trainer's dataset's
            ``transform``.
        map_location: ``torch.load``'s ``map_location``; the loaded tensors go to where the objects live.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        resume: bool = False,
        lr_scheduler: Any = None,
        evaluator: Any = None,
        evaluator_handlers: Sequence[Any] | None = None,
        extra_state: Mapping[str, Any] | None = None,
        transform: Any = None,
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        self.filepath = Path(filepath)
        self.resume = bool(resume)
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.savers = [h for h in (evaluator_handlers or [])
                       if isinstance(h, CheckpointSaver) and _key_metric_tracker(h) is not None]
        self.extra_state = dict(extra_state or {})
        for key, obj in self.extra_state.items():
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"extra_state[{key!r}] ({type(obj).__name__}) has no state_dict/load_state_dict")
        self.transform = transform
        self.map_location = map_location
        self._name = name
        self.logger = logging.getLogger(name)

    # -- wiring
    def attach(self, engine: Any) -> None:
        """Load at ``STARTED`` (with ``resume``) and save at every ``EPOCH_COMPLETED``."""
        if self._name is None:
            self.logger = engine.logger
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        elif self.filepath.is_file() and rank_and_world_size()[0] == 0:
            self.logger.info(f"{self.filepath} exists and is overwritten after the first epoch; "
                             "pass --resume True to continue that run instead")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    @staticmethod
    def _network(engine: Any) -> torch.nn.Module:
        """The trainer's plain network (MONAI trainers set it after attaching their handlers)."""
        for attr in ("network", "optimizer"):
            if getattr(engine, attr, None) is None:
                raise ValueError(f"ResumeCheckpoint needs a trainer with `{attr}` (a MONAI trainer), "
                                 f"got {type(engine).__name__}")
        return _plain_module(engine.network)

    def _data(self, engine: Any) -> tuple[Any, Any]:
        loader = getattr(engine, "data_loader", None)
        sampler = getattr(loader, "sampler", None)
        transform = self.transform
        if transform is None:
            transform = getattr(getattr(loader, "dataset", None), "transform", None)
        return transform, sampler

    # -- save
    def checkpoint_content(self, engine: Any) -> dict[str, Any]:
        """What rank 0 writes, less ``world_size`` and the gathered random states (``rng``)."""
        network = self._network(engine)
        scaler = getattr(engine, "scaler", None) if getattr(engine, "amp", False) else None
        ev_state = getattr(self.evaluator, "state", None)
        best = getattr(ev_state, "best_metric", None)
        trackers = [_key_metric_tracker(s) for s in self.savers]
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "trainer": dict(engine.state_dict()),
            "network_class": type(network).__name__,
            "network": network.state_dict(),
            "optimizer": engine.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best_metric": float(best) if best is not None else None,
            "best_metric_epoch": int(getattr(ev_state, "best_metric_epoch", -1)),
            "key_metric_name": getattr(ev_state, "key_metric_name", None),
            "key_metric_savers": [t.state_dict() for t in trackers],
            "extra": {k: obj.state_dict() for k, obj in self.extra_state.items()},
        }

    def save(self, engine: Any) -> None:
        """Gather every rank's random states; rank 0 writes the checkpoint atomically."""
        transform, sampler = self._data(engine)
        rngs = all_gather_object(capture_rng_states(transform, sampler))  # collective: every rank calls it
        rank, world = rank_and_world_size()
        if rank != 0:
            return
        content = self.checkpoint_content(engine)
        content["world_size"] = world
        content["rng"] = rngs
        save_atomic(to_weights_only(content), self.filepath, fsync=True)
        self.logger.info(f"Saved the epoch {engine.state.epoch} training state to {self.filepath}")

    # -- load
    def _read(self) -> dict[str, Any]:
        try:
            ckpt = load_weights_only(self.filepath, map_location=self.map_location)
        except Exception as err:
            raise ValueError(f"{self.filepath}: cannot be read as a resume checkpoint ({err})") from err
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{self.filepath}: not a resume checkpoint written by ResumeCheckpoint "
                             f"(format {CHECKPOINT_FORMAT!r} expected; found {keys})")
        return ckpt

    def _exists_on_every_rank(self) -> bool:
        flags = all_gather_object(self.filepath.is_file())
        if any(flags) and not all(flags):
            have = [r for r, f in enumerate(flags) if f]
            lack = [r for r, f in enumerate(flags) if not f]
            raise FileNotFoundError(f"{self.filepath}: found by ranks {have} but not by ranks {lack}; every rank "
                                    "must see the same bundle_root to resume")
        return bool(flags[0])

    def load(self, engine: Any) -> None:
        """Restore the saved training state into the trainer, evaluator, savers and random generators."""
        if not self._exists_on_every_rank():
            self.logger.warning(f"--resume True: no checkpoint at {self.filepath}; training starts at epoch 1")
            return
        network = self._network(engine)
        ckpt = self._read()
        current = network.state_dict()
        _check_network(current, ckpt["network"], self.filepath, ckpt.get("network_class"), type(network).__name__)
        network.load_state_dict(ckpt["network"])
        try:
            engine.optimizer.load_state_dict(ckpt["optimizer"])
            if self.lr_scheduler is not None and ckpt.get("lr_scheduler") is not None:
                self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"{self.filepath}: the optimizer or LR scheduler state does not fit this run "
                             f"({err}); resume with the configuration that wrote it") from err
        scaler = getattr(engine, "scaler", None) if getattr(engine, "amp", False) else None
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        self._load_counters(engine, ckpt)
        self._load_best(ckpt)
        for key, obj in self.extra_state.items():
            if key in (ckpt.get("extra") or {}):
                obj.load_state_dict(ckpt["extra"][key])
        self._load_rng(engine, ckpt)
        best = ckpt.get("best_metric")
        best_txt = (f"; best {ckpt.get('key_metric_name') or 'key metric'} {best:.4f} at epoch "
                    f"{ckpt.get('best_metric_epoch')}" if best is not None and ckpt.get("best_metric_epoch", -1) > 0
                    else "")
        if engine.state.epoch >= engine.state.max_epochs:
            self.logger.info(f"Resumed from {self.filepath}: all {engine.state.max_epochs} epochs are done{best_txt}")
        else:
            self.logger.info(f"Resumed from {self.filepath} (epoch {engine.state.epoch}, iteration "
                             f"{engine.state.iteration}{best_txt}); training continues at epoch "
                             f"{engine.state.epoch + 1} of {engine.state.max_epochs}")

    def _load_counters(self, engine: Any, ckpt: Mapping[str, Any]) -> None:
        prior_max_epochs = engine.state.max_epochs
        epoch_length = engine.state.epoch_length
        saved = dict(ckpt["trainer"])
        if epoch_length is not None and saved.get("epoch_length") != epoch_length:
            self.logger.warning(
                f"{self.filepath}: an epoch had {saved.get('epoch_length')} iterations when it was written and has "
                f"{epoch_length} now (the training data changed); continuing after epoch {ckpt['epoch']}"
            )
            saved = {"epoch": int(ckpt["epoch"]), "epoch_length": epoch_length, "max_epochs": prior_max_epochs}
        engine.load_state_dict(saved)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(f"{self.filepath} holds epoch {engine.state.epoch}, more than num_epochs="
                             f"{prior_max_epochs} of this run; resume with --num_epochs {engine.state.epoch} or more")
        if prior_max_epochs is not None:
            engine.state.max_epochs = prior_max_epochs

    def _load_best(self, ckpt: Mapping[str, Any]) -> None:
        ev_state = getattr(self.evaluator, "state", None)
        if ev_state is not None and ckpt.get("best_metric") is not None:
            ev_state.best_metric = ckpt["best_metric"]
            ev_state.best_metric_epoch = int(ckpt.get("best_metric_epoch", -1))
        saved = ckpt.get("key_metric_savers") or []
        if len(saved) != len(self.savers):
            self.logger.warning(f"{self.filepath}: {len(saved)} best-model savers were saved, this run has "
                                f"{len(self.savers)}; their tracking is not restored")
            return
        for saver, state in zip(self.savers, saved):
            saver.load_state_dict(state)

    def _load_rng(self, engine: Any, ckpt: Mapping[str, Any]) -> None:
        rank, world = rank_and_world_size()
        rngs = ckpt.get("rng") or []
        if int(ckpt.get("world_size", 1)) != world:
            self.logger.warning(f"{self.filepath} was written by {ckpt.get('world_size', 1)} processes, this run has "
                                f"{world}: the data order and augmentations will differ from an uninterrupted run")
        if rank >= len(rngs):
            return
        transform, sampler = self._data(engine)
        for note in restore_rng_states(rngs[rank], transform, sampler):
            self.logger.warning(f"{self.filepath}: {note}")
