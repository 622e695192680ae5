"""DICOM SR outputs (TID 1500 in a Comprehensive 3D SR) of the four image bundles, through ``python -m monai.bundle``.

Each bundle runs inference with ``--write_sr True`` on tiny synthetic DICOM inputs (and one non-DICOM input) with
a checkpoint of its own network at a fixed random initialisation: the test is about what is written, not about
what a model learnt. For each SR: ``dciodvfy`` reports no error, highdicom reads it back to the findings, scores
and boxes of the bundle's CSV/JSON outputs, it references the source study, series and instances and carries the
patient's identity, and neither the CSV/JSON outputs nor the log carry the patient's id or name.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import BUNDLES, config_list, run_bundle
from PIL import Image

from medbundle.ct.synthetic import write_ct_dicom_series
from medbundle.handlers.dicom_sr import SRWriter
from medbundle.io.dicom_sr import PRIVATE_SCHEME, RESEARCH_NOTE, classification_sr, read_source_headers
from medbundle.xray.synthetic import write_xray_dicom

hd = pytest.importorskip("highdicom")
from pydicom.sr.codedict import codes  # noqa: E402 - after the highdicom check
from sr_readback import class_findings, score  # noqa: E402

PATIENT_NUMBER = 4242  # synthetic radiographs: PatientID SYN00004242, PatientName Synthetic^00004242
CASE = "p7731"  # synthetic CT series: PatientID SYN-p7731, PatientName Synthetic^p7731


def _bundle_args(bundle: str, work, inputs, out, *extra: str) -> list[str]:
    cfg = BUNDLES / bundle / "configs"
    return ["run", "--config_file", config_list(cfg / "inference.json", cfg / "demo.json"),
            "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
            "--bundle_root", str(work), "--input", str(inputs), "--output_dir", str(out), "--write_sr", "True",
            *extra]


def _random_checkpoint(bundle: str, work, overrides: dict) -> None:
    """``<work>/models/model.pt``: the bundle's network (demo sizes) at a fixed random initialisation."""
    from monai.bundle import ConfigParser

    cfg = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / "inference.json"), str(cfg / "demo.json")])
    parser.read_meta(str(cfg / "metadata.json"))
    for k, v in {"bundle_root": str(work), "device": "$torch.device('cpu')", **overrides}.items():
        parser[k] = v
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    (work / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), work / "models" / "model.pt")


def _dciodvfy_errors(path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any("Comprehensive3DSR" in line for line in lines), lines[:5]
    return [line for line in lines if line.startswith("Error")]


def _check_sr(path, source_files, texts: list[str]):
    """Validate ``path``, check it references ``source_files`` and carries their patient; return it read back."""
    assert not _dciodvfy_errors(path)
    sr = hd.sr.srread(str(path))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    src = [read_source_headers(f)[0] for f in source_files]
    assert sr.PatientID == src[0].PatientID and str(sr.PatientName) == str(src[0].PatientName)
    assert sr.StudyInstanceUID == src[0].StudyInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    assert RESEARCH_NOTE in sr.SeriesDescription
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence) == sorted(
        s.SOPInstanceUID for s in src)
    for text in texts:  # identifiers stay out of the logs, CSV and JSON
        assert str(src[0].PatientID) not in text and str(src[0].PatientName) not in text
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    return sr


def _texts(out, proc) -> list[str]:
    files = [p for p in out.rglob("*") if p.suffix in (".csv", ".json") and p.is_file()]
    return [proc.stdout + proc.stderr, *(p.read_text() for p in files)]


# ------------------------------------------------------------------------------------------------- builder
def test_finding_codes_are_snomed_concepts_named_like_the_class_else_private():
    from medbundle.io.dicom_sr import finding_code

    assert (finding_code("Cardiomegaly").scheme_designator, finding_code("Cardiomegaly").value) == ("SCT", "287272002")
    assert finding_code("pleural_effusion").value == codes.SCT.PleuralEffusion.value == "60046008"
    assert finding_code("Effusion").value == "41699000" and finding_code("nodule").meaning == "Nodule"
    for name in ("Pleural_Thickening", "Nodule/Mass", "ILD", "consolidation"):  # no DICOM SNOMED concept of that name
        c = finding_code(name)
        assert (c.scheme_designator, c.value, c.meaning) == (PRIVATE_SCHEME, name, name)
    assert finding_code("Mass", {"Mass": codes.SCT.Nodule}).value == codes.SCT.Nodule.value  # the caller's map wins


