"""Tests of medbundle.io.ct_series: a folder with several series is split by series and one is chosen by rule."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

from medbundle.ct.synthetic import write_ct_dicom_series
from medbundle.io.ct_series import CTSeriesReader, list_series, select_series


def _volume(nz: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1000, size=(12, 10, nz)).astype(np.int16)


def _two_series_folder(tmp_path, thick_slices: int = 6, thin_slices: int = 12, thin_mm: float = 1.0):
    """One folder with a thick (5 mm) and a thin series of the same region, plus a non-image SR file."""
    rng = np.random.default_rng(0)
    both = tmp_path / "both"
    both.mkdir()
    vols = {}
    for name, nz, mm in (("thick", thick_slices, 5.0), ("thin", thin_slices, thin_mm)):
        vol = _volume(nz, seed=nz)
        affine = np.diag([0.7, 0.7, mm, 1.0])
        for p in write_ct_dicom_series(tmp_path / name, vol, affine, f"case-{name}", rng, encoding=1):
            shutil.move(str(p), both / f"{name}_{p.name}")
        vols[name] = vol
    _write_sr(both / "report.dcm")
    return both, vols


def _write_sr(path) -> None:
    from pydicom.uid import generate_uid

    from medbundle.io.dicom_write import new_dataset, save_dicom

    ds = new_dataset("1.2.840.10008.5.1.4.1.1.88.33", generate_uid())  # Comprehensive SR
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    save_dicom(ds, path)


def test_select_series_prefers_most_slices_and_says_why(tmp_path):
    folder, vols = _two_series_folder(tmp_path)
    found = list_series(folder)
    assert sorted(s.frames for s in found) == [6, 12]  # the SR is not an image series
    files, reason = select_series(folder)
    assert len(files) == 12 and all("thin_" in f for f in files)
    assert reason.startswith("series 1 (CT, 12 axial slices, 1 mm) chosen of 2 series"), reason
    assert not any(s.uid in reason for s in found)  # no UID: the line reaches logs and predictions.csv
    assert "passed over: series 1" in reason and "6 axial slices, 5 mm" in reason
    assert "Synthetic" not in reason and "SYN-" not in reason  # no patient name or id
    # files come in slice order (inferior to superior)
    import pydicom

    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z)


def test_select_series_ties_go_to_the_thinner_series(tmp_path):
    folder, _ = _two_series_folder(tmp_path, thick_slices=8, thin_slices=8, thin_mm=2.0)
    files, reason = select_series(folder)
    assert all("thin_" in f for f in files) and "8 axial slices, 2 mm) chosen" in reason


def test_reader_reads_the_chosen_series_and_logs_it(tmp_path, caplog):
    folder, vols = _two_series_folder(tmp_path)
    load = Compose([LoadImage(reader=CTSeriesReader(), image_only=True), EnsureChannelFirst(), Orientation("RAS")])
    with caplog.at_level("INFO", logger="medbundle.io"):
        img = load(str(folder))
    np.testing.assert_array_equal(img[0].numpy(), vols["thin"])
    assert float(img.affine[2, 2]) == pytest.approx(1.0)
    assert "chosen of 2 series" in img.meta["series_selection"]
    assert any("chosen of 2 series" in r.getMessage() for r in caplog.records)
    assert isinstance(img, torch.Tensor)


def test_select_series_without_images_names_the_folder(tmp_path):
    _write_sr(tmp_path / "only_sr.dcm")
    with pytest.raises(ValueError, match=r"no DICOM image series in this folder"):
        select_series(tmp_path)


def test_enhanced_multiframe_ct_reads_as_the_same_volume_as_its_classic_series(tmp_path):
    """highdicom's Legacy Converted Enhanced CT of a classic series: same voxels, spacing and affine."""
    try:
        from highdicom.legacy import LegacyConvertedEnhancedCTImage
    except ImportError:  # highdicom needs pydicom 3
        pytest.skip("highdicom (pydicom 3) writes the enhanced file")
    import pydicom
    from pydicom.uid import generate_uid

    vol = _volume(7, seed=3)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-20.0, 15.0, -40.0]
    files = write_ct_dicom_series(tmp_path / "classic", vol, affine, "enh", np.random.default_rng(1), encoding=1)
    legacy = [pydicom.dcmread(f) for f in files]
    legacy = legacy[::-1]  # frames written superior to inferior: the reader must sort them
    enhanced = LegacyConvertedEnhancedCTImage(legacy, series_instance_uid=generate_uid(), series_number=2,
                                              sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "volume.dcm")
    load = Compose([LoadImage(reader=CTSeriesReader(), image_only=True), EnsureChannelFirst(), Orientation("RAS")])
    classic = load(str(tmp_path / "classic"))
    for source in (tmp_path / "enhanced" / "volume.dcm", tmp_path / "enhanced"):  # the file, or its folder
        img = load(str(source))
        assert img.shape == (1, 12, 10, 7)
        np.testing.assert_array_equal(img[0].numpy(), vol)
        np.testing.assert_allclose(img.affine.numpy(), classic.affine.numpy(), atol=1e-4)
        np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
    files, reason = select_series(tmp_path / "enhanced")
    assert len(files) == 1 and "7 axial slices" in reason


