"""Tests of medbundle.io.dicom (XrayDicomReader, XrayImageReader, xray_readers)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medbundle.io.dicom import XrayDicomReader, XrayImageReader, is_dicom_file, xray_readers
from medbundle.xray.synthetic import DICOM_VARIANTS, write_xray_dicom


def _picture(rows: int = 24, cols: int = 40) -> np.ndarray:
    """Asymmetric uint8 picture spanning 0..255 (so a transpose or flip shows)."""
    img = (np.arange(rows)[:, None] * 7 + np.arange(cols)[None, :] * 3) % 256
    img[0, 0], img[-1, -1], img[2, 30] = 0, 255, 200
    return img.astype(np.uint8)


def _write(path, pixels: np.ndarray, **attrs) -> None:
    """Write a minimal single-frame DICOM file with ``pixels`` stored as-is and extra attributes."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("<u2").tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


STORED = np.array([[0, 1000, 2000], [3000, 4000, 4095]])


def test_window_values_by_hand(tmp_path):
    # LINEAR window C=2048, W=4096: y = ((x - 2047.5) / 4095 + 0.5) * 255
    _write(tmp_path / "w.dcm", STORED, WindowCenter="2048", WindowWidth="4096")
    arr, meta = XrayDicomReader(reverse_indexing=False).get_data(XrayDicomReader().read(tmp_path / "w.dcm"))
    expected = np.array([[0.0, 62.2711, 124.5421], [186.8132, 249.0842, 255.0]])
    np.testing.assert_allclose(arr, expected, atol=1e-3)
    assert arr.dtype == np.float32 and arr.shape == (2, 3)
    assert meta["voi"] == "window" and meta["window_center"] == 2048.0 and meta["window_width"] == 4096.0


def test_narrow_window_clips_and_monochrome1_inverts(tmp_path):
    # window 1000..3000 (C=2000.5, W=2001): 0, 1000 -> 0; 2000 -> 127.5; 3000.. -> 255; then inverted
    _write(
        tmp_path / "m1.dcm",
        STORED,
        WindowCenter="2000.5",
        WindowWidth="2001",
        PhotometricInterpretation="MONOCHROME1",
    )
    arr, _ = XrayDicomReader(reverse_indexing=False).get_data(XrayDicomReader().read(tmp_path / "m1.dcm"))
    np.testing.assert_allclose(arr, [[255.0, 255.0, 127.5], [0.0, 0.0, 0.0]], atol=1e-3)


