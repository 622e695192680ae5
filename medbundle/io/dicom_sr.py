"""Model results as DICOM Structured Reports (TID 1500 Measurement Reports), built with highdicom.

Three builders, each returning a ``pydicom.Dataset`` (a Comprehensive 3D SR) that references its source
instances by Study / Series / SOP Instance UID and copies the patient and study identity from them (the SR
belongs to the patient's record, so a PACS files it in the source study):

- :func:`classification_sr`: one finding per class with its probability and, where a threshold or a decision
  exists, the call (present / absent): any image, volume or slide classifier.
- :func:`detection_sr`: detector boxes with class, score and tracking identifier. 3D boxes in the patient frame
  (LPS mm, DICOM's patient coordinates, the frame of LUNA16's world coordinates) are volumetric regions, the
  axis-aligned ELLIPSOID inscribed in the box (its six points are the box faces' centres); 2D boxes in the pixels
  of one radiograph are planar regions, a closed POLYLINE rectangle in (column, row) image coordinates (the
  top-left corner of the top-left pixel is ``(0, 0)``, pixel ``i`` covers ``[i, i + 1)``, as the detectors' boxes).

Every report is marked as research output: VerificationFlag ``UNVERIFIED``, PreliminaryFlag ``PRELIMINARY``
and the series description :data:`RESEARCH_NOTE`; the model (name and version) is the observing device and
the algorithm of every finding. Scores are ``Certainty of finding`` (DCM
111012) in UCUM unit ``1`` (a probability in [0, 1]); the value is stored exactly (FloatingPointValue) and as
a decimal string. Class findings are coded as in ``finding_codes`` when given, else as the SNOMED CT concept
of the DICOM concept dictionary named like the class (``Cardiomegaly``, ``Pleural effusion``, ``Nodule``, ...),
else in the private scheme :data:`PRIVATE_SCHEME` with the class name as meaning (:func:`finding_code`).

highdicom (with pydicom 3) is imported inside the functions; without it they raise ImportError naming the
extra to install. :func:`read_source_headers` reads the headers of a DICOM file or series folder without
pixels (the image readers strip identifiers from their metadata, so the SR writer reads them again);
:func:`write_report` does all of it for one item (headers, report, file), in whichever thread runs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PRIVATE_SCHEME",
    "RESEARCH_NOTE",
    "check_installed",
    "classification_sr",
    "detection_sr",
    "finding_code",
    "is_dicom_source",
    "read_source_headers",
    "save_sr",
    "write_report",
]

#: coding scheme of class names without a standard code (a private scheme, "99" prefix as DICOM PS3.16 allows)
PRIVATE_SCHEME = "99MEDBUNDLE"
#: said in every report's series description
RESEARCH_NOTE = "For research use; not verified by a physician"

_INSTALL = "writing DICOM SR needs highdicom (with pydicom 3): pip install 'medbundle[dicom]'"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def check_installed() -> None:
    """Raise ImportError saying what to install when highdicom or pydicom 3 is missing (without importing
    highdicom, which takes a second)."""
    import importlib.util

    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:
        raise ImportError(f"{_INSTALL} (found pydicom {pydicom.__version__})")
    if importlib.util.find_spec("highdicom") is None:
        raise ImportError(f"{_INSTALL} (highdicom is not installed)")


def _hd():
    """highdicom and pydicom's code dictionary, or ImportError saying what to install."""
    check_installed()
    try:
        import highdicom
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from exc
    return highdicom, codes


# ---------------------------------------------------------------------------------------------------- sources
def _is_dicom_file(path: Path) -> bool:
    from medbundle.io.dicom import is_dicom_file

    return path.is_file() and (path.name.lower().endswith(_DICOM_SUFFIXES) or is_dicom_file(path))


def is_dicom_source(source: str | os.PathLike) -> bool:
    """True for a DICOM file (``.dcm``/``.dicom``/``.dic`` or the ``DICM`` magic) or a folder holding such files."""
    path = Path(str(source))
    if path.is_dir():
        return any(_is_dicom_file(p) for p in path.iterdir())
    return _is_dicom_file(path)


def _series_headers(folder: Path) -> list[Any]:
    """Headers of the series the CT reader reads from ``folder`` (:func:`medbundle.io.ct_series.select_series`)."""
    import pydicom

    from medbundle.io.ct_series import select_series

    files, _ = select_series(folder)
    return [pydicom.dcmread(str(p), stop_before_pixels=True, force=True) for p in files]


