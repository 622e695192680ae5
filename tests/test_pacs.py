"""A real PACS in the loop: Orthanc with its DICOMweb plugin, started here on 127.0.0.1 (``tests/orthanc_server.py``).

One study holds a DX chest radiograph and a 24-slice CT series of the same synthetic patient. The tests check
the DICOMweb client of ``medbundle.io.dicomweb`` against it (QIDO lists both series, WADO writes them by series with
the stored pixels and UIDs, STOW files a new instance under its study) and then the round trip of
``medbundle pacs-infer``: the chest classifier and the radiograph lesion detector take only the radiograph, the CT
classifier and the nodule detector only the CT series, each writes its DICOM SR, and the SR is found in Orthanc
(QIDO, Modality SR) under the source study, referencing the source images, with the probabilities of the bundle's
``predictions.csv`` (classifiers) or as many regions as the bundle's box file (detectors). The networks are
freshly initialised (``models/model.pt`` saved untrained): the round trip needs only the bundles' own inference.
The client tests also pass under pydicom 2.4 and dicomweb-client 0.59
(``.venv-label/bin/python -m pytest tests/test_pacs.py -k "qido or stow or modalit"``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import BUNDLES, fresh_model
from orthanc_server import free_port, require_orthanc, running_orthanc

require_orthanc()


from medbundle.cli import main  # noqa: E402
from medbundle.ct.synthetic import write_ct_dicom_series  # noqa: E402
from medbundle.io.dicomweb import connect, retrieve_study, search_series, store_instances  # noqa: E402
from medbundle.pacs import bundle_modalities  # noqa: E402
from medbundle.xray.synthetic import render_chest_image, write_xray_dicom  # noqa: E402

CXR = "chest_xray_classification"
CT = "ct_volume_classification"
NODULES = "lung_nodule_retinanet_detection"
LESIONS = "chest_xray_lesion_detection"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _phantom_ct() -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 40 x 24 RAS volume in HU (air around a water cylinder with a denser blob) and its affine."""
    x, y, _ = np.meshgrid(np.arange(40), np.arange(40), np.arange(24), indexing="ij")
    vol = np.full((40, 40, 24), -1000, dtype=np.int16)
    vol[(x - 20) ** 2 + (y - 20) ** 2 < 15**2] = 0
    vol[(x - 14) ** 2 + (y - 22) ** 2 < 4**2] = 300
    return vol, np.diag([2.0, 2.0, 3.0, 1.0])


@pytest.fixture(scope="module")
def study(orthanc, tmp_path_factory):
    """Upload one study (a DX radiograph and a CT series) to Orthanc; returns its files and UIDs."""
    root = tmp_path_factory.mktemp("study")
    picture = render_chest_image(np.zeros(14), size=96, rng=np.random.default_rng(0))
    dx_path = write_xray_dicom(root / "dx.dcm", picture, variant=1, uid_seed="medbundle-pacs-test")
    dx = pydicom.dcmread(dx_path)
    vol, affine = _phantom_ct()
    ct_paths = write_ct_dicom_series(root / "ct", vol, affine, "pacs01", np.random.default_rng(0))
    for path in ct_paths:  # the same patient and study as the radiograph
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.PatientID, ds.PatientName = dx.StudyInstanceUID, dx.PatientID, dx.PatientName
        ds.save_as(path)
    answers = orthanc.upload([dx_path, *ct_paths])
    assert len({a["ParentStudy"] for a in answers}) == 1
    ct = [pydicom.dcmread(p) for p in ct_paths]
    return {"uid": str(dx.StudyInstanceUID), "dx": dx, "ct": ct, "dx_path": dx_path}


def _sop_uids(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.glob("*.dcm")}