def test_classification_sr_builds_calls_from_thresholds_and_codes_classes(tmp_path):
    path = write_xray_dicom(tmp_path / "x.dcm", np.full((16, 20), 100, np.uint8), patient_number=PATIENT_NUMBER)
    sr = classification_sr(read_source_headers(path), {"Nodule": 0.8, "Pleural_Thickening": 0.2, "Hernia": 0.6},
                           thresholds={"Nodule": 0.5, "Pleural_Thickening": 0.1}, algorithm_name="cls",
                           algorithm_version="1.2")
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    assert [g.finding_type.scheme_designator for g in groups] == ["SCT", PRIVATE_SCHEME, PRIVATE_SCHEME]
    assert groups[0].finding_type.value == codes.SCT.Nodule.value
    assert [score(g) for g in groups] == [0.8, 0.2, 0.6]
    assert [[q.value.meaning for q in g.get_qualitative_evaluations()] for g in groups] == [["Present"], ["Present"],
                                                                                             []]
    texts = {e.value for e in sr.iterall() if e.keyword == "TextValue"}  # algorithm name and version, TID 4019
    assert {"cls", "1.2"} <= texts
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.png").write_bytes(b"not DICOM")
    for source in (tmp_path / "empty", tmp_path / "a.png"):
        with pytest.raises(ValueError, match="not a DICOM file|no DICOM image series"):
            read_source_headers(source)


@pytest.mark.parametrize("workers", [0, 1])
def test_sr_writer_skips_non_dicom_and_logs_a_report_that_fails(tmp_path, caplog, workers):
    image = write_xray_dicom(tmp_path / "img.dcm", np.full((16, 20), 100, np.uint8), patient_number=PATIENT_NUMBER)
    (tmp_path / "pic.png").write_bytes(b"png")
    off = SRWriter(tmp_path / "off")
    off.write("img", image, "classification", probabilities={"a": 0.5})
    assert off.written == [] and not (tmp_path / "off").exists()
    sr = SRWriter(tmp_path / "sr", enabled="True", algorithm_name="m", algorithm_version="2", workers=workers)
    with caplog.at_level("INFO", logger="medbundle.handlers"):
        sr.write(str(image), image, "classification", probabilities={"a": 0.25}, calls={"a": False})
        sr.write("pic", tmp_path / "pic.png", "classification", probabilities={"a": 0.5})
        sr.write("flat", image, "detection", boxes=np.zeros((1, 6)), scores=[0.5])  # 3D boxes need a frame
        sr.wait()
    assert sr.written == [tmp_path / "sr" / "img.dcm"]
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["img.dcm"]
    assert "no DICOM SR for pic: its source is not DICOM" in caplog.text
    assert "no DICOM SR for flat: ValueError" in caplog.text and "FrameOfReferenceUID" in caplog.text
    assert "SYN00004242" not in caplog.text
    assert class_findings(hd.sr.srread(str(sr.written[0]))) == {"a": (0.25, "Absent")}


# ------------------------------------------------------------------------------------------------- classifiers
def test_chest_xray_classification_sr(tmp_path):
    bundle = "chest_xray_classification"
    work, inputs, out = tmp_path / "bundle", tmp_path / "inputs", tmp_path / "pred"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (80, 96)).astype(np.uint8)
    dcm = write_xray_dicom(inputs / "film.dcm", picture, variant=1, patient_number=PATIENT_NUMBER)
    Image.fromarray(picture).save(inputs / "film_png.png")
    _random_checkpoint(bundle, work, {})
    proc = run_bundle(_bundle_args(bundle, work, inputs, out, "--save_gradcam", "False"))
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["film.dcm"]
    assert "no DICOM SR for" in proc.stderr + proc.stdout and "film_png.png" in proc.stderr + proc.stdout
    sr = _check_sr(out / "sr" / "film.dcm", [dcm], _texts(out, proc))
    pred = json.loads((out / "predictions.json").read_text())
    (row,) = [r for r in pred["predictions"] if r["file"].endswith("film.dcm")]
    found = class_findings(sr)
    assert list(found) == [c.lower() for c in row["probabilities"]]
    for c, p in row["probabilities"].items():
        assert found[c.lower()] == (pytest.approx(p, abs=1e-6), "Present" if c in row["positive"] else "Absent")
    for g in sr.content.get_image_measurement_groups():  # each finding names the radiograph it was made on
        (image,) = [item for item in g[0].ContentSequence if item.ValueType == "IMAGE"]
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == read_source_headers(dcm)[0].SOPInstanceUID


def test_ct_volume_classification_sr(tmp_path):
    bundle = "ct_volume_classification"
    work, inputs, out = tmp_path / "bundle", tmp_path / "inputs", tmp_path / "pred"
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 400, (40, 36, 20)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    affine[:3, 3] = [-30.0, -27.0, -25.0]
    files = write_ct_dicom_series(inputs / "chest_series", volume, affine, CASE, rng, numbering="scrambled")
    _random_checkpoint(bundle, work, {})
    proc = run_bundle(_bundle_args(bundle, work, inputs, out, "--save_gradcam", "False"))
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["chest_series.dcm"]
    sr = _check_sr(out / "sr" / "chest_series.dcm", files, _texts(out, proc))
    (row,) = csv.DictReader(open(out / "predictions.csv"))
    names = json.loads((BUNDLES / bundle / "configs" / "inference.json").read_text())["class_names"]
    found = class_findings(sr)
    assert list(found) == [c.lower() for c in names]
    for c in names:
        assert found[c.lower()] == (pytest.approx(float(row[c]), abs=1e-6),
                                    "Present" if c == row["predicted"] else "Absent")