def read_source_headers(source: str | os.PathLike) -> list[Any]:
    """The headers (no pixel data) of a DICOM file, or of the slices of the series a CT reader takes from a folder.

    Raises:
        ValueError: ``source`` is neither a DICOM file nor a folder of DICOM files, or a header lacks the UIDs an SR
            must reference (the message names the file).
    """
    import pydicom

    path = Path(str(source))
    if path.is_dir():
        headers = _series_headers(path)
    elif _is_dicom_file(path):
        headers = [pydicom.dcmread(str(path), stop_before_pixels=True, force=True)]
    else:
        headers = []
    if not headers:
        raise ValueError(f"{source}: not a DICOM file or a folder of DICOM files; no SR can reference it.")
    for ds in headers:
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
                   if not str(getattr(ds, k, "") or "")]
        if missing:
            raise ValueError(f"{getattr(ds, 'filename', source)}: DICOM header without {', '.join(missing)}; "
                             "an SR cannot reference it.")
    return headers


def save_sr(sr: Any, path: str | os.PathLike) -> Path:
    """Write an SR dataset as a DICOM Part 10 file (folders created, written to a temporary name then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sr.save_as(str(tmp), enforce_file_format=True)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------- codes
def _snomed_keyword(name: str) -> str:
    """``"pleural_effusion"`` / ``"Pleural effusion"`` -> ``"PleuralEffusion"``, the keyword style of pydicom's
    concept dictionary (a word already in capitals stays so)."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name) if w]
    return "".join(w if w.isupper() else w[:1].upper() + w[1:].lower() for w in words)


def finding_code(name: str, finding_codes: Mapping[str, Any] | None = None) -> Any:
    """The coded concept of a class.

    ``finding_codes[name]`` when given; else the SNOMED CT concept of pydicom's DICOM concept dictionary whose
    keyword is the class name itself (``Cardiomegaly``, ``Mass``, ``Nodule``, ``Pneumothorax``, ``Edema``,
    ``Effusion``, ``Pleural effusion``, ``Fibrosis``, ``Normal``, ``Tumor``, ...: names only, no guessing of
    synonyms); else a private code (:data:`PRIVATE_SCHEME`) with the class name as meaning.
    """
    hd, codes = _hd()
    if finding_codes and name in finding_codes:
        code = finding_codes[name]
        return code if isinstance(code, hd.sr.CodedConcept) else hd.sr.CodedConcept.from_code(code)
    keyword = _snomed_keyword(name)
    if keyword:
        try:
            return hd.sr.CodedConcept.from_code(getattr(codes.SCT, keyword))
        except AttributeError:  # not a DICOM SNOMED CT concept
            pass
    return hd.sr.CodedConcept(value=name[:64], scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def _procedure(modality: str) -> Any:
    _, codes = _hd()
    return {"CT": codes.LN.CTUnspecifiedBodyRegion, "CR": codes.LN.XRUnspecifiedBodyRegion,
            "DX": codes.LN.XRUnspecifiedBodyRegion, "SM": codes.DCM.WholeSlideImaging}.get(
        modality.upper(), codes.SCT.ImagingProcedure)


def _score(value: float, algorithm: Any) -> Any:
    hd, codes = _hd()
    return hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=float(value), unit=codes.UCUM.NoUnits,
                             algorithm_id=algorithm)


# ---------------------------------------------------------------------------------------------------- report
def _algorithm(name: str, version: str) -> Any:
    hd, _ = _hd()
    return hd.sr.AlgorithmIdentification(name=str(name), version=str(version), manufacturer="medbundle")


def _observation_context(name: str, version: str) -> Any:
    hd, codes = _hd()
    from pydicom.uid import generate_uid

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["medbundle", str(name), str(version)]), name=str(name)[:64],
        manufacturer_name="medbundle", model_name=f"{name} {version}"[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


#: Type 2 patient and study attributes the SR copies from its first source (empty where the source has none)
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def _with_type2(ds: Any) -> Any:
    """``ds``, or a copy with the missing :data:`_TYPE2` attributes present and empty."""
    missing = [k for k in _TYPE2 if k not in ds]
    if not missing:
        return ds
    import copy

    ds = copy.deepcopy(ds)
    for k in missing:
        setattr(ds, k, "")
    return ds


def _report(headers: Sequence[Any], groups: Sequence[Any], algorithm_name: str, algorithm_version: str,
            series_number: int) -> Any:
    """The Comprehensive 3D SR of a TID 1500 report with ``groups``, evidence ``headers``, marked as research."""
    hd, _ = _hd()
    from pydicom.uid import generate_uid

    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm_name, algorithm_version),
        procedure_reported=_procedure(str(getattr(headers[0], "Modality", ""))),
        imaging_measurements=list(groups))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_with_type2(headers[0]), *headers[1:]], content=report[0], series_instance_uid=generate_uid(),
        series_number=int(series_number), sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="medbundle", is_complete=True, is_final=False, is_verified=False,
        series_description=RESEARCH_NOTE)
    if any(e.keyword == "CodingSchemeDesignator" and e.value == PRIVATE_SCHEME for e in sr.iterall()):
        from pydicom.dataset import Dataset

        scheme = Dataset()
        scheme.CodingSchemeDesignator = PRIVATE_SCHEME
        scheme.CodingSchemeName = "medbundle class names"
        scheme.CodingSchemeResponsibleOrganization = "medbundle"
        sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _tracking(label: str, uid_source: Sequence[str]) -> Any:
    hd, _ = _hd()
    from pydicom.uid import generate_uid

    return hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=list(uid_source)), identifier=label[:64])


