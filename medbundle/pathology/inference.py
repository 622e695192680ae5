"""Whole-slide attention-MIL inference in chunks, for MONAI evaluators.

MONAI's inferers take the whole input tensor at once; a slide's bag (every tissue patch, thousands on a
large slide) does not fit in memory as pixels. :class:`SlideMILInferer` instead receives the slides'
:class:`~medbundle.pathology.reader.SlideGrid` objects and, per slide, reads ``chunk_size`` patches at a time
(the next chunk is read in a background thread while the network embeds the current one), keeps only the
``(N, D)`` backbone features, and pools them with the network's attention. Memory is bounded by one
chunk of pixels plus ``N x D`` floats (D = 512 for a ResNet18: 2 MB per 1,000 patches). When a grid
carries cached features (feature mode), the backbone is skipped.

The per-slide attention weights, patch coordinates and timings are kept in ``last_results`` for the
handlers (heatmaps, GeoJSON, top-k patches, attention localisation), which find the inferer as
``engine.inferer``.

Wiring in a bundle config::

    "dataloader": {"_target_": "ThreadDataLoader", ..., "batch_size": 1,
                   "collate_fn": "$medbundle.pathology.inference.slide_collate"},
    "inferer": {"_target_": "medbundle.pathology.inference.SlideMILInferer", "chunk_size": 256},
    "evaluator": {"_target_": "SupervisedEvaluator", ...,
                  "prepare_batch": "$medbundle.pathology.inference.PrepareSlideBatch()"}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer

from medbundle.pathology.reader import SlideGrid, read_patches
from medbundle.pathology.transforms import SLIDE_GRID_META_KEY, SlideCache

__all__ = ["PrepareSlideBatch", "SlideMILInferer", "SlideResult", "slide_collate"]


@dataclass
class SlideResult:
    """What the inferer saw and computed for one slide."""

    grid: SlideGrid
    attention: np.ndarray
    logits: np.ndarray
    seconds: float
    used_cached_features: bool

    @property
    def path(self) -> str:
        return self.grid.path

    def top_k(self, k: int) -> np.ndarray:
        """Indices of the ``k`` most attended patches, highest first."""
        k = min(int(k), self.attention.size)
        idx = np.argpartition(-self.attention, k - 1)[:k] if k < self.attention.size else np.arange(self.attention.size)
        return idx[np.argsort(-self.attention[idx], kind="stable")]


class SlideMILInferer(Inferer):
    """Run a :class:`~medbundle.pathology.networks.MILClassifier` over every tissue patch of each slide, in chunks.

    Args:
        chunk_size: patches read and embedded at a time.
        backend: reader backend; default the one each grid was built with.
        prefetch: read the next chunk in a background thread while the current one is embedded.
        max_open: slides kept open between calls.

    Called as ``inferer(inputs, network, grids=[SlideGrid, ...])`` (``inputs`` is ignored: it is the
    per-slide patch count that :class:`PrepareSlideBatch` passes as the batch "image"), or as
    ``inferer(inputs, network)`` with ``inputs`` the ``(1, N, 2)`` coordinate tensor of
    :class:`~medbundle.pathology.transforms.SlideGridImaged` (how a MONAI Label server calls it). Returns the
    slide logits ``(B, num_outputs)``.
    """

    def __init__(self, chunk_size: int = 256, backend: str | None = None, prefetch: bool = True,
                 max_open: int = 4) -> None:
        super().__init__()
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.backend = backend
        self.prefetch = bool(prefetch)
        self.max_open = int(max_open)
        self._slides: dict[str, SlideCache] = {}
        self.last_results: list[SlideResult] = []

    def _open(self, grid: SlideGrid):
        backend = self.backend or grid.backend
        cache = self._slides.setdefault(backend, SlideCache(backend, self.max_open))
        return cache.get(grid.path)

    def embed_slide(self, grid: SlideGrid, network: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """``(N, D)`` backbone features of every patch of ``grid``, read and embedded in chunks."""
        reader, wsi = self._open(grid)
        n = len(grid)
        starts = list(range(0, n, self.chunk_size))

        def load(start: int) -> np.ndarray:
            return read_patches(reader, wsi, grid, np.arange(start, min(start + self.chunk_size, n)))

        feats = None
        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch and len(starts) > 1 else None
        try:
            nxt = pool.submit(load, starts[0]) if pool else None
            for i, start in enumerate(starts):
                patches = nxt.result() if pool else load(start)
                if pool and i + 1 < len(starts):
                    nxt = pool.submit(load, starts[i + 1])
                x = torch.from_numpy(patches).to(device, non_blocking=True).float().div_(255.0)
                f = network.embed(x)
                if feats is None:
                    feats = torch.empty((n, f.shape[1]), dtype=f.dtype, device=device)
                feats[start:start + x.shape[0]] = f
        finally:
            if pool:
                pool.shutdown(wait=True)
        assert feats is not None
        return feats

    @staticmethod
    def _grids_from_inputs(inputs: Any) -> list[SlideGrid]:
        """The grid that :class:`~medbundle.pathology.transforms.SlideGridImaged` put into a coordinate tensor."""
        meta = getattr(inputs, "meta", None) or {}
        grid = meta.get(SLIDE_GRID_META_KEY)
        if isinstance(grid, (list, tuple)):  # a collated batch of coordinate tensors
            return list(grid)
        if grid is None:
            raise ValueError("SlideMILInferer needs the slide grids: use PrepareSlideBatch as the evaluator's "
                             "prepare_batch and slide_collate as the dataloader's collate_fn, or end the "
                             "preprocessing with medbundle.pathology.transforms.SlideGridImaged")
        return [grid]

    def __call__(self, inputs: Any, network: torch.nn.Module, *args: Any, grids: Sequence[SlideGrid] | None = None,
                 **kwargs: Any) -> torch.Tensor:
        if grids is None:
            grids = self._grids_from_inputs(inputs)
        net = getattr(network, "module", network)
        device = next(net.parameters()).device
        results, logits_all = [], []
        with torch.no_grad():
            for grid in grids:
                if len(grid) == 0:
                    raise ValueError(grid.message or f"{grid.path}: empty bag")
                t0 = time.perf_counter()
                cached = grid.features is not None
                feats = grid.features.to(device) if cached else self.embed_slide(grid, net, device)
                logits, att = net.pool(feats.unsqueeze(0), None)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                results.append(SlideResult(grid=grid, attention=att[0].float().cpu().numpy(),
                                           logits=logits[0].float().cpu().numpy(),
                                           seconds=time.perf_counter() - t0, used_cached_features=cached))
                logits_all.append(logits.float())
        self.last_results = results
        return torch.cat(logits_all, dim=0)


def slide_collate(items: Sequence[dict]) -> dict[str, Any]:
    """Collate slide items: ``"label"`` becomes a tensor (when every item has one), everything else
    (grids, paths, annotation files) a list."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for it in items:
        for k in it:
            if k not in keys:
                keys.append(k)
    for k in keys:
        values = [it.get(k) for it in items]
        if k == "label":
            out[k] = None if any(v is None for v in values) else torch.as_tensor(np.asarray(values)).long()
        else:
            out[k] = values
    return out


class PrepareSlideBatch(PrepareBatch):
    """``prepare_batch`` for evaluators over slides: returns ``(patch counts, labels, (), {"grids": grids})``.

    The per-slide patch count stands in for the batch "image" (the pixels are read by
    :class:`SlideMILInferer`), so ``engine.state.output["image"]`` stays a small tensor.
    """

    def __init__(self, grid_key: str = "grid", label_key: str = "label") -> None:
        self.grid_key = grid_key
        self.label_key = label_key

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs: Any):
        grids = batchdata[self.grid_key]
        grids = grids if isinstance(grids, (list, tuple)) else [grids]
        counts = torch.as_tensor([len(g) for g in grids], device=device)
        label = batchdata.get(self.label_key)
        if isinstance(label, torch.Tensor):
            label = label.to(device=device, non_blocking=non_blocking)
        return counts, label, (), {"grids": list(grids)}
