"""MONAI dictionary transforms that turn a slide datalist item into a bag for attention MIL.

MONAI's ``RandWeightedCrop``/``GridPatch``/``MaskedPatchWSIDataset`` work on one image in memory or on
a mask saved beside each slide; none samples a fixed-size bag of tissue patches from a cached slide grid,
and MONAI's spatial transforms would treat the bag axis of an ``(N, 3, P, P)`` bag as the channel axis.
These transforms fill those gaps:

- :class:`TissueGridd` (deterministic, cached by the dataset): the item's slide -> a
  :class:`~medbundle.pathology.reader.SlideGrid` (tissue detection, patch grid at the requested microns per
  pixel, coordinate cache on disk). A slide that cannot be read, or has no tissue, raises an error naming
  the file, which :class:`~medbundle.data.DiskCacheDataset` (training) and
  :class:`~medbundle.data.SafeDataset` (inference) report and skip.
- :class:`PatchTumourLabelsd` (deterministic, cached with the grid): per-patch tumour labels of a slide
  from its lesion annotation (Camelyon16 ships outlines for its training tumour slides), for attention
  supervision.
- :class:`RandBagd` (training): draws ``bag_size`` tissue patches and reads them: uint8 ``(N, 3, P, P)``;
  with patch labels, it can make sure a share of the bag is tumour patches.
- :class:`BagTargetd` (training): folds the bag's patch labels into the target, ``[slide label, patch
  labels...]``, for :class:`~medbundle.pathology.losses.AttentionSupervisedLoss`.
- :class:`RandDihedralBagd` (training, on tensors, any device): an independent random flip/90-degree
  rotation per patch.
- :class:`BagFeaturesd` (feature mode, deterministic): embeds every tissue patch once with a frozen
  backbone and caches the ``(N, D)`` features on disk; :class:`RandFeatureBagd` then draws ``bag_size``
  feature rows per step.
- :class:`SlideGridImaged` (inference behind a server): puts the grid into ``image`` as a tensor of patch
  coordinates carrying the grid in its metadata, for callers (MONAI Label) that hand an inferer only
  ``data["image"]`` as a tensor; :class:`~medbundle.pathology.inference.SlideMILInferer` reads the grid back.
- :class:`OrdinalProbabilitiesd` (post-processing of graded models): ``K - 1`` ordinal logits -> ``K``
  class probabilities.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform

from medbundle.pathology.reader import SlideGrid, build_slide_grid, read_patches
from medbundle.pathology.tissue import TissueParams

__all__ = [
    "SLIDE_GRID_META_KEY",
    "BagFeaturesd",
    "BagTargetd",
    "OrdinalProbabilitiesd",
    "PatchTumourLabelsd",
    "RandBagd",
    "RandDihedralBagd",
    "RandFeatureBagd",
    "SlideCache",
    "SlideGridImaged",
    "TissueGridd",
    "embed_grid",
]

logger = logging.getLogger("medbundle.transforms")


class SlideCache:
    """Keeps up to ``max_open`` slides open (least recently used closed first), per backend."""

    def __init__(self, backend: str = "openslide", max_open: int = 8) -> None:
        self.backend = backend
        self.max_open = int(max_open)
        self._readers: dict[str, Any] = {}  # one per kind of file: "slide", and "dicom" (its own reader for tifffile)
        self._open: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def get(self, path: str):
        from medbundle.pathology.reader import SlideReadError, slide_file, slide_reader

        entry = self._open.get(path)
        if entry is None:
            file = slide_file(path, self.backend)
            kind = "dicom" if file.name.lower().endswith((".dcm", ".dicom")) else "slide"
            if kind not in self._readers:
                self._readers[kind] = slide_reader(file, self.backend)
            reader = self._readers[kind]
            try:
                wsi = reader.read(str(file))
                reader.get_size(wsi, 0)
            except Exception as e:  # noqa: BLE001
                raise SlideReadError(f"{path}: cannot be read with {self.backend} ({type(e).__name__}: {e})") from e
            entry = self._open[path] = (reader, wsi)
            while len(self._open) > self.max_open:
                _, (_, old) = self._open.popitem(last=False)
                close = getattr(old, "close", None)
                if callable(close):
                    close()
        self._open.move_to_end(path)
        return entry

    def close(self) -> None:
        while self._open:
            _, (_, wsi) = self._open.popitem()
            close = getattr(wsi, "close", None)
            if callable(close):
                close()

    def __getstate__(self):  # open slide handles do not pickle (DataLoader workers, deepcopy)
        return {"backend": self.backend, "max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(**state)

    def __deepcopy__(self, memo):
        return SlideCache(self.backend, self.max_open)


class TissueGridd(MapTransform):
    """Slide path -> :class:`~medbundle.pathology.reader.SlideGrid` under ``grid_key``.

    Args:
        keys: the key holding the slide path (``"image"``).
        grid_key: where the grid goes.
        backend: ``"openslide"`` or ``"tifffile"``.
        patch_size, mpp, power, mask_mpp, tissue, min_tissue_fraction, cache_dir: see
        :func:`medbundle.pathology.reader.build_slide_grid` (``power`` takes precedence over ``mpp``;
        ``tissue`` is a :class:`~medbundle.pathology.tissue.TissueParams` or a mapping of its fields).
        min_patches: slides with fewer tissue patches raise :class:`~medbundle.pathology.reader.NoTissueError`.
        keep_thumbnail: keep the thumbnail and tissue mask in the grid; False (training) leaves them in the coordinate
            cache file only (:meth:`~medbundle.pathology.reader.SlideGrid.images` reloads them), so a dataset caching
            hundreds of grids does not hold hundreds of thumbnails.

    Raises:
        SlideReadError: unreadable slide or missing resolution metadata (message names the file).
        NoTissueError: fewer than ``min_patches`` tissue patches (message names the file and settings).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        grid_key: str = "grid",
        backend: str = "openslide",
        patch_size: int = 224,
        mpp: float | None = 0.5,
        power: float | None = None,
        mask_mpp: float = 8.0,
        tissue: TissueParams | Mapping[str, Any] | None = None,
        min_tissue_fraction: float = 0.5,
        cache_dir: str | os.PathLike | None = None,
        min_patches: int = 1,
        keep_thumbnail: bool = True,
    ) -> None:
        super().__init__(keys)
        self.grid_key = grid_key
        self.backend = backend
        self.min_patches = int(min_patches)
        self.keep_thumbnail = bool(keep_thumbnail)
        self.kwargs = dict(patch_size=int(patch_size), mpp=mpp, power=power, mask_mpp=float(mask_mpp),
                           tissue=TissueParams.of(tissue), min_tissue_fraction=float(min_tissue_fraction),
                           cache_dir=cache_dir)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medbundle.pathology.reader import NoTissueError

        d = dict(data)
        key = self.first_key(d)
        # an empty slide raises NoTissueError from build_slide_grid (without its own warning: whoever catches
        # the error reports it once)
        grid = build_slide_grid(d[key], backend=self.backend, allow_empty=self.min_patches < 1, **self.kwargs)
        if len(grid) < self.min_patches:
            raise NoTissueError(grid.message or f"{d[key]}: only {len(grid)} tissue patches (< {self.min_patches})")
        if not self.keep_thumbnail:
            grid.drop_images()
        d[self.grid_key] = grid
        d.setdefault("filename", str(d[key]))
        return d