def test_rescale_then_no_window_bits_and_minmax(tmp_path):
    # slope 2, intercept -100: stored range 0..4095 -> modality -100..8090; "bits" maps that onto 0..255
    _write(tmp_path / "r.dcm", STORED, RescaleSlope="2", RescaleIntercept="-100")
    ds = XrayDicomReader().read(tmp_path / "r.dcm")
    bits, meta = XrayDicomReader(reverse_indexing=False).get_data(ds)
    np.testing.assert_allclose(bits, STORED / 4095.0 * 255.0, atol=1e-3)
    assert meta["voi"] == "bits" and meta["RescaleSlope"] == 2.0 and meta["RescaleIntercept"] == -100.0
    mm, meta = XrayDicomReader(reverse_indexing=False, no_window="minmax").get_data(ds)
    np.testing.assert_allclose(mm, STORED / 4095.0 * 255.0, atol=1e-3)  # this image spans 0..4095
    _write(tmp_path / "r2.dcm", STORED // 2 + 100)
    mm2, _ = XrayDicomReader(reverse_indexing=False, no_window="minmax").get_data(
        XrayDicomReader().read(tmp_path / "r2.dcm")
    )
    assert mm2.min() == 0.0 and mm2.max() == 255.0 and abs(mm2[0, 2] - 1000 / 2047 * 255) < 0.01


def test_voi_lut_sequence_is_applied(tmp_path):
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUTDescriptor: 256 entries, first maps 0, 8-bit output
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: an inverting LUT
    pixels = np.array([[0, 10, 255], [100, 200, 50]])
    _write(tmp_path / "lut.dcm", pixels, BitsStored=8, HighBit=7, VOILUTSequence=pydicom.Sequence([item]))
    arr, meta = XrayDicomReader(reverse_indexing=False).get_data(XrayDicomReader().read(tmp_path / "lut.dcm"))
    np.testing.assert_allclose(arr, 255.0 - pixels, atol=1e-3)
    assert meta["voi"] == "lut"


@pytest.mark.parametrize("variant", sorted(DICOM_VARIANTS))
def test_generator_variants_match_png_through_loadimage(tmp_path, variant):
    img = _picture()
    Image.fromarray(img).save(tmp_path / "p.png")
    write_xray_dicom(tmp_path / "p.dcm", img, variant=variant, uid_seed="t")
    png = LoadImage(image_only=True, reader="PILReader")(tmp_path / "p.png")
    dcm = LoadImage(image_only=True, reader=XrayDicomReader())(tmp_path / "p.dcm")
    assert tuple(png.shape) == (40, 24)  # PILReader gives (W, H)
    assert tuple(dcm.shape) == tuple(png.shape)
    assert float((dcm - png).abs().max()) <= 1.0
    np.testing.assert_array_equal(np.asarray(dcm.meta["spatial_shape"]), [40, 24])
    raw, _ = XrayDicomReader(reverse_indexing=False).get_data(XrayDicomReader().read(tmp_path / "p.dcm"))
    assert np.abs(raw - img).max() <= 1.0  # (rows, columns) without reverse_indexing
    if variant == 2:  # two windows: the first applies
        assert dcm.meta["window_center"] == 3056.5 and dcm.meta["window_width"] == 8161.0


def test_meta_has_no_patient_identifiers_and_spacing_follows_axes(tmp_path):
    _write(
        tmp_path / "id.dcm",
        STORED,
        PatientID="SECRET123",
        PatientName="Doe^Jane",
        PatientBirthDate="19800101",
        AccessionNumber="ACC999",
        InstitutionName="General Hospital",
        PixelSpacing=["0.2", "0.1"],  # between rows 0.2 mm, between columns 0.1 mm
        ViewPosition="PA",
    )
    img = LoadImage(image_only=True, reader=XrayDicomReader())(tmp_path / "id.dcm")
    meta = dict(img.meta)
    for key in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName"):
        assert key not in meta
    text = repr(meta)
    for secret in ("SECRET123", "Doe", "19800101", "ACC999", "General Hospital"):
        assert secret not in text
    np.testing.assert_allclose(meta["spacing"], [0.1, 0.2])  # axis 0 runs along columns after the transpose
    assert meta["ViewPosition"] == "PA" and meta["Modality"] == "DX" and meta["format"] == "DICOM"
    assert str(meta["filename_or_obj"]).endswith("id.dcm")
    assert np.isnan(meta["original_channel_dim"])
    _, meta2 = XrayDicomReader(reverse_indexing=False).get_data(XrayDicomReader().read(tmp_path / "id.dcm"))
    np.testing.assert_allclose(meta2["spacing"], [0.2, 0.1])


def test_errors_name_the_file(tmp_path):
    reader = XrayDicomReader()
    png = tmp_path / "not_dicom.png"
    Image.fromarray(_picture()).save(png)
    with pytest.raises(ValueError, match="not_dicom.png.*not a readable DICOM"):
        reader.read(png)
    with pytest.raises(ValueError, match="absent.dcm: file not found"):
        reader.read(tmp_path / "absent.dcm")
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(tmp_path / "nopix.dcm", write_like_original=False)
    with pytest.raises(ValueError, match=r"nopix.dcm: not an image: Secondary Capture Image object, modality DX \(no "):
        reader.read(tmp_path / "nopix.dcm")
    _write(tmp_path / "mono3.dcm", STORED, PhotometricInterpretation="HSV")
    with pytest.raises(ValueError, match="mono3.dcm: PhotometricInterpretation 'HSV' is not a grey or colour"):
        reader.read(tmp_path / "mono3.dcm")
    assert is_dicom_file(tmp_path / "mono3.dcm") and not is_dicom_file(png)
    with pytest.raises(ValueError, match="no_window"):
        XrayDicomReader(no_window="percentile")


def test_xray_readers_mixed_datalist_collates(tmp_path):
    img = _picture()
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(255 - img).save(tmp_path / "b.png")
    write_xray_dicom(tmp_path / "a.dcm", img, variant=1, uid_seed="a")
    write_xray_dicom(tmp_path / "b.dcm", 255 - img, variant=3, uid_seed="b")
    data = [{"image": str(tmp_path / n)} for n in ("a.png", "a.dcm", "b.png", "b.dcm")]
    readers = xray_readers()
    assert len(readers) == 1 and isinstance(readers[0], XrayImageReader)
    tf = Compose(
        [LoadImaged(keys="image", reader=readers, image_only=True), EnsureChannelFirstd(keys="image")]
    )
    batch = next(iter(DataLoader(Dataset(data, tf), batch_size=4)))
    x = batch["image"]
    assert tuple(x.shape) == (4, 1, 40, 24)
    assert float((x[0] - x[1]).abs().max()) <= 1.0 and float((x[2] - x[3]).abs().max()) <= 1.0
    assert float((x[0, 0] - x[2, 0]).abs().max()) == 255.0  # a and b are inverses: nothing was stretched
    np.testing.assert_allclose(x[0, 0].numpy(), img.T.astype(np.float32))
    assert XrayImageReader().verify_suffix("x.dcm") and XrayImageReader().verify_suffix("x.png")


def test_stacking_a_list_of_dicom_files(tmp_path):
    img = _picture()
    write_xray_dicom(tmp_path / "a.dcm", img, variant=0, uid_seed="a")
    write_xray_dicom(tmp_path / "b.dcm", img, variant=1, uid_seed="b")
    reader = XrayDicomReader()
    arr, meta = reader.get_data(reader.read([tmp_path / "a.dcm", tmp_path / "b.dcm"]))
    assert arr.shape == (2, 40, 24) and meta["original_channel_dim"] == 0
    np.testing.assert_allclose(arr[0], arr[1], atol=1.0)
