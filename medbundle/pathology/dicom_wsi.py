"""DICOM whole-slide images (VL Whole Slide Microscopy Image): write a pyramid, find and check a slide's levels.

A DICOM slide is a *series*: one VL Whole Slide Microscopy Image instance (SOP class
``1.2.840.10008.5.1.4.1.1.77.1.6``) per pyramid level, all sharing the Study, Series and Frame of Reference
UIDs, each level a multi-frame image of tiles (``DimensionOrganizationType = TILED_FULL``: frames in row-major
tile order, ``TotalPixelMatrixColumns``/``Rows`` the level size, ``Columns``/``Rows`` the tile size). Level 0
is ``ImageType = ORIGINAL\\PRIMARY\\VOLUME\\NONE``, the lower levels ``DERIVED\\PRIMARY\\VOLUME\\RESAMPLED``;
the pixel spacing (mm) is in the shared functional groups' Pixel Measures.

OpenSlide (4.0 and later) reads such a series when given any one of its ``.dcm`` files: it scans that file's
folder for the other instances of the same series and keeps those whose Image Type is a slide level
(VOLUME), with uncompressed (Explicit VR Little Endian, RGB) or JPEG baseline (RGB or YBR_FULL_422) frames;
microns per pixel come from the level-0 Pixel Spacing. :func:`resolve_dicom_slide` turns a slide folder or
any file of the series into the level-0 file OpenSlide is opened with, and says in one line what is wrong
when the files are not such a series.

:func:`write_dicom_wsi` writes a pyramid rendered tile by tile (the synthetic slides of
:mod:`medbundle.pathology.synthetic`) as such a series, with a synthetic patient, specimen and optical path.
Frames are spooled to a scratch file as they are rendered and the Pixel Data element is appended after the
header pydicom writes (2.4 and 3.x), so memory stays one tile for any slide size, as for the TIFF writer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medbundle.io.dicom import is_dicom_file
from medbundle.io.dicom_write import ds_string, new_dataset, save_dicom, set_synthetic_patient
from medbundle.pathology.pyramid import level_tiles, pyramid_downsamples

__all__ = [
    "VL_WSI_SOP_CLASS",
    "DicomFrames",
    "DicomSlideLevel",
    "dicom_frames",
    "dicom_slide_levels",
    "dicom_slide_source",
    "is_dicom_slide",
    "resolve_dicom_slide",
    "write_dicom_wsi",
]

#: SOP Class UID of VL Whole Slide Microscopy Image Storage.
VL_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_DICOM_SUFFIXES = (".dcm", ".dicom")
_LEVEL_TYPES = {("ORIGINAL", "PRIMARY", "VOLUME", "NONE"), ("DERIVED", "PRIMARY", "VOLUME", "NONE"),
                ("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")}
#: Transfer syntaxes OpenSlide decodes: Explicit VR Little Endian, JPEG baseline, JPEG 2000 (lossless, lossy).
_OPENSLIDE_SYNTAXES = {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
                       "1.2.840.10008.1.2.4.91"}
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


# ----------------------------------------------------------------------------------------------------------
# reading: which files make the slide
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomSlideLevel:
    """One pyramid level of a DICOM slide: its file and what the header says about it."""

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    image_type: tuple[str, ...]
    size: tuple[int, int]
    """``(rows, columns)`` of the total pixel matrix."""
    tile: tuple[int, int]
    transfer_syntax: str
    mpp: tuple[float, float] | None = None
    """Microns per pixel ``(row spacing, column spacing)`` from the shared Pixel Measures; None when absent."""
    objective_power: float | None = None
    """``ObjectiveLensPower`` of the first optical path; None when absent."""


def _spacing_um(ds) -> tuple[float, float] | None:
    try:
        sp = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        out = (float(sp[0]) * 1000.0, float(sp[1]) * 1000.0)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return out if out[0] > 0 and out[1] > 0 else None


def _power(ds) -> float | None:
    try:
        p = float(ds.OpticalPathSequence[0].ObjectiveLensPower)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return p if p > 0 else None


def _has_dicom_suffix(path: Path) -> bool:
    return path.name.lower().endswith(_DICOM_SUFFIXES)


def is_dicom_slide(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or a folder that directly holds such files (a DICOM slide folder).

    A cheap check on names only; :func:`resolve_dicom_slide` reads the headers.
    """
    p = Path(path)
    if p.is_dir():
        return any(c.is_file() and _has_dicom_suffix(c) for c in p.iterdir())
    return _has_dicom_suffix(p)