SLIDE_GRID_META_KEY = "slide_grid"


class SlideGridImaged(MapTransform):
    """Replace the slide path in ``keys`` with the slide's patch grid as a tensor, for tensor-only callers.

    MONAI Label's infer task converts ``data["image"]`` to a tensor and calls ``inferer(image[None],
    network)``: a whole slide cannot travel that way as pixels, and a path cannot travel at all. This
    transform (after :class:`TissueGridd`) sets ``keys`` to a :class:`~monai.data.MetaTensor` of the
    grid's level-0 ``(y, x)`` patch corners, shape ``(N, 2)`` int64, whose metadata holds the
    :class:`~medbundle.pathology.reader.SlideGrid` under ``"slide_grid"`` and the slide path under
    ``"filename_or_obj"``. :class:`~medbundle.pathology.inference.SlideMILInferer` called without ``grids``
    takes the grid from there and reads the pixels in chunks, as in the bundle's own evaluator.
    """

    def __init__(self, keys: KeysCollection = "image", grid_key: str = "grid") -> None:
        super().__init__(keys)
        self.grid_key = grid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        d = dict(data)
        grid = d[self.grid_key]
        for key in self.key_iterator(d):
            d[key] = MetaTensor(torch.as_tensor(np.asarray(grid.coords, dtype=np.int64).reshape(-1, 2)),
                                meta={SLIDE_GRID_META_KEY: grid, "filename_or_obj": grid.path})
        return d


