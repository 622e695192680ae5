"""Whole-slide images to bags of patches: readers, resolution, tissue grid, coordinate cache, patch reads.

Slides are read through MONAI's WSI readers (:mod:`monai.data.wsi_reader`):

- ``backend="openslide"``: MONAI's ``OpenSlideWSIReader`` as is (needs ``openslide-python`` and
  ``openslide-bin``; reads SVS, generic pyramidal TIFF, NDPI, MRXS, ...).
- ``backend="tifffile"``: :class:`TiledTiffFileWSIReader`, MONAI's ``TiffFileWSIReader`` with two
  things it lacks: a region read decodes only the TIFF tiles the region touches (MONAI's decodes the
  whole pyramid level for every patch, ~4.8 GB for one read at level 0 of a 40,000 x 40,000 slide), and
  the pyramid levels are the tiled pages only (an SVS file's thumbnail, label and macro images are not
  levels). Microns per pixel and objective power come from the TIFF resolution tags or, for Aperio
  SVS, the ``MPP =`` and ``AppMag =`` fields of the image description.

What MONAI lacks and this module adds for multiple-instance learning:

- :func:`slide_geometry` / :func:`choose_read_level`: a patch resolution given in microns per pixel
  (or objective power) is turned into a pyramid level and a read size from the slide's own metadata; a
  resolution between levels is read from the next finer level and resized.
- :func:`build_slide_grid`: tissue detection (:mod:`medbundle.pathology.tissue`) on a low-resolution
  level, then a regular grid of non-overlapping patches kept where the tissue fraction of the patch
  footprint reaches ``min_tissue_fraction``; the result (:class:`SlideGrid`: coordinates, tissue
  fractions, thumbnail and mask) is cached per slide on disk, keyed by the file's path, size and
  modification time and every grid parameter.
- :func:`read_patches`: reads a set of grid patches as a uint8 ``(n, 3, P, P)`` array.

A slide with no tissue gives an empty grid whose ``message`` says why; :func:`build_slide_grid` raises
:class:`NoTissueError` with that message when ``allow_empty`` is false (the bag transforms do), so
batch work reports the slide and carries on with the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.wsi_reader import BaseWSIReader, TiffFileWSIReader

from medbundle.io.files import atomic_write
from medbundle.pathology.dicom_wsi import dicom_frames, dicom_slide_levels, is_dicom_slide, resolve_dicom_slide
from medbundle.pathology.tissue import TissueParams, tissue_mask

__all__ = [
    "WSI_SUFFIXES",
    "DicomWSIReader",
    "NoTissueError",
    "SlideGeometry",
    "SlideGrid",
    "SlideReadError",
    "TiledTiffFileWSIReader",
    "build_slide_grid",
    "choose_read_level",
    "open_slide",
    "read_patches",
    "read_region",
    "read_thumbnail",
    "slide_file",
    "slide_geometry",
    "slide_reader",
    "wsi_reader",
]

logger = logging.getLogger("medbundle.data")

#: File endings treated as whole-slide images when inference is pointed at a folder (a DICOM slide is a folder of
#: ``.dcm`` files: ``inference_items(..., dicom_series=True)`` makes it one item).
WSI_SUFFIXES: tuple[str, ...] = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")

GRID_CACHE_VERSION = 2


class SlideReadError(RuntimeError):
    """A slide could not be opened or read; the message names the file and the reason."""


class NoTissueError(ValueError):
    """Tissue detection found no tissue patch on a slide; the message names the file and the settings."""


# ----------------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------------
_APERIO_FIELD = re.compile(r"\|\s*([A-Za-z]+)\s*=\s*([0-9.eE+-]+)")


def _aperio_fields(description: str) -> dict[str, float]:
    out = {}
    if description.startswith("Aperio"):
        for k, v in _APERIO_FIELD.findall(description):
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


class _TileCache:
    """A small LRU cache of decoded TIFF segments, shared by the reads of one reader."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._d: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: tuple) -> np.ndarray | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: tuple, value: np.ndarray) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)


