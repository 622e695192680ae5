"""CT volumes from DICOM series folders and NIfTI files, slices in position order.

What this adds over MONAI:

- :class:`CTSeriesReader`: MONAI's ``PydicomReader`` (1.4-1.6) stacks the slices of a series folder in
  ``InstanceNumber`` order. Real series do not always number slices in position order (several
  acquisitions in one series, renumbered exports), and then the volume comes out scrambled. This reader
  orders the slices by their position along the slice normal (``ImagePositionPatient`` projected on the
  cross product of the ``ImageOrientationPatient`` vectors) and is safe to share between threads (MONAI's
  keeps per-call state on the reader between ``read`` and ``get_data``).
- :class:`CTImageReader` / :func:`ct_readers`: one reader for datalists that mix NIfTI files and DICOM
  series folders (``.mhd`` files: :mod:`medbundle.io.metaimage`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader, PydicomReader
from monai.utils import ensure_tuple

__all__ = ["CTImageReader", "CTSeriesReader", "ct_readers", "dicom_position_order"]

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


class _Series(list):
    """A list of pydicom Datasets (one series) plus the file names and folder they came from."""

    filenames: list[str]
    folder: str


class CTSeriesReader(PydicomReader):
    """MONAI ``PydicomReader`` that stacks a series folder in slice-position order and is thread-safe.

    Same arguments and outputs as :class:`monai.data.PydicomReader` (array ``(X, Y, Z)`` after its
    ``swap_ij``, affine in RAS by default, HU via RescaleSlope/Intercept as float32). Differences:

    - slices are ordered by :func:`dicom_position_order`, whatever their ``InstanceNumber`` (the
      Datasets' ``InstanceNumber`` is rewritten in memory to that order, which is what MONAI stacks by);
    - ``read`` returns the per-call state (file names) with the data instead of keeping it on the
      reader, so one reader may serve several threads (CacheDataset / ThreadDataLoader workers).

    Only one series folder (or file list) per call is supported.
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read a DICOM file, a list of slice files, or a series folder (see ``PydicomReader.read``)."""
        names = ensure_tuple(data)
        if len(names) == 1 and Path(str(names[0])).is_dir():
            folder = str(names[0])
            worker = copy.copy(self)
            img = PydicomReader.read(worker, folder, **kwargs)
            if not isinstance(img, list):  # a folder with a single slice
                return img
            files = [str(f) for f in worker.filenames[0]]
        elif len(names) > 1 and all(Path(str(n)).is_file() for n in names):
            worker = copy.copy(self)
            img = [PydicomReader.read(worker, str(n), **kwargs) for n in names]
            folder, files = str(Path(str(names[0])).parent), [str(n) for n in names]
        else:
            return PydicomReader.read(copy.copy(self), data, **kwargs)
        order = dicom_position_order(img, folder)
        series = _Series(img[i] for i in order)
        series.filenames = [files[i] for i in order]
        series.folder = folder
        for rank, ds in enumerate(series, start=1):
            ds.InstanceNumber = rank
        return series

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Stack the slices read by :meth:`read` into ``(array, meta)`` as ``PydicomReader.get_data``."""
        worker = copy.copy(self)
        if isinstance(img, _Series):
            worker.has_series = True
            worker.filenames = [img.filenames]
            return PydicomReader.get_data(worker, list(img))
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