def _sample(rng: np.random.RandomState, n: int, k: int) -> np.ndarray:
    """``k`` indices of ``n``: without replacement when possible, else all of them plus random repeats."""
    if n >= k:
        return np.sort(rng.choice(n, size=k, replace=False))
    return np.sort(np.concatenate([np.arange(n), rng.randint(0, n, size=k - n)]))


def _sample_with_positives(rng: np.random.RandomState, labels: np.ndarray | None, k: int,
                           positive_fraction: float) -> np.ndarray:
    """``k`` indices of ``len(labels)``: up to ``ceil(positive_fraction * k)`` of the positive patches
    (``labels == 1``, drawn without replacement), the rest drawn from all patches as :func:`_sample` does."""
    n = len(labels) if labels is not None else 0
    pos = np.flatnonzero(np.asarray(labels) == 1) if labels is not None and positive_fraction > 0 else np.empty(0, int)
    if pos.size == 0 or n <= k:
        return _sample(rng, n, k)
    n_pos = min(pos.size, int(np.ceil(positive_fraction * k)))
    chosen = rng.choice(pos, size=n_pos, replace=False)
    rest = np.setdiff1d(np.arange(n), chosen, assume_unique=True)
    others = rng.choice(rest, size=k - n_pos, replace=False)
    return np.sort(np.concatenate([chosen, others]))


class PatchTumourLabelsd(MapTransform):
    """Per-patch tumour labels of a slide from its lesion annotation, for attention supervision.

    Writes int8 ``(N,)`` to ``out_key``, one per grid patch: 1 where the patch centre lies inside a tumour
    outline (the rule of the evaluation's attention localisation), 0 where no part of the patch does, and
    -1 (ignored by :class:`~medbundle.pathology.losses.AttentionSupervisedLoss`) where only part of it does
    (``ignore_border``: a patch cut by the outline shows tumour without counting as tumour). Slides with
    label 0 get all 0; tumour slides without an annotation get all -1 (unknown).

    Args:
        grid_key: the item's :class:`~medbundle.pathology.reader.SlideGrid`.
        annotation_key: the item's ASAP XML annotation path (Camelyon16 ``lesion_annotations``).
        label_key: the slide label (0 = normal).
        out_key: where the labels go.
        ignore_border: mark patches that the outline cuts (a corner inside, the centre outside) -1.
    """

    def __init__(self, grid_key: str = "grid", annotation_key: str = "annotation", label_key: str = "label",
                 out_key: str = "patch_labels", ignore_border: bool = True) -> None:
        MapTransform.__init__(self, [grid_key])
        self.grid_key = grid_key
        self.annotation_key = annotation_key
        self.label_key = label_key
        self.out_key = out_key
        self.ignore_border = bool(ignore_border)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medbundle.pathology.adapters import points_in_annotations, read_asap_xml

        d = dict(data)
        grid: SlideGrid = d[self.grid_key]
        n = len(grid)
        ann = d.get(self.annotation_key)
        label = d.get(self.label_key)
        if not ann:
            positive = label is not None and int(np.asarray(label).reshape(-1)[0]) > 0
            d[self.out_key] = np.full(n, -1 if positive else 0, np.int8)
            return d
        polys = read_asap_xml(ann)
        centres = grid.centres_xy()
        out = points_in_annotations(centres, polys).astype(np.int8)
        if self.ignore_border and n:
            half = grid.footprint / 2.0
            for dx, dy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                corner = points_in_annotations(centres + np.array([dx * half, dy * half]), polys)
                out[(out == 0) & corner] = -1
        d[self.out_key] = out
        return d


