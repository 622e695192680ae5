"""SlidingWindowClassifier and CropWeightMapd: window placement, aggregation rules, weights."""

from __future__ import annotations

import pytest
import torch

from medbundle.ct.transforms import CropWeightMapd, dilate_box
from medbundle.inferers import SlidingWindowClassifier, aggregate_logits, window_starts


def test_window_starts_cover_the_axis_and_end_at_the_edge():
    assert window_starts(10, 32, 0.5) == [0]
    assert window_starts(64, 32, 0.5) == [0, 16, 32]
    assert window_starts(70, 32, 0.5) == [0, 16, 32, 38]
    assert window_starts(70, 32, 0.0) == [0, 32, 38]


def test_aggregation_rules_by_hand():
    logits = torch.tensor([[1.0, 0.0], [3.0, -2.0], [2.0, 5.0]])
    torch.testing.assert_close(aggregate_logits(logits, "mean"), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(aggregate_logits(logits, "max"), torch.tensor([3.0, 5.0]))
    torch.testing.assert_close(aggregate_logits(logits, "topk_mean", top_k=2), torch.tensor([2.5, 2.5]))
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_logits(logits, "median")


class _SumNet(torch.nn.Module):
    """Logit 0 = constant, logit 1 = sum of the window: a 'finding' is bright voxels."""

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([torch.full_like(s, 1.0), s], dim=1)


def test_windows_see_the_whole_volume_and_small_volumes_are_padded():
    vol = torch.zeros(1, 1, 40, 40, 40)
    vol[0, 0, 37, 2, 20] = 10.0  # one bright voxel near a corner
    inf = SlidingWindowClassifier(16, sw_batch_size=5, overlap=0.5, aggregation="max")
    wl = inf.window_logits(vol[0], _SumNet())
    assert wl.shape == (len(window_starts(40, 16, 0.5)) ** 3, 2)
    assert float(wl[:, 1].max()) == pytest.approx(10.0)  # some window contains the voxel
    out = inf(vol, _SumNet())
    assert out.shape == (1, 2) and float(out[0, 1]) == pytest.approx(10.0)
    tiny = torch.ones(1, 1, 5, 6, 7)
    out = SlidingWindowClassifier(16, aggregation="mean", pad_value=0.0)(tiny, _SumNet())
    assert float(out[0, 1]) == pytest.approx(5 * 6 * 7)  # padding adds zeros only


def test_softmax_activation_aggregates_probabilities():
    # window A says class 0 strongly; window B says class 1 moderately
    wl = torch.tensor([[6.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    inf = SlidingWindowClassifier(8, aggregation="max", activation="softmax")
    p = torch.softmax(inf.aggregate(wl), 0)
    pw = torch.softmax(wl, 1).max(0).values
    torch.testing.assert_close(p, pw / pw.sum())
    # raw-logit max would give class 1 only exp(2)/(exp(6)+exp(2)+1) ~ 0.018; probability max keeps it
    assert float(p[1]) > 0.3
    sig = SlidingWindowClassifier(8, aggregation="mean", activation="sigmoid").aggregate(wl)
    torch.testing.assert_close(torch.sigmoid(sig), torch.sigmoid(wl).mean(0), atol=1e-5, rtol=1e-5)


def test_crop_weights_body_roi_lesion():
    hu = torch.full((1, 6, 6, 1), -1000.0)
    hu[0, 1:5, 1:5, 0] = 40.0  # body
    hu[0, 2:4, 2:4, 0] = -850.0  # lung inside the body
    body = (hu > -500).float()
    body[0, 2:4, 2:4, 0] = 1.0  # filled lung
    lesion = torch.zeros_like(hu)
    lesion[0, 2, 2, 0] = 1
    d = CropWeightMapd(lesion_weight=100.0, roi_range=(-950, -300), roi_weight=5.0)(
        {"image": hu, "body_mask": body, "mask": lesion}
    )
    w = d["crop_weight"][0, :, :, 0]
    assert float(w[0, 0]) == 0.0  # outside the body
    assert float(w[1, 1]) == 1.0  # soft tissue
    assert float(w[3, 3]) == 6.0  # lung: body + roi
    assert float(w[2, 2]) == 106.0  # lesion in lung
    no_roi = CropWeightMapd(roi_range=None)({"image": hu, "body_mask": body})
    assert set(no_roi["crop_weight"].unique().tolist()) == {0.0, 1.0}


def test_dilate_box_by_axis_and_errors():
    m = torch.zeros(1, 9, 9, 9)
    m[0, 4, 4, 4] = 1
    d = dilate_box(m, 2)
    assert d.dtype == torch.bool and d.shape == m.shape
    assert int(d.sum()) == 5**3 and bool(d[0, 2:7, 2:7, 2:7].all())
    d = dilate_box(m, (1, 0, 3))  # per-axis margins: 3 x 1 x 7 box
    assert int(d.sum()) == 3 * 1 * 7 and bool(d[0, 3:6, 4, 1:8].all())
    corner = torch.zeros(1, 9, 9)
    corner[0, 0, 0] = 1
    assert int(dilate_box(corner, 2).sum()) == 9  # clipped at the edge: 3 x 3
    torch.testing.assert_close(dilate_box(m, 0), m > 0)
    assert not dilate_box(torch.zeros(1, 4, 4, 4), 3).any()
    with pytest.raises(ValueError, match="one per spatial axis"):
        dilate_box(m, (1, 2))
    with pytest.raises(ValueError, match=">= 0"):
        dilate_box(m, -1)


def test_crop_weights_lesion_margin_puts_the_finding_off_centre():
    body = torch.ones(1, 20, 20, 20)
    lesion = torch.zeros(1, 20, 20, 20)
    lesion[0, 10, 10, 10] = 1
    d = CropWeightMapd(lesion_weight=1e6, lesion_margin=4)({"body_mask": body, "mask": lesion})
    w = d["crop_weight"][0]
    near = w > 1
    assert int(near.sum()) == 9**3  # centres up to 4 voxels from the finding along each axis
    assert float(w[14, 6, 10]) == pytest.approx(1e6 + 1) and float(w[15, 10, 10]) == 1.0
    # with a large lesion_weight nearly every patch centre is near the finding (its label holds for the patch)
    assert float(w[near].sum() / w.sum()) > 0.999
    old = CropWeightMapd(lesion_weight=1e6)({"body_mask": body, "mask": lesion})["crop_weight"][0]
    assert int((old > 1).sum()) == 1  # margin 0: every such patch centred on a finding voxel
    with pytest.raises(ValueError, match="lesion_margin"):
        CropWeightMapd(lesion_margin=-2)


def test_window_margin_is_half_the_window_step():
    from medbundle.inferers import window_margin, window_starts

    assert window_margin([64, 64, 48], 0.25) == [24, 24, 18]
    assert window_margin(40, 0.5) == [10]
    # every position of a long axis is within the margin of some window centre
    roi, overlap, size = 48, 0.25, 300
    centres = [s + roi / 2 for s in window_starts(size, roi, overlap)]
    margin = window_margin(roi, overlap)[0]
    inner = range(roi // 2, size - roi // 2)
    assert all(min(abs(x - c) for c in centres) <= margin for x in inner)