def test_qido_lists_the_series_and_wado_writes_them_by_series(orthanc, study, tmp_path):
    client = connect(orthanc.dicomweb)
    series = search_series(client, study["uid"])
    assert sorted((s.modality, s.n_instances) for s in series) == [("CT", 24), ("DX", 1)]
    assert {s.series_uid for s in series} == {str(study["dx"].SeriesInstanceUID), str(study["ct"][0].SeriesInstanceUID)}

    got = retrieve_study(client, study["uid"], tmp_path / "ct_only", modalities=["CT"])
    assert [(info.modality, folder.name) for info, folder in got] == [("CT", "series_000")]
    folder = got[0][1]
    assert sorted(p.name for p in folder.iterdir()) == [f"{k:05d}.dcm" for k in range(24)]
    assert _sop_uids(folder) == {str(ds.SOPInstanceUID) for ds in study["ct"]}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in study["ct"]}
    for path in folder.glob("*.dcm"):  # the stored pixels, transfer syntax and position, unchanged
        ds = pydicom.dcmread(path)
        src = by_uid[str(ds.SOPInstanceUID)]
        np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
        assert ds.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in src.ImagePositionPatient]

    got = retrieve_study(client, study["uid"], tmp_path / "all")
    assert sorted(info.modality for info, _ in got) == ["CT", "DX"]
    dx_folder = next(f for info, f in got if info.modality == "DX")
    np.testing.assert_array_equal(pydicom.dcmread(dx_folder / "00000.dcm").pixel_array, study["dx"].pixel_array)
    assert retrieve_study(client, study["uid"], tmp_path / "none", modalities=["MR"]) == []


def test_stow_files_a_new_instance_under_its_study(orthanc, study, tmp_path):
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(study["dx_path"])  # a copy in a study of its own: the round trips below see one DX
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = 99
    ds.save_as(tmp_path / "copy.dcm")
    client = connect(orthanc.dicomweb)
    assert store_instances(client, [tmp_path / "copy.dcm"]) == [str(ds.SOPInstanceUID)]
    (found,) = search_series(client, str(ds.StudyInstanceUID))
    assert (found.series_uid, found.number, found.modality) == (str(ds.SeriesInstanceUID), 99, "DX")
    (tmp_path / "not.dcm").write_bytes(b"not DICOM")
    with pytest.raises(ValueError, match="not.dcm: not a readable DICOM file"):
        store_instances(client, [tmp_path / "not.dcm"])


def test_bundle_modalities_come_from_the_metadata():
    assert bundle_modalities(CXR) == {"CR", "DX"}
    assert bundle_modalities("chest_xray_lesion_detection") == {"CR", "DX"}  # its metadata says CR
    assert bundle_modalities(CT) == {"CT"}