def classification_sr(
    source_headers: Sequence[Any],
    probabilities: Mapping[str, float],
    *,
    thresholds: Mapping[str, float] | None = None,
    calls: Mapping[str, bool] | None = None,
    algorithm_name: str,
    algorithm_version: str,
    finding_codes: Mapping[str, Any] | None = None,
    series_number: int = 9901,
) -> Any:
    """A TID 1500 report of one classified image, volume or slide: one finding per class with its probability.

    Args:
        source_headers: The pydicom headers of the classified instances (one radiograph, every slice of a series,
            the instances of a slide); the first gives patient, study and modality. Each is referenced as evidence;
            a single instance is also each finding's source image.
        probabilities: ``{class name: probability}`` in [0, 1]; one measurement group per class, in this order.
        thresholds: ``{class name: threshold}``: the call is present where ``probability >= threshold``.
        calls: ``{class name: present}``, explicit calls (e.g. a multi-class decision); overrides ``thresholds``.
            Classes with neither have no call.
        algorithm_name, algorithm_version: The model (e.g. the bundle's name and version).
        finding_codes: Optional ``{class name: pydicom Code}``; see :func:`finding_code`.
        series_number: Series Number of the SR.

    Returns:
        pydicom.Dataset: a Comprehensive 3D SR; save it with :func:`save_sr`.

    Raises:
        ImportError: highdicom is missing.
        ValueError: no headers, or no probabilities.
    """
    hd, codes = _hd()
    if not source_headers:
        raise ValueError("classification_sr: no source headers to reference.")
    if not probabilities:
        raise ValueError("classification_sr: no class probabilities.")
    algorithm = _algorithm(algorithm_name, algorithm_version)
    single = len(source_headers) == 1
    sources = ([hd.sr.SourceImageForMeasurementGroup.from_source_image(source_headers[0])] if single else None)
    sop = str(source_headers[0].SOPInstanceUID)
    groups = []
    for i, (name, p) in enumerate(probabilities.items()):
        code = finding_code(name, finding_codes)
        present = None
        if calls is not None and name in calls:
            present = bool(calls[name])
        elif thresholds is not None and name in thresholds:
            present = float(p) >= float(thresholds[name])
        evaluations = None if present is None else [hd.sr.QualitativeEvaluation(
            name=code, value=codes.SCT.Present if present else codes.SCT.Absent)]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(f"class {i + 1}: {name}", ["medbundle", sop, name]),
            finding_type=code, algorithm_id=algorithm, measurements=[_score(p, algorithm)],
            qualitative_evaluations=evaluations, source_images=sources))
    return _report(source_headers, groups, algorithm_name, algorithm_version, series_number)


def _class_name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def _ellipsoid_points(box_cccwhd: np.ndarray) -> np.ndarray:
    """The six face centres of a ``[x, y, z, w, h, d]`` box: the axis end points of its inscribed ellipsoid, the
    longest axis first (DICOM lists the major axis first)."""
    b = np.asarray(box_cccwhd, dtype=np.float64).reshape(6)
    points = []
    for axis in sorted(range(3), key=lambda a: -b[3 + a]):
        for sign in (-1.0, 1.0):
            p = b[:3].copy()
            p[axis] += sign * b[3 + axis] / 2.0
            points.append(p)
    return np.asarray(points)


def _rectangle(box_xyxy: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64).reshape(4))
    return np.asarray([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def _volume_region(headers: Sequence[Any]) -> tuple[str, Any]:
    """``("referenced_volume_surface", box -> VolumeSurface)`` in the series' frame of reference."""
    hd, _ = _hd()
    first = headers[0]
    frame = str(getattr(first, "FrameOfReferenceUID", "") or "")
    if not frame:
        raise ValueError(f"{getattr(first, 'filename', 'source')}: no FrameOfReferenceUID; boxes in the patient "
                         "frame cannot be placed.")
    series = hd.sr.SourceSeriesForSegmentation(str(first.SeriesInstanceUID))
    return "referenced_volume_surface", lambda box: hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID, graphic_data=_ellipsoid_points(box),
        frame_of_reference_uid=frame, source_series=series)


def _image_region(headers: Sequence[Any]) -> tuple[str, Any]:
    """``("referenced_region", box -> ImageRegion)`` on the one source image."""
    hd, _ = _hd()
    if len(headers) != 1:
        raise ValueError(f"pixel boxes refer to one image, got {len(headers)} source instances.")
    image = hd.sr.SourceImageForRegion(str(headers[0].SOPClassUID), str(headers[0].SOPInstanceUID))
    return "referenced_region", lambda box: hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_rectangle(box), source_image=image)


