"""A MONAI image reader for single-file projection radiographs (DX/CR/DR) stored as DICOM.

MONAI's ``PydicomReader`` returns the stored values (optionally rescaled) and treats a file as a slice of
a volume; it applies no VOI LUT / window and does not undo MONOCHROME1, so a chest radiograph read by it
looks nothing like the PNG/JPEG the public datasets ship. :class:`XrayDicomReader` returns the
*displayed* picture instead:

1. the modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence);
2. the VOI: a VOI LUT Sequence, else the first WindowCenter/WindowWidth pair (``LINEAR``,
   ``LINEAR_EXACT`` or ``SIGMOID`` as in PS3.3 C.11.2.1), else the full range the stored bits can hold
   (``no_window="bits"``) or the image's own min..max (``no_window="minmax"``);
3. MONOCHROME1 is inverted, so higher = brighter (attenuation white), as in the PNG files;
4. the result is float32 in [0, 255], the range of the 8-bit PNGs, so one normalisation serves both;
   a colour capture (RGB, YBR_*) becomes its BT.601 luminance, with ``meta["colour_converted"]`` saying so;
5. the array has the same axis order as MONAI's ``PILReader`` gives for the same picture: by default
   (``reverse_indexing=True``) shape (columns, rows) = (W, H), i.e. the PIL convention transposed.

Any transfer syntax pydicom can decode with python-gdcm is read, and files without preamble or file-meta header
(:mod:`medbundle.io.dicom_pixels`); SR, RT plans, waveforms, palette colour and multi-frame files are rejected
with one line naming the file and the reason.

No patient or study identifier is copied into the metadata: only the whitelisted, non-identifying
attributes listed in :data:`XRAY_META_TAGS` are.

Use in a bundle config (PNG/JPEG through PIL, DICOM through this reader, in the same datalist)::

    {"_target_": "LoadImaged", "keys": "image", "reader": "$medbundle.io.dicom.xray_readers()",
     "image_only": true, "ensure_channel_first": true}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, PILReader
from monai.data.utils import is_supported_format
from monai.utils import ensure_tuple

from medbundle.io.dicom_pixels import decode_pixels, read_dicom, reject_reason
from medbundle.io.metaimage import MetaImage, MetaImageReader

__all__ = ["XRAY_META_TAGS", "XrayDicomReader", "XrayImageReader", "xray_readers", "is_dicom_file"]

#: DICOM attributes copied into the metadata (none of them identifies a patient).
XRAY_META_TAGS: tuple[str, ...] = (
    "Modality",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "ViewPosition",
    "BodyPartExamined",
    "PresentationIntentType",
    "RescaleSlope",
    "RescaleIntercept",
)

_DICOM_SUFFIXES = ("dcm", "dicom", "dic")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the DICOM Part 10 preamble + ``DICM`` magic, or (a data set written without
    preamble and file-meta header) with a little-endian element of group 0x0002 or 0x0008 (only 132 bytes are read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0 and head[2] < 0x80


def _pixel_functions():
    """(apply_modality_lut, apply_voi_lut) from pydicom 3.x ``pydicom.pixels`` or 2.x's util module."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DICOM number (DS/IS/MultiValue) as float."""
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):  # MultiValue, list
        value = value[0]
    return float(value)


