"""Synthetic slides as hard as Camelyon16: tumour covering a few percent of the tissue or far less."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from medbundle.pathology.synthetic import MICRO_SHARE, make_slide, tumour_fraction_targets, tumour_share


def _square(x0: float, y0: float, side: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], np.float64)


def test_tumour_share_of_hand_drawn_squares():
    tissue = np.ones((10, 10), np.float32)  # 10 x 10 design cells of 8 px: 6400 px^2 of tissue
    assert tumour_share([_square(0, 0, 40)], tissue, 8) == pytest.approx(1600 / 6400, rel=1e-3)
    # two overlapping squares count their union once: 1600 + 1600 - 400
    both = [_square(0, 0, 40), _square(20, 20, 40)]
    assert tumour_share(both, tissue, 8) == pytest.approx(2800 / 6400, rel=0.03)  # a cell row on the seam
    # tissue only in the left half of the slide: a square straddling the border counts its left part
    half = np.zeros((10, 10), np.float32)
    half[:, :5] = 1.0
    assert tumour_share([_square(24, 0, 32)], half, 8) == pytest.approx(16 * 32 / 3200, rel=0.05)
    assert tumour_share([], tissue, 8) == 0.0
    assert tumour_share([_square(0, 0, 40)], np.zeros((10, 10), np.float32), 8) == 0.0


@pytest.mark.parametrize("target", [0.004, 0.03])
def test_make_slide_sizes_the_tumour_to_the_target_share(target):
    s = make_slide(1024, 1024, mpp=2.0, seed=7, tumour=True, n_tumours=2, tumour_fraction=target, pen_marks=0,
                   specks=0)
    assert s.tumour_fraction == pytest.approx(target, rel=0.011)
    # brute force at every level-0 pixel centre: inside an outline, weighted by the (nearest) tissue cell
    ys, xs = np.mgrid[0:1024, 0:1024] + 0.5
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    inside = np.any([MplPath(poly).contains_points(pts) for poly in s.tumour_polygons], axis=0)
    cell = s.tissue[(pts[:, 1] // s.step).astype(int), (pts[:, 0] // s.step).astype(int)]
    assert float((cell * inside).sum() / cell.sum()) == pytest.approx(target, rel=0.1)
    with pytest.raises(ValueError, match="share of the tissue"):
        make_slide(256, 256, tumour=True, tumour_fraction=1.5)


def test_tumour_fraction_targets_are_stratified_around_one_percent():
    rng = np.random.default_rng(0)
    for n in (1, 5, 10, 11):
        t = tumour_fraction_targets(n, rng, (0.003, 0.04), micro_share=0.5)
        assert t.shape == (n,) and t.min() >= 0.003 and t.max() <= 0.04
        assert int((t < MICRO_SHARE).sum()) == math.ceil(n / 2)
    with pytest.raises(ValueError, match="leaves no room"):
        tumour_fraction_targets(4, rng, (0.02, 0.04))
    with pytest.raises(ValueError, match="0 < low < high < 1"):
        tumour_fraction_targets(4, rng, (0.05, 0.01))


def test_camelyon16_generator_writes_micro_and_macro_slides(tmp_path):
    pytest.importorskip("tifffile")
    from medbundle.pathology.synthetic import generate_camelyon16

    summary = generate_camelyon16(tmp_path, n_train_normal=1, n_train_tumor=4, n_test_normal=1, n_test_tumor=4,
                                  size=768, mpp=2.0, seed=3)
    shares = np.array([s["tumour_fraction"] for s in summary["slides"] if s["label"]])
    assert shares.size == 8 and shares.max() < 0.05 and (shares < MICRO_SHARE).sum() >= 4
    assert summary["tumour_fraction"]["under_1_percent"] == int((shares < MICRO_SHARE).sum())
    rows = list(csv.reader(open(tmp_path / "testing" / "reference.csv")))
    by_name = {s["name"]: s for s in summary["slides"] if s["split"] == "testing"}
    for row in rows:
        s = by_name[row[0]]
        if row[1] == "Tumor":
            assert row[2] == ("Micro" if s["tumour_fraction"] < MICRO_SHARE else "Macro")
        else:
            assert s["label"] == 0 and len(row) == 2
