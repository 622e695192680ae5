"""Class-label files (MONAI Label datastore labels for the classifiers) and the transforms that read them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medbundle.io.class_labels import read_class_label, resolve_class_labels, write_class_label
from medbundle.monailabel.transforms import LoadClassLabeld
from medbundle.sampling import label_counts, train_sampler

CXR = ["Atelectasis", "Cardiomegaly", "Effusion", "Pleural_Thickening"]
CT = ["normal", "consolidation"]


@pytest.mark.parametrize(("content", "expected"), [
    ({"labels": ["Cardiomegaly", "effusion"]}, [0.0, 1.0, 1.0, 0.0]),
    (["pleural thickening"], [0.0, 0.0, 0.0, 1.0]),  # case, spaces and underscores ignored
    ({"labels": []}, [0.0, 0.0, 0.0, 0.0]),  # no finding
    ("Atelectasis", [1.0, 0.0, 0.0, 0.0]),
    ({"label": [0, 1, None, 0]}, [0.0, 1.0, None, 0.0]),  # unknown class stays unknown
    ([1, 0, 0, 1], [1.0, 0.0, 0.0, 1.0]),
])
def test_multi_label_files(tmp_path, content, expected):
    f = tmp_path / "a.json"
    f.write_text(json.dumps(content))
    assert read_class_label(str(f), CXR) == expected
    assert read_class_label(f, CXR) == expected


@pytest.mark.parametrize(("content", "expected"), [
    ({"label": 1}, 1), (0, 0), ("Consolidation", 1), ({"labels": ["normal"]}, 0), ([0, 1], 1),
])
def test_single_label_files(tmp_path, content, expected):
    f = tmp_path / "a.json"
    f.write_text(json.dumps(content))
    assert read_class_label(str(f), CT, multi_label=False) == expected


@pytest.mark.parametrize(("content", "multi", "match"), [
    (["Pneumonia"], True, "unknown class 'Pneumonia'"),
    ([0, 1], True, "needs 4 values"),
    ({"findings": []}, True, "'labels'"),
    (["normal", "consolidation"], False, "exactly one class name"),
    (2, False, "not one of 0..1"),
    ([1, 1], False, "one-hot"),
    (True, False, "cannot read"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, multi, match):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(content))
    names = CXR if multi else CT
    with pytest.raises(ValueError, match=match) as e:
        read_class_label(str(f), names, multi_label=multi)
    assert "bad.json" in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    f = tmp_path / "label.png"
    f.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="must be JSON"):
        read_class_label(str(f), CXR)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_class_label(str(tmp_path / "nope.json"), CXR)


def test_write_then_read_round_trips(tmp_path):
    assert read_class_label(write_class_label(tmp_path / "a.json", ["Effusion"]), CXR) == [0.0, 0.0, 1.0, 0.0]
    assert read_class_label(write_class_label(tmp_path / "b.json", [0, 1, 0, 0]), CXR) == [0.0, 1.0, 0.0, 0.0]
    assert read_class_label(write_class_label(tmp_path / "c.json", "consolidation"), CT, multi_label=False) == 1
    assert read_class_label(write_class_label(tmp_path / "d.json", 0), CT, multi_label=False) == 0


def test_in_memory_labels_pass_through_the_transform_and_files_are_read(tmp_path):
    f = write_class_label(tmp_path / "x.json", ["Cardiomegaly"])
    t = LoadClassLabeld("label", CXR)
    assert t({"image": "a.png", "label": str(f)})["label"] == [0.0, 1.0, 0.0, 0.0]
    vec = [1.0, 0.0, 0.0, 0.0]
    assert t({"image": "a.png", "label": vec})["label"] is vec
    tensor = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert t({"label": tensor})["label"] is tensor
    assert t({"image": "a.png"}) == {"image": "a.png"}  # inference items have no label
    assert LoadClassLabeld("label", CT, multi_label=False)({"label": str(write_class_label(tmp_path / "y.json", 1))})[
        "label"] == 1


def test_label_counts_and_balanced_sampler_over_a_datastore_of_label_files(tmp_path):
    findings = [["Cardiomegaly"], [], ["Effusion", "Cardiomegaly"], [], ["Atelectasis"], []]
    items = [{"image": f"{i}.png", "label": str(write_class_label(tmp_path / f"{i}.json", f))}
             for i, f in enumerate(findings)]
    resolved = resolve_class_labels(items, CXR)
    assert [it["image"] for it in resolved] == [it["image"] for it in items]
    assert all(isinstance(it["label"], str) for it in items)  # the input datalist is not modified
    counts = label_counts(resolved)
    assert counts["pos"] == [1, 2, 1, 0] and counts["neg"] == [5, 4, 5, 6]

    class DS:
        data = items

        def __len__(self):
            return len(items)

    labels = [it["label"] for it in resolved]
    sampler = train_sampler(DS(), balanced=True, labels=labels, seed=0)
    in_memory = [{"image": it["image"], "label": [float(c in f) for c in CXR]} for it, f in zip(items, findings)]

    class MemDS(DS):
        data = in_memory

    # the same draws as over a datalist that held the vectors in memory
    assert list(iter(sampler)) == list(iter(train_sampler(MemDS(), balanced=True, seed=0)))
    drawn = np.array([labels[i] for i in iter(sampler)])
    assert drawn[:, 0].mean() > 1 / 6  # the single Atelectasis image is drawn above its prevalence
    with pytest.raises(ValueError, match="2 labels for a dataset of 6"):
        train_sampler(DS(), balanced=True, labels=labels[:2])
