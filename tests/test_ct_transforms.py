"""Tests of medbundle.ct.transforms: CT windows, body masks and position-sorting DICOM series readers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, PydicomReader
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, LoadImaged, Orientation, ScaleIntensityRange
from scipy import ndimage

from medbundle.ct.synthetic import write_ct_dicom_series, write_nifti
from medbundle.ct.transforms import WINDOW_PRESETS, BodyMaskd, CTWindowd, body_mask, window_range
from medbundle.io.ct_series import CTImageReader, CTSeriesReader, ct_readers


# ----------------------------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------------------------
def test_presets_are_the_standard_ones():
    assert WINDOW_PRESETS == {
        "lung": (-600.0, 1500.0),
        "mediastinum": (40.0, 400.0),
        "bone": (400.0, 3500.0),
        "brain": (40.0, 80.0),
        "abdomen": (40.0, 400.0),
    }
    assert window_range("lung") == (-1350.0, 150.0)
    assert window_range("brain") == (0.0, 80.0)
    assert window_range("bone", level=500.0) == (-1250.0, 2250.0)


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_window_edges_and_centre(preset):
    level, width = WINDOW_PRESETS[preset]
    hu = np.array([[level - width / 2, level - width / 4, level, level + width / 2, level - width, level + width]])
    out = CTWindowd("img", preset=preset)({"img": hu})["img"]
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.5, 1.0, 0.0, 1.0]], atol=1e-6)
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_window_equals_monai_scale_intensity_range(preset):
    level, width = WINDOW_PRESETS[preset]
    hu = torch.from_numpy(np.random.default_rng(1).uniform(-2000, 4000, size=(1, 7, 6, 5)).astype(np.float32))
    ours = CTWindowd("img", preset=preset, b_min=-1.0, b_max=2.0)({"img": hu})["img"]
    ref = ScaleIntensityRange(level - width / 2, level + width / 2, -1.0, 2.0, clip=True)(hu)
    torch.testing.assert_close(ours, ref)
    assert float(ours.min()) == -1.0 and float(ours.max()) == 2.0  # the range spans all windows


def test_window_explicit_level_width_override_and_no_clip():
    hu = np.array([[-200.0, 0.0, 100.0, 300.0]])
    out = CTWindowd("x", preset="lung", level=50.0, width=100.0)({"x": hu})["x"]
    np.testing.assert_allclose(out, [[0.0, 0.0, 1.0, 1.0]])
    out = CTWindowd("x", preset=None, level=0.0, width=200.0, clip=False)({"x": hu})["x"]
    np.testing.assert_allclose(out, [[-0.5, 0.5, 1.0, 2.0]])


def test_window_errors():
    with pytest.raises(ValueError, match=r"unknown CT window preset 'liver'.*'abdomen', 'bone', 'brain', 'lung'"):
        CTWindowd("x", preset="liver")
    with pytest.raises(ValueError, match="needs a level and a width"):
        CTWindowd("x", preset=None, level=40.0)
    with pytest.raises(ValueError, match="width must be > 0"):
        CTWindowd("x", preset=None, level=40.0, width=0.0)
    with pytest.raises(ValueError, match="unknown CT window preset 'soft'"):
        CTWindowd("x", presets=["lung", "soft"])


def test_multi_window_stacks_channels_and_keeps_meta():
    hu = np.array([-1350.0, -600.0, 40.0, 150.0, 400.0, 2150.0], dtype=np.float32).reshape(1, 6, 1, 1)
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(hu), affine=affine)
    out = CTWindowd("image", presets=["lung", "mediastinum", "bone"])({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 6, 1, 1)
    torch.testing.assert_close(out.affine, affine)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [0, 0.5, 1390 / 1500, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(out[1, :, 0, 0].numpy(), [0, 0, 0.5, 310 / 400, 1, 1], atol=1e-6)
    np.testing.assert_allclose(
        out[2, :, 0, 0].numpy(), [0, 750 / 3500, (40 + 1350) / 3500, (150 + 1350) / 3500, 0.5, 1.0], atol=1e-6
    )
    two = CTWindowd("image", presets=["lung", "bone"])({"image": np.concatenate([hu, hu])})["image"]
    assert two.shape == (4, 6, 1, 1) and isinstance(two, np.ndarray)


# ----------------------------------------------------------------------------------------------------------
# body mask
# ----------------------------------------------------------------------------------------------------------
def _phantom(shape=(48, 40, 20)):
    """Body ellipse (40 HU) with two lungs (-850 HU), a trachea from the right lung out of the top slice,
    a separate table below the body and air specks; returns (hu, body_truth, lungs)."""
    x, y = np.meshgrid(np.arange(shape[0]) - 23.5, np.arange(shape[1]) - 21.5, indexing="ij")
    body2d = (x / 20.0) ** 2 + (y / 14.0) ** 2 <= 1.0
    lung2d = ((np.abs(x) - 9.0) / 6.0) ** 2 + (y / 8.0) ** 2 <= 1.0
    body = np.repeat(body2d[..., None], shape[2], axis=2)
    lungs = np.repeat(lung2d[..., None], shape[2], axis=2)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[lungs] = -850.0
    hu[22:26, 19:23, 14:] = -1000.0  # trachea, open at the top face: air inside connects to outside
    hu[22:26, 19:23, 14:16] = -1000.0
    hu[8:40, 2:4, :] = 200.0  # table, below the body and not touching it (body spans y >= 7.5)
    hu[2, 37, 3] = 100.0  # speck
    hu += np.random.default_rng(0).normal(0.0, 10.0, size=shape).astype(np.float32)
    return hu, body, lungs


def test_body_mask_fills_enclosed_lungs_slice_wise():
    hu, body, lungs = _phantom()
    mask = body_mask(hu)
    assert mask.dtype == bool and mask.shape == hu.shape
    assert np.count_nonzero(mask != body) <= 0.01 * body.sum()  # equal to the body up to a few voxels
    assert mask[lungs].all()  # lungs (air inside the body) are in the mask in every slice
    assert not mask[~ndimage.binary_dilation(body, iterations=2)].any()  # air, table and specks are out
    # a 3D fill cannot close the lungs, which open to outside air through the trachea
    assert not ndimage.binary_fill_holes(hu > -500)[lungs].all()
    no_fill = body_mask(hu, fill_holes=False)
    assert not no_fill[lungs].any() and no_fill[body & ~lungs].mean() > 0.99
    assert body_mask(hu, largest_component=False)[8:40, 2:4, :].all()  # the table stays without filtering
    assert not body_mask(np.full((4, 4, 4), -1000.0)).any()


def test_body_maskd_metatensor_shape_dtype_and_meta():
    hu, body, _ = _phantom()
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(hu)[None], affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    out = BodyMaskd("image", mask_key="body_mask")({"image": img, "label": 1})
    mask = out["body_mask"]
    assert isinstance(mask, MetaTensor) and mask.dtype == torch.uint8 and mask.shape == (1, 48, 40, 20)
    torch.testing.assert_close(mask.affine, affine)
    assert mask.meta["filename_or_obj"] == "case.nii.gz"
    assert set(torch.unique(mask).tolist()) == {0, 1}
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), body_mask(hu))
    assert out["image"] is img and out["label"] == 1
    arr = BodyMaskd("image")({"image": hu[None]})["body_mask"]
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.shape == (1, 48, 40, 20)
    with pytest.raises(ValueError, match="channel-first"):
        BodyMaskd("image")({"image": hu[None, None]})


# ----------------------------------------------------------------------------------------------------------
# DICOM series readers
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scrambled_series(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    rng = np.random.default_rng(3)
    vol = rng.integers(-1000, 1500, size=(12, 10, 7)).astype(np.int16)
    vol[:, :, 0] = -1000  # make slice order matter visibly
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 20.0, -55.0]
    write_nifti(root / "vol.nii.gz", vol, affine)
    write_ct_dicom_series(root / "dcm", vol, affine, "t1", rng, encoding=1, numbering="scrambled")
    return root, vol, affine


def _load_ras(reader, path):
    return Compose([LoadImage(reader=reader, image_only=True), EnsureChannelFirst(), Orientation("RAS")])(path)


def test_ct_series_reader_sorts_by_position(scrambled_series):
    root, vol, affine = scrambled_series
    img = _load_ras(CTSeriesReader(), str(root / "dcm"))
    np.testing.assert_array_equal(img[0].numpy(), vol)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
    # MONAI's own reader stacks by InstanceNumber, which is scrambled here
    monai_img = _load_ras(PydicomReader(), str(root / "dcm"))
    assert not np.array_equal(monai_img[0].numpy(), vol)


def test_ct_image_reader_mixes_nifti_and_dicom(scrambled_series):
    root, vol, affine = scrambled_series
    load = Compose([LoadImaged("image", reader=ct_readers(), image_only=True)])
    for source in (root / "vol.nii.gz", root / "dcm"):
        d = load({"image": str(source)})
        ras = Orientation("RAS")(EnsureChannelFirst()(d["image"]))
        np.testing.assert_array_equal(ras[0].numpy(), vol)
    reader = CTImageReader()
    assert reader.verify_suffix(str(root / "dcm")) and reader.verify_suffix("a.nii.gz")
    assert not reader.verify_suffix("a.png")
    with pytest.raises(ValueError, match="file or folder not found"):
        reader.read(str(root / "nope.nii.gz"))
