"""CT volumes from DICOM series folders and NIfTI files, slices in position order.

What this adds over MONAI:

- :class:`CTSeriesReader`: MONAI's ``PydicomReader`` (1.4-1.6) stacks the slices of a series folder in
  ``InstanceNumber`` order. Real series do not always number slices in position order (several
  acquisitions in one series, renumbered exports), and then the volume comes out scrambled. This reader
  orders the slices by their position along the slice normal (``ImagePositionPatient`` projected on the
  cross product of the ``ImageOrientationPatient`` vectors) and is safe to share between threads (MONAI's
  keeps per-call state on the reader between ``read`` and ``get_data``).
- enhanced multi-frame CT (one file, per-frame Plane Position / Orientation functional groups) is read as a
  volume with its true spacing and affine (MONAI's reader gives it an identity affine).
- :func:`select_series`: a folder that holds several series (a localizer, a thin and a thick
  reconstruction, an SR) is split by ``SeriesInstanceUID`` and one series is chosen by a stated rule; the
  reader logs which one and why, and other code (DICOM SR writers) can ask for the same files.
- :class:`CTImageReader` / :func:`ct_readers`: one reader for datalists that mix NIfTI files and DICOM
  series folders (``.mhd`` files: :mod:`medbundle.io.metaimage`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader, PydicomReader
from monai.utils import ensure_tuple

from medbundle.io.dicom_pixels import pixel_array

__all__ = ["CTImageReader", "CTSeriesReader", "SeriesInfo", "ct_readers", "dicom_position_order",
           "is_enhanced_volume", "list_series", "select_series"]

logger = logging.getLogger("medbundle.io")

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def dicom_position_order(datasets: Sequence[Any], name: str = "series") -> list[int]:
    """Indices that sort the slices of one series by position along the slice normal (ascending).

    The normal is ``row x column`` of the first slice's ``ImageOrientationPatient``; the position is
    ``ImagePositionPatient`` projected on it (mm). Slices without these tags are ordered by
    ``InstanceNumber`` (as MONAI does).

    Raises:
        ValueError: Two slices at the same position (usually two series in one folder); the message names ``name``.
    """
    if not datasets:
        return []
    first = datasets[0]
    if not all(hasattr(ds, "ImagePositionPatient") for ds in datasets) or not hasattr(first, "ImageOrientationPatient"):
        return sorted(range(len(datasets)), key=lambda i: int(getattr(datasets[i], "InstanceNumber", i)))
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.dot(normal, [float(v) for v in ds.ImagePositionPatient]) for ds in datasets])
    order = np.argsort(pos, kind="stable")
    if len(pos) > 1 and np.min(np.diff(pos[order])) < 1e-4:
        raise ValueError(
            f"{name}: two or more slices share the same position along the slice normal; the folder probably "
            "holds several series (or duplicate files). Put each series in its own folder."
        )
    return [int(i) for i in order]


@dataclass
class SeriesInfo:
    """One series found in a folder by :func:`list_series` (headers only; no patient identifier).

    Attributes:
        uid: SeriesInstanceUID ("" when the files have none).
        number: SeriesNumber, or None.
        modality: Modality ("" when absent).
        files: the series' image files (unordered).
        frames: image slices in the series: files, or the frames of an enhanced multi-frame file.
        axial: every file is an axial image: ImageType says AXIAL, or the slice normal lies within 30 degrees of the
            patient's head-foot axis.
        localizer: ImageType says LOCALIZER (a scout).
        thickness: SliceThickness in mm (None when absent).
    """

    uid: str
    number: int | None
    modality: str
    files: list[str]
    frames: int
    axial: bool
    localizer: bool
    thickness: float | None

    def describe(self) -> str:
        """``series 3 (CT, 120 axial slices, 1.25 mm)``: what tells the series apart, without its UID (DICOM
        de-identification treats UIDs as identifiers, and this line reaches logs and the prediction tables)."""
        kind = "localizer" if self.localizer else ("axial" if self.axial else "non-axial")
        thick = f", {self.thickness:g} mm" if self.thickness is not None else ""
        return (f"series {self.number if self.number is not None else '?'} "
                f"({self.modality or '?'}, {self.frames} {kind} slices{thick})")


def _normal_is_axial(iop: Sequence[Any] | None) -> bool:
    if iop is None or len(iop) != 6:
        return False
    v = np.asarray([float(x) for x in iop], dtype=np.float64)
    n = np.cross(v[:3], v[3:])
    norm = float(np.linalg.norm(n))
    return norm > 0 and abs(n[2]) / norm >= np.cos(np.deg2rad(30.0))


def _orientation(ds: Any) -> Any:
    """ImageOrientationPatient of a classic image, or of an enhanced file's shared/first functional group."""
    if "ImageOrientationPatient" in ds:
        return ds.ImageOrientationPatient
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(seq)
        if groups and "PlaneOrientationSequence" in groups[0]:
            return groups[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
    return None


def _thickness(ds: Any) -> float | None:
    value = ds.get("SliceThickness")
    if value in (None, ""):
        groups = ds.get("SharedFunctionalGroupsSequence")
        if groups and "PixelMeasuresSequence" in groups[0]:
            value = groups[0].PixelMeasuresSequence[0].get("SliceThickness")
    return None if value in (None, "") else float(value)


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The image series in ``folder`` (not its sub-folders), read from the headers only.

    Files that are not DICOM, or DICOM objects without pixel data (SR, RT plans, waveforms, presentation
    states), are left out. Files are grouped by ``SeriesInstanceUID``.

    Returns:
        One :class:`SeriesInfo` per series, in the order of their SeriesInstanceUID.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[str, Any]]] = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # not an image (SR, RT plan, waveform, a non-DICOM file read with force=True)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((str(path), ds))
    out = []
    for uid in sorted(groups):
        members = groups[uid]
        first = members[0][1]
        image_type = {str(v).upper() for ds in (m[1] for m in members) for v in (ds.get("ImageType") or [])}
        axial = all(
            "AXIAL" in [str(v).upper() for v in (ds.get("ImageType") or [])] or _normal_is_axial(_orientation(ds))
            for _, ds in members
        )
        number = first.get("SeriesNumber")
        out.append(SeriesInfo(
            uid=uid,
            number=None if number in (None, "") else int(number),
            modality=str(first.get("Modality", "") or ""),
            files=[m[0] for m in members],
            frames=sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in members),
            axial=axial,
            localizer="LOCALIZER" in image_type,
            thickness=_thickness(first),
        ))
    return out


