"""Every common DICOM transfer syntax decodes through the X-ray reader; colour captures become luminance; files that
are not one grey picture are rejected in one line. Runs under pydicom 3 (.venv) and 2.4 (.venv-label) alike.

The files are made by ``tests/dicom_cases.py`` from one synthetic radiograph (8 and 12 stored bits) with pydicom,
dcmtk's encoders and Pillow's JPEG 2000 encoder.
"""

from __future__ import annotations

import numpy as np
import pytest
from dicom_cases import picture, write_cases

from medbundle.data.failures import root_cause
from medbundle.io.dicom import XrayDicomReader, XrayImageReader, is_dicom_file
from medbundle.io.dicom_pixels import LUMA_BT601, read_dicom, sniff_transfer_syntax

#: largest and mean absolute difference (0-255 display units) a lossy case may show against its original
LOSSY_MAX, LOSSY_MEAN = 8.0, 1.5


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("dicom_cases"))


def _need(case):
    if case.tool is not None and not case.path.is_file():
        pytest.skip(f"{case.tool} (dcmtk) is not installed")


def _read(path):
    reader = XrayDicomReader()
    return reader.get_data(reader.read(path))


def _expected_luminance() -> np.ndarray:
    """BT.601 luminance of the tinted RGB capture that dicom_cases writes, (W, H) like the reader."""
    g = picture(8).astype(np.float64)
    r = np.clip(g + 20, 0, 255)
    return (LUMA_BT601[0] * r + (LUMA_BT601[1] + LUMA_BT601[2]) * g).T


GRAY = ["gray8", "gray12", "implicit_le", "big_endian", "deflated", "no_meta", "rle", "jpeg_baseline",
        "jpeg_extended", "jpeg_lossless", "jpeg_lossless_8", "jpegls_lossless", "jpegls_near", "j2k_lossless",
        "j2k_lossy"]


@pytest.mark.parametrize("name", GRAY)
def test_every_transfer_syntax_decodes_to_the_original(cases, name):
    case = cases[name]
    _need(case)
    arr, meta = _read(case.path)
    ref, _ = _read(cases[case.original].path)
    assert arr.shape == ref.shape == (64, 64) and arr.dtype == np.float32
    diff = np.abs(arr.astype(np.float64) - ref)
    if case.kind == "lossless":
        np.testing.assert_array_equal(arr, ref)
    else:
        assert diff.max() <= LOSSY_MAX and diff.mean() <= LOSSY_MEAN, (diff.max(), diff.mean())
        assert diff.max() > 0  # really lossy: the test would notice a file that was not re-encoded
    assert "colour_converted" not in meta and meta["voi"] == "bits"
    assert ref.max() - ref.min() > 100  # the picture has contrast, so a wrong decode cannot pass


def test_file_without_preamble_or_meta_header(cases):
    case = cases["no_meta"]
    _need(case)
    head = case.path.read_bytes()[:132]
    assert head[128:132] != b"DICM" and b"\x02\x00" != head[:2]  # no preamble, no group 0002 first
    ds = read_dicom(case.path)
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2"  # implicit VR little endian, inferred
    # the mixed-format reader routes it by its .dcm name, or without one by its first element
    raw = case.path.with_name("no_meta_raw")
    raw.write_bytes(case.path.read_bytes())
    reader = XrayImageReader()
    for path in (case.path, raw):
        assert is_dicom_file(path)
        arr, _ = reader.get_data(reader.read(path))
        np.testing.assert_array_equal(arr, _read(cases["gray12"].path)[0])
    assert not is_dicom_file(cases["gray8"].path.with_name("nothing"))


@pytest.mark.parametrize("name", ["rgb", "ybr_full", "ybr_full_422"])
def test_colour_captures_become_luminance_with_a_note(cases, name):
    case = cases[name]
    _need(case)
    arr, meta = _read(case.path)
    photometric = {"rgb": "RGB", "ybr_full": "YBR_FULL", "ybr_full_422": "YBR_FULL_422"}[name]
    assert meta["colour_converted"] == f"{photometric}->luminance" and meta["voi"] == "colour"
    diff = np.abs(arr - _expected_luminance())
    tol = 1.0 if name != "ybr_full_422" else 4.0  # YBR_FULL rounds once; the 4:2:2 file is lossy JPEG
    assert diff.max() <= tol, diff.max()
    # the red tint counts with its BT.601 weight, not as a third of it or not at all
    assert abs(float(arr.mean() - picture(8).mean()) - 0.299 * 20) < 0.6


