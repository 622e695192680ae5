"""A DICOMweb archive (a PACS such as Orthanc, dcm4chee or a cloud DICOM store) as a source and a destination.

Thin functions over ``dicomweb-client`` (the ``dicom`` extra), in the three DICOMweb services:

- QIDO-RS: :func:`search_series` lists a study's series (modality, number, instance count);
- WADO-RS: :func:`retrieve_series` / :func:`retrieve_study` write a study into a folder, one sub-folder per series
  (``series_000/00000.dcm``, ...): the layout the bundles' inference reads (the chest classifier takes every
  ``.dcm`` file as one image, the CT bundles take a folder of slices as one volume). Instances stream to disk one
  at a time, so memory does not grow with the size of the study. Files keep their transfer syntax
  (``transfer-syntax=*``) when the server offers it, so nothing is decompressed and compressed again;
- STOW-RS: :func:`store_instances` sends DICOM files (results such as Structured Reports) and returns the SOP
  Instance UIDs the archive accepted; a refused instance is an error naming the file and the reason.

Folder and file names are numbers, not UIDs: the bundles name their CSV/JSON rows by file name, and study or
series identifiers must not reach those outputs. Works with pydicom 2.4 and 3.x.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SeriesInfo", "connect", "retrieve_series", "retrieve_study", "search_series", "store_instances"]

_INSTALL = "pip install 'medbundle[dicom]'"
#: ask for each instance in its stored transfer syntax; a server that cannot send it so gets the default request
_ORIGINAL_SYNTAX = (("application/dicom", "*"),)


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study as QIDO-RS describes it.

    Attributes:
        series_uid: Series Instance UID.
        modality: Modality (``CT``, ``DX``, ``CR``, ``SR``, ...; ``""`` when the server does not say).
        number: Series Number, or None.
        n_instances: Number of Series Related Instances, or None when the server does not say.
        description: Series Description (``""`` when absent).
    """

    series_uid: str
    modality: str
    number: int | None
    n_instances: int | None
    description: str = ""


def connect(url: str, timeout: float = 60.0) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for the DICOMweb root ``url`` (e.g. ``http://host:8042/dicom-web``), each
    request allowed ``timeout`` seconds.

    Raises:
        ImportError: dicomweb-client is not installed (the message says how to install it).
    """
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError as e:
        raise ImportError(f"DICOMweb needs the dicomweb-client package ({e}); {_INSTALL}") from e
    try:
        return DICOMwebClient(url=url.rstrip("/"), timeout=timeout)
    except TypeError:  # dicomweb-client < 0.60 has no timeout (requests then waits as long as the server takes)
        return DICOMwebClient(url=url.rstrip("/"))


@contextmanager
def _service(client: Any, what: str) -> Iterator[None]:
    """Turn a failed request into ``ConnectionError("<server root>: <what> failed: <reason>")``: the server's root
    and the HTTP status only, not the request's URL, which holds the study's UID."""
    from requests import RequestException

    try:
        yield
    except RequestException as e:
        response = getattr(e, "response", None)
        reason = (f"HTTP {response.status_code} {response.reason}" if response is not None
                  else type(e).__name__.replace("Error", " error").strip().lower())
        raise ConnectionError(f"{client.base_url}: {what} failed: {reason}") from None


def _value(item: dict, tag: str) -> Any:
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON item, or None."""
    values = item.get(tag, {}).get("Value") or []
    return values[0] if values else None


def search_series(client: Any, study_uid: str) -> list[SeriesInfo]:
    """QIDO-RS ``/studies/{study_uid}/series``: the study's series, ordered by series number.

    Raises:
        LookupError: the archive holds no series of that study.
        ConnectionError: the request failed (the message names the server and the HTTP status, not the study).
    """
    with _service(client, "QIDO-RS search for the study's series"):
        found = client.search_for_series(
            study_instance_uid=study_uid, get_remaining=True,
            fields=["Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances", "SeriesDescription"])
    out = []
    for item in found:
        number, count = _value(item, "00200011"), _value(item, "00201209")
        out.append(SeriesInfo(series_uid=str(_value(item, "0020000E")), modality=str(_value(item, "00080060") or ""),
                              number=int(number) if number is not None else None,
                              n_instances=int(count) if count is not None else None,
                              description=str(_value(item, "0008103E") or "")))
    if not out:
        raise LookupError(f"{client.base_url}: the archive holds no series of the requested study")
    return sorted(out, key=lambda s: (s.number is None, s.number or 0))


def _save(ds: Any, path: Path) -> None:
    """Write a retrieved dataset as a DICOM Part 10 file in its own transfer syntax (pydicom 2.4 and 3.x)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, write_like_original=False)


def retrieve_series(client: Any, study_uid: str, series_uid: str, folder: str | os.PathLike) -> list[Path]:
    """WADO-RS: write every instance of one series to ``folder/00000.dcm``, ``00001.dcm``, ... (streamed).

    Returns:
        The files written, in the order the archive sent them.
    """
    from requests import HTTPError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with _service(client, "WADO-RS retrieval of a series"):
        try:
            instances = client.iter_series(study_uid, series_uid, media_types=_ORIGINAL_SYNTAX)
            ds = next(instances, None)
        except HTTPError:  # the server does not offer the stored syntax: its default (explicit VR little endian)
            instances = client.iter_series(study_uid, series_uid)
            ds = next(instances, None)
        while ds is not None:
            path = folder / f"{len(paths):05d}.dcm"
            _save(ds, path)
            paths.append(path)
            ds = next(instances, None)
    if not paths:
        raise LookupError(f"{client.base_url}: a series of the study has no instances to retrieve")
    return paths


def retrieve_study(
    client: Any, study_uid: str, folder: str | os.PathLike, modalities: Iterable[str] | None = None,
) -> list[tuple[SeriesInfo, Path]]:
    """QIDO-RS then WADO-RS: write the study's series (those of ``modalities`` only, when given) to
    ``folder/series_000``, ``series_001``, ... in series-number order.

    Returns:
        ``[(series info, series folder), ...]``; empty when no series has one of ``modalities``.
    """
    wanted = {m.upper() for m in modalities} if modalities is not None else None
    out = []
    for info in search_series(client, study_uid):
        if wanted is not None and info.modality.upper() not in wanted:
            continue
        target = Path(folder) / f"series_{len(out):03d}"
        retrieve_series(client, study_uid, info.series_uid, target)
        out.append((info, target))
    return out


def store_instances(client: Any, paths: Sequence[str | os.PathLike]) -> list[str]:
    """STOW-RS: send DICOM files to the archive (one request per file); returns their SOP Instance UIDs.

    Raises:
        ValueError: a file is not readable DICOM (the message names it).
        RuntimeError: the archive refused an instance (the message names the file and the failure reason).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    stored = []
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path))
        except (InvalidDicomError, OSError) as e:
            raise ValueError(f"{path}: not a readable DICOM file ({e})") from e
        with _service(client, f"STOW-RS of {Path(path).name}"):
            answer = client.store_instances([ds])
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            reason = failed[0].get("FailureReason")
            raise RuntimeError(f"{path}: the archive refused the instance (STOW-RS failure reason {reason})")
        accepted = [str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence") or []]
        if str(ds.SOPInstanceUID) not in accepted:
            raise RuntimeError(f"{path}: the archive's STOW-RS answer does not list the instance as stored")
        stored.append(str(ds.SOPInstanceUID))
    return stored
