"""Checkpoint selection: the latest epoch within a tolerance of the best, saved by MONAI's CheckpointSaver."""

from __future__ import annotations

import pytest
import torch
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver

from medbundle.handlers import SelectedEpochScore, TolerantSelection


def _selected(values, rule):
    """Epochs a MONAI workflow would select: the first always, then whenever ``rule(current, best)``."""
    best, chosen = values[0], [1]
    for epoch, v in enumerate(values[1:], start=2):
        if rule(v, best):
            best = v
            chosen.append(epoch)
    return chosen


def test_tolerant_selection_takes_the_latest_epoch_near_the_peak():
    # the CT demo's seed-1 validation curve: the strict rule keeps epoch 4 of 6 (0.997), the tolerant one the last
    curve = [0.81, 0.76, 0.75, 0.997, 0.995, 0.995]
    assert _selected(curve, lambda c, b: c > b) == [1, 4]
    assert _selected(curve, TolerantSelection(0.01)) == [1, 4, 5, 6]
    assert _selected(curve, TolerantSelection(0.0)) == [1, 4]  # 0.995 < 0.997: not a tie
    assert _selected([0.9, 0.9, 0.8], TolerantSelection(0.0)) == [1, 2]  # ties: the later epoch
    # a slow decline is compared with the peak, not followed step by step
    assert _selected([0.95, 0.945, 0.94, 0.935, 0.93], TolerantSelection(0.01)) == [1, 2, 3]
    # a loss: lower is better
    assert _selected([1.0, 0.5, 0.505, 0.7], TolerantSelection(0.01, greater_is_better=False)) == [1, 2, 3]
    assert not TolerantSelection(0.01)(float("nan"), 0.9)
    with pytest.raises(ValueError, match="tolerance"):
        TolerantSelection(-0.1)


class _Scripted(Metric):
    """A key metric that returns the next value of a list at each evaluator run."""

    def __init__(self, values):
        self.values = list(values)
        self.run = 0
        super().__init__()

    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        self.run += 1
        return self.values[self.run - 1]


def test_checkpoint_saver_keeps_the_network_of_the_selected_epoch(tmp_path):
    net = torch.nn.Linear(1, 1, bias=False)
    curve = [0.81, 0.76, 0.997, 0.995, 0.90]
    data = [{"image": torch.ones(1, 1), "label": torch.zeros(1, 1)}]
    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="selected_epoch",
                            key_metric_filename="model.pt")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=data, network=net,
        key_val_metric={"val_auc": _Scripted(curve)}, metric_cmp_fn=TolerantSelection(0.01),
        val_handlers=[SelectedEpochScore("selected_epoch"), saver],
    )
    saved = {}
    for epoch in range(1, len(curve) + 1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))  # the network of epoch e has weight e
        evaluator.run(global_epoch=epoch)
        saved[epoch] = float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"])
        assert evaluator.state.metrics["selected_epoch"] == evaluator.state.best_metric_epoch
    # epoch 4 (0.995) is within 0.01 of epoch 3's 0.997 and replaces it; epoch 5 (0.90) does not
    assert saved == {1: 1.0, 2: 1.0, 3: 3.0, 4: 4.0, 5: 4.0}
    assert evaluator.state.best_metric_epoch == 4 and evaluator.state.best_metric == pytest.approx(0.995)