def _header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _level(path: Path, ds) -> DicomSlideLevel | None:
    """The level ``ds`` is, or None when it is not a slide level (label, overview, thumbnail, other class)."""
    sop = str(getattr(ds, "SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop != VL_WSI_SOP_CLASS:
        return None
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    if image_type not in _LEVEL_TYPES:
        return None
    try:
        size = (int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns))
        tile = (int(ds.Rows), int(ds.Columns))
    except AttributeError as e:
        raise ValueError(f"{path}: VL Whole Slide Microscopy level without {e.args[0].split()[-1]}") from e
    return DicomSlideLevel(path=str(path), sop_instance_uid=str(ds.SOPInstanceUID),
                           series_instance_uid=str(ds.SeriesInstanceUID), study_instance_uid=str(ds.StudyInstanceUID),
                           image_type=image_type, size=size, tile=tile,
                           transfer_syntax=str(ds.file_meta.TransferSyntaxUID), mpp=_spacing_um(ds),
                           objective_power=_power(ds))


def _check_level(lv: DicomSlideLevel, ds) -> None:
    if lv.transfer_syntax not in _OPENSLIDE_SYNTAXES:
        raise ValueError(f"{lv.path}: transfer syntax {lv.transfer_syntax} is not one OpenSlide decodes (uncompressed "
                         "Explicit VR Little Endian, JPEG baseline, JPEG 2000); convert it, e.g. with dcmdjpeg")
    pixel = {k: ds.get(k) for k in ("SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")}
    if pixel != {"SamplesPerPixel": 3, "BitsAllocated": 8, "BitsStored": 8, "PixelRepresentation": 0} or \
            int(ds.get("PlanarConfiguration", 0) or 0) != 0:
        raise ValueError(f"{lv.path}: {pixel} (planar configuration {ds.get('PlanarConfiguration')}); slide levels "
                         "are read as 8-bit RGB, colour-by-pixel")
    dim = str(ds.get("DimensionOrganizationType", "TILED_FULL")).upper()
    if dim == "TILED_FULL":
        tiles = (-(-lv.size[0] // lv.tile[0])) * (-(-lv.size[1] // lv.tile[1]))
        focal = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        paths = int(ds.get("NumberOfOpticalPaths", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames < tiles * focal * paths:
            raise ValueError(f"{lv.path}: TILED_FULL level of {lv.size[1]}x{lv.size[0]} px in {lv.tile[1]}x"
                             f"{lv.tile[0]} tiles needs {tiles * focal * paths} frames, the file has {frames}")


def dicom_slide_levels(path: str | os.PathLike) -> list[DicomSlideLevel]:
    """The pyramid levels of the DICOM slide at ``path`` (a slide folder, or any ``.dcm`` of the series), largest
    first.

    The series is the one of ``path`` (a file), or the only VL Whole Slide Microscopy series of the folder;
    files of other series, label/overview/thumbnail images and duplicate instances are left out, as OpenSlide
    does.

    Raises:
        ValueError: one line naming the file or folder and the problem: not DICOM; DICOM but not a VL Whole
            Slide Microscopy Image (the SOP class is named); no slide level; more than one slide series in the
            folder; level 0 (ORIGINAL or DERIVED ...\\VOLUME\\NONE) missing, only resampled levels present;
            a transfer syntax OpenSlide cannot decode; fewer frames than a TILED_FULL level needs.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path}: DICOM slide not found")
    folder = path if path.is_dir() else path.parent
    series = None
    if path.is_file():
        ds = _header(path)
        sop = str(getattr(ds, "SOPClassUID", ""))
        if sop != VL_WSI_SOP_CLASS:
            raise ValueError(f"{path}: not a DICOM whole-slide image: SOP class {sop or 'missing'}"
                             f"{' (' + _sop_name(sop) + ')' if _sop_name(sop) else ''}, expected VL Whole Slide "
                             f"Microscopy Image Storage ({VL_WSI_SOP_CLASS})")
        series = str(ds.SeriesInstanceUID)
    found: dict[str, tuple[DicomSlideLevel, Any]] = {}
    other_series: set[str] = set()
    other_classes: set[str] = set()
    for f in sorted(folder.iterdir()):
        if not (f.is_file() and _has_dicom_suffix(f)):
            continue
        ds = _header(f)
        sop = str(getattr(ds, "SOPClassUID", ""))
        if sop != VL_WSI_SOP_CLASS:
            other_classes.add(_sop_name(sop) or sop)
            continue
        uid = str(ds.SeriesInstanceUID)
        if series is not None and uid != series:
            continue
        lv = _level(f, ds)
        if lv is None:
            continue
        if series is None and found and uid != next(iter(found.values()))[0].series_instance_uid:
            other_series.add(uid)
            continue
        if lv.sop_instance_uid not in found:
            found[lv.sop_instance_uid] = (lv, ds)
    if other_series:
        raise ValueError(f"{folder}: {len(other_series) + 1} DICOM slide series in one folder; point at one "
                         "level-0 .dcm file instead of the folder")
    if not found:
        what = f" (found {', '.join(sorted(other_classes))})" if other_classes else ""
        raise ValueError(f"{path}: no VL Whole Slide Microscopy slide level (ImageType ...\\VOLUME\\...){what}")
    levels = sorted(found.values(), key=lambda t: (-t[0].size[1], -t[0].size[0]))
    for lv, ds in levels:
        _check_level(lv, ds)
    top = levels[0][0]
    if top.image_type[3] == "RESAMPLED":
        raise ValueError(f"{folder}: level 0 of slide series {top.series_instance_uid} is missing: the largest level "
                         f"present ({top.size[1]}x{top.size[0]} px, {Path(top.path).name}) is a resampled level "
                         "(DERIVED\\PRIMARY\\VOLUME\\RESAMPLED)")
    sizes = [lv.size for lv, _ in levels]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"{folder}: two instances of slide series {top.series_instance_uid} have the same level size; "
                         "concatenated levels are not supported")
    return [lv for lv, _ in levels]


def _sop_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        return "" if name == uid else name
    except Exception:  # noqa: BLE001 - an unknown or malformed UID has no name
        return ""


def dicom_slide_source(path: str | os.PathLike) -> Path:
    """What to read the slide's DICOM headers from, e.g. for an SR that references the slide: its folder when every
    DICOM file there belongs to the slide's series (the usual one folder per slide: all its levels, label and
    overview), else its level-0 file alone. Raises ``ValueError`` as :func:`dicom_slide_levels`."""
    level0 = Path(dicom_slide_levels(path)[0].path)
    series = str(_header(level0).SeriesInstanceUID)
    for f in level0.parent.iterdir():
        if f.is_file() and f != level0 and (_has_dicom_suffix(f) or is_dicom_file(f)):
            try:
                if str(getattr(_header(f), "SeriesInstanceUID", "")) != series:
                    return level0
            except ValueError:
                return level0
    return level0.parent


def resolve_dicom_slide(path: str | os.PathLike) -> Path:
    """The level-0 file of the DICOM slide at ``path`` (a slide folder, or any ``.dcm`` of the series): what
    OpenSlide is opened with. Raises ``ValueError`` as :func:`dicom_slide_levels`."""
    return Path(dicom_slide_levels(path)[0].path)


@dataclass(frozen=True)
class DicomFrames:
    """Where each frame of a multi-frame DICOM file lies: ``fragments[i]`` lists ``(file offset, length)`` of the
    encoded pieces of frame ``i`` (one piece, unless a frame is split into several fragments)."""

    path: str
    fragments: list[list[tuple[int, int]]]
    encapsulated: bool
    transfer_syntax: str
    photometric: str
    tile: tuple[int, int]
    """``(rows, columns)`` of a frame."""
    size: tuple[int, int]
    """``(rows, columns)`` of the total pixel matrix."""


def _read_item(fh) -> tuple[int, int, int]:
    """The next encapsulation item header: ``(group, element, length)``."""
    import struct

    head = fh.read(8)
    if len(head) < 8:
        raise ValueError("the encapsulated pixel data ends without a sequence delimiter")
    return struct.unpack("<HHI", head)


def dicom_frames(path: str | os.PathLike) -> DicomFrames:
    """Locate every frame of a multi-frame (TILED_FULL) DICOM file without loading its pixel data.

    The header is read by pydicom (2.4 or 3.x), which leaves the file at the Pixel Data element; native pixel data is
    cut into ``Rows x Columns x 3`` byte frames, encapsulated pixel data is walked item by item (only the 8-byte item
    headers are read). Fragments map to frames one to one, or through the Basic Offset Table when there are more.

    Raises:
        ValueError: no pixel data, or fragments that cannot be assigned to frames (file named).
    """
    import struct

    import pydicom

    path = Path(path)
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        start = fh.tell()
        head = fh.read(12)
        if len(head) < 12 or struct.unpack("<HH", head[:4]) != (0x7FE0, 0x0010):
            raise ValueError(f"{path}: no Pixel Data")
        length = struct.unpack("<I", head[8:])[0]
        rows, cols = int(ds.Rows), int(ds.Columns)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        frames: list[list[tuple[int, int]]]
        if length != 0xFFFFFFFF:  # native
            size = rows * cols * 3
            if length < n * size:
                raise ValueError(f"{path}: {length} bytes of pixel data for {n} frames of {cols}x{rows} RGB")
            frames = [[(start + 12 + i * size, size)] for i in range(n)]
        else:
            g, e, bot_len = _read_item(fh)
            if (g, e) != (0xFFFE, 0xE000):
                raise ValueError(f"{path}: encapsulated pixel data without a Basic Offset Table item")
            bot = np.frombuffer(fh.read(bot_len), "<u4").astype(np.int64) if bot_len else None
            first = fh.tell()
            pieces: list[tuple[int, int, int]] = []  # (offset from the first fragment item, value offset, length)
            while True:
                pos = fh.tell()
                g, e, ln = _read_item(fh)
                if (g, e) == (0xFFFE, 0xE0DD):
                    break
                if (g, e) != (0xFFFE, 0xE000):
                    raise ValueError(f"{path}: unexpected item ({g:04X},{e:04X}) in the encapsulated pixel data")
                pieces.append((pos - first, pos + 8, ln))
                fh.seek(ln, 1)
            if len(pieces) == n:
                frames = [[(v, ln)] for _, v, ln in pieces]
            elif bot is not None and bot.size == n:
                starts = [int(x) for x in bot]
                frames = [[(v, ln) for rel, v, ln in pieces if starts[i] <= rel < (starts[i + 1] if i + 1 < n else
                                                                                    1 << 62)] for i in range(n)]
            elif n == 1:
                frames = [[(v, ln) for _, v, ln in pieces]]
            else:
                raise ValueError(f"{path}: {len(pieces)} fragments for {n} frames and no Basic Offset Table")
    return DicomFrames(path=str(path), fragments=frames, encapsulated=length == 0xFFFFFFFF, transfer_syntax=syntax,
                       photometric=str(ds.PhotometricInterpretation), tile=(rows, cols),
                       size=(int(ds.get("TotalPixelMatrixRows", rows)), int(ds.get("TotalPixelMatrixColumns", cols))))


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def _uid(seed: str, tag: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medbundle-synthetic-wsi", seed, tag])


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # 4:2:2 chroma subsampling, as YBR_FULL_422 states; baseline (not progressive), no restart markers
    Image.fromarray(tile, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=1, optimize=False)
    return buf.getvalue()


def _common(ds, uids: Mapping[str, str], slide_id: str, patient: Mapping[str, str], mpp: float, height: int,
            width: int) -> None:
    """Patient, study, series, frame of reference, equipment, specimen and acquisition: the same on every level."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    body_part = patient.get("body_part", "")
    set_synthetic_patient(ds, patient["id"], patient["name"], body_part=body_part or "UNKNOWN")
    if not body_part:
        del ds.BodyPartExamined
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.StudyID = patient.get("study_id", "1")
    ds.AccessionNumber = patient.get("accession", "")
    ds.ReferringPhysicianName = ""
    ds.StudyTime = "000000"
    ds.StudyDescription = "Synthetic whole-slide image"
    ds.Modality = "SM"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"synthetic slide {slide_id}"
    ds.Manufacturer = "medbundle"
    ds.ManufacturerModelName = "synthetic slide generator"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "medbundle.synthetic_wsi"
    ds.ContentDate = ds.AcquisitionDate = ds.StudyDate
    ds.ContentTime = ds.AcquisitionTime = "000000"
    ds.AcquisitionDateTime = f"{ds.StudyDate}000000"
    ds.AcquisitionContextSequence = DicomSequence([])
    # specimen: one slide, one specimen on it
    ds.ContainerIdentifier = slide_id
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence([])
    ds.ContainerTypeCodeSequence = DicomSequence([_code("433466003", "SCT", "Microscope slide")])
    spec = Dataset()
    spec.SpecimenIdentifier = slide_id
    spec.SpecimenUID = uids["specimen"]
    spec.IssuerOfTheSpecimenIdentifierSequence = DicomSequence([])
    spec.SpecimenPreparationSequence = DicomSequence([])
    ds.SpecimenDescriptionSequence = DicomSequence([spec])
    # geometry of the imaged area (mm) on the slide
    ds.ImagedVolumeWidth = float(width * mpp / 1000.0)  # FL
    ds.ImagedVolumeHeight = float(height * mpp / 1000.0)
    ds.ImagedVolumeDepth = 0.001
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = ds_string(20.0)
    origin.YOffsetInSlideCoordinateSystem = ds_string(40.0)
    ds.TotalPixelMatrixOriginSequence = DicomSequence([origin])
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.VolumetricProperties = "VOLUME"
    # one brightfield optical path
    op = Dataset()
    op.OpticalPathIdentifier = "1"
    op.OpticalPathDescription = "brightfield"
    op.IlluminationTypeCodeSequence = DicomSequence([_code("111744", "DCM", "Brightfield illumination")])
    op.IlluminationColorCodeSequence = DicomSequence([_code("414298005", "SCT", "Full Spectrum")])
    op.ICCProfile = _srgb_profile()
    op.ColorSpace = "SRGB"
    ds.OpticalPathSequence = DicomSequence([op])
    ds.NumberOfOpticalPaths = 1
    ds.TotalPixelMatrixFocalPlanes = 1


def write_dicom_wsi(
    folder: str | os.PathLike,
    height: int,
    width: int,
    mpp: float,
    render: Callable[[int, int, int, int, int], np.ndarray],
    downsamples: Sequence[int] | None = None,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 95,
    slide_id: str = "slide",
    patient: Mapping[str, str] | None = None,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write a rendered pyramid as a DICOM VL Whole Slide Microscopy series, one file per level.

    Args:
        folder: the slide folder written (``level_0.dcm``, ``level_1.dcm``, ...; created).
        height, width: level-0 size in pixels.
        mpp: level-0 microns per pixel (Pixel Spacing is ``mpp * downsample / 1000`` mm).
        render: ``render(downsample, y0, x0, h, w) -> (h, w, 3) uint8`` (level pixels), as for
            :func:`~medbundle.pathology.synthetic.write_pyramidal_tiff`.
        downsamples: level downsamples (integers, first 1); default the TIFF generator's.
        tile: tile (frame) side; edge tiles are padded by repeating the edge, as TILED_FULL frames are whole.
        compression: ``"jpeg"`` (JPEG baseline, YBR_FULL_422, what scanners write) or ``"none"`` (uncompressed RGB,
            Explicit VR Little Endian: the same pixels as the lossless TIFF).
        quality: JPEG quality.
        slide_id: container (slide) and specimen identifier.
        patient: ``{"id", "name"}`` (plus optional ``"study_id"``, ``"accession"``) of the synthetic patient;
            default ``SYN-<slide_id>``.
        uid_seed: makes the UIDs reproducible (default: from ``slide_id``).

    Returns:
        The files written, level 0 first.
    """
    compression = str(compression).lower()
    if compression not in ("jpeg", "none"):
        raise ValueError(f"compression must be 'jpeg' or 'none', got {compression!r}")
    ds_list = list(downsamples) if downsamples else pyramid_downsamples(height, width)
    if ds_list[0] != 1:
        raise ValueError(f"the first downsample must be 1, got {ds_list}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patient = dict(patient or {"id": f"SYN-{slide_id}", "name": slide_id})
    seed = uid_seed or slide_id
    uids = {k: _uid(seed, k) for k in ("study", "series", "frame_of_reference", "specimen")}
    paths = []
    for i, d in enumerate(ds_list):
        lh, lw = height // d, width // d
        path = folder / f"level_{i}.dcm"
        tmp = folder / f".level_{i}.pixels"
        try:  # frames go to a scratch file as they are rendered (memory stays one tile), the header is written after
            lengths = _spool_frames(tmp, (_encode_jpeg(np.ascontiguousarray(t), quality) if compression == "jpeg" else
                                          np.ascontiguousarray(t).tobytes()
                                          for t in level_tiles(render, d, lh, lw, tile)), compression == "jpeg")
            paths.append(_write_level(path, tmp, lengths, compression, tile, i, d, lh, lw, mpp, height, width,
                                      seed, uids, slide_id, patient))
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def _spool_frames(tmp: Path, frames, encapsulated: bool) -> list[int]:
    """Write ``frames`` to ``tmp`` (each an encapsulation item, padded to even length, when ``encapsulated``);
    returns their lengths as stored (item headers not counted)."""
    import struct

    lengths = []
    with open(tmp, "wb") as fh:
        for f in frames:
            if encapsulated:
                f = f + b"\x00" if len(f) % 2 else f
                fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(f)))
            fh.write(f)
            lengths.append(len(f))
    return lengths


def _write_level(path: Path, tmp: Path, lengths: list[int], compression: str, tile: int, i: int,
                 d: int, lh: int, lw: int, mpp: float, height: int, width: int, seed: str, uids: Mapping[str, str],
                 slide_id: str, patient: Mapping[str, str]) -> Path:
    """The header of level ``i`` through pydicom, then its Pixel Data element appended from the spooled frames
    (Pixel Data is the dataset's last element): native, or encapsulated with a Basic Offset Table (left empty past
    4 GB, as the standard allows)."""
    import shutil
    import struct

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    sop_uid = _uid(seed, f"level-{i}")
    ds = new_dataset(VL_WSI_SOP_CLASS, sop_uid)
    _common(ds, uids, slide_id, patient, mpp, height, width)
    ds.InstanceNumber = i + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if i == 0 else \
        ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    if i > 0:
        ds.DerivationDescription = f"downsampled by {d} from level 0"
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.StudyDate, "000000"
    ds.DimensionOrganizationType = "TILED_FULL"
    org = Dataset()
    org.DimensionOrganizationUID = uids["series"] + ".1" if len(uids["series"]) < 62 else uids["series"]
    ds.DimensionOrganizationSequence = DicomSequence([org])
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = lh, lw
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(lengths)
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pm = Dataset()
    spacing = mpp * d / 1000.0
    pm.PixelSpacing = [ds_string(spacing), ds_string(spacing)]
    pm.SliceThickness = ds_string(0.001)
    frame_type = Dataset()
    frame_type.FrameType = list(ds.ImageType)
    opi = Dataset()
    opi.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([pm])
    shared.WholeSlideMicroscopyImageFrameTypeSequence = DicomSequence([frame_type])
    shared.OpticalPathIdentificationSequence = DicomSequence([opi])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    if compression == "jpeg":
        ds.file_meta.TransferSyntaxUID = _JPEG_BASELINE
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = ds_string(len(lengths) * tile * tile * 3 / max(1, sum(lengths)))
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.LossyImageCompression = "00"
    save_dicom(ds, path)
    with open(path, "ab") as out, open(tmp, "rb") as src:
        if compression == "jpeg":
            out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
            starts = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64) + 8)[:-1]])
            bot = starts.astype("<u4").tobytes() if starts[-1] < 2**32 else b""
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)) + bot)
            shutil.copyfileobj(src, out, 1 << 20)
            out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        else:
            out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, sum(lengths)))
            shutil.copyfileobj(src, out, 1 << 20)
    return path
