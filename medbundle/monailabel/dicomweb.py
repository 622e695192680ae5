"""MONAI Label (0.8.5) with a DICOMweb archive as its studies: ``--studies http://host:port/dicom-web``.

MONAI Label's DICOMweb datastore lists the archive's series (QIDO-RS, filtered by
``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``); an image id is a Series Instance UID. For ``/infer`` it downloads the
series (WADO-RS) into its cache as ``<cache>/<md5 of the URL>/<series uid>/<sop uid>.dcm`` and, by default,
converts it to NIfTI with SimpleITK. That conversion keeps the stored values only: a radiograph loses its VOI
window and MONOCHROME1 inversion, so the chest classifier would see another picture than in its own inference.
:func:`dicomweb_server_env` therefore turns the conversion off: the bundle gets the series folder and reads it
with its own readers, as its own inference reads the same files. The CT readers take a series folder as one
volume; :class:`SeriesFolderReader` (put around every bundle's readers by
:func:`medbundle.monailabel.app.prepare_model_dir`) hands a folder holding one file, a radiograph series, to the
radiograph reader as that file.

The datastore also looks for dcmqi's ``itkimage2segimage`` (it writes saved labels as DICOM SEG) and
downloads it from GitHub when it is neither on ``PATH`` nor in ``<app>/bin``: ``medbundle label-env`` installs
the ``dcmqi`` wheel, and :func:`~medbundle.monailabel.app.prepare_app` links its tool into ``<app>/bin``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import ImageReader

__all__ = ["DICOMWEB_SEARCH_FILTER", "SeriesFolderReader", "dicomweb_server_env", "series_folder_readers"]

#: the series MONAI Label lists by default here: every series (MONAI Label's own default lists CT only)
DICOMWEB_SEARCH_FILTER: dict[str, Any] = {}


def dicomweb_server_env(cache_dir: str | os.PathLike, search_filter: Mapping[str, Any] | None = None,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``monailabel start_server --studies <DICOMweb URL>`` (MONAI Label reads its settings from it).

    Args:
        cache_dir: where the datastore keeps downloaded series (MONAI Label's default is ``~/.cache/monailabel``).
        search_filter: QIDO-RS filter of the series MONAI Label lists (default :data:`DICOMWEB_SEARCH_FILTER`).
        base: the environment to add to (default ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    env.update({
        "MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI": "false",
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(Path(cache_dir).resolve()),
        "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps(dict(DICOMWEB_SEARCH_FILTER if search_filter is None
                                                              else search_filter)),
    })
    return env


def _single_file(path: Any) -> Any:
    """The one file in folder ``path`` (a one-instance series), else ``path`` unchanged (``LoadImage`` passes a
    tuple of names)."""
    name = path[0] if isinstance(path, (list, tuple)) and len(path) == 1 else path
    if isinstance(name, (str, os.PathLike)) and Path(name).is_dir():
        files = [p for p in Path(name).iterdir() if p.is_file()]
        if len(files) == 1:
            return str(files[0])
    return path


class SeriesFolderReader(ImageReader):
    """``reader`` for files and series folders: a folder that holds a single file is read as that file (MONAI
    Label's DICOMweb datastore hands a radiograph over as a one-instance series folder); everything else,
    folders of several slices included, goes to ``reader`` unchanged.

    Args:
        reader: the bundle's reader (e.g. :class:`medbundle.io.dicom.XrayImageReader`).
    """

    def __init__(self, reader: ImageReader) -> None:
        super().__init__()
        self.reader = reader

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return self.reader.verify_suffix(_single_file(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        return self.reader.read(_single_file(data), **kwargs)

    def get_data(self, img: Any) -> tuple[Any, dict]:
        return self.reader.get_data(img)


def series_folder_readers(readers: ImageReader | Sequence[ImageReader]) -> list[ImageReader]:
    """Each of ``readers`` inside a :class:`SeriesFolderReader` (a config's ``readers`` expression wrapped)."""
    items = [readers] if isinstance(readers, ImageReader) else list(readers)
    return [SeriesFolderReader(r) for r in items]
