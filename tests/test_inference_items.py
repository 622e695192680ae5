"""What inference picks up when pointed at a folder: image files by name, DICOM files by content whatever their name."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from dicom_cases import picture, write_gray

from medbundle.data import inference_items


def test_folder_scan_finds_dicom_files_without_a_dicom_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_gray(src / "a.dcm", picture(8), 8, "1.2.826.0.1.3680043.8.498.71")
    pacs = tmp_path / "export"
    (pacs / "series1").mkdir(parents=True)
    shutil.copy(src / "a.dcm", pacs / "series1" / "IM0001")  # PACS/CD export names
    shutil.copy(src / "a.dcm", pacs / "series1" / "1.2.840.113619.2.1.7")
    (pacs / "notes.txt").write_text("report text, not an image\n")
    (pacs / "DICOMDIR.csv").write_text("a,b\n1,2\n")
    np.save(pacs / "array.npy", np.zeros(4))
    (pacs / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an image by its name
    got = sorted(it["image"] for it in inference_items(pacs))
    assert got == sorted(str(p) for p in (pacs / "series1" / "IM0001", pacs / "series1" / "1.2.840.113619.2.1.7",
                                          pacs / "x.png"))
    # 3D: the folder holding DICOM files (named or not) is one series item
    assert [it["image"] for it in inference_items(pacs, dicom_series=True)] == [str(pacs / "series1"),
                                                                                str(pacs / "x.png")]
    shutil.copy(src / "a.dcm", pacs / "IM0002")  # now the top folder itself directly holds a DICOM file: one series
    assert [it["image"] for it in inference_items(pacs, dicom_series=True)] == [str(pacs)]


def test_folder_scan_finds_a_dicom_file_written_without_preamble_and_meta(tmp_path):
    if shutil.which("dcmconv") is None:
        pytest.skip("dcmconv (dcmtk) not installed")
    write_gray(tmp_path / "a.dcm", picture(8), 8, "1.2.826.0.1.3680043.8.498.72")
    out = tmp_path / "scan"
    out.mkdir()
    subprocess.run(["dcmconv", "-F", "+ti", str(tmp_path / "a.dcm"), str(out / "0001")], check=True)
    assert (out / "0001").read_bytes()[128:132] != b"DICM"
    assert [it["image"] for it in inference_items(out)] == [str(out / "0001")]