def test_pacs_infer_without_a_series_of_the_modality_says_so(orthanc, study, tmp_path, capsys):
    rc = main(["pacs-infer", CXR, "--dicomweb", orthanc.dicomweb, "--study", study["uid"], "--modality", "MR",
               "--workdir", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "the study has no series of modality MR for chest_xray_classification" in err
    assert study["uid"] not in err and "SYN" not in err  # no study or patient identifier in the message


def test_an_unreachable_archive_is_one_line_without_the_study(study, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    assert main(["pacs-infer", CXR, "--dicomweb", url, "--study", study["uid"], "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {url}: QIDO-RS search for the study's series failed: connection error\n"


def test_pacs_infer_without_an_sr_stores_nothing_and_says_why(orthanc, study, tmp_path, capsys):
    client = connect(orthanc.dicomweb)
    before = client.search_for_series(study_instance_uid=study["uid"], search_filters={"Modality": "SR"})
    work = tmp_path / "bundle"
    fresh_model(CXR, work, {})
    rc = main(["pacs-infer", CXR, "--dicomweb", orthanc.dicomweb, "--study", study["uid"], "--bundle-root", str(work),
               "--config", str(BUNDLES / CXR / "configs" / "demo.json"), "--set", "save_gradcam=False",
               "--set", "write_sr=False", "--workdir", str(tmp_path / "pacs")])
    assert rc == 1
    assert "chest_xray_classification wrote no DICOM SR under" in capsys.readouterr().err
    assert len(list(csv.DictReader(open(tmp_path / "pacs" / "output" / "predictions.csv")))) == 1  # it did infer
    assert client.search_for_series(study_instance_uid=study["uid"], search_filters={"Modality": "SR"}) == before


def _walk_uids(ds, keyword: str) -> set[str]:
    """Every value of ``keyword`` anywhere in ``ds`` (nested sequences included)."""
    found = set()
    for elem in ds.iterall():
        if elem.keyword == keyword:
            found.add(str(elem.value))
    return found


#: the detectors' per-item box files in a pacs-infer output (the folders are numbered, so are the keys), the key of
#: their boxes, and whether the SR holds them as volumetric (3D) or planar (2D) regions
DETECTORS = {NODULES: ("series_000_boxes.json", "boxes", "volumetric"),
             LESIONS: ("00000_boxes.json", "detections", "planar")}


@pytest.mark.parametrize("bundle", [CXR, CT, NODULES, LESIONS])
def test_pacs_infer_stores_the_bundles_sr_in_the_source_study(orthanc, study, tmp_path, capsys, bundle):
    import highdicom as hd

    work = tmp_path / "bundle"
    cfg = BUNDLES / bundle / "configs"
    fresh_model(bundle, work, {})
    rc = main(["pacs-infer", bundle, "--dicomweb", orthanc.dicomweb, "--study", study["uid"],
               "--bundle-root", str(work), "--config", str(cfg / "demo.json"), "--set", "save_gradcam=False",
               "--workdir", str(tmp_path / "pacs")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    output = tmp_path / "pacs" / "output"
    srs = sorted((output / "sr").glob("*.dcm"))
    assert len(srs) == 1  # only the series of the bundle's modality: one radiograph, or one CT volume
    written = pydicom.dcmread(srs[0])
    assert f"stored 1 SR(s) in the study: {written.SOPInstanceUID}" in out
    assert study["uid"] not in out and "SYN" not in out

    # the archive files it under the source study, as an SR series, and it references the inferred images
    client = connect(orthanc.dicomweb)
    sr_series = client.search_for_series(study_instance_uid=study["uid"], search_filters={"Modality": "SR"})
    uids = [s["0020000E"]["Value"][0] for s in sr_series]
    assert str(written.SeriesInstanceUID) in uids
    (stored,) = client.retrieve_series(study["uid"], str(written.SeriesInstanceUID))
    assert stored.SOPInstanceUID == written.SOPInstanceUID and stored.Modality == "SR"
    assert stored.StudyInstanceUID == study["uid"] and stored.PatientID == study["dx"].PatientID
    sources = [study["dx"]] if bundle in (CXR, LESIONS) else study["ct"]
    referenced = _walk_uids(stored, "ReferencedSOPInstanceUID")
    assert {str(ds.SOPInstanceUID) for ds in sources} <= referenced
    # and it holds the bundle's own results (read back from Orthanc's copy with highdicom)
    content = hd.sr.Comprehensive3DSR.from_dataset(stored).content
    if bundle in DETECTORS:
        name, key, kind = DETECTORS[bundle]
        boxes = json.loads((output / name).read_text())[key]
        groups = getattr(content, f"get_{kind}_roi_measurement_groups")()
        assert len(groups) == len(boxes) > 0
        return

    (row,) = list(csv.DictReader(open(output / "predictions.csv")))
    from sr_readback import class_findings

    found = class_findings(hd.sr.Comprehensive3DSR.from_dataset(stored))
    probs = {k.lower(): float(v) for k, v in row.items()
             if k not in ("file", "note", "predicted") and not k.endswith("_positive")}
    assert set(found) == set(probs) and len(probs) == (14 if bundle == CXR else 3)
    for name, p in probs.items():
        assert found[name][0] == pytest.approx(p, abs=1e-6), name
