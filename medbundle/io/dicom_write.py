"""DICOM writing shared by the synthetic generators, for pydicom 2.4 and 3.x alike."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ds_string", "new_dataset", "save_dicom", "set_synthetic_patient"]


def ds_string(value: float) -> str:
    """A DICOM DS (decimal string) value, at most 16 characters."""
    return f"{value:.10g}"


def new_dataset(sop_class_uid: str, sop_instance_uid: str):
    """An empty dataset with file meta for Explicit VR Little Endian and the SOP class/instance set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def set_synthetic_patient(ds, patient_id: str, name: str, body_part: str = "CHEST") -> None:
    """Fill the patient and study identity of a synthetic image: ``patient_id``, ``Synthetic^<name>``, a fixed
    birth and study date, sex "O" and the body part."""
    ds.PatientID = patient_id
    ds.PatientName = f"Synthetic^{name}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20000101"
    ds.BodyPartExamined = body_part


def save_dicom(ds, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (pydicom 3 ``enforce_file_format``; pydicom 2 encoding flags)."""
    import pydicom

    path = Path(path)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.x: encoding comes from these attributes
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)
    return path