def test_ct_bundle_predicts_the_chosen_series_and_says_which(tmp_path):
    """CT bundle inference over a folder holding two series: one prediction, equal to the chosen series' own, with
    the choice and its reason in the note column."""
    import csv
    import json

    from conftest import BUNDLES, config_list, run_bundle
    from monai.bundle import ConfigParser

    cfg = BUNDLES / "ct_volume_classification" / "configs"
    folder, _ = _two_series_folder(tmp_path)
    for kind in ("thin", "thick"):
        (tmp_path / f"only_{kind}").mkdir()
        for f in folder.glob(f"{kind}_*.dcm"):
            shutil.copy(f, tmp_path / f"only_{kind}" / f.name)
    work = tmp_path / "bundle"
    (work / "models").mkdir(parents=True)
    parser = ConfigParser()
    parser.read_config([str(cfg / "inference.json"), str(cfg / "demo.json")])
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "models" / "model.pt")
    names = parser.get_parsed_content("class_names")
    (work / "models" / "thresholds.json").write_text(json.dumps({"thresholds": dict.fromkeys(names, 0.5)}))
    rows = {}
    for source in (folder, tmp_path / "only_thin", tmp_path / "only_thick"):
        out = tmp_path / f"pred_{source.name}"
        run_bundle(["run", "--config_file", config_list(cfg / "inference.json", cfg / "demo.json"),
                    "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
                    "--bundle_root", str(work), "--input", str(source), "--output_dir", str(out),
                    "--save_gradcam", "False"])
        (rows[source.name],) = list(csv.DictReader(open(out / "predictions.csv")))
    both, thin = rows["both"], rows["only_thin"]
    assert "12 axial slices, 1 mm) chosen of 2 series" in both["note"] and "passed over" in both["note"]
    assert thin["note"].endswith("the only image series in the folder")
    assert [both[c] for c in names] == [thin[c] for c in names]  # the thin series is what was inferred
    assert [both[c] for c in names] != [rows["only_thick"][c] for c in names]  # and the choice matters


@pytest.mark.parametrize(("option", "tol"), [("+e1", 0.0), ("+ee", 12.0)])
def test_compressed_ct_series_reads_in_hu(tmp_path, option, tol):
    """A CT series in JPEG lossless (exact) and 12-bit JPEG extended (lossy; GDCM directly under pydicom 3)."""
    import subprocess

    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg (dcmtk) is not installed")
    vol = _volume(5, seed=4)
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    files = write_ct_dicom_series(tmp_path / "raw", vol, affine, "jpeg", np.random.default_rng(2), encoding=0)
    (tmp_path / "jpeg").mkdir()
    for f in files:
        extra = ["+sr", "+q", "95"] if option == "+ee" else []
        subprocess.run(["dcmcjpeg", option, *extra, str(f), str(tmp_path / "jpeg" / f.name)], check=True,
                       capture_output=True)
    load = Compose([LoadImage(reader=CTSeriesReader(), image_only=True), EnsureChannelFirst(), Orientation("RAS")])
    img = load(str(tmp_path / "jpeg"))
    err = np.abs(img[0].numpy() - vol)
    assert err.max() <= tol and err.mean() <= tol / 4 + 1e-9, (err.max(), err.mean())
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
