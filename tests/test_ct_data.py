"""Tests of medbundle.ct.synthetic (generator) and medbundle.ct.adapters (CSV / synthetic / MedMNIST 3D)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing
from scipy import ndimage

from medbundle.ct.adapters import case_id_from_path, csv_datalist, medmnist3d_datalist, synthetic_ct_datalist
from medbundle.ct.synthetic import generate_ct_dataset
from medbundle.io.datalist import load_datalist, write_datalist
from medbundle.phantoms import render_ct_volume

SHAPE, SPACING = (40, 36, 24), (1.5, 1.5, 2.5)


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_ct")
    summary = generate_ct_dataset(
        root, n_volumes=16, shape=SHAPE, spacing=SPACING, n_dicom_series=2, seed=3, test_fraction=0.375
    )
    return root, summary


# ----------------------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------------------
def test_generator_layout_and_labels(ct_root):
    root, s = ct_root
    assert (root / "classes.txt").read_text() == "normal\nnodule\nconsolidation\n"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "label"] and len(rows) == 17
    splits = json.loads((root / "splits.json").read_text())
    assert len(splits["test"]) == 6 and len(splits["train"]) == 10
    assert not set(splits["test"]) & set(splits["train"])
    for split in ("train", "test"):
        assert all(s["counts"][split][c] >= 2 for c in s["class_names"])  # guaranteed minimum per class
    assert sum(sum(v.values()) for v in s["counts"].values()) == 16
    assert len(s["dicom_cases"]) == 2
    for case in s["cases"]:
        assert (root / case["nifti"]).is_file() and (root / case["mask"]).is_file()
        expected_image = case["dicom"] if case["dicom"] else case["nifti"]
        assert [expected_image, case["label"]] in rows
        for n, nominal in zip(case["shape"], SHAPE):
            assert abs(n - nominal) <= 0.1 * nominal + 1
        for sp, nominal in zip(case["spacing"], SPACING):
            assert abs(sp - nominal) <= 0.1 * nominal + 1e-6
    assert len({tuple(c["shape"]) for c in s["cases"]}) > 1  # sizes vary across cases


def test_generator_volume_values(ct_root):
    root, s = ct_root
    for case in s["cases"][:8]:
        img = nib.load(root / case["nifti"])
        vol = np.asanyarray(img.dataobj)
        mask = np.asanyarray(nib.load(root / case["mask"]).dataobj)
        assert vol.dtype == np.int16 and mask.dtype == np.uint8 and vol.shape == tuple(case["shape"])
        np.testing.assert_allclose(np.diag(img.affine)[:3], case["spacing"], rtol=1e-6)
        np.testing.assert_allclose(img.header.get_zooms(), case["spacing"], rtol=1e-6)
        assert int(img.header["sform_code"]) == 1
        assert abs(np.median(vol[0, 0, :]) + 1000) < 60  # corner: air
        cx, cy = vol.shape[0] // 2, vol.shape[1] // 2
        centre = vol[cx - 2 : cx + 3, cy - 2 : cy + 3, :].astype(float)  # mediastinum: soft tissue
        assert -20 < np.median(centre) < 100
        assert np.mean(vol < -700) > 0.1  # air + lungs
        if case["label"] == "normal":
            assert mask.sum() == 0
        else:
            assert mask.sum() >= 30  # several voxels wide at ~1.5 mm
            finding = vol[mask > 0].astype(float)
            if case["label"] == "nodule":
                assert -40 < np.median(finding) < 120
            else:
                assert -160 < np.median(finding) < 40


def test_render_deterministic_and_class_specific():
    a, ma = render_ct_volume("nodule", SHAPE, SPACING, np.random.default_rng(7))
    b, mb = render_ct_volume("nodule", SHAPE, SPACING, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    c, _ = render_ct_volume("nodule", SHAPE, SPACING, np.random.default_rng(8))
    assert not np.array_equal(a, c)
    n_mask = 0
    for seed in range(4):
        vol, mask = render_ct_volume("nodule", (64, 64, 40), (1.5, 1.5, 2.5), np.random.default_rng(seed))
        n_mask += mask.sum()
        # nodules are solid (> -200 HU) and lie in lung (about -850 HU): their 2-voxel shell is mostly lung
        assert np.mean(vol[mask > 0] > -200) > 0.9
        shell = ndimage.binary_dilation(mask > 0, iterations=2) & (mask == 0)
        assert np.mean(vol[shell] < -600) > 0.5
    assert n_mask > 0
    with pytest.raises(ValueError, match="unknown synthetic CT class 'effusion'"):
        render_ct_volume("effusion")


def test_generator_is_deterministic(tmp_path):
    kw = {"n_volumes": 6, "shape": (24, 24, 12), "n_dicom_series": 0, "min_per_class": 1, "test_fraction": 0.5}
    s1 = generate_ct_dataset(tmp_path / "a", seed=5, **kw)
    s2 = generate_ct_dataset(tmp_path / "b", seed=5, **kw)
    assert s1["cases"] == s2["cases"]
    for case in s1["cases"]:
        a = np.asanyarray(nib.load(tmp_path / "a" / case["nifti"]).dataobj)
        b = np.asanyarray(nib.load(tmp_path / "b" / case["nifti"]).dataobj)
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    binary = generate_ct_dataset(tmp_path / "c", seed=5, class_names=("normal", "nodule"), **kw)
    assert (tmp_path / "c" / "classes.txt").read_text() == "normal\nnodule\n"
    assert set(binary["counts"]["test"]) == {"normal", "nodule"}
    with pytest.raises(ValueError, match="cannot hold 3 cases of each of 3 classes"):
        generate_ct_dataset(tmp_path / "d", n_volumes=6, min_per_class=3, shape=(16, 16, 8))
    with pytest.raises(ValueError, match="class_names must be two or more distinct names"):
        generate_ct_dataset(tmp_path / "d", class_names=("normal", "effusion"))


def _ras(reader: str, path: Path, pixdim=None):
    xs = [LoadImage(reader=reader, image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS")]
    if pixdim is not None:
        xs.append(Spacing(pixdim=pixdim, mode="bilinear"))
    return Compose(xs)(str(path))


def test_dicom_series_matches_nifti_through_monai(ct_root):
    """The DICOM series (LPS, shuffled files) and the NIfTI (RAS) of one case are the same physical volume."""
    root, s = ct_root
    numberings = []
    for case in s["cases"]:
        if not case["dicom"]:
            continue
        folder = root / case["dicom"]
        files = sorted(folder.glob("IM_*.dcm"))
        assert len(files) == case["shape"][2]
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        h = headers[0]
        assert h.Modality == "CT" and h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert [float(v) for v in h.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        np.testing.assert_allclose([float(v) for v in h.PixelSpacing], case["spacing"][1::-1])
        assert float(h.SliceThickness) == pytest.approx(case["spacing"][2])
        assert (h.Rows, h.Columns) == (case["shape"][1], case["shape"][0])
        z = np.array([float(x.ImagePositionPatient[2]) for x in headers])
        inst = np.array([int(x.InstanceNumber) for x in headers])
        assert not np.all(np.diff(z) > 0)  # file names are not in position order
        numberings.append(np.corrcoef(z, inst)[0, 1] > 0)  # numbering follows position, up or down

        nifti = _ras("NibabelReader", root / case["nifti"])
        dicom = _ras("PydicomReader", folder)
        assert dicom.shape == nifti.shape == (1, *case["shape"])
        assert float((dicom - nifti).abs().max()) <= 1.0
        np.testing.assert_allclose(dicom.affine.numpy(), nifti.affine.numpy(), atol=1e-3)
        rs_n = _ras("NibabelReader", root / case["nifti"], pixdim=(1.5, 1.5, 1.5))
        rs_d = _ras("PydicomReader", folder, pixdim=(1.5, 1.5, 1.5))
        assert rs_d.shape == rs_n.shape
        assert float((rs_d - rs_n).abs().max()) <= 1.0
    assert sorted(numberings) == [False, True]  # one series numbered feet->head, one head->feet


# ----------------------------------------------------------------------------------------------------------
# datalists
# ----------------------------------------------------------------------------------------------------------
def test_synthetic_ct_datalist(ct_root, tmp_path):
    root, s = ct_root
    dl = synthetic_ct_datalist(root, val_fraction=0.25, seed=1)
    assert dl["labels"] == ["normal", "nodule", "consolidation"]
    splits = json.loads((root / "splits.json").read_text())
    assert sorted(it["case_id"] for it in dl["testing"]) == sorted(splits["test"])
    train_val = dl["training"] + dl["validation"]
    assert sorted(it["case_id"] for it in train_val) == sorted(splits["train"])
    assert {it["label"] for it in dl["validation"]} == {0, 1, 2}  # stratified: every class validated
    by_id = {c["case_id"]: c for c in s["cases"]}
    for it in dl["training"] + dl["validation"] + dl["testing"]:
        case = by_id[it["case_id"]]
        assert it["label"] == dl["labels"].index(case["label"])
        assert Path(it["image"]) == (root / case["image"]).resolve() and Path(it["image"]).exists()
        assert Path(it["mask"]) == (root / case["mask"]).resolve()
    assert any(Path(it["image"]).is_dir() for it in dl["training"] + dl["validation"] + dl["testing"])
    back = load_datalist(write_datalist(dl, tmp_path / "dl.json"))
    assert back == dl


def _files(tmp_path: Path, names: list[str]) -> None:
    for n in names:
        p = tmp_path / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_csv_datalist_names_ints_and_missing(tmp_path):
    _files(tmp_path, [f"img/c{i}.nii.gz" for i in range(12)])
    (tmp_path / "dcm_case").mkdir()
    rows = [f"img/c{i}.nii.gz,{'abc'[i % 3]}" for i in range(12)] + ["dcm_case,b", "img/missing.nii.gz,a"]
    (tmp_path / "labels.csv").write_text("Image , LABEL\n" + "\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="1 of 14 rows name an image"):
        dl = csv_datalist(tmp_path / "labels.csv", val_fraction=0.25, seed=0)
    assert dl["labels"] == ["a", "b", "c"]
    items = dl["training"] + dl["validation"]
    assert len(items) == 13 and dl["testing"] == []
    assert {it["label"] for it in dl["validation"]} == {0, 1, 2} and len(dl["validation"]) == 3
    c5 = next(it for it in items if it["case_id"] == "c5")
    assert c5["label"] == 2 and c5["image"] == str(tmp_path / "img" / "c5.nii.gz")
    assert next(it for it in items if it["case_id"] == "dcm_case")["label"] == 1
    same = csv_datalist(tmp_path / "labels.csv", val_fraction=0.25, seed=0)
    assert same == dl  # deterministic
    other = csv_datalist(tmp_path / "labels.csv", val_fraction=0.25, seed=1)
    assert {it["case_id"] for it in other["validation"]} != {it["case_id"] for it in dl["validation"]}

    # integer labels, explicit class names, fixed test list (text file), root elsewhere
    sub = tmp_path / "csvs"
    sub.mkdir()
    (sub / "l.csv").write_text("path,y\n" + "\n".join(f"img/c{i}.nii.gz,{i % 2}" for i in range(12)) + "\n")
    (sub / "test.txt").write_text("c0\nimg/c1.nii.gz\n")
    dl = csv_datalist(
        sub / "l.csv",
        image_col="path",
        label_col="y",
        class_names=["neg", "pos"],
        root=tmp_path,
        test_split_file=sub / "test.txt",
        val_fraction=0.0,
    )
    assert dl["labels"] == ["neg", "pos"] and [it["case_id"] for it in dl["testing"]] == ["c0", "c1"]
    assert [it["label"] for it in dl["testing"]] == [0, 1] and len(dl["training"]) == 10
    inferred = csv_datalist(sub / "l.csv", image_col="path", label_col="y", root=tmp_path)
    assert inferred["labels"] == ["0", "1"]


def test_csv_datalist_errors(tmp_path):
    _files(tmp_path, ["a.nii.gz"])
    (tmp_path / "l.csv").write_text("image,label\na.nii.gz,cat\n")
    with pytest.raises(ValueError, match=r"l\.csv, line 2: label 'cat' is neither one of the classes"):
        csv_datalist(tmp_path / "l.csv", class_names=["normal", "nodule"])
    (tmp_path / "l2.csv").write_text("image,label\na.nii.gz,5\n")
    with pytest.raises(ValueError, match=r"label '5' is neither.*index 0\.\.1"):
        csv_datalist(tmp_path / "l2.csv", class_names=["normal", "nodule"])
    (tmp_path / "l3.csv").write_text("file,label\na.nii.gz,1\n")
    with pytest.raises(ValueError, match=r"l3\.csv: required column 'image' not found"):
        csv_datalist(tmp_path / "l3.csv")
    with pytest.raises(FileNotFoundError, match="label CSV not found"):
        csv_datalist(tmp_path / "none.csv")
    assert case_id_from_path("/x/y/case_0001.nii.gz") == "case_0001" and case_id_from_path("/x/dcm/") == "dcm"


# ----------------------------------------------------------------------------------------------------------
# MedMNIST 3D
# ----------------------------------------------------------------------------------------------------------
def _fake_medmnist(path: Path, sizes=(5, 2, 3), d=28, drop: str | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, d, d, d), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, size=(n, 1)).astype(np.uint8)
    arrays["train_labels"][0, 0] = 2
    if drop:
        arrays.pop(drop)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist3d_datalist(tmp_path):
    arrays = _fake_medmnist(tmp_path / "organmnist3d.npz")
    dl = medmnist3d_datalist(tmp_path / "organmnist3d.npz", tmp_path / "out", spacing=(1.0, 1.0, 2.0))
    assert [len(dl[k]) for k in ("training", "validation", "testing")] == [5, 2, 3]
    assert dl["labels"] == ["0", "1", "2"]
    for key, split in (("training", "train"), ("validation", "val"), ("testing", "test")):
        assert [it["label"] for it in dl[key]] == arrays[f"{split}_labels"][:, 0].tolist()
        assert [it["case_id"] for it in dl[key]] == [f"{split}_{i:05d}" for i in range(len(dl[key]))]
    item = dl["testing"][2]
    assert item["image"] == str(tmp_path / "out" / "test" / "00002.nii.gz")
    img = nib.load(item["image"])
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), arrays["test_images"][2])  # axis order kept
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 2.0))
    monai_img = LoadImage(reader="NibabelReader", image_only=True)(item["image"])
    np.testing.assert_array_equal(monai_img.numpy(), arrays["test_images"][2])
    named = medmnist3d_datalist(tmp_path / "organmnist3d.npz", tmp_path / "o2", class_names=["x", "y", "z"])
    assert named["labels"] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="label 2 found but only 2 class_names"):
        medmnist3d_datalist(tmp_path / "organmnist3d.npz", tmp_path / "o3", class_names=["x", "y"])


def test_medmnist3d_errors(tmp_path):
    _fake_medmnist(tmp_path / "bad.npz", drop="val_labels", d=4)
    with pytest.raises(ValueError, match=r"bad\.npz: key 'val_labels' missing"):
        medmnist3d_datalist(tmp_path / "bad.npz", tmp_path / "out")
    rng = np.random.default_rng(0)
    flat = {f"{s}_images": rng.integers(0, 255, (2, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")}
    flat.update({f"{s}_labels": np.zeros((2, 1), np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "pathmnist.npz", **flat)
    with pytest.raises(ValueError, match=r"pathmnist\.npz: train_images has shape \(2, 28, 28\)"):
        medmnist3d_datalist(tmp_path / "pathmnist.npz", tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FileNotFoundError):
            medmnist3d_datalist(tmp_path / "none.npz", tmp_path / "out")
