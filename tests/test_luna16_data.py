"""Tests of medbundle.io.metaimage, medbundle.detection.synthetic and medbundle.detection.luna16."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.dictionary import AffineBoxToImageCoordinated, ConvertBoxToStandardModed
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    LoadImage,
    LoadImaged,
    Orientation,
    Orientationd,
)

from medbundle.detection.boxes import image_to_world_boxes, world_to_image_boxes
from medbundle.detection.luna16 import (
    detections_to_luna16_rows,
    find_luna16_scans,
    luna16_datalist,
    write_luna16_results,
)
from medbundle.detection.synthetic import LIDC_UID_PREFIX, generate_luna16, render_luna16_scan, sample_nodule_diameters
from medbundle.io.luna16_csv import read_luna16_annotations, read_luna16_results, read_seriesuids
from medbundle.io.metaimage import CTMetaImageReader, MetaImageReader, luna16_readers, read_mhd, write_mhd

SPACING, ORIGIN = (0.7, 0.8, 1.25), (-100.5, -120.25, -300.0)


def _vol(shape=(7, 5, 4), seed=0):
    return np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.int16)


# ----------------------------------------------------------------------------------------------------------
# MetaImage
# ----------------------------------------------------------------------------------------------------------
def test_write_read_mhd_round_trip(tmp_path):
    arr = _vol()
    p = write_mhd(tmp_path / "a.b.c.mhd", arr, SPACING, ORIGIN)
    text = p.read_text()
    assert "ElementSpacing = 0.7 0.8 1.25\n" in text and "Offset = -100.5 -120.25 -300\n" in text
    assert "DimSize = 7 5 4\n" in text and "ElementType = MET_SHORT\n" in text
    assert "TransformMatrix = 1 0 0 0 1 0 0 0 1\n" in text and text.endswith("ElementDataFile = a.b.c.raw\n")
    raw = (tmp_path / "a.b.c.raw").read_bytes()
    assert len(raw) == arr.size * 2
    flat = np.frombuffer(raw, dtype="<i2")
    assert flat[0] == arr[0, 0, 0] and flat[1] == arr[1, 0, 0] and flat[7] == arr[0, 1, 0]  # x fastest
    back, hdr = read_mhd(p)
    assert back.shape == (7, 5, 4) and back.dtype == np.int16
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(hdr["spacing"], SPACING)
    np.testing.assert_array_equal(hdr["origin"], ORIGIN)
    np.testing.assert_array_equal(hdr["direction"], np.eye(3))


def test_read_mha_local_big_endian_compressed(tmp_path):
    import zlib

    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    head = (
        "ObjectType = Image\nNDims = 3\nDimSize = 2 3 4\nElementType = MET_FLOAT\n"
        "ElementByteOrderMSB = True\nElementSpacing = 1 2 3\nPosition = 5 6 7\nElementDataFile = LOCAL\n"
    )
    (tmp_path / "x.mha").write_bytes(head.encode() + arr.T.astype(">f4").tobytes())
    back, hdr = read_mhd(tmp_path / "x.mha")
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(hdr["origin"], [5, 6, 7])
    head_z = head.replace("LOCAL", "x.zraw").replace("ElementByteOrderMSB = True", "CompressedData = True")
    (tmp_path / "z.mhd").write_text(head_z)
    (tmp_path / "x.zraw").write_bytes(zlib.compress(arr.T.astype("<f4").tobytes()))
    np.testing.assert_array_equal(read_mhd(tmp_path / "z.mhd")[0], arr)


def test_read_mhd_errors_name_the_file(tmp_path):
    p = write_mhd(tmp_path / "t.mhd", _vol(), SPACING, ORIGIN)
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"t\.mhd.*278 bytes.*needs 280"):
        read_mhd(p)
    (tmp_path / "u.mhd").write_text("ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = u.raw\n")
    with pytest.raises(ValueError, match=r"u\.mhd.*DimSize"):
        read_mhd(tmp_path / "u.mhd")
    with pytest.raises(ValueError, match=r"v\.nii.*\.mhd"):
        write_mhd(tmp_path / "v.nii", _vol(), SPACING, ORIGIN)


def test_metaimage_reader_affine_matches_lps_world(tmp_path):
    arr = _vol((6, 5, 4), seed=1)
    p = write_mhd(tmp_path / "s.mhd", arr, SPACING, ORIGIN)
    img = LoadImage(reader=MetaImageReader(), image_only=True)(str(p))
    np.testing.assert_array_equal(img.numpy(), arr)
    sx, sy, sz = SPACING
    expected = np.array([[-sx, 0, 0, 100.5], [0, -sy, 0, 120.25], [0, 0, sz, -300.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(img.affine.numpy(), expected)
    assert img.meta["space"] == "RAS" and list(img.meta["spatial_shape"]) == [6, 5, 4]
    assert np.isnan(img.meta["original_channel_dim"]) and img.meta["filename_or_obj"] == str(p)

    ras = Compose([LoadImage(reader=MetaImageReader(), image_only=True), EnsureChannelFirst(), Orientation("RAS")])(
        str(p)
    )
    aff = ras.affine.numpy()
    for i, j, k in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        src = np.array([5 - i, 4 - j, k])  # the RAS array flips x and y
        lps = np.asarray(ORIGIN) + np.asarray(SPACING) * src
        np.testing.assert_allclose(aff @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)
        assert ras[0, i, j, k] == arr[tuple(src)]


def test_metaimage_direction_matrix_convention(tmp_path):
    d = np.zeros((3, 3))  # columns: the directions of the array axes in LPS
    d[:, 0] = [0.0, 0.6, 0.8]
    d[:, 1] = [1.0, 0.0, 0.0]
    d[:, 2] = [0.0, 0.8, -0.6]
    p = write_mhd(tmp_path / "r.mhd", _vol(), SPACING, ORIGIN, direction=d)
    assert "TransformMatrix = 0 0.6 0.8 1 0 0 0 0.8 -0.6\n" in p.read_text()
    _, hdr = read_mhd(p)
    np.testing.assert_allclose(hdr["direction"], d)
    aff = MetaImageReader().get_data(MetaImageReader().read(p))[1]["affine"]
    lps = np.asarray(ORIGIN) + d @ (np.asarray(SPACING) * [2, 3, 1])
    np.testing.assert_allclose(aff @ [2, 3, 1, 1], [-lps[0], -lps[1], lps[2], 1])


def test_luna16_readers_route_mhd_and_nifti(tmp_path):
    arr = _vol(seed=2)
    p = write_mhd(tmp_path / "m.mhd", arr, SPACING, ORIGIN)
    nii = tmp_path / "n.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.diag([*SPACING, 1.0])), str(nii))
    readers = luna16_readers()
    assert isinstance(readers[0], CTMetaImageReader)
    load = LoadImage(reader=readers, image_only=True)
    np.testing.assert_array_equal(load(str(p)).numpy(), arr)
    np.testing.assert_array_equal(load(str(nii)).numpy(), arr)
    assert readers[0].verify_suffix(["a.mhd"]) and not MetaImageReader().verify_suffix("a.nii.gz")


# ----------------------------------------------------------------------------------------------------------
# synthetic LUNA16
# ----------------------------------------------------------------------------------------------------------
GEN = {"n_scans": 6, "shape": (64, 64, 40), "spacing": (1.4, 1.4, 2.5), "n_subsets": 3, "seed": 5}


@pytest.fixture(scope="module")
def luna_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16")
    return root, generate_luna16(root, **GEN)


def test_generator_layout(luna_root):
    root, s = luna_root
    uids = read_seriesuids(root / "seriesuids.csv")
    assert (root / "seriesuids.csv").read_text().splitlines()[0] == uids[0]  # no header
    assert len(uids) == 6 == len(set(uids)) and s["n_scans"] == 6
    assert all(u.startswith(LIDC_UID_PREFIX) and len(u) == 64 for u in uids)
    assert sorted(len(x) for x in s["subsets"]) == [2, 2, 2]
    for k, members in enumerate(s["subsets"]):
        for u in members:
            assert (root / f"subset{k}" / f"{u}.mhd").is_file() and (root / f"subset{k}" / f"{u}.raw").is_file()
        assert sum(len(sc["nodules"]) for sc in s["scans"] if sc["subset"] == k) >= 1
    with open(root / "annotations.csv", newline="") as f:
        assert next(csv.reader(f)) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    ann = read_luna16_annotations(root / "annotations.csv")
    exc = read_luna16_annotations(root / "annotations_excluded.csv")
    assert ann["seriesuid"].size == s["n_nodules"] > 0 and exc["seriesuid"].size == s["n_excluded"] > 0
    assert np.all((ann["diameter_mm"] >= 3.0) & (ann["diameter_mm"] <= 30.0))
    assert np.all((exc["diameter_mm"] == -1.0) | ((exc["diameter_mm"] > 0) & (exc["diameter_mm"] < 3.0)))
    assert set(ann["seriesuid"]) <= set(uids)
    for sc in s["scans"]:
        _, hdr = read_mhd(root / sc["image"])
        assert list(hdr["dim_size"]) == [64, 64, 40]
        assert 1.26 - 1e-9 <= hdr["spacing"][0] == hdr["spacing"][1] <= 1.54 + 1e-9
        assert 2.25 - 1e-9 <= hdr["spacing"][2] <= 2.75 + 1e-9
        np.testing.assert_allclose(hdr["origin"], sc["origin"])


def test_generator_is_deterministic(luna_root, tmp_path):
    root, s = luna_root
    small = dict(GEN, n_scans=3, n_subsets=1)
    a = generate_luna16(tmp_path / "a", **small)
    b = generate_luna16(tmp_path / "b", **small)
    for name in ("annotations.csv", "annotations_excluded.csv", "seriesuids.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / a["scans"][2]["image"]).with_suffix(".raw").read_bytes() == (
        tmp_path / "b" / b["scans"][2]["image"]
    ).with_suffix(".raw").read_bytes()
    assert a["scans"][0]["seriesuid"] == s["scans"][0]["seriesuid"]  # uid depends on seed and index only


def test_findings_are_drawn_where_annotated(luna_root):
    root, s = luna_root
    ann = read_luna16_annotations(root / "annotations.csv")
    for sc in s["scans"]:
        vol, hdr = read_mhd(root / sc["image"])
        lung_hu = np.median(vol[(vol < -700) & (vol > -950)])
        assert -880 < lung_hu < -820
        for f in sc["nodules"] + sc["excluded"]:
            ijk = (np.asarray(f["coord"]) - hdr["origin"]) / hdr["spacing"]  # identity direction
            np.testing.assert_allclose(ijk, f["ijk"], atol=1e-4)
            c = tuple(int(v) for v in np.rint(ijk))
            assert vol[c] > -600, (f, vol[c])  # denser than lung at the annotated centre
            if f["kind"] == "solid" and f["diameter_mm"] >= 8:
                grid = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1)
                dist = np.linalg.norm((grid - ijk) * hdr["spacing"], axis=-1)
                core = vol[dist <= f["diameter_mm"] / 4]
                assert -30 < core.mean() < 80
        rows = ann["seriesuid"] == sc["seriesuid"]
        np.testing.assert_allclose(ann["coordX"][rows], [n["coord"][0] for n in sc["nodules"]])


def test_render_scan_places_nodules_in_lungs():
    rng = np.random.default_rng(11)
    vol, lungs, nodules, excluded = render_luna16_scan((64, 64, 40), (1.4, 1.4, 2.5), rng, 6, 4, (3.0, 12.0), 0.5)
    assert vol.dtype == np.int16 and vol.shape == (64, 64, 40)
    assert len(nodules) == 6 and len(excluded) == 4
    assert {n["kind"] for n in nodules} <= {"solid", "part-solid"}
    for f in nodules + excluded:
        assert lungs[tuple(int(v) for v in np.rint(f["ijk"]))]
    # LPS index order: the spine (bone) is posterior, i.e. at high j
    bone = np.argwhere(vol > 450)
    assert bone[:, 1].mean() > 40
    part = [n for n in nodules if n["kind"] == "part-solid" and n["diameter_mm"] >= 6]
    for n in part:  # ground-glass halo between the core and the rim
        ijk = np.asarray(n["ijk"])
        grid = np.stack(np.meshgrid(*[np.arange(k) for k in vol.shape], indexing="ij"), -1)
        dist = np.linalg.norm((grid - ijk) * [1.4, 1.4, 2.5], axis=-1)
        ring = vol[(dist > 0.65 * n["diameter_mm"] / 2) & (dist < 0.8 * n["diameter_mm"] / 2)]
        assert -650 < np.median(ring) < -150


def test_diameters_follow_luna16_by_default():
    """LUNA16's annotations.csv (1,186 nodules): min 3.25 mm, median 6.43, mean 8.31, 76 % under 10 mm, 4 % under
    4 mm, 4 % of 20 mm or more (the mean is a little lower here, truncated at 30 mm)."""
    d = sample_nodule_diameters(np.random.default_rng(0), 20000, (3.0, 30.0))
    assert d.min() >= 3.25 and d.max() <= 30.0
    assert abs(np.median(d) - 6.43) < 0.1 and abs(d.mean() - 8.27) < 0.1
    assert abs((d < 10).mean() - 0.763) < 0.015 and abs((d < 4).mean() - 0.041) < 0.01
    assert abs((d >= 20).mean() - 0.04) < 0.01
    window = sample_nodule_diameters(np.random.default_rng(0), 2000, (8.0, 20.0))  # truncated to the range
    assert window.min() >= 8.0 and window.max() <= 20.0 and 10.5 < np.median(window) < 12.0
    # the former density ~1/d^2 puts 28 % of the nodules under 4 mm (LUNA16: 4 %)
    power = sample_nodule_diameters(np.random.default_rng(0), 20000, (3.0, 30.0), distribution="power")
    assert abs(np.median(power) - 5.45) < 0.15 and abs(power.mean() - 7.68) < 0.15 and (power < 4).mean() > 0.25
    with pytest.raises(ValueError, match="none of LUNA16"):
        sample_nodule_diameters(np.random.default_rng(0), 5, (40.0, 50.0))
    with pytest.raises(ValueError, match="distribution"):
        sample_nodule_diameters(np.random.default_rng(0), 5, distribution="uniform")


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_subsets"):
        generate_luna16(tmp_path, n_scans=2, n_subsets=3)
    with pytest.raises(ValueError, match="nodules_per_scan"):
        generate_luna16(tmp_path, nodules_per_scan=(3, 1))
    with pytest.raises(ValueError, match="distribution"):
        generate_luna16(tmp_path, diameter_distribution="uniform")


# ----------------------------------------------------------------------------------------------------------
# datalist
# ----------------------------------------------------------------------------------------------------------
def test_datalist_folds_and_boxes(luna_root):
    root, s = luna_root
    dl = luna16_datalist(root)
    by_uid = {sc["seriesuid"]: sc for sc in s["scans"]}
    assert dl["n_folds"] == 3 and dl["val_fold"] == 2 and dl["test_fold"] is None and dl["testing"] == []
    assert {it["subset"] for it in dl["validation"]} == {2} and {it["subset"] for it in dl["training"]} == {0, 1}
    items = dl["training"] + dl["validation"]
    assert len(items) == 6
    for it in items:
        sc = by_uid[it["seriesuid"]]
        assert it["image"].endswith(sc["image"]) and it["subset"] == sc["subset"]
        expected = [[*n["coord"], *([n["diameter_mm"]] * 3)] for n in sc["nodules"]]
        np.testing.assert_allclose(np.reshape(it["box"], (-1, 6)), np.reshape(expected, (-1, 6)))
        assert it["label"] == [0] * len(sc["nodules"])
    assert set(dl["excluded"]) == {sc["seriesuid"] for sc in s["scans"] if sc["excluded"]}

    dl2 = luna16_datalist(root, val_fold=1, test_fold=0, label=1, include_excluded=True)
    assert {it["subset"] for it in dl2["testing"]} == {0} and {it["subset"] for it in dl2["training"]} == {2}
    it = next(i for i in dl2["training"] + dl2["validation"] + dl2["testing"] if by_uid[i["seriesuid"]]["excluded"])
    exc = by_uid[it["seriesuid"]]["excluded"]
    assert len(it["excluded_box"]) == len(exc)
    for box, e in zip(it["excluded_box"], exc):
        assert box[3] == (e["diameter_mm"] if e["diameter_mm"] > 0 else 10.0)
    assert all(lab == 1 for i in dl2["training"] for lab in i["label"])

    dl3 = luna16_datalist(root, n_folds=2)  # subsets 0, 2 -> fold 0; subset 1 -> fold 1 (validation)
    assert {it["subset"] for it in dl3["validation"]} == {1}
    with pytest.raises(ValueError, match="val_fold 1 is also a test fold"):
        luna16_datalist(root, val_fold=1, test_fold=1)
    with pytest.raises(ValueError, match="out of range"):
        luna16_datalist(root, val_fold=3)

    # several test folds: their scans are all "testing"; the default validation fold is the last other one
    dl4 = luna16_datalist(root, test_fold=[0, 2])
    assert {it["subset"] for it in dl4["testing"]} == {0, 2} and {it["subset"] for it in dl4["validation"]} == {1}
    assert dl4["training"] == [] and dl4["test_fold"] == [0, 2]
    assert len(dl4["testing"]) + len(dl4["validation"]) == 6
    with pytest.raises(ValueError, match="val_fold 2 is also a test fold"):
        luna16_datalist(root, val_fold=2, test_fold=[0, 2])
    with pytest.raises(ValueError, match="every fold is a test fold"):
        luna16_datalist(root, test_fold=[0, 1, 2])
    with pytest.raises(ValueError, match="test_fold=5 is out of range"):
        luna16_datalist(root, test_fold=[0, 5])


def test_datalist_warns_and_errors(tmp_path, luna_root):
    root, s = luna_root
    extra = tmp_path / "ann.csv"
    extra.write_text((root / "annotations.csv").read_text() + "9.9.9,1,2,3,4\n")
    with pytest.warns(UserWarning, match="1 annotated series have no scan"):
        dl = luna16_datalist(root, annotations=extra)
    assert "9.9.9" not in {i["seriesuid"] for i in dl["training"] + dl["validation"]}
    with pytest.raises(FileNotFoundError, match="no scans found"):
        find_luna16_scans(tmp_path)
    with pytest.raises(FileNotFoundError, match="annotations"):
        luna16_datalist(root, annotations=tmp_path / "none.csv")


# ----------------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------------
HAND_SPACING, HAND_ORIGIN, HAND_SHAPE = (0.7, 0.7, 1.25), (-100.0, -120.0, -300.0), (40, 48, 36)
# voxel (10, 20, 30), diameter 7 mm -> LPS world (-100 + 7, -120 + 14, -300 + 37.5)
HAND_WORLD = [-93.0, -106.0, -262.5, 7.0, 7.0, 7.0]
HAND_VOXEL = [10.0, 20.0, 30.0, 10.0, 10.0, 5.6]


def test_world_image_boxes_by_hand():
    ras_affine = np.array([[-0.7, 0, 0, 100.0], [0, -0.7, 0, 120.0], [0, 0, 1.25, -300.0], [0, 0, 0, 1]])
    vox = world_to_image_boxes([HAND_WORLD], ras_affine)
    np.testing.assert_allclose(vox, [HAND_VOXEL], atol=1e-9)
    np.testing.assert_allclose(image_to_world_boxes(vox, ras_affine), [HAND_WORLD], atol=1e-9)
    # after Orientation("RAS") the x and y axes are reversed: affine diag(0.7, 0.7, 1.25), new origin
    oriented = np.diag([0.7, 0.7, 1.25, 1.0])
    oriented[:3, 3] = [100.0 - 0.7 * 39, 120.0 - 0.7 * 47, -300.0]
    np.testing.assert_allclose(world_to_image_boxes(HAND_WORLD, torch.as_tensor(oriented)), [[29, 27, 30, 10, 10, 5.6]])
    assert world_to_image_boxes(np.zeros((0, 6)), ras_affine).shape == (0, 6)


@pytest.mark.parametrize("orient", [False, True])
def test_boxes_match_monai_affine_box_transform(tmp_path, orient):
    p = write_mhd(tmp_path / "h.mhd", np.zeros(HAND_SHAPE, np.int16), HAND_SPACING, HAND_ORIGIN)
    boxes = np.array([HAND_WORLD, [-80.0, -95.5, -280.0, 12.0, 12.0, 12.0]])
    steps = [LoadImaged(keys="image", reader=MetaImageReader()), EnsureChannelFirstd(keys="image")]
    if orient:
        steps.append(Orientationd(keys="image", axcodes="RAS"))
    steps += [
        ConvertBoxToStandardModed(box_keys="box", mode="cccwhd"),
        AffineBoxToImageCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
    ]
    out = Compose(steps)({"image": str(p), "box": torch.as_tensor(boxes), "label": torch.tensor([0, 0])})
    monai_xyzxyz = np.asarray(out["box"], dtype=np.float64)
    ours = world_to_image_boxes(boxes, out["image"].affine)
    ours_xyzxyz = np.concatenate([ours[:, :3] - ours[:, 3:] / 2, ours[:, :3] + ours[:, 3:] / 2], axis=1)
    np.testing.assert_allclose(ours_xyzxyz, monai_xyzxyz, atol=1e-4)
    first = HAND_VOXEL[:3] if not orient else [39 - 10, 47 - 20, 30]
    np.testing.assert_allclose(ours[0], [*first, 10, 10, 5.6], atol=1e-9)
    np.testing.assert_allclose(image_to_world_boxes(ours, out["image"].affine), boxes, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# results CSV
# ----------------------------------------------------------------------------------------------------------
def test_write_luna16_results_round_trip(tmp_path):
    rows = detections_to_luna16_rows(
        "1.2.3", np.array([[-93.123456789, -106.5, -262.25, 7, 7, 7], [1e-7, 2.0, 3.0, 1, 1, 1]]), [0.25, 0.875]
    )
    rows.append(("4.5.6", np.float32(1.5), -2, 3.0, np.float64(0.1)))
    p = write_luna16_results(rows, tmp_path / "out" / "results.csv")
    assert p.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,probability"
    back = read_luna16_results(p)
    assert back["seriesuid"].tolist() == ["1.2.3", "1.2.3", "4.5.6"]
    np.testing.assert_array_equal(back["coordX"], [1e-7, -93.123456789, 1.5])  # highest score first
    np.testing.assert_array_equal(back["probability"], [0.875, 0.25, 0.1])
    np.testing.assert_array_equal(back["coordZ"], [3.0, -262.25, 3.0])
    with pytest.raises(ValueError, match=r"row 1 \(9\) has probability = nan"):
        write_luna16_results([("9", 1, 2, 3, float("nan"))], tmp_path / "bad.csv")
    assert len(detections_to_luna16_rows("u", np.ones((150, 6)), np.arange(150.0))) == 100
