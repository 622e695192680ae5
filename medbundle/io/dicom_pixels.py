"""Open any DICOM file, decide whether it holds a single grey (or colour-capture) picture, and decode it.

Shared by the projection-radiograph reader (:mod:`medbundle.io.dicom`) and anything else that must say in one
line why a DICOM object is not an image it can use. Works with pydicom 2.4 and 3.x.

Decoding: uncompressed (implicit/explicit VR little endian, explicit big endian, deflated) by pydicom itself; RLE,
JPEG baseline/extended/lossless, JPEG-LS and JPEG 2000 through pydicom's GDCM plugin (``python-gdcm``, a core
dependency) or pydicom's own / pyjpegls decoders where present. pydicom 3 refuses 12-bit JPEG extended through GDCM
(pydicom 2.4 does not); :func:`decode_pixels` then asks GDCM for the file's pixels directly.

Files without the 128-byte preamble or the file-meta header are opened with ``force=True`` and their transfer syntax
is inferred: the encoding pydicom read them with, or, for encapsulated pixel data, the codec the first fragment
starts with (:func:`sniff_transfer_syntax`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = [
    "COLOUR_PHOTOMETRICS",
    "LUMA_BT601",
    "decode_pixels",
    "pixel_array",
    "read_dicom",
    "reject_reason",
    "sniff_transfer_syntax",
    "to_luminance",
]

#: Photometric interpretations of colour captures that are converted to luminance.
COLOUR_PHOTOMETRICS: tuple[str, ...] = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")

#: ITU-R BT.601 luma weights of R, G, B (those of YBR_FULL's Y, PS3.3 C.7.6.3.1.2).
LUMA_BT601: tuple[float, float, float] = (0.299, 0.587, 0.114)

_PYDICOM_MAJOR: int | None = None


def _pydicom_major() -> int:
    global _PYDICOM_MAJOR
    if _PYDICOM_MAJOR is None:
        import pydicom

        _PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
    return _PYDICOM_MAJOR


def sniff_transfer_syntax(fragment: bytes) -> str | None:
    """The compressed transfer syntax UID that an encapsulated frame's first bytes show, or None.

    JPEG (SOI ``FFD8``) by its first start-of-frame marker: ``FFC0`` baseline, ``FFC1`` extended, ``FFC3`` lossless
    (process 14; selection value 1 assumed), ``FFF7`` JPEG-LS (lossless unless a NEAR value follows); a JPEG 2000
    codestream (``FF4F FF51``) as lossy-capable JPEG 2000 (decoders read both); otherwise None.
    """
    if fragment[:4] == b"\xff\x4f\xff\x51":
        return "1.2.840.10008.1.2.4.91"
    if fragment[:2] != b"\xff\xd8":
        return None
    sof = {0xC0: "1.2.840.10008.1.2.4.50", 0xC1: "1.2.840.10008.1.2.4.51", 0xC3: "1.2.840.10008.1.2.4.70"}
    i = 2
    while i + 4 <= len(fragment) and fragment[i] == 0xFF:
        marker = fragment[i + 1]
        if marker in sof:
            return sof[marker]
        if marker == 0xF7:  # JPEG-LS: the NEAR parameter follows the frame header in the SOS segment
            sos = fragment.find(b"\xff\xda", i)
            if sos > 0:
                n = fragment[sos + 4]
                near = fragment[sos + 5 + 2 * n] if sos + 5 + 2 * n < len(fragment) else 0
                return "1.2.840.10008.1.2.4.81" if near else "1.2.840.10008.1.2.4.80"
            return "1.2.840.10008.1.2.4.80"
        i += 2 + int.from_bytes(fragment[i + 2 : i + 4], "big")
    return None


def _infer_transfer_syntax(ds: Any) -> str:
    """Transfer syntax of a dataset read without file meta: how pydicom parsed it, or the codec of its pixel data."""
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        from pydicom.encaps import generate_pixel_data_frame

        first = next(generate_pixel_data_frame(ds.PixelData), b"")
        found = sniff_transfer_syntax(first)
        if found:
            return found
        return "1.2.840.10008.1.2.5" if len(first) >= 64 and int.from_bytes(first[:4], "little") <= 15 else ""
    if _pydicom_major() >= 3:
        implicit, little = ds.original_encoding
    else:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if not little:
        return "1.2.840.10008.1.2.2"
    return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"


def read_dicom(path: str | os.PathLike, stop_before_pixels: bool = False) -> Any:
    """Read a DICOM file, with or without preamble and file-meta header.

    A file without a file-meta Transfer Syntax UID gets the inferred one (:func:`_infer_transfer_syntax`), so that
    its pixel data can be decoded.

    Raises:
        ValueError: not found, or not DICOM; the message names the file.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError

    path = str(path)
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found.") from None
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e}).") from None
    try:
        plausible = any(k in ds for k in ("SOPClassUID", "PixelData", "Rows", "Modality", "StudyInstanceUID"))
    except Exception:  # noqa: BLE001 - a non-DICOM file parsed with force=True can fail anywhere
        plausible = False
    if not plausible:
        raise ValueError(f"{path}: not a readable DICOM file (no SOP class, image or study elements found).")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        if meta is None:
            ds.file_meta = FileMetaDataset()
        inferred = _infer_transfer_syntax(ds)
        if inferred:
            ds.file_meta.TransferSyntaxUID = inferred
    return ds


