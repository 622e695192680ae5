"""Tests of the 2D chest X-ray detection data: weighted box fusion (medbundle.detection.box_fusion), the NODE21 and
VinDr-CXR adapters (medbundle.detection.cxr_datasets) and their synthetic generators
(medbundle.detection.synthetic_cxr), read back through MONAI's LoadImage."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from medbundle.detection.box_fusion import box_iou, weighted_box_fusion
from medbundle.detection.cxr_datasets import (
    VINDR_CLASSES,
    find_node21_layout,
    node21_datalist,
    read_node21_metadata,
    split_detection_items,
    vindr_datalist,
)
from medbundle.detection.synthetic_cxr import generate_node21, generate_vindr
from medbundle.io.dicom import xray_readers
from medbundle.io.metaimage import MetaImageReader

VINDR_HEADER = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def _all_items(datalist: dict) -> list[dict]:
    return [it for s in ("training", "validation", "testing") for it in datalist[s]]


# ----------------------------------------------------------------------------------------------------------
# weighted box fusion
# ----------------------------------------------------------------------------------------------------------
def test_box_iou_hand_values():
    iou = box_iou([[0, 0, 10, 10]], [[2, 0, 12, 10], [10, 10, 20, 20], [0, 0, 10, 10]])
    np.testing.assert_allclose(iou, [[80 / 120, 0.0, 1.0]])


def test_wbf_overlapping_readers_fuse_to_their_mean_and_a_lone_box_stays():
    # reader 0 and 1 box the same finding (IoU 80/120 = 0.67 > 0.5); reader 2 boxes something else elsewhere
    fused = weighted_box_fusion(
        [[[0, 0, 10, 10]], [[2, 0, 12, 10]], [[50, 50, 60, 60]]],
        [[3], [3], [3]],
        iou_threshold=0.5,
    )
    np.testing.assert_allclose(fused.boxes, [[1, 0, 11, 10], [50, 50, 60, 60]])
    np.testing.assert_array_equal(fused.labels, [3, 3])
    np.testing.assert_allclose(fused.scores, [2 / 3, 1 / 3])
    np.testing.assert_array_equal(fused.n_readers, [2, 1])

    kept = weighted_box_fusion(
        [[[0, 0, 10, 10]], [[2, 0, 12, 10]], [[50, 50, 60, 60]]], [[3], [3], [3]], min_readers=2
    )
    np.testing.assert_allclose(kept.boxes, [[1, 0, 11, 10]])  # the single-reader box is dropped
    assert kept.n_readers.tolist() == [2]


def test_wbf_weights_classes_threshold_and_empty_readers():
    # weights 3 : 1 -> the fused corners are the 3:1 weighted mean
    fused = weighted_box_fusion([[[0, 0, 10, 10]], [[2, 0, 12, 10]]], [[0], [0]], weights=[3, 1])
    np.testing.assert_allclose(fused.boxes, [[0.5, 0, 10.5, 10]])
    np.testing.assert_allclose(fused.scores, [1.0])
    # the same boxes in different classes are never fused
    other = weighted_box_fusion([[[0, 0, 10, 10]], [[0, 0, 10, 10]]], [[0], [1]])
    assert other.labels.tolist() == [0, 1] and other.n_readers.tolist() == [1, 1]
    # IoU 0.6 joins at threshold 0.5, not at 0.6 (the match must be greater than the threshold)
    a, b = [[0, 0, 10, 10]], [[0, 0, 10, 6]]
    assert len(weighted_box_fusion([a, b], [[0], [0]], iou_threshold=0.5).boxes) == 1
    assert len(weighted_box_fusion([a, b], [[0], [0]], iou_threshold=0.6).boxes) == 2
    # a reader who marked nothing ("No finding") lowers the score, never removes a box
    lone = weighted_box_fusion([[], [], [[5, 5, 9, 9]]], [[], [], [8]])
    np.testing.assert_allclose(lone.boxes, [[5, 5, 9, 9]])
    np.testing.assert_allclose(lone.scores, [1 / 3])
    empty = weighted_box_fusion([[], []], [[], []])
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    with pytest.raises(ValueError, match="max corner below its min corner"):
        weighted_box_fusion([[[5, 0, 1, 4]]], [[0]])
    with pytest.raises(ValueError, match="2 readers' boxes but 1"):
        weighted_box_fusion([[], []], [[]])


# ----------------------------------------------------------------------------------------------------------
# NODE21 adapter
# ----------------------------------------------------------------------------------------------------------
def _node21_folder(base: Path) -> Path:
    """The Zenodo nesting, a pandas index column, one img_name without suffix, Images/ capitalised."""
    d = base / "cxr_images" / "proccessed_data"
    _write_csv(
        d / "metadata.csv",
        ["", "img_name", "x", "y", "width", "height", "label"],
        [
            [0, "c0001.mha", 100, 200, 30, 40, 1],
            [1, "c0001.mha", 500, 510, 20, 20, 1],
            [2, "n0002.mha", 0, 0, 0, 0, 0],
            [3, "c0003", 10.5, 20.5, 12, 13, 1],
            [4, "n0004.mha", "", "", "", "", 0],
        ],
    )
    _touch(d / "Images", "c0001.mha", "n0002.mha", "c0003.mha", "n0004.mha")
    return d


def test_node21_datalist_reads_the_real_columns(tmp_path):
    d = _node21_folder(tmp_path)
    assert find_node21_layout(tmp_path) == ((d / "metadata.csv").resolve(), (d / "Images").resolve())
    dl = node21_datalist(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert dl["classes"] == ["nodule"] and dl["validation"] == [] and dl["testing"] == []
    items = {it["image_id"]: it for it in dl["training"]}
    assert sorted(items) == ["c0001", "c0003", "n0002", "n0004"]
    assert items["c0001"]["box"] == [[100.0, 200.0, 130.0, 240.0], [500.0, 510.0, 520.0, 530.0]]
    assert items["c0001"]["label"] == [0, 0]
    assert items["c0003"]["box"] == [[10.5, 20.5, 22.5, 33.5]]
    assert items["c0003"]["image"] == str((d / "Images" / "c0003.mha").resolve())
    assert items["n0002"]["box"] == [] and items["n0002"]["label"] == []
    assert set(items["n0004"]) == {"image", "box", "label", "image_id"}


def test_node21_split_is_deterministic_stratified_and_honours_a_split_column(tmp_path):
    rows = [[f"c{i:04d}.mha", 10, 10, 5, 5, 1] for i in range(10)]
    rows += [[f"n{i:04d}.mha", 0, 0, 0, 0, 0] for i in range(10)]
    _write_csv(tmp_path / "metadata.csv", ["img_name", "x", "y", "width", "height", "label"], rows)
    _touch(tmp_path / "images", *(r[0] for r in rows))
    a = node21_datalist(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    b = node21_datalist(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    c = node21_datalist(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert a == b and a != c
    for s, n in (("training", 12), ("validation", 4), ("testing", 4)):
        assert len(a[s]) == n and sum(bool(it["box"]) for it in a[s]) == n // 2  # half positives in every split
    assert len({it["image_id"] for it in _all_items(a)}) == 20

    split_rows = [r + [["train", "val", "test", "training"][i % 4]] for i, r in enumerate(rows)]
    _write_csv(tmp_path / "metadata.csv", ["img_name", "x", "y", "width", "height", "label", "split"], split_rows)
    dl = node21_datalist(tmp_path, seed=3)
    assert [it["image_id"] for it in dl["validation"]] == ["c0001", "c0005", "c0009", "n0003", "n0007"]
    assert len(dl["training"]) == 10 and len(dl["testing"]) == 5


def test_node21_missing_image_and_malformed_rows_give_one_clear_error(tmp_path):
    d = _node21_folder(tmp_path)
    (d / "Images" / "c0003.mha").unlink()
    message = r"metadata\.csv, line 5: image 'c0003' not found \(expected .*c0003\.mha\)"
    with pytest.raises(FileNotFoundError, match=message):
        node21_datalist(tmp_path)
    with pytest.warns(UserWarning, match="1 listed images were not found"):
        dl = node21_datalist(tmp_path, on_missing="skip", val_fraction=0.0, test_fraction=0.0)
    assert sorted(it["image_id"] for it in dl["training"]) == ["c0001", "n0002", "n0004"]

    header = ["img_name", "x", "y", "width", "height", "label"]
    bad = {
        "label 2": ([["a.mha", 1, 1, 5, 5, 2]], r"line 2 \(a\.mha\): label is '2'"),
        "text width": ([["a.mha", 1, 1, "wide", 5, 1]], r"line 2 \(a\.mha\): column 'width' holds 'wide'"),
        "zero height": ([["a.mha", 1, 1, 5, 0, 1]], r"line 2 \(a\.mha\): nodule box has width 5.0 and height 0.0"),
        "no name": ([["", 1, 1, 5, 5, 1]], r"line 2: empty 'img_name'"),
    }
    for name, (rows, message) in bad.items():
        path = _write_csv(tmp_path / name / "metadata.csv", header, rows)
        with pytest.raises(ValueError, match=message) as err:
            read_node21_metadata(path)
        assert str(path) in str(err.value), name
    path = _write_csv(tmp_path / "nolabel" / "metadata.csv", ["img_name", "x", "y", "width", "height"], [])
    with pytest.raises(ValueError, match="required column 'label' not found"):
        read_node21_metadata(path)


# ----------------------------------------------------------------------------------------------------------
# VinDr-CXR adapter
# ----------------------------------------------------------------------------------------------------------
def _vindr_kaggle(base: Path) -> Path:
    rows = [
        # img_a: two readers box the heart (fused to the mean), the third says "No finding"
        ["img_a", "Cardiomegaly", 3, "R8", 100, 200, 300, 300],
        ["img_a", "Cardiomegaly", 3, "R9", 110, 200, 310, 300],
        ["img_a", "No finding", 14, "R10", "", "", "", ""],
        # img_b: one reader marks a nodule, two say "No finding"
        ["img_b", "No finding", 14, "R8", "", "", "", ""],
        ["img_b", "Nodule/Mass", 8, "R9", 40, 40, 60, 60],
        ["img_b", "No finding", 14, "R10", "", "", "", ""],
        # img_c: normal
        ["img_c", "No finding", 14, "R1", "", "", "", ""],
        ["img_c", "No finding", 14, "R2", "", "", "", ""],
        ["img_c", "No finding", 14, "R3", "", "", "", ""],
        # img_d: all three readers mark an effusion and two an aortic enlargement
        ["img_d", "Pleural effusion", 10, "R3", 10, 10, 50, 30],
        ["img_d", "Pleural effusion", 10, "R4", 12, 10, 52, 30],
        ["img_d", "Pleural effusion", 10, "R5", 11, 13, 51, 33],
        ["img_d", "Aortic enlargement", 0, "R3", 200, 20, 220, 40],
        ["img_d", "Aortic enlargement", 0, "R5", 202, 20, 222, 40],
    ]
    _write_csv(base / "train.csv", VINDR_HEADER, rows)
    _touch(base / "train", "img_a.dicom", "img_b.dicom", "img_c.dicom", "img_d.dicom")
    return base


def test_vindr_datalist_fuses_three_readers(tmp_path):
    _vindr_kaggle(tmp_path)
    dl = vindr_datalist(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert dl["classes"] == VINDR_CLASSES and len(dl["classes"]) == 14
    assert dl["fusion"] == {"method": "wbf", "iou_threshold": 0.5, "min_readers": 1}
    items = {it["image_id"]: it for it in dl["training"]}
    assert items["img_a"]["box"] == [[105.0, 200.0, 305.0, 300.0]] and items["img_a"]["label"] == [3]
    assert items["img_b"]["box"] == [[40.0, 40.0, 60.0, 60.0]] and items["img_b"]["label"] == [8]
    assert items["img_c"]["box"] == [] and items["img_c"]["label"] == []
    assert items["img_d"]["label"] == [0, 10]
    np.testing.assert_allclose(items["img_d"]["box"], [[201, 20, 221, 40], [11, 11, 51, 31]])
    assert items["img_a"]["image"] == str((tmp_path / "train" / "img_a.dicom").resolve())

    # two readers must agree: img_b's single mark is outvoted by the two "No finding" readers
    agree = {it["image_id"]: it for it in vindr_datalist(tmp_path, min_readers=2, val_fraction=0, test_fraction=0)[
        "training"]}
    assert agree["img_b"]["box"] == [] and agree["img_a"]["label"] == [3] and agree["img_d"]["label"] == [0, 10]
    # no fusion: every reader's box as drawn
    raw = {it["image_id"]: it for it in vindr_datalist(tmp_path, fusion="none", val_fraction=0, test_fraction=0)[
        "training"]}
    assert len(raw["img_d"]["box"]) == 5 and len(raw["img_a"]["box"]) == 2
    # a subset of classes, in the caller's label order
    sub = vindr_datalist(tmp_path, classes=["Pleural effusion", "Cardiomegaly"], val_fraction=0, test_fraction=0)
    assert sub["classes"] == ["Pleural effusion", "Cardiomegaly"]
    s_items = {it["image_id"]: it for it in sub["training"]}
    assert s_items["img_a"]["label"] == [1] and s_items["img_d"]["label"] == [0] and s_items["img_b"]["box"] == []
    with pytest.warns(UserWarning, match=r"no box of \['Pleural Effusion'\]"):  # a misspelt class
        vindr_datalist(tmp_path, classes=["Pleural Effusion", "Cardiomegaly"], val_fraction=0, test_fraction=0)


def test_vindr_physionet_layout_reads_the_consensus_test_set_as_given(tmp_path):
    header = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    _write_csv(
        tmp_path / "annotations" / "annotations_train.csv",
        header,
        [
            ["t1", "R1", "Nodule/Mass", 10, 10, 20, 20],
            ["t1", "R2", "Nodule/Mass", 11, 10, 21, 20],
            ["t1", "R3", "Rib fracture", 0, 0, 5, 5],  # a PhysioNet label outside the 14
            ["t2", "R1", "No finding", "", "", "", ""],
        ],
    )
    _write_csv(
        tmp_path / "annotations" / "annotations_test.csv",
        ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        [
            ["s1", "Nodule/Mass", 10, 10, 20, 20],
            ["s1", "Nodule/Mass", 11, 10, 21, 20],
            ["s2", "No finding", "", "", "", ""],
        ],
    )
    _touch(tmp_path / "train", "t1.dicom", "t2.dicom")
    _touch(tmp_path / "test", "s1.dicom", "s2.dcm")
    with pytest.warns(UserWarning, match=r"Rib fracture \(1\)"):
        dl = vindr_datalist(tmp_path, val_fraction=0.0, test_fraction=0.5)
    assert [it["image_id"] for it in dl["training"]] == ["t1", "t2"]  # the official test set replaces test_fraction
    assert dl["training"][0]["box"] == [[10.5, 10.0, 20.5, 20.0]]
    test = {it["image_id"]: it for it in dl["testing"]}
    assert test["s1"]["box"] == [[10.0, 10.0, 20.0, 20.0], [11.0, 10.0, 21.0, 20.0]]  # consensus: not fused
    assert test["s2"]["box"] == [] and test["s2"]["image"].endswith("s2.dcm")
    only_test = vindr_datalist(tmp_path, split="test")
    assert only_test["training"] == [] and [it["image_id"] for it in only_test["testing"]] == ["s1", "s2"]


def test_vindr_missing_image_and_malformed_rows_give_one_clear_error(tmp_path):
    _vindr_kaggle(tmp_path)
    (tmp_path / "train" / "img_b.dicom").unlink()
    message = r"train\.csv, line 5: image 'img_b' not found \(expected .*img_b\.dicom\)"
    with pytest.raises(FileNotFoundError, match=message):
        vindr_datalist(tmp_path)
    with pytest.warns(UserWarning, match="1 listed images were not found"):
        dl = vindr_datalist(tmp_path, on_missing="skip", val_fraction=0, test_fraction=0)
    assert [it["image_id"] for it in dl["training"]] == ["img_a", "img_c", "img_d"]

    bad = {
        "inverted": (["x", "Nodule/Mass", 8, "R1", 50, 10, 40, 20], r"line 2 \(x\): 'Nodule/Mass' box .* x_max <="),
        "text": (["x", "Nodule/Mass", 8, "R1", 10, "ten", 40, 20], r"line 2 \(x\): column 'y_min' holds 'ten'"),
        "empty box": (["x", "Cardiomegaly", 3, "R1", "", "", "", ""], r"line 2 \(x\): column 'x_min' holds ''"),
        "shifted": (["x", "Cardiomegaly", "R1", 3, 1, 1, 5, 5], r"line 2 \(x\): class_id 'R1' does not match"),
    }
    for name, (row, message) in bad.items():
        root = tmp_path / name.replace(" ", "_")
        _write_csv(root / "train.csv", VINDR_HEADER, [row])
        _touch(root / "train", "x.dicom")
        with pytest.raises(ValueError, match=message) as err:
            vindr_datalist(root)
        assert str((root / "train.csv").resolve()) in str(err.value), name
    with pytest.raises(FileNotFoundError, match="no VinDr-CXR test annotations"):
        vindr_datalist(tmp_path, split="test")


def test_split_detection_items_fractions():
    items = [{"image_id": f"i{k}", "box": [[0, 0, 1, 1]] if k % 3 == 0 else []} for k in range(30)]
    tr, va, te = split_detection_items(items, 0.1, 0.2, seed=0)
    assert (len(tr), len(va), len(te)) == (21, 3, 6)
    assert sorted(it["image_id"] for it in tr + va + te) == sorted(it["image_id"] for it in items)
    with pytest.raises(ValueError, match="leaves no training images"):
        split_detection_items(items, 0.5, 0.5)


# ----------------------------------------------------------------------------------------------------------
# generators, read back through the adapters and MONAI
# ----------------------------------------------------------------------------------------------------------
def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generate_node21_boxes_land_on_the_nodules_as_monai_loads_them(tmp_path):
    size, n = 96, 12
    info = generate_node21(tmp_path / "a", n, image_size=size, positive_fraction=0.5, seed=5)
    twin = generate_node21(tmp_path / "b", n, image_size=size, positive_fraction=0.0, seed=5)  # same images, no nodules
    assert info["n_positive"] == 6 and twin["n_positive"] == 0 and info["n_nodules"] >= 6
    assert all(6.0 <= d <= 30.0 for d in info["diameters_mm"])
    assert info["spacing_mm"] == pytest.approx(370.0 / size)
    header = (tmp_path / "a" / "metadata.csv").read_text().splitlines()[0]
    assert header == "img_name,x,y,width,height,label"

    dl = node21_datalist(tmp_path / "a", val_fraction=0.2, test_fraction=0.2)
    items = _all_items(dl)
    assert len(items) == n and sum(bool(it["box"]) for it in items) == 6
    load = LoadImage(reader=MetaImageReader(), image_only=True, ensure_channel_first=True)
    for it in items:
        assert it["box"] == [f["box"] for f in info["lesions"].get(it["image_id"], [])]
        img = load(it["image"])
        assert tuple(img.shape) == (1, size, size)
        np.testing.assert_allclose(img.meta["spacing"][:2], [370.0 / size] * 2)
        diff = img[0].numpy() - load(it["image"].replace(str(tmp_path / "a"), str(tmp_path / "b")))[0].numpy()
        inside = np.zeros(diff.shape, dtype=bool)
        for x0, y0, x1, y1 in it["box"]:
            inside[int(x0) : int(x1), int(y0) : int(y1)] = True  # (x, y) axes of the loaded array
            assert diff[int(x0) : int(x1), int(y0) : int(y1)].max() > 100  # the nodule is in its box (12-bit units)
        assert np.all(diff[~inside] == 0), it["image_id"]  # and nowhere else
        assert np.all(diff >= 0)
    again = tmp_path / "c"
    generate_node21(again, n, image_size=size, positive_fraction=0.5, seed=5)
    assert _tree_hash(again) == _tree_hash(tmp_path / "a")


def test_generate_vindr_readers_fusion_and_dicom_as_monai_loads_them(tmp_path):
    shape, n = (96, 80), 15  # rows, cols: not square, so a swapped axis cannot pass
    info = generate_vindr(tmp_path / "a", n, image_size=shape, seed=2, prevalence=0.4)
    generate_vindr(tmp_path / "b", n, image_size=shape, seed=2, prevalence=0.0)
    assert info["findings"] == {c: 6 for c in ("Aortic enlargement", "Cardiomegaly", "Nodule/Mass", "Pleural effusion")}

    with open(tmp_path / "a" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == VINDR_HEADER
    by_image: dict[str, set] = {}
    for r in rows:
        assert re.fullmatch(r"R([1-9]|1[0-7])", r["rad_id"]) and re.fullmatch(r"[0-9a-f]{32}", r["image_id"])
        by_image.setdefault(r["image_id"], set()).add(r["rad_id"])
        if r["class_name"] == "No finding":
            assert r["class_id"] == "14" and r["x_min"] == r["y_max"] == ""
        else:
            assert VINDR_CLASSES[int(r["class_id"])] == r["class_name"]
    assert len(by_image) == n and all(len(v) == 3 for v in by_image.values())
    finding_images = {r["image_id"] for r in rows if r["class_name"] != "No finding"}
    mixed = [i for i in finding_images if any(r["image_id"] == i and r["class_name"] == "No finding" for r in rows)]
    assert mixed, "some reader should miss every finding of some image"

    dl = vindr_datalist(tmp_path / "a", val_fraction=0.2, test_fraction=0.2)
    items = _all_items(dl)
    assert len(items) == n
    load = LoadImage(reader=xray_readers()[0], image_only=True, ensure_channel_first=True)
    photometric = set()
    for it in items:
        ds = pydicom.dcmread(it["image"])
        assert (ds.BitsAllocated, ds.BitsStored, ds.Rows, ds.Columns) == (16, 12, *shape)
        assert "PixelSpacing" in ds or "ImagerPixelSpacing" in ds
        photometric.add(ds.PhotometricInterpretation)
        img = load(it["image"])
        assert tuple(img.shape) == (1, shape[1], shape[0])  # (C, x, y)
        diff = img[0].numpy() - load(it["image"].replace(str(tmp_path / "a"), str(tmp_path / "b")))[0].numpy()
        truth = info["lesions"].get(it["image_id"], [])
        inside = np.zeros(diff.shape, dtype=bool)
        for t in truth:
            x0, y0, x1, y1 = (int(v) for v in t["box"])
            inside[x0:x1, y0:y1] = True
            assert diff[x0:x1, y0:y1].max() > 5, t  # every finding is drawn in its true box
        assert np.all(np.abs(diff[~inside]) < 1e-4), it["image_id"]  # and nothing outside the true boxes
        # the fused reader boxes land on the true findings
        assert sorted(it["label"]) == sorted(t["class_id"] for t in truth)
        for box, label in zip(it["box"], it["label"]):
            ious = [box_iou([box], [t["box"]])[0, 0] for t in truth if t["class_id"] == label]
            assert max(ious) > 0.6, (it["image_id"], box, truth)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            assert diff[x0:x1, y0:y1].max() > 5
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    again = tmp_path / "c"
    generate_vindr(again, n, image_size=shape, seed=2, prevalence=0.4)
    assert _tree_hash(again) == _tree_hash(tmp_path / "a")