def _linear_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window of PS3.3 C.11.2.1.2/3 mapped onto [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        lo, span = center - width / 2.0, width
    else:  # LINEAR
        if width < 1:
            raise ValueError(f"WindowWidth must be >= 1 for a LINEAR VOI function, got {width}.")
        lo, span = center - 0.5 - (width - 1.0) / 2.0, width - 1.0
    if span <= 0:
        return (x > center).astype(np.float64)
    return np.clip((x - lo) / span, 0.0, 1.0)


class XrayDicomReader(ImageReader):
    """Read a single-frame projection DICOM file as the displayed 8-bit-range picture.

    Args:
        reverse_indexing: Swap the two axes so the array is (W, H) = (columns, rows), like MONAI's ``PILReader``
            default; ``False`` gives (rows, columns) as pydicom stores it. Keep the same value as the ``PILReader`` you
            mix it with.
        no_window: What to do when the file has neither a VOI LUT nor a window: ``"bits"`` maps the full range the
            stored bits can hold (after the modality LUT) onto [0, 255] (no per-image stretching); ``"minmax"``
            stretches the image's own min..max onto [0, 255].
        force: Kept for compatibility; files that lack the DICOM preamble / ``DICM`` magic or the file-meta header are
            always read (:func:`~medbundle.io.dicom_pixels.read_dicom`).

    Note:
        ``get_data`` returns ``(array, meta)``: ``array`` float32, shape (W, H) (or (H, W) without
        ``reverse_indexing``), values in [0, 255], higher = brighter; ``meta`` has ``spatial_shape``,
        ``original_channel_dim = nan`` (no channel; the value MONAI's ``PILReader`` uses, so a batch mixing
        PNG and DICOM items collates), ``filename_or_obj``, ``format = "DICOM"``, ``width``, ``height``,
        ``spacing`` (mm along the returned axes, when PixelSpacing or ImagerPixelSpacing is
        present), ``voi`` (``"lut"``, ``"window"``, ``"bits"`` or ``"minmax"``), ``window_center`` /
        ``window_width`` (the window applied, in modality units), for a colour capture (RGB, YBR_FULL,
        YBR_FULL_422, ...) ``voi = "colour"`` and ``colour_converted`` (e.g. ``"RGB->luminance"``: the ITU-R BT.601
        luminance of the stored 8-bit values is the picture), and the attributes of
        :data:`XRAY_META_TAGS` present in the file. A list of files is stacked on a new first axis.
    """

    def __init__(self, reverse_indexing: bool = True, no_window: str = "bits", force: bool = False) -> None:
        super().__init__()
        if no_window not in ("bits", "minmax"):
            raise ValueError(f"no_window must be 'bits' or 'minmax', got {no_window!r}.")
        self.reverse_indexing = reverse_indexing
        self.no_window = no_window
        self.force = force

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True if every name ends in ``.dcm``, ``.dicom`` or ``.dic`` (used by LoadImage's auto-select)."""
        return is_supported_format(filename, list(_DICOM_SUFFIXES))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read one file or a list of files into pydicom Datasets (pixel data decoded later).

        Files without the preamble or file-meta header are read too (:func:`~medbundle.io.dicom_pixels.read_dicom`).

        Raises:
            ValueError: A file is missing, is not DICOM, or is not a single picture (SR, RT plan, waveform, palette
                colour, multi-frame: :func:`~medbundle.io.dicom_pixels.reject_reason`); one line naming the file.
        """
        out = []
        for name in ensure_tuple(data):
            path = str(name)
            ds = read_dicom(path)
            reason = reject_reason(ds)
            if reason:
                raise ValueError(f"{path}: {reason}.")
            ds.filename_or_obj = path  # not a DICOM element; keeps the name for get_data
            out.append(ds)
        return out if len(out) > 1 else out[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Decode the Dataset(s) from :meth:`read` into (float32 array in [0, 255], meta dict)."""
        arrays, metas = [], []
        for ds in img if isinstance(img, (list, tuple)) else [img]:  # a Dataset is iterable: no ensure_tuple
            arr, meta = self._decode(ds)
            arrays.append(arr)
            metas.append(meta)
        if len(arrays) == 1:
            return arrays[0], metas[0]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            names = [m["filename_or_obj"] for m in metas]
            raise ValueError(f"{names}: images to stack have different shapes {sorted(shapes)}.")
        meta = dict(metas[0])
        meta["original_channel_dim"] = 0
        return np.stack(arrays, axis=0), meta

    # ------------------------------------------------------------------------------------------------------
    def _decode(self, ds: Any) -> tuple[np.ndarray, dict]:
        path = getattr(ds, "filename_or_obj", None) or getattr(ds, "filename", None) or "<dataset>"
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        stored, note = decode_pixels(ds, path)
        if note is not None:  # a colour capture: its BT.601 luminance, scaled from the stored range onto [0, 255]
            bits = int(ds.get("BitsStored", 8) or 8)
            out = np.clip(stored * (255.0 / (2**bits - 1)), 0.0, 255.0).astype(np.float32)
            return self._finish(out, ds, path, {"voi": "colour", "colour_converted": note})
        apply_modality_lut, apply_voi_lut = _pixel_functions()
        x = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)

        meta: dict[str, Any] = {}
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
            item = ds.VOILUTSequence[0]
            out_bits = int(item.LUTDescriptor[2])
            lut_in = np.rint(x).astype(np.int64)  # a LUT is indexed by integer modality values
            y = np.asarray(apply_voi_lut(lut_in, ds, index=0, prefer_lut=True), dtype=np.float64)
            y = np.clip(y / float(2**out_bits - 1), 0.0, 1.0)
            meta["voi"] = "lut"
        elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            y = _linear_window(x, center, width, function)
            meta.update({"voi": "window", "window_center": center, "window_width": width})
        elif self.no_window == "bits":
            bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
            if int(ds.get("PixelRepresentation", 0)) == 1:
                lo_s, hi_s = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            else:
                lo_s, hi_s = 0, 2**bits - 1
            ends = np.asarray(apply_modality_lut(np.array([lo_s, hi_s], dtype=stored.dtype), ds), np.float64)
            lo, hi = float(ends.min()), float(ends.max())
            y = np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(x)
            meta["voi"] = "bits"
        else:
            lo, hi = float(x.min()), float(x.max())
            y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
            meta["voi"] = "minmax"
        if photometric == "MONOCHROME1":
            y = 1.0 - y
        return self._finish((255.0 * y).astype(np.float32), ds, path, meta)

    def _finish(self, out: np.ndarray, ds: Any, path: str, meta: dict[str, Any]) -> tuple[np.ndarray, dict]:
        """Axis order, geometry and the whitelisted attributes for the (rows, columns) picture ``out``."""
        rows, cols = int(out.shape[0]), int(out.shape[1])
        if self.reverse_indexing:
            out = out.T  # a view, as MONAI's PILReader returns (a transposed copy of a 2k x 2k image costs ~50 ms)
        meta.update(
            {
                "format": "DICOM",
                "width": cols,
                "height": rows,
                "spatial_shape": np.asarray(out.shape),
                "original_channel_dim": float("nan"),  # as PILReader: mixed PNG/DICOM batches collate
                "filename_or_obj": str(path),
            }
        )
        spacing = ds.get("PixelSpacing", None) or ds.get("ImagerPixelSpacing", None)
        if spacing is not None and len(spacing) >= 2:
            row_sp, col_sp = float(spacing[0]), float(spacing[1])  # between rows, between columns
            meta["spacing"] = np.asarray([col_sp, row_sp] if self.reverse_indexing else [row_sp, col_sp])
        for tag in XRAY_META_TAGS:
            if tag in ds and ds.get(tag) is not None:
                v = ds.get(tag)
                meta[tag] = (
                    float(v) if tag.startswith("Rescale") else (int(v) if isinstance(v, int) else str(v))
                )
        return out, meta


class _Unreadable:
    """A DICOM file :class:`XrayImageReader` cannot use; ``get_data`` raises its one-line ``message``.

    ``LoadImage`` tries its other readers (MONAI's ``PydicomReader``, ...) when ``read`` raises, and then reports only
    "cannot find a suitable reader", or lets ``PydicomReader`` read a palette-colour or multi-frame file; raising in
    ``get_data`` instead keeps this reader's reason (e.g. "not an image: Comprehensive SR object") as the error.
    """

    def __init__(self, message: str) -> None:
        self.message = message


class XrayImageReader(ImageReader):
    """One reader for a datalist that mixes PNG/JPEG, MetaImage and DICOM chest radiographs.

    Each file goes to :class:`XrayDicomReader` when it starts with the DICOM ``DICM`` magic (or ends in
    ``.dcm``/``.dicom``/``.dic``), to :class:`~medbundle.io.metaimage.MetaImageReader` when it ends in
    ``.mha``/``.mhd`` (NODE21's preprocessed images), otherwise to MONAI's ``PILReader``; all give the same
    axis order (``reverse_indexing``: first axis = image column) and the DICOM and MetaImage readers give
    ``meta["spacing"]`` (mm per pixel). Routing inside one reader, rather than listing two readers for ``LoadImage``
    to try in turn, avoids an INFO log line and a failed attempt for every file of the other kind.

    Args:
        reverse_indexing: Passed to both readers (MONAI's default ``True`` gives arrays of shape (W, H)).
        no_window: Passed to :class:`XrayDicomReader`.
    """

    def __init__(self, reverse_indexing: bool = True, no_window: str = "bits") -> None:
        super().__init__()
        self.dicom = XrayDicomReader(reverse_indexing=reverse_indexing, no_window=no_window)
        self.pil = PILReader(reverse_indexing=reverse_indexing)
        # MetaImageReader's own reverse_indexing=False is the (x, y) order that reverse_indexing=True gives here
        self.mha = MetaImageReader(reverse_indexing=not reverse_indexing)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for PNG/JPEG/BMP, MetaImage and DICOM suffixes."""
        return any(r.verify_suffix(filename) for r in (self.pil, self.dicom, self.mha))

    def _is_dicom(self, name: str | os.PathLike) -> bool:
        return Path(name).suffix.lower().lstrip(".") in _DICOM_SUFFIXES or is_dicom_file(name)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read with the DICOM reader if every file is DICOM, else with PIL (a mixed list is an error).

        A DICOM file that cannot be used (not DICOM after all, not an image, palette colour, multi-frame) is returned as
        a marker whose ``get_data`` raises the one-line reason, so that ``LoadImage`` reports that reason.
        """
        names = ensure_tuple(data)
        kinds = {self._is_dicom(n) for n in names}
        if len(kinds) > 1:
            raise ValueError(
                f"{list(map(str, names))}: cannot stack DICOM and non-DICOM files into one image."
            )
        if kinds == {True}:
            try:
                return self.dicom.read(data, **kwargs)
            except ValueError as e:  # reported by get_data, so LoadImage does not try its other readers
                return _Unreadable(str(e))
        if self.mha.verify_suffix(data):
            return self.mha.read(data, **kwargs)
        for n in names:
            if not os.path.isfile(n):
                raise ValueError(f"{n}: file not found.")
        return self.pil.read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Delegate to the reader that read ``img``; PIL arrays are returned as float32 in [0, 255]."""
        from pydicom.dataset import Dataset

        if isinstance(img, _Unreadable):
            raise ValueError(img.message)
        first = img[0] if isinstance(img, (list, tuple)) else img
        if isinstance(first, Dataset):
            return self.dicom.get_data(img)
        if isinstance(first, MetaImage):
            arr, meta = self.mha.get_data(img)
            return np.asarray(arr, dtype=np.float32), meta
        arr, meta = self.pil.get_data(img)
        return np.asarray(arr, dtype=np.float32), meta


def xray_readers(reverse_indexing: bool = True, no_window: str = "bits") -> list[ImageReader]:
    """Readers for ``LoadImage``/``LoadImaged(reader=...)`` over a PNG/JPEG + DICOM chest X-ray datalist.

    Returns ``[XrayImageReader(...)]``: one reader that routes DICOM to :class:`XrayDicomReader` and the
    rest to MONAI's ``PILReader``. (``LoadImage`` with user readers tries them last-to-first, catching
    errors, so ``[PILReader(), XrayDicomReader()]`` also works but logs a failed attempt per file.)
    Bundle config: ``"reader": "$medbundle.io.dicom.xray_readers()"``.
    """
    return [XrayImageReader(reverse_indexing=reverse_indexing, no_window=no_window)]