def detection_sr(
    source_headers: Sequence[Any],
    boxes: np.ndarray,
    scores: Sequence[float],
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] = ("nodule",),
    *,
    algorithm_name: str,
    algorithm_version: str,
    finding_codes: Mapping[str, Any] | None = None,
    series_number: int = 9902,
) -> Any:
    """A TID 1500 report of detections: each box a region with its class (finding type), score and tracking id.

    Args:
        source_headers: The headers of the source: the slices of a series (3D boxes; they share a Frame of Reference
            UID), or the one image (2D boxes).
        boxes: ``(K, 6)``: ``[x, y, z, w, h, d]`` (centre and size) in DICOM patient coordinates, LPS mm; each box
            becomes a volumetric group (TID 1411) whose region is the ELLIPSOID with the box faces' centres as axis
            end points (the box is their bounding box), referencing the source series. ``(K, 4)``: ``[x_min, y_min,
            x_max, y_max]`` in pixels of the stored image (``x`` = column, pixel ``i`` covers ``[i, i + 1)``, DICOM's
            image coordinates); each box becomes a planar group (TID 1410) whose region is the closed POLYLINE
            ``(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)`` on the source image.
        scores: ``(K,)`` detector scores in [0, 1].
        labels: ``(K,)`` class indices into ``class_names`` (all 0 if None).
        class_names: The detector's classes (see :func:`finding_code`).
        algorithm_name, algorithm_version: The model.
        finding_codes, series_number: See :func:`classification_sr`.

    Groups are tracked as ``"<class> <n>"`` (``n`` = 1 for the first box as given); no boxes give a report without
    groups.

    Raises:
        ValueError: no headers; boxes neither ``(K, 6)`` nor ``(K, 4)``, or not one score and label per box; 3D boxes
            with headers without a FrameOfReferenceUID; 2D boxes with more than one source instance.
    """
    hd, _ = _hd()
    if not source_headers:
        raise ValueError("detection_sr: no source headers to reference.")
    boxes_a = np.asarray(boxes, dtype=np.float64)
    if boxes_a.ndim != 2 or boxes_a.shape[1] not in (4, 6):
        raise ValueError(f"detection_sr: boxes must be (K, 6) in the patient frame or (K, 4) in pixels, got "
                         f"{boxes_a.shape}.")
    scores_a = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_a = np.zeros(len(boxes_a), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if not (len(scores_a) == len(labels_a) == len(boxes_a)):
        raise ValueError(f"detection_sr: {len(boxes_a)} boxes, {len(scores_a)} scores, {len(labels_a)} labels.")
    volume = boxes_a.shape[1] == 6
    region_key, region = (_volume_region if volume else _image_region)(source_headers)
    group_type = (hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations if volume
                  else hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
    algorithm = _algorithm(algorithm_name, algorithm_version)
    ref = str(source_headers[0].SeriesInstanceUID if volume else source_headers[0].SOPInstanceUID)
    groups = []
    for k, (box, score, label) in enumerate(zip(boxes_a, scores_a, labels_a), start=1):
        name = _class_name(int(label), class_names)
        groups.append(group_type(
            tracking_identifier=_tracking(f"{name} {k}", ["medbundle", ref, str(k)]), **{region_key: region(box)},
            finding_type=finding_code(name, finding_codes), algorithm_id=algorithm,
            measurements=[_score(score, algorithm)]))
    return _report(source_headers, groups, algorithm_name, algorithm_version, series_number)


#: the report builders :func:`write_report` knows
_BUILDERS = {"classification": classification_sr, "detection": detection_sr}


def write_report(kind: str, source: str | os.PathLike, path: str | os.PathLike, algorithm_name: str,
                 algorithm_version: str, fields: Mapping[str, Any]) -> str:
    """Read the headers of ``source``, build its report and save it to ``path``; returns ``path``.

    Args:
        kind: ``"classification"`` (:func:`classification_sr`) or ``"detection"`` (:func:`detection_sr`).
        source: The item's DICOM file or series folder (:func:`read_source_headers`).
        path: The SR file to write.
        algorithm_name, algorithm_version: The model.
        fields: The builder's other arguments (``probabilities`` and ``calls``; ``boxes``, ``scores``, ``labels``,
            ``class_names``).
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown report kind {kind!r}; expected one of {sorted(_BUILDERS)}.")
    headers = read_source_headers(source)
    sr = _BUILDERS[kind](headers, algorithm_name=algorithm_name, algorithm_version=algorithm_version, **fields)
    return str(save_sr(sr, path))
