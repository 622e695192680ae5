"""Tests of medbundle.xray.adapters (ChestX-ray14 / CheXpert adapters) and medbundle.xray.synthetic."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbundle.io.datalist import load_datalist, write_datalist
from medbundle.io.dicom import XrayDicomReader
from medbundle.xray.adapters import (
    CHESTXRAY14_FINDINGS,
    CHEXPERT_COMPETITION,
    chestxray14_datalist,
    chexpert_datalist,
    read_chestxray14_entries,
)
from medbundle.xray.synthetic import (
    _CELLS,
    _GRID,
    CHESTXRAY14_HEADER,
    generate_chestxray14,
    render_chest_image,
    write_xray_dicom,
)

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.168,0.168",
    "00000003_000.png,Hernia|Pleural_Thickening|Effusion,0,3,74,F,PA,2048,2500,0.168,0.168",
    "00000004_000.png,Mass|Nodule,0,4,57,M,AP,2048,2500,0.171,0.171",
    "00000005_000.png,Infiltration,0,5,69,F,PA,2048,2500,0.168,0.168",
    "00000005_001.png,No Finding,1,5,69,F,PA,2048,2500,0.168,0.168",
]


def _csv(path: Path, trailing: bool) -> Path:
    end = "," if trailing else ""
    path.write_text("\n".join([HEADER + end] + [r + end for r in ROWS]) + "\n")
    return path


def _vec(*names: str) -> list[float]:
    return [1.0 if n in names else 0.0 for n in CHESTXRAY14_FINDINGS]


@pytest.mark.parametrize("trailing", [True, False])
def test_read_chestxray14_entries_real_header(tmp_path, trailing):
    entries = read_chestxray14_entries(_csv(tmp_path / "Data_Entry_2017.csv", trailing))
    assert len(entries) == 7
    e = entries[1]
    assert e["image"] == "00000001_001.png" and e["patient_id"] == "1" and e["follow_up"] == 1
    assert e["labels"] == _vec("Cardiomegaly", "Emphysema")
    assert e["age"] == 58.0 and e["sex"] == "M" and e["view_position"] == "PA"
    assert e["original_size"] == [2894, 2729] and e["pixel_spacing"] == [0.143, 0.143]
    assert entries[2]["labels"] == [0.0] * 14 and entries[2]["view_position"] == "AP"
    assert entries[3]["labels"] == _vec("Hernia", "Pleural_Thickening", "Effusion")
    assert (
        entries[3]["labels"][13] == 1.0 and entries[3]["labels"][12] == 1.0 and entries[3]["labels"][2] == 1.0
    )


def test_read_chestxray14_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER + "\n" + ROWS[0] + "\n00000009_000.png,Cardiomegaly|Pneumonitis,0,9,50,F,PA,1,1,1,1\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: unknown finding 'Pneumonitis'"):
        read_chestxray14_entries(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text(HEADER.replace("Patient ID", "PatientIdentifier") + "\n" + ROWS[0] + "\n")
    with pytest.raises(ValueError, match=r"nocol\.csv: required column 'Patient ID'"):
        read_chestxray14_entries(nocol)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_chestxray14_entries(tmp_path / "nowhere.csv")


def _nih_layout(root: Path, with_lists: bool = True) -> None:
    """Images over images_001/images and images_002/images, one as DICOM, one missing."""
    root.mkdir()
    _csv(root / "Data_Entry_2017.csv", trailing=True)
    (root / "images_001" / "images").mkdir(parents=True)
    (root / "images_002" / "images").mkdir(parents=True)
    pic = np.zeros((8, 8), np.uint8)
    for name in ["00000001_000.png", "00000001_001.png", "00000002_000.png"]:
        Image.fromarray(pic).save(root / "images_001" / "images" / name)
    for name in ["00000004_000.png", "00000005_000.png", "00000005_001.png"]:
        Image.fromarray(pic).save(root / "images_002" / "images" / name)
    write_xray_dicom(root / "images_002" / "images" / "00000003_000.dcm", pic, variant=0, uid_seed="x")
    (root / "images_002" / "images" / "00000002_000.dcm").write_bytes(b"")  # the PNG of the same stem wins
    if with_lists:
        (root / "test_list.txt").write_text("00000004_000.png\n00000005_000.png\n00000005_001.png\n")
        (root / "train_val_list.txt").write_text(
            "00000001_000.png\n00000001_001.png\n00000002_000.png\n00000003_000.png\n00000006_000.png\n"
        )


def test_chestxray14_datalist_official_split(tmp_path):
    root = tmp_path / "nih"
    _nih_layout(root)
    with (root / "Data_Entry_2017.csv").open("a") as f:
        f.write("00000006_000.png,Edema,0,6,40,F,PA,1,1,1,1,\n")  # listed in train_val_list, no image
    with pytest.warns(UserWarning, match="1 of 8 listed images were not found"):
        dl = chestxray14_datalist(root, val_fraction=0.34, seed=0)
    assert dl["labels"] == CHESTXRAY14_FINDINGS
    test_names = sorted(Path(it["image"]).name for it in dl["testing"])
    assert test_names == ["00000004_000.png", "00000005_000.png", "00000005_001.png"]
    tv = dl["training"] + dl["validation"]
    by_name = {Path(it["image"]).name: it for it in tv}
    assert sorted(by_name) == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.dcm"]
    assert by_name["00000003_000.dcm"]["label"] == _vec("Hernia", "Pleural_Thickening", "Effusion")
    assert by_name["00000001_001.png"]["patient_id"] == "1"
    assert all(Path(it["image"]).is_absolute() and Path(it["image"]).is_file() for it in tv + dl["testing"])
    # validation is one of the 3 train+val patients (round(0.34 * 3) = 1), whole patients only
    val_pat = {it["patient_id"] for it in dl["validation"]}
    train_pat = {it["patient_id"] for it in dl["training"]}
    test_pat = {it["patient_id"] for it in dl["testing"]}
    assert len(val_pat) == 1 and not val_pat & train_pat and not test_pat & (val_pat | train_pat)
    assert len(dl["training"]) + len(dl["validation"]) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = chestxray14_datalist(root, val_fraction=0.34, seed=0)
    assert again == dl
    # an image on disk and in the CSV but in neither official list is left out, with a warning
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images_001" / "images" / "00000007_000.png")
    with (root / "Data_Entry_2017.csv").open("a") as f:
        f.write("00000007_000.png,Edema,0,7,40,F,PA,1,1,1,1,\n")
    with pytest.warns(UserWarning) as record:
        third = chestxray14_datalist(root, val_fraction=0.34, seed=0)
    messages = [str(w.message) for w in record]
    assert any("1 images are in neither train_val_list.txt nor test_list.txt" in m for m in messages)
    assert any("1 of 9 listed images were not found" in m for m in messages)
    assert third == dl


def test_chestxray14_datalist_random_patient_split(tmp_path):
    root = tmp_path / "nih"
    _nih_layout(root, with_lists=False)
    dls = [chestxray14_datalist(root, val_fraction=0.25, seed=s, test_fraction=0.4) for s in range(6)]
    for dl in dls:
        pats = [{it["patient_id"] for it in dl[k]} for k in ("training", "validation", "testing")]
        assert len(pats[2]) == 2 and len(pats[1]) == 1 and len(pats[0]) == 2  # 5 patients: 2 test, 1 val
        assert not (pats[0] & pats[1]) and not (pats[0] & pats[2]) and not (pats[1] & pats[2])
        assert sum(len(dl[k]) for k in ("training", "validation", "testing")) == 7
    assert len({json.dumps(dl, sort_keys=True) for dl in dls}) > 1  # the seed matters
    # items of patient 5 (two images) stay together
    for dl in dls:
        where = {k for k in ("training", "validation", "testing") for it in dl[k] if it["patient_id"] == "5"}
        assert len(where) == 1


def test_chestxray14_missing_image_folder(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text(HEADER + "\n" + ROWS[0] + "\n")
    with pytest.raises(ValueError, match="no image folder found"):
        chestxray14_datalist(tmp_path)


CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)
CHEXPERT_TRAIN = [
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,",
    "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,",
    "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,AP,,,,,,1.0,,,,0.0,,,,",
    "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Female,20,Frontal,PA,1.0,0.0,,,,,0.0,,,0.0,0.0,,,",
]
CHEXPERT_VALID = [
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,"
    "0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    "CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,PA,0.0,0.0,0.0,1.0,0.0,1.0,"
    "0.0,0.0,1.0,0.0,1.0,0.0,0.0,1.0",
]


def _chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    (root / "train.csv").write_text("\n".join([CHEXPERT_HEADER] + CHEXPERT_TRAIN) + "\n")
    (root / "valid.csv").write_text("\n".join([CHEXPERT_HEADER] + CHEXPERT_VALID) + "\n")
    for row in CHEXPERT_TRAIN + CHEXPERT_VALID:
        rel = row.split(",")[0]
        if "patient00004" in rel:
            continue  # missing on disk
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    return root


def _same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b)) and len(a) == len(b)


def test_chexpert_policies_and_paths(tmp_path):
    root = _chexpert(tmp_path)
    nan = math.nan
    with pytest.warns(UserWarning, match="1 of 5 listed images were not found"):
        dl = chexpert_datalist(root, val_fraction=0.0)
    assert dl["labels"] == CHEXPERT_COMPETITION
    items = {it["image"].split("small/")[1]: it for it in dl["training"]}
    assert len(items) == 4 and dl["validation"] == []  # lateral and missing image dropped
    # order: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
    assert _same(items["train/patient00002/study2/view1_frontal.jpg"]["label"], [nan, nan, nan, nan, nan])
    assert _same(items["train/patient00002/study1/view1_frontal.jpg"]["label"], [0.0, 0.0, nan, 0.0, 0.0])
    assert _same(items["train/patient00003/study1/view1_frontal.jpg"]["label"], [0.0, 0.0, 0.0, 1.0, 0.0])
    assert items["train/patient00002/study1/view1_frontal.jpg"]["patient_id"] == "patient00002"
    assert all(Path(it["image"]).is_file() for it in dl["training"])
    assert [it["label"] for it in dl["testing"]] == [[0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0, 1.0]]
    assert [it["patient_id"] for it in dl["testing"]] == ["patient64541", "patient64542"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ones = chexpert_datalist(root, uncertain="ones", blank="ignore", val_fraction=0.0, frontal_only=False)
        zeros = chexpert_datalist(root, uncertain="zeros", val_fraction=0.0)
    o = {it["image"].split("small/")[1]: it["label"] for it in ones["training"]}
    assert len(o) == 5  # the lateral view is kept
    assert _same(o["train/patient00002/study2/view1_frontal.jpg"], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert _same(o["train/patient00001/study1/view1_frontal.jpg"], [nan, nan, nan, nan, nan])
    z = {it["image"].split("small/")[1]: it["label"] for it in zeros["training"]}
    assert z["train/patient00002/study2/view1_frontal.jpg"] == [0.0] * 5

    # resolves when root is passed as the parent folder's child path in another form (CSV moved inside)
    with pytest.raises(ValueError, match="uncertain must be one of"):
        chexpert_datalist(root, uncertain="maybe")


def test_chexpert_validation_by_patient_and_bad_values(tmp_path):
    root = _chexpert(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dl = chexpert_datalist(root, val_fraction=0.34, seed=3)
    val = {it["patient_id"] for it in dl["validation"]}
    train = {it["patient_id"] for it in dl["training"]}
    assert len(val) == 1 and not val & train and len(val | train) == 3
    bad = tmp_path / "bad"
    bad.mkdir()
    cells = CHEXPERT_VALID[1].split(",")
    cells[CHEXPERT_HEADER.split(",").index("Pleural Effusion")] = "2.0"
    (bad / "train.csv").write_text(CHEXPERT_HEADER + "\n" + ",".join(cells) + "\n")
    with pytest.raises(ValueError, match=r"train\.csv, line 2: column 'Pleural Effusion' holds '2.0'"):
        chexpert_datalist(bad)
    (bad / "train.csv").write_text(CHEXPERT_HEADER.replace("Edema", "Oedema") + "\n")
    with pytest.raises(ValueError, match=r"train\.csv: required column 'Edema'"):
        chexpert_datalist(bad)


def test_write_and_load_datalist_nan_as_null(tmp_path):
    dl = {
        "training": [{"image": "/a.png", "label": [1.0, math.nan, 0.0], "patient_id": "p1"}],
        "validation": [],
        "testing": [{"image": "/b.png", "label": [math.nan, 0.0, 1.0], "patient_id": "p2"}],
        "labels": ["A", "B", "C"],
    }
    path = write_datalist(dl, tmp_path / "sub" / "datalist.json")
    text = path.read_text()
    assert "NaN" not in text and "null" in text
    raw = json.loads(text)
    assert raw["training"][0]["label"] == [1.0, None, 0.0]
    back = load_datalist(path)
    assert _same(back["training"][0]["label"], [1.0, math.nan, 0.0])
    assert _same(back["testing"][0]["label"], [math.nan, 0.0, 1.0])
    assert back["labels"] == ["A", "B", "C"] and back["training"][0]["patient_id"] == "p1"
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_datalist(tmp_path / "broken.json")


# ----------------------------------------------------------------------------------------------------------
# synthetic generator
# ----------------------------------------------------------------------------------------------------------
def test_generate_chestxray14_layout_and_adapter(tmp_path):
    root = tmp_path / "syn"
    s = generate_chestxray14(root, n_patients=40, size=64, n_dicom=6, seed=1, min_pos_per_split=3)
    lines = (root / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == CHESTXRAY14_HEADER and lines[0].startswith(HEADER)
    assert len(lines) == s["n_images"] + 1 and all(line.endswith(",") for line in lines)
    entries = read_chestxray14_entries(root / "Data_Entry_2017.csv")
    labels = np.array([e["labels"] for e in entries])
    test = set((root / "test_list.txt").read_text().split())
    tv = set((root / "train_val_list.txt").read_text().split())
    assert not test & tv and len(test) + len(tv) == s["n_images"] == len(entries)
    pid = {e["image"]: e["patient_id"] for e in entries}
    assert not {pid[n] for n in test} & {pid[n] for n in tv}  # split by patient
    assert len({pid[n] for n in test}) == 8  # 20 % of 40 patients
    is_test = np.array([e["image"] in test for e in entries])
    assert labels[is_test].sum(0).min() >= 3 and labels[~is_test].sum(0).min() >= 3
    assert s["positives"]["test"] == dict(
        zip(CHESTXRAY14_FINDINGS, labels[is_test].sum(0).astype(int).tolist())
    )
    dcm = sorted((root / "images").glob("*.dcm"))
    png = sorted((root / "images").glob("*.png"))
    assert len(dcm) == s["n_dicom"] == 6 and len(png) == s["n_images"] - 6 and s["n_dicom_monochrome1"] == 2
    assert not {p.stem for p in dcm} & {p.stem for p in png}
    with Image.open(png[0]) as im:
        assert im.mode == "L" and im.size == (64, 64)
    dl = chestxray14_datalist(root, val_fraction=0.1)
    assert sum(len(dl[k]) for k in ("training", "validation", "testing")) == s["n_images"]
    assert (
        sum(it["image"].endswith(".dcm") for k in ("training", "validation", "testing") for it in dl[k]) == 6
    )
    reader = XrayDicomReader()
    for p in dcm:
        arr, meta = reader.get_data(reader.read(p))
        assert arr.shape == (64, 64) and 0.0 <= arr.min() and arr.max() <= 255.0 and arr.std() > 10
        assert "PatientID" not in meta


def test_generate_chestxray14_is_deterministic(tmp_path):
    a = generate_chestxray14(tmp_path / "a", n_patients=12, size=48, n_dicom=2, seed=5)
    b = generate_chestxray14(tmp_path / "b", n_patients=12, size=48, n_dicom=2, seed=5)
    generate_chestxray14(tmp_path / "c", n_patients=12, size=48, n_dicom=2, seed=6)
    assert {k: v for k, v in a.items() if k != "root"} == {k: v for k, v in b.items() if k != "root"}
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == a["n_images"] + 3
    for rel in files_a:  # byte-identical, DICOM UIDs included
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    csv_a, csv_c = ((tmp_path / d / "Data_Entry_2017.csv").read_text() for d in "ac")
    assert csv_a != csv_c
    with pytest.raises(ValueError, match="prevalences names unknown findings"):
        generate_chestxray14(tmp_path / "d", n_patients=4, prevalences={"Pneumonitis": 0.1})


def test_each_finding_draws_a_visible_pattern_in_its_own_cell():
    """With one rng seed, adding finding k changes only finding k's grid cell, by tens of grey levels over
    dozens of pixels, still after downsampling 256 -> 128 px; different findings differ in shape."""
    size, small = 256, 128
    none = render_chest_image(np.zeros(14), size, np.random.default_rng(11))
    shapes = []
    for k in range(14):
        lab = np.zeros(14)
        lab[k] = 1.0
        img = render_chest_image(lab, size, np.random.default_rng(11))
        diff = np.abs(img.astype(float) - none)
        ys, xs = np.nonzero(diff)
        r, c = _CELLS[k]
        reach = 0.07 + 0.025 + 0.04 + 0.01  # radius + position jitter + anatomy shift + a pixel
        assert abs(ys.min() / size - _GRID[r]) <= reach and abs(ys.max() / size - _GRID[r]) <= reach
        assert abs(xs.min() / size - _GRID[c]) <= reach and abs(xs.max() / size - _GRID[c]) <= reach
        assert diff[diff > 0].mean() >= 35.0 and (diff > 0).sum() >= 300, CHESTXRAY14_FINDINGS[k]
        down = np.abs(
            np.asarray(Image.fromarray(img).resize((small, small)), float)
            - np.asarray(Image.fromarray(none).resize((small, small)), float)
        )
        assert (down >= 20).sum() >= 60, CHESTXRAY14_FINDINGS[k]
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        shapes.append(np.sign(img.astype(float) - none)[cy - 20 : cy + 20, cx - 20 : cx + 20])
    for i in range(14):
        for j in range(i + 1, 14):
            union = (shapes[i] != 0) | (shapes[j] != 0)
            differ = np.mean(shapes[i][union] != shapes[j][union])
            assert differ > 0.15, (CHESTXRAY14_FINDINGS[i], CHESTXRAY14_FINDINGS[j], differ)