# ------------------------------------------------------------------------------------------------- detectors
def test_lung_nodule_detection_sr(tmp_path):
    bundle = "lung_nodule_retinanet_detection"
    work, inputs, out = tmp_path / "bundle", tmp_path / "inputs", tmp_path / "pred"
    rng = np.random.default_rng(2)
    volume = np.full((40, 40, 24), -900, np.int16)
    volume[16:24, 18:26, 10:14] = 50  # a bright blob, so boxes have something to sit on
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-40.0, -35.0, -60.0]
    files = write_ct_dicom_series(inputs / "scan_a", volume, affine, CASE, rng)
    tiny = ["--spacing", "[2.0, 2.0, 3.0]", "--val_patch_size", "[64, 64, 48]",
            "--box_selector", "{'score_thresh': 0.0, 'topk_candidates_per_level': 100, 'nms_thresh': 0.22, "
            "'detections_per_img': 6}", "--max_marks_per_scan", "4"]
    _random_checkpoint(bundle, work, {})
    proc = run_bundle(_bundle_args(bundle, work, inputs, out, *tiny))
    sr = _check_sr(out / "sr" / "scan_a.dcm", files, _texts(out, proc))
    boxes = json.loads((out / "scan_a_boxes.json").read_text())
    marks = list(csv.DictReader(open(out / "results.csv")))
    assert len(boxes["boxes"]) == 6 and len(marks) == 4 and "LPS" in boxes["coordinate_system"]
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [f"nodule {k}" for k in range(1, 5)]
    assert len({g.tracking_uid for g in groups}) == 4
    frame = read_source_headers(files[0])[0].FrameOfReferenceUID
    for g, mark, box in zip(groups, marks, boxes["boxes"]):
        assert g.finding_type.value == codes.SCT.Nodule.value
        assert score(g) == pytest.approx(float(mark["probability"]), abs=1e-9)
        surface = g.roi
        assert surface.graphic_type.value == "ELLIPSOID" and surface.frame_of_reference_uid == frame
        assert surface.source_series_for_segmentation.value == read_source_headers(files[0])[0].SeriesInstanceUID
        points = np.asarray(surface.graphic_data, dtype=np.float64).reshape(6, 3)
        lo, hi = points.min(axis=0), points.max(axis=0)
        # the ellipsoid's axis end points are the box faces' centres: its bounding box is the world box (LPS mm)
        np.testing.assert_allclose((lo + hi) / 2, box[:3], atol=1e-3)
        np.testing.assert_allclose(hi - lo, box[3:], atol=1e-3)
        np.testing.assert_allclose((lo + hi) / 2, [float(mark[k]) for k in ("coordX", "coordY", "coordZ")],
                                   atol=1e-3)


def test_chest_xray_lesion_detection_sr(tmp_path):
    bundle = "chest_xray_lesion_detection"
    work, inputs, out = tmp_path / "bundle", tmp_path / "inputs", tmp_path / "pred"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 120, (90, 120)).astype(np.uint8)  # rows, columns: not square, so x and y differ
    picture[30:50, 70:95] = 230
    dcm = write_xray_dicom(inputs / "film_b.dcm", picture, patient_number=PATIENT_NUMBER, pixel_spacing=0.4)
    Image.fromarray(picture).save(inputs / "film_png.png")
    _random_checkpoint(bundle, work, {"image_size": 64})
    selector = "{'score_thresh': 0.0, 'nms_thresh': 0.3, 'detections_per_img': 5}"
    proc = run_bundle(_bundle_args(bundle, work, inputs, out, "--image_size", "64", "--score_threshold", "0.0",
                                   "--box_selector", selector))
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["film_b.dcm"]
    sr = _check_sr(out / "sr" / "film_b.dcm", [dcm], _texts(out, proc))
    dets = json.loads((out / "film_b_boxes.json").read_text())["detections"]
    rows = [r for r in csv.DictReader(open(out / "detections.csv")) if r["image_id"] == "film_b"]
    assert len(dets) == len(rows) == 5
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [f"nodule {k}" for k in range(1, 6)]
    sop = read_source_headers(dcm)[0].SOPInstanceUID
    for g, det, row in zip(groups, dets, rows):
        assert g.finding_type.meaning.lower() == det["class"] == row["class"]
        assert score(g) == pytest.approx(float(row["score"]), abs=1e-9)
        region = g.roi
        assert region.graphic_type.value == "POLYLINE"
        (image,) = [item for item in region.ContentSequence if item.ValueType == "IMAGE"]
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
        points = np.asarray(region.value, dtype=np.float64).reshape(-1, 2)  # (column, row)
        assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])
        box = [*points.min(axis=0), *points.max(axis=0)]
        np.testing.assert_allclose(box, det["box"], atol=1e-3)
        np.testing.assert_allclose(box, [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")], atol=1e-3)
        assert box[2] <= picture.shape[1] + 1e-3 and box[3] <= picture.shape[0] + 1e-3