def _rank(s: SeriesInfo) -> tuple:
    """Sort key of :func:`select_series`: best first."""
    thick = s.thickness if s.thickness is not None else float("inf")
    return (s.modality != "CT", s.localizer, not s.axial, -s.frames, thick, s.number if s.number is not None else 0,
            s.uid)


def select_series(folder: str | os.PathLike) -> tuple[list[str], str]:
    """Choose the series of a folder that a CT model should read, and say why.

    Rule: among the image series of ``folder`` (:func:`list_series`), prefer CT over other modalities, then
    non-localizer, then axial images, then the most slices, then the thinnest SliceThickness, then the lowest
    SeriesNumber (then the SeriesInstanceUID, so the choice is always the same).

    Returns:
        ``(files, reason)``: the chosen series' files in slice order (:func:`dicom_position_order`; an
        enhanced multi-frame series is its one file) and one line naming the chosen series (SeriesNumber,
        modality, slice count, thickness) and the ones passed over. No patient identifier and no UID.

    Raises:
        ValueError: ``folder`` holds no DICOM image; the message names the folder.
    """
    import pydicom

    series = list_series(folder)
    if not series:
        raise ValueError(f"{folder}: no DICOM image series in this folder (non-image objects such as SR are ignored).")
    ranked = sorted(series, key=_rank)
    best = ranked[0]
    if len(ranked) == 1:
        reason = f"{best.describe()}: the only image series in the folder"
    else:
        others = "; ".join(s.describe() for s in ranked[1:])
        reason = (f"{best.describe()} chosen of {len(ranked)} series (rule: CT, not a localizer, axial, most slices, "
                  f"thinnest, lowest series number); passed over: {others}")
    files = best.files
    if len(files) > 1:
        headers = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in files]
        files = [files[i] for i in dicom_position_order(headers, f"{folder} ({best.describe()})")]
    return files, reason


def _group_item(ds: Any, frame: int, sequence: str) -> Any:
    """Item of functional-group ``sequence`` for ``frame``: the per-frame group's, else the shared one, else None."""
    for name, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(name)
        if groups and len(groups) > index and sequence in groups[index]:
            items = getattr(groups[index], sequence)
            if items:
                return items[0]
    return None


def is_enhanced_volume(ds: Any) -> bool:
    """True for a multi-frame image whose frames carry their own plane position (Enhanced / Legacy Converted
    Enhanced CT and MR): one file holding a whole volume."""
    return (
        int(ds.get("NumberOfFrames", 1) or 1) > 1
        and "PerFrameFunctionalGroupsSequence" in ds
        and _group_item(ds, 0, "PlanePositionSequence") is not None
    )


_FRAME_HEADER_SKIP = ("PixelData", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
                      "NumberOfFrames", "DimensionIndexSequence", "DimensionOrganizationSequence")


