"""Tests for medbundle.sampling: balance weights, the DDP-aware sampler, and datalist label statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medbundle.sampling import (
    ClassBalancedSampler,
    format_imbalance_report,
    imbalance_report,
    label_counts,
    sample_weights_for_balance,
)

NAN = float("nan")


# ----------------------------------------------------------------------------- weights


def test_single_label_weights_hand_counted() -> None:
    w = sample_weights_for_balance([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(sample_weights_for_balance(torch.tensor([1, 1, 0])), [0.5, 0.5, 1.0])


def test_multi_label_weights_hand_counted() -> None:
    labels = np.array([[1, 0], [1, 1], [0, 0], [NAN, 0], [0, 1], [1, NAN]])
    # positives: class 0 -> rows 0, 1, 5 (3); class 1 -> rows 1, 4 (2); no positive: rows 2, 3 (2)
    w = sample_weights_for_balance(labels)
    np.testing.assert_allclose(w, [1 / 3, 1 / 2, 1 / 2, 1 / 2, 1 / 2, 1 / 3])


def test_weight_errors() -> None:
    with pytest.raises(ValueError, match="missing"):
        sample_weights_for_balance([0.0, NAN, 1.0])
    with pytest.raises(ValueError, match="class indices"):
        sample_weights_for_balance([0.0, 1.5])
    with pytest.raises(ValueError, match="class indices"):
        sample_weights_for_balance([0, -1])
    with pytest.raises(ValueError, match="shape"):
        sample_weights_for_balance(np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- sampler


def test_sampler_balances_single_label() -> None:
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    sampler = ClassBalancedSampler(labels, num_samples=30000, seed=1)
    drawn = labels[np.fromiter(iter(sampler), dtype=np.int64)]
    freq = np.bincount(drawn, minlength=3) / drawn.size
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.02)
    assert len(sampler) == 30000


def test_sampler_balances_multi_label() -> None:
    # groups: class-0 only (500), class-1 only (50), class-2 only (10), no finding (440)
    sizes = [500, 50, 10, 440]
    rows = [[1, 0, 0]] * sizes[0] + [[0, 1, 0]] * sizes[1] + [[0, 0, 1]] * sizes[2] + [[0, 0, 0]] * sizes[3]
    labels = np.array(rows, dtype=float)
    labels[::7, 1] = NAN  # some missing labels do not change the groups
    labels[sizes[0] : sizes[0] + sizes[1], 1] = 1
    group = np.repeat(np.arange(4), sizes)
    sampler = ClassBalancedSampler(labels, num_samples=20000, seed=3)
    freq = np.bincount(group[list(sampler)], minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.25] * 4, atol=0.02)


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_ranks_split_one_global_sequence(num_replicas: int) -> None:
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2])  # N = 11
    samplers = [
        ClassBalancedSampler(labels, num_replicas=num_replicas, rank=r, seed=5) for r in range(num_replicas)
    ]
    for s in samplers:
        s.set_epoch(2)
    per_rank = -(-11 // num_replicas)
    shares = [list(s) for s in samplers]
    assert all(len(share) == per_rank == len(s) for share, s in zip(shares, samplers))
    glob = samplers[0].global_indices()
    assert glob.size == per_rank * num_replicas
    # rank r holds positions r, r + R, ...: the shares interleave back into the global sequence
    rebuilt = np.empty(glob.size, dtype=np.int64)
    for r, share in enumerate(shares):
        rebuilt[r::num_replicas] = share
    np.testing.assert_array_equal(rebuilt, glob)
    # every rank computes the same global sequence
    for s in samplers[1:]:
        np.testing.assert_array_equal(s.global_indices(), glob)
    # padding repeats the first draws
    np.testing.assert_array_equal(glob[11:], glob[: glob.size - 11])


def test_drop_last_and_without_replacement() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, 0])
    s = ClassBalancedSampler(labels, num_replicas=2, rank=1, drop_last=True)
    assert len(s) == 5 and len(list(s)) == 5 and s.global_indices().size == 10
    s = ClassBalancedSampler(labels, replacement=False)
    assert sorted(s) == list(range(11))
    with pytest.raises(ValueError, match="without replacement"):
        ClassBalancedSampler(labels, num_samples=12, replacement=False)
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedSampler(labels, num_replicas=2, rank=2)


def test_sampler_determinism_and_epochs() -> None:
    labels = np.repeat([0, 1], [80, 20])
    a = ClassBalancedSampler(labels, seed=7)
    b = ClassBalancedSampler(labels, seed=7)
    first = list(a)
    assert first == list(b)
    assert list(ClassBalancedSampler(labels, seed=8)) != first
    b.set_epoch(1)
    second = list(b)
    assert second != first
    # without set_epoch, every further iteration advances the epoch by one
    assert list(a) == second
    a.set_epoch(0)
    assert list(a) == first
    np.testing.assert_array_equal(a.global_indices(epoch=1), second)
    # not distributed here: defaults to one replica, rank 0
    assert a.num_replicas == 1 and a.rank == 0


def test_sampler_in_dataloader() -> None:
    labels = [0, 1, 1, 0, 2]
    loader = DataLoader(list(range(5)), batch_size=2, sampler=ClassBalancedSampler(labels, num_samples=6))
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 2, 2]
    assert all(0 <= int(i) < 5 for b in batches for i in b)


# ----------------------------------------------------------------------------- label statistics

MULTI = [
    {"image": "a.png", "label": [1, 0, None]},
    {"image": "b.png", "label": [0, 0, 1]},
    {"image": "c.png", "label": [1, NAN, 0]},
    {"image": "d.png", "label": [1, 1, 1]},
]
SINGLE = [{"label": v} for v in [0, 2, 2, None, 1, 2]]


def test_label_counts_multi_label() -> None:
    stats = label_counts(MULTI)
    assert stats == {
        "multilabel": True,
        "n": 4,
        "num_classes": 3,
        "pos": [3, 1, 2],
        "neg": [1, 2, 1],
        "missing": [0, 1, 1],
    }


def test_label_counts_single_label() -> None:
    stats = label_counts(SINGLE)
    assert stats == {"multilabel": False, "n": 6, "num_classes": 3, "counts": [1, 1, 3], "missing": 1}
    assert label_counts(SINGLE, num_classes=4)["counts"] == [1, 1, 3, 0]
    assert label_counts([{"y": np.int64(1)}, {"y": 0.0}], label_key="y")["counts"] == [1, 1]


def test_label_counts_errors() -> None:
    with pytest.raises(ValueError, match="item 1 has no 'label'"):
        label_counts([{"label": 0}, {"image": "x"}])
    with pytest.raises(ValueError, match="mixes"):
        label_counts([{"label": 0}, {"label": [0, 1]}])
    with pytest.raises(ValueError, match="different lengths"):
        label_counts([{"label": [0]}, {"label": [0, 1]}])
    with pytest.raises(ValueError, match="not a number"):
        label_counts([{"label": "pneumonia"}])
    with pytest.raises(ValueError, match="num_classes=2"):
        label_counts([{"label": 3}], num_classes=2)


def test_imbalance_report_multi_label_from_json(tmp_path: Path) -> None:
    path = tmp_path / "datalist.json"
    as_json = [{"image": d["image"], "label": [None if v != v else v for v in d["label"]]} for d in MULTI]
    path.write_text(json.dumps({"training": as_json, "validation": as_json[:1]}))
    report = imbalance_report(str(path), class_names=["Effusion", "Nodule", "Mass"])
    assert report["split"] == "training" and report["multilabel"]
    assert report["n_samples"] == 4 and report["num_classes"] == 3
    assert report["imbalance_factor"] == pytest.approx(3.0)
    assert report["n_samples_with_missing"] == 2
    eff, nod, mass = report["classes"]
    assert eff == {
        "name": "Effusion",
        "count": 3,
        "negatives": 1,
        "prevalence": 0.75,
        "pos_neg_ratio": 3.0,
        "missing": 0,
    }
    assert nod["prevalence"] == pytest.approx(1 / 3) and nod["pos_neg_ratio"] == 0.5 and nod["missing"] == 1
    assert mass["prevalence"] == pytest.approx(2 / 3) and mass["pos_neg_ratio"] == 2.0
    assert imbalance_report(path, split="validation")["n_samples"] == 1

    text = format_imbalance_report(report)
    lines = text.splitlines()
    assert "imbalance factor (max/min non-zero count): 3.00" in lines[0]
    table = lines[1:]
    assert len({len(row) for row in table}) == 1  # aligned columns
    assert table[0].split() == ["class", "count", "prevalence", "negatives", "pos/neg", "missing"]
    assert table[2].split() == ["Effusion", "3", "75.00%", "1", "3.000", "0"]
    assert table[3].split() == ["Nodule", "1", "33.33%", "2", "0.500", "1"]


def test_imbalance_report_single_label_and_errors() -> None:
    report = imbalance_report({"validation": SINGLE}, split="validation")
    assert not report["multilabel"]
    assert [c["count"] for c in report["classes"]] == [1, 1, 3]
    assert [c["prevalence"] for c in report["classes"]] == pytest.approx([0.2, 0.2, 0.6])
    assert report["imbalance_factor"] == pytest.approx(3.0)
    assert report["n_samples"] == 6 and report["n_samples_with_missing"] == 1
    # a class without samples: prevalence 0, left out of the imbalance factor
    report = imbalance_report(SINGLE, class_names=["a", "b", "c", "d"])
    assert report["classes"][3]["count"] == 0 and report["imbalance_factor"] == pytest.approx(3.0)
    lines = format_imbalance_report(report).splitlines()
    assert lines[-1].split() == ["d", "0", "0.00%"]
    with pytest.raises(ValueError, match="no 'testing' split; available keys: \\['validation'\\]"):
        imbalance_report({"validation": SINGLE}, split="testing")
    with pytest.raises(ValueError, match="class_names has 2 names"):
        imbalance_report(MULTI, class_names=["a", "b"])
    with pytest.raises(ValueError, match="cannot read"):
        imbalance_report("/nonexistent/datalist.json")


def test_train_sampler_choice():
    from types import SimpleNamespace

    from monai.data import DistributedSampler

    from medbundle.sampling import ClassBalancedSampler, train_sampler

    ds = SimpleNamespace(data=[{"label": [1.0, 0.0]}, {"label": [0.0, 0.0]}, {"label": [0.0, 1.0]}, {"label": [0, 0]}])
    assert train_sampler(ds) is None
    bal = train_sampler(ds, balanced=True, num_replicas=1, rank=0)
    assert isinstance(bal, ClassBalancedSampler) and len(bal) == 4
    # the two samples with a rare positive weigh more than the all-negative ones
    assert bal.weights[0] > bal.weights[1] and bal.weights[2] > bal.weights[3]
    shards = [list(train_sampler(list(range(10)), distributed=True, num_replicas=2, rank=r)) for r in (0, 1)]
    assert isinstance(train_sampler(list(range(10)), distributed=True, num_replicas=2, rank=0), DistributedSampler)
    assert len(shards[0]) == len(shards[1]) == 5 and sorted(shards[0] + shards[1]) == list(range(10))