def _sop_name(ds: Any) -> str:
    from pydicom.uid import UID

    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if uid is None:
        return "DICOM object without SOP Class UID"
    name = UID(str(uid)).name
    return name.replace(" Storage", "") if name != str(uid) else f"SOP class {uid}"


def reject_reason(ds: Any, frames_expected: int = 1) -> str | None:
    """Why ``ds`` is not a single grey or colour-capture picture (one line), or None when it is.

    Rejected: objects without pixel data (SR, RT plans, waveforms, presentation states: named by SOP class and
    modality), PALETTE COLOR, other photometric interpretations than MONOCHROME1/2 and
    :data:`COLOUR_PHOTOMETRICS`, and a number of frames other than ``frames_expected``.
    """
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        modality = ds.get("Modality", None)
        where = f", modality {modality}" if modality else ""
        return f"not an image: {_sop_name(ds)} object{where} (no pixel data)"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        return "PALETTE COLOR image: pseudo-colour indices, not grey values; not read as a radiograph"
    if photometric not in ("MONOCHROME1", "MONOCHROME2", *COLOUR_PHOTOMETRICS):
        return f"PhotometricInterpretation {photometric or 'missing'!r} is not a grey or colour picture"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != frames_expected:
        return f"multi-frame object ({frames} frames) where {frames_expected} frame is expected"
    return None


def _gdcm_pixels(path: str, ds: Any) -> np.ndarray:
    """Decode a file's pixel data with GDCM directly (used where pydicom 3 declines GDCM: 12-bit JPEG extended)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        raise ValueError("GDCM could not read the file")
    image = reader.GetImage()
    buf = image.GetBuffer().encode("utf-8", "surrogateescape")
    pf = image.GetPixelFormat()
    dtype = {
        (8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16, (32, 0): np.uint32, (32, 1): np.int32,
    }[(int(pf.GetBitsAllocated()), int(pf.GetPixelRepresentation()))]
    arr = np.frombuffer(buf, dtype=dtype)
    rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    return arr[: rows * cols * spp].reshape((rows, cols, spp) if spp > 1 else (rows, cols)).copy()


def pixel_array(ds: Any, path: str | os.PathLike) -> np.ndarray:
    """``ds.pixel_array``, colour in RGB (pydicom 3 converts YCbCr itself; 2.x is converted here), 12-bit JPEG
    extended through GDCM directly where pydicom declines it.

    Raises:
        ValueError: the pixel data cannot be decoded; one line naming the file and its transfer syntax.
    """
    path = str(path)
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one line, with GDCM tried for 12-bit JPEG
        if tsyntax == "1.2.840.10008.1.2.4.51" and os.path.isfile(path):
            try:
                arr = _gdcm_pixels(path, ds)
            except Exception:  # noqa: BLE001
                arr = None
            if arr is not None:
                return arr
        from pydicom.uid import UID

        name = UID(tsyntax).name if tsyntax else "unknown transfer syntax"
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"{path}: cannot decode pixel data in {name} ({type(e).__name__}: {first}); compressed DICOM needs "
            "python-gdcm (a medbundle dependency): pip install python-gdcm"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if _pydicom_major() < 3 and photometric in ("YBR_FULL", "YBR_FULL_422") and arr.ndim == 3:
        from pydicom.pixel_data_handlers.util import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    return arr


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array ``(..., 3)`` as float64, in the input's units."""
    return np.asarray(rgb, dtype=np.float64)[..., :3] @ np.asarray(LUMA_BT601)


def decode_pixels(ds: Any, path: str | os.PathLike, frames_expected: int = 1) -> tuple[np.ndarray, str | None]:
    """Decode the single picture of ``ds`` as grey values.

    Args:
        ds: a dataset from :func:`read_dicom` (or ``pydicom.dcmread``).
        path: the file name for messages (and for GDCM's direct decoding).
        frames_expected: frames the caller expects (1 for a radiograph).

    Returns:
        ``(array, note)``: the stored values, shape (rows, columns), grey files unchanged (integer dtype); a colour
        capture converted to BT.601 luminance (float64, 0-255 for 8-bit) with ``note`` ``"<PI>->luminance"``
        (e.g. ``"YBR_FULL_422->luminance"``), else ``note`` None.

    Raises:
        ValueError: one line naming the file and why it is rejected (:func:`reject_reason`) or cannot be decoded.
    """
    path = str(path)
    reason = reject_reason(ds, frames_expected)
    if reason:
        raise ValueError(f"{path}: {reason}.")
    arr = pixel_array(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in COLOUR_PHOTOMETRICS:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{path}: {photometric} pixel data decoded to shape {arr.shape}, expected (rows, cols, 3)")
        return to_luminance(arr), f"{photometric}->luminance"
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-frame 2D image, got pixel array of shape {arr.shape}.")
    return arr, None
