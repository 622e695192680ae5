"""benchmarks/gpu_check.py at tiny sizes on the CPU: the GPU check's code path cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openslide")

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_every_bundle_at_tiny_size(tmp_path):
    env = dict(os.environ, MEDBUNDLE_PROGRESS="off", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["tiny"] and report["device"].startswith("CPU")
    assert set(report["bundles"]) == {"chest_xray_classification", "ct_volume_classification",
                                      "lung_nodule_retinanet_detection", "wsi_mil_classification"}
    for name, r in report["bundles"].items():
        assert "error" not in r, (name, r)
        assert r["loader_items_per_s"] > 0 and r["train_items_per_s"] > 0, (name, r)
        assert r["train_items"] >= 2 and r["infer"]["network_s"] > 0, (name, r)
        assert len(r["infer"]["input_shape"]) >= 2, (name, r)
    # whole inputs, not toy crops: the CT volume and the nodule scan are inferred at their full resampled size
    assert report["bundles"]["ct_volume_classification"]["infer"]["input_shape"][1] > 32
    assert report["bundles"]["lung_nodule_retinanet_detection"]["infer"]["input_shape"][1] > 64
