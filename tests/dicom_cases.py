"""Write one synthetic radiograph in every common DICOM transfer syntax, plus files the X-ray readers must reject.

Used by ``tests/test_dicom_decode.py``. The uncompressed originals are written with pydicom; the other
syntaxes with dcmtk's command-line encoders (``dcmconv``, ``dcmcrle``, ``dcmcjpeg``, ``dcmcjpls``) and JPEG 2000
with Pillow's OpenJPEG encoder (dcmtk has none), encapsulated by pydicom. Works with pydicom 2.4 and 3.x.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbundle.io.dicom_write import new_dataset, save_dicom

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


@dataclass
class Case:
    """One generated file.

    Attributes:
        path: the file.
        kind: ``"lossless"`` (decodes to the original's pixels), ``"lossy"`` (close to them), ``"colour"`` (a colour
            capture of the 8-bit original, converted to luminance) or ``"reject"``.
        original: the case whose pixels this file must reproduce (``"gray8"`` or ``"gray12"``); None for rejects.
        tool: the command-line tool the case needs (skip when absent), or None.
        expect: for a reject, a phrase the one-line reason must hold.
    """

    path: Path
    kind: str
    original: str | None
    tool: str | None = None
    expect: str = ""


def picture(bits: int, size: int = 64) -> np.ndarray:
    """A smooth radiograph-like picture (two dark lung fields, a bright mediastinum), values in [0, 2**bits - 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    img = 0.55 + 0.25 * np.exp(-((x - 0.5) ** 2) / 0.01)  # mediastinum
    for cx in (0.28, 0.72):
        img -= 0.35 * np.exp(-(((x - cx) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img += 0.08 * np.sin(8 * np.pi * y) * np.exp(-((x - 0.5) ** 2) / 0.05)  # ribs
    img = np.clip(img, 0.0, 1.0)
    return np.rint(img * (2**bits - 1)).astype(np.uint8 if bits <= 8 else np.uint16)


def _base(sop_class: str, uid: str, rows: int, cols: int):
    ds = new_dataset(sop_class, uid)
    ds.StudyInstanceUID = uid + ".1"
    ds.SeriesInstanceUID = uid + ".2"
    ds.PatientID, ds.PatientName = "DECODE-TEST", "Synthetic^Decode"
    ds.Modality = "DX" if sop_class == DX_STORAGE else "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = ["0.5", "0.5"]
    return ds


def write_gray(path: Path, pixels: np.ndarray, bits: int, uid: str) -> Path:
    """Explicit VR little endian MONOCHROME2 file, ``bits`` stored bits (8 in 8, or in 16 allocated)."""
    ds = _base(DX_STORAGE, uid, *pixels.shape)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = pixels.astype("u1" if bits <= 8 else "<u2").tobytes()
    return save_dicom(ds, path)


def write_rgb(path: Path, rgb: np.ndarray, uid: str, photometric: str = "RGB") -> Path:
    """Uncompressed 8-bit colour secondary capture; ``photometric`` ``"RGB"`` or ``"YBR_FULL"`` (pixels converted)."""
    ds = _base(SC_STORAGE, uid, *rgb.shape[:2])
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = rgb
    if photometric == "YBR_FULL":
        try:
            from pydicom.pixels import convert_color_space
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import convert_color_space
        data = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds.PhotometricInterpretation = photometric
    ds.PixelData = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    return save_dicom(ds, path)


def write_palette(path: Path, pixels: np.ndarray, uid: str) -> Path:
    """An 8-bit PALETTE COLOR image with a 256-entry grey-ramp palette."""
    ds = _base(SC_STORAGE, uid, *pixels.shape)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    lut = (np.arange(256, dtype="<u2") * 257).tobytes()
    for c in ("Red", "Green", "Blue"):
        setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{c}PaletteColorLookupTableData", lut)
    ds.PixelData = pixels.astype("u1").tobytes()
    return save_dicom(ds, path)


def write_multiframe(path: Path, pixels: np.ndarray, uid: str, frames: int = 3) -> Path:
    """A multi-frame MONOCHROME2 file (the same picture ``frames`` times)."""
    ds = _base(DX_STORAGE, uid, *pixels.shape)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData = np.stack([pixels] * frames).astype("u1").tobytes()
    return save_dicom(ds, path)


def write_non_image(path: Path, kind: str, uid: str) -> Path:
    """A non-image object: ``"sr"`` (Comprehensive SR), ``"rtplan"`` (RT Plan) or ``"waveform"`` (12-lead ECG)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    sop = {"sr": "1.2.840.10008.5.1.4.1.1.88.33", "rtplan": "1.2.840.10008.5.1.4.1.1.481.5",
           "waveform": "1.2.840.10008.5.1.4.1.1.9.1.1"}[kind]
    ds = new_dataset(sop, uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid + ".1", uid + ".2"
    ds.PatientID, ds.PatientName = "DECODE-TEST", "Synthetic^Decode"
    ds.Modality = {"sr": "SR", "rtplan": "RTPLAN", "waveform": "ECG"}[kind]
    if kind == "sr":
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    elif kind == "rtplan":
        ds.RTPlanLabel = "PLAN1"
    else:
        item = Dataset()
        item.NumberOfWaveformChannels, item.NumberOfWaveformSamples = 1, 8
        item.SamplingFrequency, item.WaveformBitsAllocated, item.WaveformSampleInterpretation = "500", 16, "SS"
        item.WaveformData = np.arange(8, dtype="<i2").tobytes()
        ds.WaveformSequence = Sequence([item])
    return save_dicom(ds, path)


def _dcmtk(tool: str, *args: str) -> None:
    subprocess.run([tool, *args], check=True, capture_output=True, timeout=60)


def write_jpeg2000(path: Path, source: Path, lossless: bool) -> Path:
    """Re-encode an 8-bit grey file's pixels as JPEG 2000 (Pillow/OpenJPEG codestream, encapsulated by pydicom)."""
    import io

    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(str(source))
    buf = io.BytesIO()
    opts = {"irreversible": False} if lossless else {"irreversible": True, "quality_mode": "rates",
                                                     "quality_layers": [8]}
    Image.fromarray(ds.pixel_array).save(buf, format="JPEG2000", no_jp2=True, **opts)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90" if lossless else "1.2.840.10008.1.2.4.91"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if not lossless:
        ds.LossyImageCompression = "01"
    major = int(pydicom.__version__.split(".")[0])
    if major >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def write_cases(folder: Path) -> dict[str, Case]:
    """Write every case into ``folder``; cases whose dcmtk tool is missing are listed with ``tool`` set and no file.

    Returns:
        ``{name: Case}``; ``"gray8"`` and ``"gray12"`` are the uncompressed originals (8 and 12 stored bits).
    """
    folder.mkdir(parents=True, exist_ok=True)
    g8, g12 = picture(8), picture(12)
    root = "1.2.826.0.1.3680043.10.1234."
    cases: dict[str, Case] = {
        "gray8": Case(write_gray(folder / "gray8.dcm", g8, 8, root + "1"), "lossless", "gray8"),
        "gray12": Case(write_gray(folder / "gray12.dcm", g12, 12, root + "2"), "lossless", "gray12"),
    }
    rgb = np.repeat(g8[..., None], 3, axis=2)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 20, 0, 255)  # a tint: the channels differ
    cases["rgb"] = Case(write_rgb(folder / "rgb.dcm", rgb, root + "3"), "colour", "gray8")
    cases["ybr_full"] = Case(write_rgb(folder / "ybr_full.dcm", rgb, root + "4", "YBR_FULL"), "colour", "gray8")
    cases["palette"] = Case(write_palette(folder / "palette.dcm", g8, root + "5"), "reject", None,
                            expect="PALETTE COLOR")
    cases["multiframe"] = Case(write_multiframe(folder / "multiframe.dcm", g8, root + "6"), "reject", None,
                               expect="3 frames")
    for i, kind in enumerate(("sr", "rtplan", "waveform")):
        expect = {"sr": "Comprehensive SR", "rtplan": "RT Plan", "waveform": "ECG"}[kind]
        cases[kind] = Case(write_non_image(folder / f"{kind}.dcm", kind, root + str(7 + i)), "reject", None,
                           expect=expect)
    cases["j2k_lossless"] = Case(write_jpeg2000(folder / "j2k_lossless.dcm", cases["gray8"].path, True),
                                 "lossless", "gray8")
    cases["j2k_lossy"] = Case(write_jpeg2000(folder / "j2k_lossy.dcm", cases["gray8"].path, False), "lossy", "gray8")
    # (name, tool, arguments after the tool, source, kind)
    conversions = [
        ("implicit_le", "dcmconv", ["+ti"], "gray12", "lossless"),
        ("big_endian", "dcmconv", ["+tb"], "gray12", "lossless"),
        ("deflated", "dcmconv", ["+td"], "gray12", "lossless"),
        ("no_meta", "dcmconv", ["-F", "+ti"], "gray12", "lossless"),
        ("rle", "dcmcrle", [], "gray12", "lossless"),
        ("jpeg_baseline", "dcmcjpeg", ["+eb", "+sr", "+q", "95"], "gray8", "lossy"),
        ("jpeg_extended", "dcmcjpeg", ["+ee", "+sr", "+q", "95"], "gray12", "lossy"),
        ("jpeg_lossless", "dcmcjpeg", ["+e1"], "gray12", "lossless"),
        ("jpeg_lossless_8", "dcmcjpeg", ["+e1"], "gray8", "lossless"),
        ("jpegls_lossless", "dcmcjpls", ["+el"], "gray12", "lossless"),
        ("jpegls_near", "dcmcjpls", ["+en", "+md", "2"], "gray12", "lossy"),
        ("ybr_full_422", "dcmcjpeg", ["+eb", "+q", "95", "+s2"], "rgb", "colour"),
    ]
    for name, tool, args, source, kind in conversions:
        out = folder / f"{name}.dcm"
        original = "gray8" if source == "rgb" else source
        if shutil.which(tool) is None:
            cases[name] = Case(out, kind, original, tool=tool)
            continue
        _dcmtk(tool, *args, str(cases[source].path), str(out))
        cases[name] = Case(out, kind, original, tool=tool)
    return cases
