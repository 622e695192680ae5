"""Shared helpers for the end-to-end bundle tests: run ``python -m monai.bundle`` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLES = REPO / "bundles"


def config_list(*paths: Path) -> str:
    return "[" + ",".join(repr(str(p)) for p in paths) + "]"


def run_bundle(args: list[str], cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>``; fail the test with the output tail if it exits non-zero."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"monai.bundle {args[:2]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def missing_properties(cfg: Path, config: str, kind: str, bundle_root: Path, **overrides) -> list:
    """MONAI's property check of ``cfg/config`` as a ``kind`` (``train``/``infer``) workflow: the missing ones."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(cfg / config), meta_file=str(cfg / "metadata.json"),
                        logging_file=str(cfg / "logging.conf"), workflow_type=kind, bundle_root=str(bundle_root),
                        **overrides)
    wf.initialize()
    return wf.check_properties()


def fresh_model(bundle: str, work: Path, overrides: dict) -> None:
    """A freshly initialised network of the bundle's inference config, saved where inference loads it."""
    import torch
    from monai.bundle import ConfigParser

    cfg = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / "inference.json"), str(cfg / "demo.json")])
    parser.update({"bundle_root": str(work), **overrides})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    (work / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), work / "models" / "model.pt")