class RandBagd(Randomizable, MapTransform):
    """Draw ``bag_size`` tissue patches of the item's grid and read them.

    Writes uint8 ``(bag_size, 3, P, P)`` to ``out_key`` and the drawn grid indices to
    ``"patch_indices"``; the grid is removed from the item (``drop_grid``) so the default collation works.
    A slide with fewer tissue patches than ``bag_size`` gives every patch once plus random repeats.

    When the item has per-patch labels (``labels_key``, from :class:`PatchTumourLabelsd`), the drawn
    patches' labels replace them, and ``positive_fraction`` > 0 puts up to ``ceil(positive_fraction *
    bag_size)`` tumour patches into every bag of a tumour slide: a random bag of a slide whose tumour covers
    a fraction of a percent of the tissue would otherwise hold no tumour at all on most steps, and its
    "tumour" label would be noise.
    """

    def __init__(self, grid_key: str = "grid", out_key: str = "image", bag_size: int = 64,
                 backend: str | None = None, drop_grid: bool = True, max_open: int = 8,
                 labels_key: str = "patch_labels", positive_fraction: float = 0.0) -> None:
        MapTransform.__init__(self, [grid_key])
        self.grid_key = grid_key
        self.out_key = out_key
        self.bag_size = int(bag_size)
        self.labels_key = labels_key
        self.positive_fraction = float(positive_fraction)
        self.backend = backend
        self.drop_grid = drop_grid
        self._slides: dict[str, SlideCache] = {}
        self.max_open = max_open

    def randomize(self, data: Any = None) -> None:
        pass

    def _cache(self, backend: str) -> SlideCache:
        if backend not in self._slides:
            self._slides[backend] = SlideCache(backend, self.max_open)
        return self._slides[backend]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: SlideGrid = d[self.grid_key]
        labels = d.get(self.labels_key)
        if labels is not None:
            labels = np.asarray(labels)
            idx = _sample_with_positives(self.R, labels, self.bag_size, self.positive_fraction)
            d[self.labels_key] = labels[idx]
        else:
            idx = _sample(self.R, len(grid), self.bag_size)
        reader, wsi = self._cache(self.backend or grid.backend).get(grid.path)
        d[self.out_key] = read_patches(reader, wsi, grid, idx)
        d["patch_indices"] = idx
        if self.drop_grid:
            d.pop(self.grid_key)
        return d


class RandDihedralBagd(RandomizableTransform, MapTransform):
    """Random flips and 90-degree rotations, drawn independently for every patch of a bag.

    Works on tensors ``(N, C, H, W)`` (or ``(B, N, C, H, W)``) on any device, square patches. Each patch
    gets, with probability ``prob``, one of the 7 non-identity elements of the dihedral group D4.
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            shape = x.shape
            x = x.reshape(-1, *shape[-3:])
            if shape[-1] != shape[-2]:
                raise ValueError(f"RandDihedralBagd needs square patches, got {tuple(shape[-2:])}")
            n = x.shape[0]
            apply = self.R.random_sample(n) < self.prob
            ops = np.where(apply, self.R.randint(1, 8, size=n), 0)
            out = x.clone()
            for op in range(1, 8):
                sel = np.flatnonzero(ops == op)
                if sel.size == 0:
                    continue
                ix = torch.as_tensor(sel, device=x.device)
                p = x.index_select(0, ix)
                if op >= 4:
                    p = torch.flip(p, dims=(-1,))
                p = torch.rot90(p, k=op % 4, dims=(-2, -1))
                out.index_copy_(0, ix, p)
            d[key] = out.reshape(shape)
        return d


def _backbone_digest(network: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in sorted(network.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def embed_grid(network: torch.nn.Module, grid: SlideGrid, reader, wsi, chunk_size: int = 256,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Backbone features ``(N, D)`` of every patch of ``grid``, read and embedded ``chunk_size`` at a time
    (pixels scaled to [0, 1], as in training)."""
    net = getattr(network, "module", network)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    out = None
    was = net.training
    net.eval()
    try:
        for start in range(0, len(grid), chunk_size):
            idx = np.arange(start, min(start + chunk_size, len(grid)))
            x = torch.from_numpy(read_patches(reader, wsi, grid, idx)).to(device).float().div_(255.0)
            f = net.embed(x).float()
            if out is None:
                out = torch.empty((len(grid), f.shape[1]), dtype=torch.float32, device=device)
            out[start:start + len(idx)] = f
    finally:
        net.train(was)
    if out is None:
        raise ValueError(f"{grid.path}: no patches to embed")
    return out


