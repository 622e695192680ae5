"""benchmarks/demo_seeds.py's summary, merge and table, on hand-made reports (the demo runs are benchmarks)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import demo_seeds  # noqa: E402

MACHINE = {"cpus_usable": 2, "cpu_count": 2, "platform": "Linux", "torch": "2.x"}


def _report(name: str, values: list[float], target: float, seeds=(0, 1, 2), machine=MACHINE) -> dict:
    return {"machine": dict(machine), "seeds": list(seeds), "bundles": {name: {
        "metric": "m", "target": target, "headline": demo_seeds.summarise(values),
        "extras": {"nodule AUROC": demo_seeds.summarise([0.9, None, float("nan")])},
        "minutes": demo_seeds.summarise([3.0, 4.0, 5.0]),
        "all_seeds_reach_target": min(values) >= target, "runs": []}}}


def test_summarise_is_mean_sample_sd_min_max_of_the_numbers():
    s = demo_seeds.summarise([0.9, 0.95, None, float("nan"), 1.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.95) and s["min"] == 0.9 and s["max"] == 1.0
    assert s["sd"] == pytest.approx(statistics.stdev([0.9, 0.95, 1.0]))
    assert demo_seeds.summarise([None])["mean"] is None


def test_merge_puts_bundles_side_by_side_and_refuses_mixed_seeds_or_machines():
    merged = demo_seeds.merge([_report("a", [0.9, 0.92, 0.94], 0.9), _report("b", [0.7, 0.85, 0.9], 0.8)])
    assert list(merged["bundles"]) == ["a", "b"] and merged["seeds"] == [0, 1, 2]
    table = demo_seeds.markdown(merged)
    row_a = next(line for line in table.splitlines() if line.startswith("| a |"))
    row_b = next(line for line in table.splitlines() if line.startswith("| b |"))
    assert "**0.920 ± 0.020 (min 0.900)**" in row_a and "| yes |" in row_a
    assert "| no |" in row_b and "nodule AUROC 0.900 ± 0.000" in row_a
    with pytest.raises(ValueError, match="different seeds"):
        demo_seeds.merge([_report("a", [1.0], 0.9, seeds=(0,)), _report("b", [1.0], 0.9)])
    with pytest.raises(ValueError, match="different machines"):
        demo_seeds.merge([_report("a", [1.0], 0.9), _report("b", [1.0], 0.9, machine={**MACHINE, "gpu": "H200"})])
    with pytest.raises(ValueError, match="nothing to merge"):
        demo_seeds.merge([])