def _enhanced_frames(ds: Any, path: str) -> list[Any]:
    """One classic-looking dataset per frame of an enhanced multi-frame image (position, orientation, spacing,
    rescale from the functional groups; its decoded pixels), for MONAI's series stacking and affine.

    Raises:
        ValueError: a frame lacks its plane position or orientation, or the frames are not parallel; names the file.
    """
    from pydicom.dataset import Dataset

    class _Frame(Dataset):
        """A frame's attributes and its already decoded pixels."""

        @property
        def pixel_array(self) -> np.ndarray:  # type: ignore[override]
            return self._pixels

    try:
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - any decoder failure is one line naming the file
        raise ValueError(f"{path}: cannot decode the frames of this enhanced multi-frame image ({e}).") from None
    n = int(ds.NumberOfFrames)
    pixels = pixels.reshape(n, int(ds.Rows), int(ds.Columns))
    frames, first_iop = [], None
    header = [e for e in ds if e.keyword and e.keyword not in _FRAME_HEADER_SKIP and e.VR != "SQ"]
    for k in range(n):
        position = _group_item(ds, k, "PlanePositionSequence")
        orientation = _group_item(ds, k, "PlaneOrientationSequence")
        measures = _group_item(ds, k, "PixelMeasuresSequence")
        if position is None or orientation is None or "ImagePositionPatient" not in position:
            raise ValueError(f"{path}: frame {k + 1} has no Plane Position / Plane Orientation functional group.")
        iop = [float(v) for v in orientation.ImageOrientationPatient]
        if first_iop is None:
            first_iop = iop
        elif not np.allclose(iop, first_iop, atol=1e-4):
            raise ValueError(f"{path}: frames have different orientations; not one volume.")
        f = _Frame()
        for elem in header:  # the image's own header (modality, UIDs, ...), as each classic slice has
            f.add(copy.deepcopy(elem))
        f.ImagePositionPatient = list(position.ImagePositionPatient)
        f.ImageOrientationPatient = list(orientation.ImageOrientationPatient)
        if measures is not None and "PixelSpacing" in measures:
            f.PixelSpacing = list(measures.PixelSpacing)
            if "SliceThickness" in measures:
                f.SliceThickness = measures.SliceThickness
        rescale = _group_item(ds, k, "PixelValueTransformationSequence")
        if rescale is not None and "RescaleSlope" in rescale:
            f.RescaleSlope, f.RescaleIntercept = rescale.RescaleSlope, rescale.get("RescaleIntercept", 0)
        f.InstanceNumber = k + 1
        f._pixels = pixels[k]
        frames.append(f)
    return frames


class _Series(list):
    """A list of pydicom Datasets (one series) plus the file names and folder they came from."""

    filenames: list[str]
    folder: str
    reason: str | None