class BagFeaturesd(MapTransform):
    """Embed every tissue patch of the item's grid once with the (frozen) backbone; cache on disk.

    The features go to ``grid.features`` (CPU float32 ``(N, D)``). The disk cache
    (``<cache_dir>/<slide>_<grid key>_<backbone digest>.pt``) is keyed by the grid and a SHA-1 of the
    backbone weights, so a different backbone never reuses stale features.

    Args:
        grid_key: the item's :class:`~medbundle.pathology.reader.SlideGrid`.
        network: a :class:`~medbundle.pathology.networks.MILClassifier` (DDP-wrapped is fine); its backbone must be
            frozen (``freeze_backbone=True``), else cached features would go stale in training.
        backend: reader backend (default: the grid's).
        chunk_size: patches per forward pass.
        cache_dir: feature cache folder (``None``: memory only).
    """

    def __init__(self, grid_key: str = "grid", network: torch.nn.Module | None = None, backend: str | None = None,
                 chunk_size: int = 256, cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__([grid_key])
        if network is None:
            raise ValueError("BagFeaturesd needs the network whose backbone embeds the patches")
        net = getattr(network, "module", network)
        if not getattr(net, "freeze_backbone", False):
            raise ValueError("feature mode needs a frozen backbone (MILClassifier(freeze_backbone=True)); "
                             "a backbone trained end to end would make cached features stale")
        self.grid_key = grid_key
        self.network = network
        self.backend = backend
        self.chunk_size = int(chunk_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._digest: str | None = None
        self._slides: dict[str, SlideCache] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: SlideGrid = d[self.grid_key]
        if self._digest is None:
            self._digest = _backbone_digest(getattr(self.network, "module", self.network))
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{Path(grid.path).stem}_{grid.key[:12]}_{self._digest[:12]}.pt"
            if path.is_file():
                feats = torch.load(path, map_location="cpu", weights_only=True)
                if feats.shape[0] == len(grid):
                    grid.features = feats
                    return d
        backend = self.backend or grid.backend
        cache = self._slides.setdefault(backend, SlideCache(backend, 4))
        reader, wsi = cache.get(grid.path)
        feats = embed_grid(self.network, grid, reader, wsi, self.chunk_size).cpu()
        grid.features = feats
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(feats, tmp)
            os.replace(tmp, path)
        return d


class RandFeatureBagd(Randomizable, MapTransform):
    """Draw ``bag_size`` rows of the cached features (``grid.features``) into ``out_key``; drop the grid."""

    def __init__(self, grid_key: str = "grid", out_key: str = "image", bag_size: int = 64, drop_grid: bool = True):
        MapTransform.__init__(self, [grid_key])
        self.grid_key = grid_key
        self.out_key = out_key
        self.bag_size = int(bag_size)
        self.drop_grid = drop_grid

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: SlideGrid = d[self.grid_key]
        if grid.features is None:
            raise ValueError(f"{grid.path}: no cached features; put BagFeaturesd before RandFeatureBagd")
        idx = _sample(self.R, len(grid), self.bag_size)
        d[self.out_key] = grid.features[torch.as_tensor(idx)]
        d["patch_indices"] = idx
        if self.drop_grid:
            d.pop(self.grid_key)
        return d


class BagTargetd(MapTransform):
    """Fold a bag's patch labels into its target: ``label_key`` becomes float ``(1 + N,)``, ``[slide label,
    patch labels...]`` (-1: unknown), what :class:`~medbundle.pathology.losses.AttentionSupervisedLoss` splits
    again. Items without patch labels keep their label.
    """

    def __init__(self, label_key: str = "label", labels_key: str = "patch_labels") -> None:
        MapTransform.__init__(self, [label_key])
        self.label_key = label_key
        self.labels_key = labels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        patch = d.pop(self.labels_key, None)
        if patch is None:
            return d
        slide = torch.as_tensor(np.asarray(d[self.label_key])).float().reshape(-1)[:1]
        d[self.label_key] = torch.cat([slide, torch.as_tensor(np.asarray(patch)).float().reshape(-1)])
        return d


class OrdinalProbabilitiesd(MapTransform):
    """``K - 1`` ordinal logits -> ``K`` class probabilities
    (:func:`medbundle.pathology.losses.ordinal_class_probabilities`), on a decollated item or a batch."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medbundle.pathology.losses import ordinal_class_probabilities

        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            d[key] = ordinal_class_probabilities(x.reshape(1, -1) if x.ndim == 1 else x).reshape(
                *x.shape[:-1], x.shape[-1] + 1)
        return d
