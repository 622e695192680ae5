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
    assert reason.startswith("series 1 (SeriesInstanceUID ") and "12 axial slices, 1 mm) chosen of 2 series" in reason
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