class CTSeriesReader(PydicomReader):
    """MONAI ``PydicomReader`` that stacks a series folder in slice-position order and is thread-safe.

    Same arguments and outputs as :class:`monai.data.PydicomReader` (array ``(X, Y, Z)`` after its
    ``swap_ij``, affine in RAS by default, HU via RescaleSlope/Intercept as float32). Differences:

    - slices are ordered by :func:`dicom_position_order`, whatever their ``InstanceNumber`` (the
      Datasets' ``InstanceNumber`` is rewritten in memory to that order, which is what MONAI stacks by);
    - ``read`` returns the per-call state (file names) with the data instead of keeping it on the
      reader, so one reader may serve several threads (CacheDataset / ThreadDataLoader workers).

    - a folder holding several series is read as the one :func:`select_series` chooses (logged, and in
      ``meta["series_selection"]``);
    - an enhanced multi-frame image (Enhanced CT, Legacy Converted Enhanced CT: :func:`is_enhanced_volume`), given
      as its file or as a folder holding it, is read as a volume: each frame's position, orientation, pixel spacing
      and rescale come from its functional groups, so the array and affine equal those of the same volume stored
      as a classic series.

    Only one series folder (or file list) per call is supported.
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read a DICOM file, a list of slice files, or a series folder (see ``PydicomReader.read``)."""
        names = ensure_tuple(data)
        reason = None
        if len(names) == 1 and Path(str(names[0])).is_dir():
            folder = str(names[0])
            files, reason = select_series(folder)
            logger.info("%s: reading %s", folder, reason)
            if len(files) == 1:
                img = PydicomReader.read(copy.copy(self), files[0], **kwargs)
                if not is_enhanced_volume(img):
                    return img
                img, files = _enhanced_frames(img, files[0]), files * int(img.NumberOfFrames)
            else:
                worker = copy.copy(self)
                img = [PydicomReader.read(worker, f, **kwargs) for f in files]
        elif len(names) > 1 and all(Path(str(n)).is_file() for n in names):
            worker = copy.copy(self)
            img = [PydicomReader.read(worker, str(n), **kwargs) for n in names]
            folder, files = str(Path(str(names[0])).parent), [str(n) for n in names]
        else:
            img = PydicomReader.read(copy.copy(self), data, **kwargs)
            if len(names) != 1 or not is_enhanced_volume(img):
                return img
            folder = str(names[0])
            img, files = _enhanced_frames(img, folder), [folder] * int(img.NumberOfFrames)
        order = dicom_position_order(img, folder)
        series = _Series(img[i] for i in order)
        series.filenames = [files[i] for i in order]
        series.folder = folder
        series.reason = reason
        for rank, ds in enumerate(series, start=1):
            ds.InstanceNumber = rank
        return series

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        """One slice's values, rescaled to HU as MONAI does, decoded by :func:`medbundle.io.dicom_pixels.pixel_array`
        (12-bit JPEG extended through GDCM under pydicom 3 too; a failure is one line naming the file)."""
        if self.to_gpu:
            return super()._get_array_data(img, filename)
        data = pixel_array(img, str(filename))
        if "RescaleSlope" in img or "RescaleIntercept" in img:
            slope = float(img.get("RescaleSlope", 1) or 1)
            data = data.astype(np.float32) * slope + float(img.get("RescaleIntercept", 0) or 0)
        return data

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Stack the slices read by :meth:`read` into ``(array, meta)`` as ``PydicomReader.get_data``."""
        worker = copy.copy(self)
        if isinstance(img, _Series):
            worker.has_series = True
            worker.filenames = [img.filenames]
            array, meta = PydicomReader.get_data(worker, list(img))
            if img.reason:
                meta["series_selection"] = img.reason
            return array, meta
        worker.has_series = False
        worker.filenames = [str(getattr(img, "filename", ""))]
        return PydicomReader.get_data(worker, img)


def _is_dicom_source(name: str | os.PathLike) -> bool:
    path = Path(str(name))
    if path.is_dir():
        return True
    low = path.name.lower()
    if low.endswith(_DICOM_SUFFIXES):
        return True
    if low.endswith(_NIFTI_SUFFIXES):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


class CTImageReader(ImageReader):
    """One reader for CT datalists mixing NIfTI files and DICOM series folders.

    DICOM series folders, ``.dcm`` files and files with the ``DICM`` magic go to :class:`CTSeriesReader`;
    ``.nii``/``.nii.gz`` to MONAI's ``NibabelReader``. Both give ``(X, Y, Z)`` arrays with RAS affines, so
    ``Orientationd(axcodes="RAS")`` brings NIfTI and DICOM of one scan to the same array. Routing inside one
    reader avoids ``LoadImage`` trying readers in turn (``PydicomReader`` claims every file name).

    Args:
        dicom_kwargs, nifti_kwargs: Keyword arguments of the two readers.
    """

    def __init__(self, dicom_kwargs: Mapping[str, Any] | None = None, nifti_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        self.dicom = CTSeriesReader(**dict(dicom_kwargs or {}))
        self.nifti = NibabelReader(**dict(nifti_kwargs or {}))

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for NIfTI and DICOM names and for folders."""
        return all(_is_dicom_source(n) or str(n).lower().endswith(_NIFTI_SUFFIXES) for n in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read with the DICOM reader for folders/DICOM files, NibabelReader for NIfTI."""
        names = ensure_tuple(data)
        for n in names:
            if not os.path.exists(str(n)):
                raise ValueError(f"{n}: file or folder not found.")
        kinds = {_is_dicom_source(n) for n in names}
        if len(kinds) > 1:
            raise ValueError(f"{[str(n) for n in names]}: cannot stack DICOM and NIfTI inputs into one image.")
        if kinds == {True}:
            return ("dicom", self.dicom.read(data, **kwargs))
        bad = [str(n) for n in names if not str(n).lower().endswith(_NIFTI_SUFFIXES)]
        if bad:
            raise ValueError(
                f"{bad[0]}: CTImageReader reads NIfTI (.nii, .nii.gz) and DICOM (files or series folders); "
                "for MetaImage (.mhd/.mha) use medbundle.io.metaimage.volume_readers(); for .nrrd install itk "
                "and use reader='ITKReader'."
            )
        return ("nifti", self.nifti.read(data, **kwargs))

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Delegate to the reader that read ``img``."""
        kind, obj = img
        return (self.dicom if kind == "dicom" else self.nifti).get_data(obj)


def ct_readers(**kwargs: Any) -> list[ImageReader]:
    """``[CTImageReader(**kwargs)]`` for ``LoadImaged(reader=...)``; bundle config:
    ``"reader": "$medbundle.io.ct_series.ct_readers()"``."""
    return [CTImageReader(**kwargs)]