def _assemble_region(segment, tile_hw: tuple[int, int], level_hw: tuple[int, int], y: int, x: int, h: int, w: int,
                     channels: int, dtype) -> np.ndarray:
    """``(h, w, channels)`` of a level from its tiles: ``segment(ty, tx)`` decodes tile (row ``ty``, column ``tx``)
    of side ``tile_hw`` (edge tiles may be smaller); what lies outside the ``level_hw`` level stays 0."""
    th, tw = tile_hw
    ih, iw = level_hw
    out = np.zeros((h, w, channels), dtype=dtype)
    y0, y1 = max(y, 0), min(y + h, ih)
    x0, x1 = max(x, 0), min(x + w, iw)
    if y1 <= y0 or x1 <= x0:
        return out
    for ty in range(y0 // th, (y1 - 1) // th + 1):
        for tx in range(x0 // tw, (x1 - 1) // tw + 1):
            seg = segment(ty, tx)
            sy0, sx0 = ty * th, tx * tw
            ya, yb = max(y0, sy0), min(y1, sy0 + seg.shape[0], sy0 + th)
            xa, xb = max(x0, sx0), min(x1, sx0 + seg.shape[1], sx0 + tw)
            if yb > ya and xb > xa:
                out[ya - y:yb - y, xa - x:xb - x] = seg[ya - sy0:yb - sy0, xa - sx0:xb - sx0, :channels]
    return out


def _as_mode(patch: np.ndarray, mode: str, dtype, channel_dim: int) -> np.ndarray:
    """A ``(h, w, c)`` region as MONAI's readers return it: grey to RGB, ``mode`` RGB or RGBA, ``dtype``, channels
    at ``channel_dim``."""
    if patch.shape[-1] == 1:
        patch = np.repeat(patch, 3, axis=-1)
    if mode == "RGB":
        patch = patch[..., :3]
    elif mode == "RGBA" and patch.shape[-1] == 3:
        patch = np.concatenate([patch, np.full(patch.shape[:2] + (1,), 255, patch.dtype)], -1)
    patch = patch.astype(dtype, copy=False)
    return np.moveaxis(patch, -1, channel_dim)


class TiledTiffFileWSIReader(TiffFileWSIReader):
    """MONAI's ``TiffFileWSIReader`` reading regions tile by tile.

    Differences from MONAI's class (everything else, including ``get_data`` and the metadata, is
    MONAI's):

    - ``_get_patch`` decodes only the tiles (or strips) the region overlaps, through a small LRU
      cache of decoded tiles (``tile_cache`` tiles), instead of the whole level;
    - pyramid levels are page 0 plus the following *tiled* pages that are smaller than the previous
      level with the same aspect ratio (an SVS thumbnail, label and macro image are skipped);
    - the downsample of a level is the mean of the width and height ratios (as OpenSlide computes
      it), microns per pixel come from page 0 (resolution tags, or Aperio's ``MPP``) times that
      downsample, and the objective power from Aperio's ``AppMag`` divided by it;
    - regions that extend past the level are filled with 0 (as OpenSlide's transparent pixels read
      as RGB).
    """

    def __init__(self, tile_cache: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tiles = _TileCache(tile_cache)
        self._lock = threading.Lock()

    # pyramid structure ------------------------------------------------------------------------
    @staticmethod
    def _level_pages(wsi) -> list[int]:
        cached = getattr(wsi, "_medbundle_levels", None)
        if cached is not None:
            return cached
        pages = wsi.pages
        first = pages[0]
        levels = [0]
        h0, w0 = first.imagelength, first.imagewidth
        prev = (h0, w0)
        for i in range(1, len(pages)):
            p = pages[i]
            if not p.is_tiled or p.imagelength >= prev[0] or p.imagewidth >= prev[1]:
                continue
            if abs(p.imagewidth / p.imagelength - w0 / h0) > 0.02 * (w0 / h0):
                continue
            levels.append(i)
            prev = (p.imagelength, p.imagewidth)
        wsi._medbundle_levels = levels
        return levels

    def _page(self, wsi, level: int):
        levels = self._level_pages(wsi)
        if not 0 <= level < len(levels):
            raise ValueError(f"level {level} does not exist; {self.get_file_path(wsi)} has {len(levels)} levels")
        return wsi.pages[levels[level]]

    def get_level_count(self, wsi) -> int:  # type: ignore[override]
        return len(self._level_pages(wsi))

    def get_size(self, wsi, level: int) -> tuple[int, int]:
        p = self._page(wsi, level)
        return (int(p.imagelength), int(p.imagewidth))

    def get_downsample_ratio(self, wsi, level: int) -> float:
        h0, w0 = self.get_size(wsi, 0)
        h, w = self.get_size(wsi, level)
        return float((h0 / h + w0 / w) / 2.0)

    def _mpp0(self, wsi) -> tuple[float, float] | None:
        page = wsi.pages[0]
        tags = page.tags
        if "XResolution" in tags and "YResolution" in tags:
            xres, yres = tags["XResolution"].value, tags["YResolution"].value
            unit = tags.get("ResolutionUnit")
            unit_name = str(unit.value.name).lower() if unit is not None and hasattr(unit.value, "name") else ""
            per_um = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}.get(unit_name)
            if per_um and xres[0] and yres[0] and xres[1]:
                x_ppu, y_ppu = xres[0] / xres[1], yres[0] / yres[1]
                if x_ppu > 1 and y_ppu > 1:  # 72 dpi defaults are not a slide resolution
                    return (per_um / y_ppu, per_um / x_ppu)
        fields = _aperio_fields(str(page.description or ""))
        if fields.get("MPP"):
            return (fields["MPP"], fields["MPP"])
        return None

    def get_mpp(self, wsi, level: int) -> tuple[float, float]:
        mpp0 = self._mpp0(wsi)
        if mpp0 is None:
            raise ValueError(f"{self.get_file_path(wsi)}: no microns per pixel in the TIFF metadata")
        d = self.get_downsample_ratio(wsi, level)
        return (mpp0[0] * d, mpp0[1] * d)

    def get_power(self, wsi, level: int) -> float:
        fields = _aperio_fields(str(wsi.pages[0].description or ""))
        if not fields.get("AppMag"):
            raise ValueError(f"{self.get_file_path(wsi)}: no objective power in the TIFF metadata")
        return float(fields["AppMag"]) / self.get_downsample_ratio(wsi, level)

    # region reads ----------------------------------------------------------------------------
    def _segment(self, wsi, page, index: int) -> np.ndarray:
        key = (self.get_file_path(wsi), page.index, index)
        seg = self._tiles.get(key)
        if seg is not None:
            return seg
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        with self._lock:
            fh = wsi.filehandle
            fh.seek(offset)
            data = fh.read(count)
        decoded, _, _ = page.decode(data, index, jpegtables=getattr(page, "jpegtables", None))
        if decoded is None:
            raise SlideReadError(f"{self.get_file_path(wsi)}: empty TIFF segment {index} on page {page.index}")
        seg = np.asarray(decoded)
        seg = seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg
        if seg.ndim == 2:
            seg = seg[..., None]
        self._tiles.put(key, seg)
        return seg

    def _read_level_region(self, wsi, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        page = self._page(wsi, level)
        if page.planarconfig != 1 and page.samplesperpixel > 1:
            raise SlideReadError(f"{self.get_file_path(wsi)}: planar TIFF data is not supported")
        ih, iw = int(page.imagelength), int(page.imagewidth)
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
        else:
            th, tw = int(page.rowsperstrip or ih), iw
        ntx = -(-iw // tw)
        return _assemble_region(lambda ty, tx: self._segment(wsi, page, ty * ntx + tx), (th, tw), (ih, iw), y, x, h, w,
                                int(page.samplesperpixel), page.dtype)

    def _get_patch(self, wsi, location: tuple[int, int], size: tuple[int, int], level: int, dtype,
                   mode: str) -> np.ndarray:
        ds = self.get_downsample_ratio(wsi, level)
        y, x = (int(np.floor(location[0] / ds)), int(np.floor(location[1] / ds)))
        patch = self._read_level_region(wsi, level, y, x, int(size[0]), int(size[1]))
        return _as_mode(patch, mode, dtype, self.channel_dim)


class _DicomSlide:
    """An open DICOM slide for :class:`DicomWSIReader`: its levels (largest first), where their frames lie, and one
    file handle per level (opened on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.levels = dicom_slide_levels(path)
        self.frames = [dicom_frames(lv.path) for lv in self.levels]
        self._files: dict[int, Any] = {}
        self._lock = threading.Lock()

    def read(self, level: int, index: int) -> bytes:
        with self._lock:
            fh = self._files.get(level)
            if fh is None:
                fh = self._files[level] = open(self.frames[level].path, "rb")  # noqa: SIM115 - closed in close()
            data = []
            for offset, length in self.frames[level].fragments[index]:
                fh.seek(offset)
                data.append(fh.read(length))
        return b"".join(data)

    def close(self) -> None:
        with self._lock:
            for fh in self._files.values():
                fh.close()
            self._files.clear()


class DicomWSIReader(BaseWSIReader):
    """A MONAI WSI reader for DICOM whole-slide images (VL Whole Slide Microscopy series), in Python: pydicom for
    the headers, the frames read straight from the files (:func:`~medbundle.pathology.dicom_wsi.dicom_frames`) and
    decoded by imagecodecs (JPEG baseline as YBR_FULL_422 or RGB, JPEG 2000) or taken as they are (uncompressed).

    What the ``tifffile`` backend reads DICOM slides with, so they need no OpenSlide. ``read`` takes a slide
    folder or any ``.dcm`` of the series; levels, downsamples (mean of the width and height ratios, as OpenSlide),
    microns per pixel (level-0 Pixel Spacing times the downsample) and regions (only the frames a region touches,
    through an LRU cache of ``tile_cache`` decoded frames; outside the level 0) follow
    :class:`TiledTiffFileWSIReader`.
    """

    supported_suffixes = ["dcm", "dicom"]
    backend = "pydicom"
    _get_metadata = TiffFileWSIReader._get_metadata

    def __init__(self, tile_cache: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tiles = _TileCache(tile_cache)

    def read(self, data, **kwargs: Any):
        slides = [_DicomSlide(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data)]
        return slides[0] if len(slides) == 1 else slides

    def get_level_count(self, wsi) -> int:
        return len(wsi.levels)

    def get_size(self, wsi, level: int) -> tuple[int, int]:
        return tuple(int(v) for v in wsi.levels[level].size)

    def get_downsample_ratio(self, wsi, level: int) -> float:
        (h0, w0), (h, w) = wsi.levels[0].size, wsi.levels[level].size
        return float((h0 / h + w0 / w) / 2.0)

    def get_file_path(self, wsi) -> str:
        return wsi.path

    def get_mpp(self, wsi, level: int) -> tuple[float, float]:
        mpp0 = wsi.levels[0].mpp
        if mpp0 is None:
            raise ValueError(f"{wsi.path}: no Pixel Spacing in the shared functional groups")
        d = self.get_downsample_ratio(wsi, level)
        return (mpp0[0] * d, mpp0[1] * d)

    def get_power(self, wsi, level: int) -> float:
        power = wsi.levels[0].objective_power
        if power is None:
            raise ValueError(f"{wsi.path}: no ObjectiveLensPower in the optical path")
        return power / self.get_downsample_ratio(wsi, level)

    def _frame(self, wsi, level: int, ty: int, tx: int) -> np.ndarray:
        fr = wsi.frames[level]
        key = (fr.path, ty, tx)
        tile = self._tiles.get(key)
        if tile is not None:
            return tile
        data = wsi.read(level, ty * -(-fr.size[1] // fr.tile[1]) + tx)
        if not fr.encapsulated:
            tile = np.frombuffer(data, np.uint8).reshape(fr.tile[0], fr.tile[1], 3)
        else:
            try:
                import imagecodecs
            except ImportError as e:
                raise ImportError("compressed DICOM slides need imagecodecs for the tifffile backend; "
                                  "pip install 'medbundle[wsi]' or use the openslide backend") from e
            if fr.transfer_syntax.endswith(".4.50"):
                tile = imagecodecs.jpeg8_decode(data, colorspace="RGB" if fr.photometric == "RGB" else None,
                                                outcolorspace="RGB")
            else:
                tile = imagecodecs.jpeg2k_decode(data)
        self._tiles.put(key, tile)
        return tile

    def _get_patch(self, wsi, location: tuple[int, int], size: tuple[int, int], level: int, dtype,
                   mode: str) -> np.ndarray:
        ds = self.get_downsample_ratio(wsi, level)
        y, x = (int(np.floor(location[0] / ds)), int(np.floor(location[1] / ds)))
        fr = wsi.frames[level]
        patch = _assemble_region(lambda ty, tx: self._frame(wsi, level, ty, tx), fr.tile, fr.size, y, x,
                                 int(size[0]), int(size[1]), 3, np.uint8)
        return _as_mode(patch, mode, dtype, self.channel_dim)


def wsi_reader(backend: str = "openslide", **kwargs: Any):
    """A MONAI WSI reader for ``backend`` (``"openslide"`` or ``"tifffile"``), channel-first uint8 RGB.

    Raises:
        ImportError: the backend's package is not installed (the message says which to install).
    """
    backend = str(backend).lower()
    if backend == "openslide":
        try:
            import openslide  # noqa: F401
        except (ImportError, OSError) as e:
            raise ImportError(
                f"the openslide backend needs openslide-python and openslide-bin ({e}); "
                "pip install 'medbundle[wsi]' or choose backend 'tifffile'"
            ) from e
        from monai.data.wsi_reader import OpenSlideWSIReader

        return OpenSlideWSIReader(channel_dim=0, **kwargs)
    if backend == "tifffile":
        try:
            import tifffile  # noqa: F401
        except ImportError as e:
            raise ImportError("the tifffile backend needs tifffile; pip install 'medbundle[wsi]'") from e
        return TiledTiffFileWSIReader(channel_dim=0, **kwargs)
    raise ValueError(f"unknown WSI backend {backend!r}; use 'openslide' or 'tifffile'")


def slide_reader(file: str | os.PathLike, backend: str = "openslide"):
    """The MONAI reader ``backend`` opens ``file`` (from :func:`slide_file`) with: :func:`wsi_reader`, except a DICOM
    slide with the ``tifffile`` backend, which :class:`DicomWSIReader` reads."""
    if str(backend).lower() == "tifffile" and Path(file).name.lower().endswith((".dcm", ".dicom")):
        return DicomWSIReader(channel_dim=0)
    return wsi_reader(backend)


def slide_file(path: str | os.PathLike, backend: str = "openslide") -> Path:
    """The file ``backend`` opens for the slide at ``path``: ``path`` itself, or for a DICOM slide (a folder of
    VL Whole Slide Microscopy instances, or one ``.dcm`` of the series) its level-0 file, which OpenSlide opens
    with the other levels of the series in that folder (:mod:`medbundle.pathology.dicom_wsi`), and which the
    ``tifffile`` backend reads with :class:`DicomWSIReader` (see :func:`slide_reader`).

    Raises:
        SlideReadError: the slide is missing; DICOM files that are not a whole-slide image series OpenSlide reads
            (one line naming the file and what is wrong).
    """
    path = Path(path)
    if not path.exists():
        raise SlideReadError(f"{path}: slide file not found")
    if not is_dicom_slide(path):
        if path.is_dir():
            raise SlideReadError(f"{path}: a folder without DICOM files is not a slide")
        return path
    try:
        return resolve_dicom_slide(path)
    except ValueError as e:
        raise SlideReadError(str(e)) from e


@contextmanager
def open_slide(path: str | os.PathLike, backend: str = "openslide", reader=None):
    """Open a slide: ``with open_slide(path) as (reader, wsi): ...``; closes it afterwards.

    ``path`` is a slide file, or a DICOM slide (its folder or one of its ``.dcm`` files; see :func:`slide_file`).

    Raises:
        SlideReadError: the file is missing or the backend cannot read it (message names the file).
    """
    path = Path(path)
    file = slide_file(path, backend)
    reader = reader or slide_reader(file, backend)
    wsi = None
    try:
        wsi = reader.read(str(file))
        if reader.get_level_count(wsi) < 1 or min(reader.get_size(wsi, 0)) < 1:
            raise ValueError("no image in the file")
    except Exception as e:  # noqa: BLE001 - backend-specific exception types
        close = getattr(wsi, "close", None)
        if callable(close):
            close()
        raise SlideReadError(f"{path}: cannot be read as a whole-slide image with {backend} "
                             f"({type(e).__name__}: {e})") from e
    try:
        yield reader, wsi
    finally:
        close = getattr(wsi, "close", None)
        if callable(close):
            close()


# ----------------------------------------------------------------------------------------------------------
# geometry and resolution
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SlideGeometry:
    """Pyramid of one slide: per-level size ``(h, w)`` and downsample, level-0 mpp and objective power."""

    path: str
    sizes: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float | None
    power: float | None

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsamples[level]


def slide_geometry(reader, wsi) -> SlideGeometry:
    """Read the pyramid structure and resolution metadata of an open slide through the MONAI reader."""
    path = str(reader.get_file_path(wsi))
    n = reader.get_level_count(wsi)
    sizes = [tuple(int(v) for v in reader.get_size(wsi, i)) for i in range(n)]
    downs = [float(reader.get_downsample_ratio(wsi, i)) for i in range(n)]
    mpp = power = None
    try:
        my, mx = reader.get_mpp(wsi, 0)
        if my and mx and np.isfinite(my) and np.isfinite(mx) and my > 0 and mx > 0:
            mpp = float((my + mx) / 2)
    except Exception:  # noqa: BLE001 - "no mpp" is reported by each backend differently
        mpp = None
    try:
        p = float(reader.get_power(wsi, 0))
        power = p if np.isfinite(p) and p > 0 else None
    except Exception:  # noqa: BLE001
        power = None
    return SlideGeometry(path=path, sizes=sizes, downsamples=downs, mpp=mpp, power=power)


def target_downsample(geom: SlideGeometry, mpp: float | None = None, power: float | None = None) -> float:
    """Level-0 pixels per output pixel for a resolution given as ``mpp`` or objective ``power``.

    ``mpp`` needs the slide's microns per pixel. ``power`` uses the slide's objective power when it has
    one, else its microns per pixel with the usual convention ``mpp = 10 / power`` (40x = 0.25 um/px).
    """
    if (mpp is None) == (power is None):
        raise ValueError("give exactly one of mpp or power for the patch resolution")
    if mpp is not None:
        if mpp <= 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        if geom.mpp is None:
            raise SlideReadError(
                f"{geom.path}: no microns-per-pixel in the slide metadata, so a resolution in um/px cannot be "
                "read; give the resolution as objective power (patch_power) or fix the file's metadata"
            )
        return float(mpp) / geom.mpp
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    if geom.power is not None:
        return geom.power / float(power)
    if geom.mpp is not None:
        return (10.0 / float(power)) / geom.mpp
    raise SlideReadError(f"{geom.path}: neither microns-per-pixel nor objective power in the slide metadata")


def choose_read_level(geom: SlideGeometry, downsample: float, rtol: float = 0.05) -> tuple[int, float]:
    """The level to read for a level-0 ``downsample``, and the scale (level pixels per output pixel).

    The coarsest level whose downsample does not exceed ``downsample * (1 + rtol)``; a scale within
    ``rtol`` of 1 is taken as 1 (no resizing), as MONAI's readers accept a level within tolerance.
    """
    ok = [i for i, d in enumerate(geom.downsamples) if d <= downsample * (1 + rtol)]
    level = max(ok, key=lambda i: geom.downsamples[i]) if ok else 0
    scale = downsample / geom.downsamples[level]
    if abs(scale - 1.0) <= rtol:
        scale = 1.0
    return level, float(scale)


def read_region(reader, wsi, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB of a region given in *level* pixels, read through the MONAI reader."""
    ds = float(reader.get_downsample_ratio(wsi, level))
    loc = (int(round(y * ds)), int(round(x * ds)))
    patch, _ = reader.get_data(wsi, location=loc, size=(int(h), int(w)), level=int(level))
    return np.moveaxis(np.asarray(patch), 0, -1)


def read_thumbnail(reader, wsi, geom: SlideGeometry, downsample: float, max_pixels: int = 16_000_000,
                   strip: int = 1024) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide at about ``downsample`` level-0 pixels per pixel.

    Reads the coarsest level not coarser than ``downsample``; when even that level is large (a slide
    without a low-resolution level), it is read in strips of ``strip`` rows and block-averaged by the
    integer factor that brings it to ``downsample``, so memory stays bounded.

    Returns:
        ``(thumbnail (h, w, 3) uint8, level-0 pixels per thumbnail pixel)``.
    """
    level, scale = choose_read_level(geom, downsample, rtol=0.25)
    lh, lw = geom.sizes[level]
    f = max(1, int(np.floor(scale)))
    while (lh // f) * (lw // f) > max_pixels:
        f += 1
    if f == 1 and lh * lw <= max_pixels:
        return read_region(reader, wsi, level, 0, 0, lh, lw), geom.downsamples[level]
    oh, ow = lh // f, lw // f
    out = np.empty((oh, ow, 3), np.uint8)
    rows = max(f, (strip // f) * f)
    for y in range(0, oh * f, rows):
        h = min(rows, oh * f - y)
        block = read_region(reader, wsi, level, y, 0, h, ow * f).astype(np.float32)
        block = block.reshape(h // f, f, ow, f, 3).mean(axis=(1, 3))
        out[y // f: y // f + h // f] = np.clip(block + 0.5, 0, 255).astype(np.uint8)
    return out, geom.downsamples[level] * f


# ----------------------------------------------------------------------------------------------------------
# the patch grid
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SlideGrid:
    """The bag of one slide: tissue patches on a regular grid, with what is needed to read and show them.

    ``coords`` are level-0 pixel ``(y, x)`` of each patch's top-left corner (MONAI's ``location``
    order); a patch is read as ``read_size`` x ``read_size`` pixels at ``level`` and resized to
    ``patch_size`` when ``read_size != patch_size``.
    """

    path: str
    coords: np.ndarray
    tissue_fraction: np.ndarray
    level: int
    read_size: int
    patch_size: int
    level_downsample: float
    mpp: float | None
    slide_size: tuple[int, int]
    thumbnail: np.ndarray | None
    thumbnail_downsample: float
    mask: np.ndarray | None
    backend: str = "openslide"
    message: str = ""
    cache_file: str | None = None
    key: str = ""
    features: Any = None
    info: dict = field(default_factory=dict)

    # MONAI engines decollate their batch after each iteration; decollate_batch passes an object with
    # ``ndim == 0`` through as ``obj.item()``, so a grid rides in an engine batch unchanged.
    ndim = 0

    def item(self) -> SlideGrid:
        return self

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def drop_images(self) -> SlideGrid:
        """Forget the thumbnail and mask (they stay in the coordinate cache file), so datasets that keep many
        grids in memory do not hold a thumbnail per slide (tens of MB for a large slide)."""
        if self.cache_file and Path(self.cache_file).is_file():
            self.thumbnail = None
            self.mask = None
        return self

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """``(thumbnail, mask)``, from memory or reloaded from the coordinate cache file."""
        if self.thumbnail is not None and self.mask is not None:
            return self.thumbnail, self.mask
        if not self.cache_file or not Path(self.cache_file).is_file():
            raise FileNotFoundError(f"{self.path}: the grid's thumbnail was dropped and its cache file "
                                    f"{self.cache_file} is gone; rebuild the grid")
        with np.load(self.cache_file) as z:
            return z["thumbnail"], z["mask"]

    @property
    def footprint(self) -> float:
        """Side of a patch in level-0 pixels."""
        return float(self.read_size * self.level_downsample)

    def centres_xy(self) -> np.ndarray:
        """``(N, 2)`` level-0 ``(x, y)`` of the patch centres."""
        half = self.footprint / 2.0
        return np.stack([self.coords[:, 1] + half, self.coords[:, 0] + half], axis=1).astype(np.float64)

    def __repr__(self) -> str:  # short, for logs
        return (f"SlideGrid({Path(self.path).name}: {len(self)} patches of {self.patch_size} px, level {self.level}, "
                f"read {self.read_size} px, mpp {self.mpp})")


def _file_key(path: Path, params: dict, slide: Path | None = None) -> str:
    st = path.stat()
    blob = json.dumps({"path": str(path.resolve()), "slide": str((slide or path).resolve()), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns,
                       "params": params, "version": GRID_CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def _grid_fraction(mask: np.ndarray, mask_ds: float, ys0: np.ndarray, xs0: np.ndarray, side0: float) -> np.ndarray:
    """Tissue fraction of every cell (rows ``ys0`` x columns ``xs0``, level-0 top-left, side ``side0``)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1)

    def edges(starts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.round(starts / mask_ds).astype(np.int64), 0, limit)
        b = np.clip(np.round((starts + side0) / mask_ds).astype(np.int64), 0, limit)
        b = np.maximum(b, np.minimum(a + 1, limit))
        a = np.minimum(a, b - 1)
        return a, b

    ya, yb = edges(ys0, mask.shape[0])
    xa, xb = edges(xs0, mask.shape[1])
    tot = (integral[yb][:, xb] - integral[ya][:, xb] - integral[yb][:, xa] + integral[ya][:, xa]).astype(np.float64)
    area = (yb - ya)[:, None] * (xb - xa)[None, :]
    return (tot / np.maximum(area, 1)).astype(np.float32)


def build_slide_grid(
    path: str | os.PathLike,
    patch_size: int = 224,
    mpp: float | None = 0.5,
    power: float | None = None,
    backend: str = "openslide",
    mask_mpp: float = 8.0,
    tissue: TissueParams | Mapping[str, Any] | None = None,
    min_tissue_fraction: float = 0.5,
    mpp_rtol: float = 0.05,
    cache_dir: str | os.PathLike | None = None,
    allow_empty: bool = True,
    reader=None,
) -> SlideGrid:
    """Detect tissue on a low-resolution level and lay a grid of tissue patches at the requested resolution.

    Args:
        path: the slide file.
        patch_size: patch side in output pixels.
        mpp: patch resolution in microns per pixel (``None`` when ``power`` is given).
        power: patch resolution as objective power (e.g. 20 for "20x"), instead of ``mpp``.
        backend: ``"openslide"`` or ``"tifffile"``.
        mask_mpp: resolution of the view tissue is detected on (a low pyramid level near it is used).
        tissue: how tissue is detected (:class:`~medbundle.pathology.tissue.TissueParams`, or a mapping of its fields;
            None: the defaults).
        min_tissue_fraction: a grid cell is a patch when at least this fraction of it is tissue.
        mpp_rtol: a level within this relative tolerance of the requested resolution is read without resizing.
        cache_dir: folder of the coordinate cache (``None``: no cache).
        allow_empty: return an empty grid (``len(grid) == 0``, reason in ``grid.message``) for a slide without tissue;
            when False, raise :class:`NoTissueError` instead.

    Raises:
        SlideReadError: the slide cannot be opened, or lacks the resolution metadata asked for.
        NoTissueError: no tissue patch and ``allow_empty`` is False.
    """
    path = Path(path)
    if mpp is not None and power is not None:
        mpp = None if power else mpp
    tissue = TissueParams.of(tissue)
    params = {"patch_size": int(patch_size), "mpp": mpp, "power": power, "mask_mpp": mask_mpp,
              "min_tissue_fraction": min_tissue_fraction, "mpp_rtol": mpp_rtol, **asdict(tissue)}
    key = _file_key(slide_file(path, backend), params, slide=path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)
    cache_file = Path(cache_dir) / f"{stem}_{key[:16]}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        cached = None
        try:
            cached = _load_grid(cache_file, backend)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt
            logger.warning("coordinate cache %s unreadable (%s); rebuilding", cache_file, e)
        if cached is not None and cached.path == str(path.resolve()):
            return _check_empty(cached, allow_empty)

    with open_slide(path, backend, reader=reader) as (rd, wsi):
        geom = slide_geometry(rd, wsi)
        td = target_downsample(geom, mpp=mpp, power=power)
        level, scale = choose_read_level(geom, td, rtol=mpp_rtol)
        read_size = max(1, int(round(patch_size * scale)))
        ds = geom.downsamples[level]
        out_mpp = None if geom.mpp is None else geom.mpp * ds * read_size / patch_size
        mask_td = (mask_mpp / geom.mpp) if geom.mpp else max(1.0, td * mask_mpp / (mpp or 10.0 / power))
        try:
            thumb, thumb_ds = read_thumbnail(rd, wsi, geom, mask_td)
        except Exception as e:  # noqa: BLE001
            raise SlideReadError(f"{path}: cannot read the low-resolution level ({type(e).__name__}: {e})") from e
    mpp0 = geom.mpp if geom.mpp else (10.0 / float(power)) / td  # power only: the 10/power convention
    pixel_um = mpp0 * thumb_ds
    tm = tissue_mask(thumb, pixel_um, tissue)
    lh, lw = geom.sizes[level]
    ny, nx = lh // read_size, lw // read_size
    ys_level = np.arange(ny, dtype=np.int64) * read_size
    xs_level = np.arange(nx, dtype=np.int64) * read_size
    ys0 = np.round(ys_level * ds).astype(np.int64)
    xs0 = np.round(xs_level * ds).astype(np.int64)
    frac = _grid_fraction(tm.mask, thumb_ds, ys0, xs0, read_size * ds) if ny and nx else np.zeros((ny, nx), np.float32)
    keep = frac >= float(min_tissue_fraction)
    iy, ix = np.nonzero(keep)
    coords = np.stack([ys0[iy], xs0[ix]], axis=1).astype(np.int64) if iy.size else np.zeros((0, 2), np.int64)
    message = ""
    if coords.shape[0] == 0:
        message = (f"{path}: no tissue found: tissue detection ({tissue.method}, saturation threshold "
                   f"{tm.threshold:.3f}, "
                   f"slide saturation {tm.saturation_range[0]:.3f}-{tm.saturation_range[1]:.3f}) on a "
                   f"{thumb.shape[1]}x{thumb.shape[0]} view at {pixel_um:.1f} um/px kept {tm.area_px} px; "
                   f"no {patch_size}-px patch at level {level} has >= {min_tissue_fraction:.0%} tissue; "
                   "the bag is empty")
    grid = SlideGrid(
        path=str(path.resolve()), coords=coords, tissue_fraction=frac[iy, ix].astype(np.float32), level=int(level),
        read_size=int(read_size), patch_size=int(patch_size), level_downsample=float(ds), mpp=out_mpp,
        slide_size=tuple(int(v) for v in geom.sizes[0]), thumbnail=thumb, thumbnail_downsample=float(thumb_ds),
        mask=tm.mask, backend=backend, message=message, cache_file=str(cache_file) if cache_file else None, key=key,
        info={"slide_mpp": geom.mpp, "slide_power": geom.power, "levels": len(geom.sizes),
              "tissue_threshold": tm.threshold, "tissue_method": tissue.method, "grid_shape": [int(ny), int(nx)],
              "mask_um_per_px": pixel_um},
    )
    if cache_file is not None:
        _save_grid(grid, cache_file)
    return _check_empty(grid, allow_empty)


def _check_empty(grid: SlideGrid, allow_empty: bool) -> SlideGrid:
    if len(grid) == 0:
        if not allow_empty:
            raise NoTissueError(grid.message)
        logger.warning("%s", grid.message)
    return grid


def _save_grid(grid: SlideGrid, cache_file: Path) -> None:
    meta = {k: getattr(grid, k) for k in ("path", "level", "read_size", "patch_size", "level_downsample", "mpp",
                                          "slide_size", "thumbnail_downsample", "message", "key", "info")}
    with atomic_write(cache_file) as fh:
        np.savez_compressed(fh, coords=grid.coords, tissue_fraction=grid.tissue_fraction, thumbnail=grid.thumbnail,
                            mask=grid.mask, meta=np.frombuffer(json.dumps(meta, default=float).encode(), np.uint8))


def _load_grid(cache_file: Path, backend: str) -> SlideGrid:
    with np.load(cache_file) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return SlideGrid(coords=z["coords"], tissue_fraction=z["tissue_fraction"], thumbnail=z["thumbnail"],
                         mask=z["mask"], backend=backend, cache_file=str(cache_file),
                         **{**meta, "slide_size": tuple(meta["slide_size"])})


# ----------------------------------------------------------------------------------------------------------
# patch reads
# ----------------------------------------------------------------------------------------------------------
def _resize(patch_hwc: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(patch_hwc).resize((size, size), Image.BILINEAR, reducing_gap=None))


def read_patches(reader, wsi, grid: SlideGrid, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Read grid patches ``indices`` (default all) as uint8 ``(n, 3, patch_size, patch_size)``."""
    idx = np.arange(len(grid)) if indices is None else np.asarray(indices, dtype=np.int64)
    p, rs = grid.patch_size, grid.read_size
    out = np.empty((idx.size, 3, p, p), np.uint8)
    for j, i in enumerate(idx):
        y, x = (int(v) for v in grid.coords[i])
        patch, _ = reader.get_data(wsi, location=(y, x), size=(rs, rs), level=grid.level)
        patch = np.asarray(patch)
        if rs != p:
            patch = np.moveaxis(_resize(np.ascontiguousarray(np.moveaxis(patch, 0, -1)), p), -1, 0)
        out[j] = patch
    return out