@pytest.mark.parametrize("name", ["palette", "multiframe", "sr", "rtplan", "waveform"])
def test_rejected_files_get_one_line_naming_file_and_reason(cases, name):
    case = cases[name]
    with pytest.raises(ValueError) as info:
        _read(case.path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{case.path}: ") and case.expect in msg, msg
    assert root_cause(info.value) is info.value  # what an inference run's skipped list shows


def test_sniffing_the_codec_of_an_encapsulated_frame():
    assert sniff_transfer_syntax(b"\xff\x4f\xff\x51\x00") == "1.2.840.10008.1.2.4.91"
    app0 = b"\xff\xe0\x00\x04ab"
    assert sniff_transfer_syntax(b"\xff\xd8" + app0 + b"\xff\xc0\x00\x0b") == "1.2.840.10008.1.2.4.50"
    assert sniff_transfer_syntax(b"\xff\xd8\xff\xc1\x00\x0b") == "1.2.840.10008.1.2.4.51"
    assert sniff_transfer_syntax(b"\xff\xd8\xff\xc3\x00\x0b") == "1.2.840.10008.1.2.4.70"
    # JPEG-LS: SOF55, then SOS with one component; the byte after the component table is NEAR
    sof55 = b"\xff\xf7\x00\x0b" + bytes(9)
    sos = lambda near: b"\xff\xda\x00\x08\x01\x01\x00" + bytes([near]) + b"\x00\x00"  # noqa: E731
    assert sniff_transfer_syntax(b"\xff\xd8" + sof55 + sos(0)) == "1.2.840.10008.1.2.4.80"
    assert sniff_transfer_syntax(b"\xff\xd8" + sof55 + sos(2)) == "1.2.840.10008.1.2.4.81"
    assert sniff_transfer_syntax(b"\x01\x00\x00\x00") is None


# ----------------------------------------------------------------------------------------------------------------------
# through the chest X-ray bundle's inference
# ----------------------------------------------------------------------------------------------------------------------
def test_meta_to_field_keeps_the_note():
    import torch
    from monai.data import MetaTensor

    from medbundle.transforms.fields import MetaToFieldd

    t = MetaToFieldd("image", meta_key="colour_converted", field="note")
    out = t({"image": MetaTensor(torch.zeros(1, 2, 2), meta={"colour_converted": "RGB->luminance"})})
    assert out["note"] == "RGB->luminance"
    assert t({"image": MetaTensor(torch.zeros(1, 2, 2))})["note"] == ""


def test_chest_bundle_predicts_every_decodable_file_and_lists_each_rejected_one(cases, tmp_path):
    """Every grey and colour case gets a prediction (lossless ones equal to the original's), each rejected file
    exactly one skipped line naming it and its reason."""
    import csv
    import json
    import shutil

    import torch
    from conftest import BUNDLES, config_list, run_bundle
    from monai.networks.nets import DenseNet121

    from medbundle.xray.adapters import CHESTXRAY14_FINDINGS

    cfg = BUNDLES / "chest_xray_classification" / "configs"
    folder = tmp_path / "incoming"
    folder.mkdir()
    present = {n: c for n, c in cases.items() if c.path.is_file()}
    for c in present.values():
        shutil.copy(c.path, folder / c.path.name)
    inverted = picture(8).max() - picture(8)  # a different picture: predictions must depend on the pixels
    from dicom_cases import write_gray

    write_gray(folder / "inverted.dcm", inverted, 8, "1.2.826.0.1.3680043.10.1234.99")
    (folder / "notdicom.dcm").write_text("plain text, no DICOM preamble")
    work = tmp_path / "bundle"
    (work / "models").mkdir(parents=True)
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=len(CHESTXRAY14_FINDINGS))
    torch.save(net.state_dict(), work / "models" / "model.pt")
    (work / "models" / "thresholds.json").write_text(json.dumps({"thresholds": dict.fromkeys(CHESTXRAY14_FINDINGS,
                                                                                              0.5)}))
    out = tmp_path / "pred"
    run_bundle(["run", "--config_file", config_list(cfg / "inference.json", cfg / "demo.json"),
                "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
                "--bundle_root", str(work), "--input", str(folder), "--output_dir", str(out),
                "--save_gradcam", "False"])
    rows = {r["file"].rsplit("/", 1)[-1][:-4]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    probs = {k: np.array([float(r[c]) for c in CHESTXRAY14_FINDINGS]) for k, r in rows.items()}
    rejected = {n for n, c in present.items() if c.kind == "reject"} | {"notdicom"}
    assert set(rows) == {n for n, c in present.items() if c.kind != "reject"} | {"inverted"}
    # how far another picture moves this (untrained) network's outputs; measured 0.013
    sensitivity = np.abs(probs["inverted"] - probs["gray8"]).max()
    assert sensitivity > 1e-3
    for name, case in present.items():
        if case.kind == "reject":
            continue
        diff = np.abs(probs[name] - probs[case.original]).max()
        if case.kind == "lossless":
            assert diff <= 2e-6, (name, diff)  # the CSV's 6 decimals
        elif case.kind == "lossy":
            assert diff <= 0.05 * sensitivity, (name, diff)  # measured at most 3.4e-5
        else:  # colour: the same luminance from RGB, YBR_FULL and 4:2:2 JPEG; the red tint moves it off gray8
            assert np.abs(probs[name] - probs["rgb"]).max() <= 0.05 * sensitivity, name
            assert 0 < diff <= 0.5 * sensitivity, (name, diff)
        note = {"colour": f"{str(read_dicom(case.path).PhotometricInterpretation)}->luminance"}.get(case.kind, "")
        assert rows[name]["note"] == note, name
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert sorted(s["file"].rsplit("/", 1)[-1][:-4] for s in skipped) == sorted(rejected)
    for s in skipped:
        name = s["file"].rsplit("/", 1)[-1][:-4]
        assert "\n" not in s["reason"] and s["file"] in s["reason"], s
        if name in cases:
            assert cases[name].expect in s["reason"], s
    records = json.loads((out / "predictions.json").read_text())
    notes = {r["file"].rsplit("/", 1)[-1]: r.get("note") for r in records["predictions"]}
    assert notes["rgb.dcm"] == "RGB->luminance" and notes["gray8.dcm"] is None
    assert len(records["skipped"]) == len(rejected)
