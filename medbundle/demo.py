"""``medbundle demo``: synthetic data -> train -> evaluate -> infer, each through ``python -m monai.bundle``.

Every step runs the bundle's own configs with its ``configs/demo.json`` overlay in a subprocess, exactly
as a user would run them, with ``bundle_root`` pointed at the work folder so nothing is written into the
source tree. Per bundle the work folder gets ``data/`` (synthetic data in the public layout), ``models/``,
``eval/metrics.json``, the inference outputs and ``logs/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medbundle.bundle import bundle_dir
from medbundle.recipes import get_recipe

__all__ = ["run_bundle_step", "run_demo"]


_PROGRESS = re.compile(
    r"(Epoch\[\d+\] Metrics|Key metric|Epoch\[\d+\] Complete|skipping|ERROR|Error|Traceback|wrote |"
    r"Current learning rate|epoch \d+/\d+)"
)


_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - ")


def _short(line: str, width: int = 150) -> str:
    """A log line without its date stamp and logger name, cut to ``width`` characters."""
    text = _STAMP.sub("", line.rstrip())
    text = re.sub(r"^(ignite\.engine\.engine\.|monai\.\S+ - |medbundle\.\S+ - )", "", text)
    return text if len(text) <= width else text[: width - 3] + "..."


def _config_list(paths: list[Path]) -> str:
    return "[" + ",".join(repr(str(p)) for p in paths) + "]"


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def run_bundle_step(
    bundle: str | Path,
    step: str,
    workdir: Path,
    overrides: dict[str, Any] | None = None,
    configs: list[str] | None = None,
    log: Path | None = None,
    echo: Callable[[str], None] | None = print,
    verbose: bool = False,
) -> float:
    """Run one ``python -m monai.bundle run <step>`` of a bundle with its demo overlay.

    Args:
        bundle: bundle name or path.
        step: ``training``, ``evaluating`` or ``inference``.
        workdir: the bundle's work folder (becomes ``bundle_root``).
        overrides: ``--key value`` pairs passed to ``monai.bundle``.
        configs: config file names under ``configs/``; default by step, always ending in ``demo.json``.
        log: file that receives the full output.
        echo: where progress lines go.
        verbose: echo every line, not only progress lines.

    Returns:
        Seconds the step took.

    Raises:
        RuntimeError: the step failed; the message holds the end of its log.
    """
    bdir = bundle_dir(str(bundle))
    cdir = bdir / "configs"
    if configs is None:
        configs = {
            "training": ["train.json", "demo.json"],
            "evaluating": ["train.json", "evaluate.json", "demo.json"],
            "inference": ["inference.json", "demo.json"],
        }[step]
    run_id = "run" if step == "inference" else step
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", run_id,
        "--config_file", _config_list([cdir / c for c in configs]),
        "--meta_file", str(cdir / "metadata.json"),
        "--logging_file", str(cdir / "logging.conf"),
        "--bundle_root", str(workdir),
    ]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", v if isinstance(v, str) else repr(v)]  # fire parses Python literals
    t0 = time.perf_counter()
    tail: list[str] = []
    log_f = open(log, "w") if log else None
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if log_f:
                log_f.write(line)
            tail = (tail + [line.rstrip()])[-40:]
            if echo and (verbose or _PROGRESS.search(line)):
                echo(f"  [{step}] {_short(line)}")
        rc = proc.wait()
    finally:
        if log_f:
            log_f.close()
    if rc != 0:
        raise RuntimeError(f"{step} of {Path(str(bundle)).name} failed (exit {rc}); last lines:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def run_demo(
    bundles: list[str],
    workdir: str | Path,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run the demo for each bundle; return one result row per bundle.

    ``overrides`` are extra ``--key value`` pairs for every ``monai.bundle`` step (after the demo overlay),
    e.g. ``{"num_epochs": "1"}`` for a smoke run. ``seed`` draws the synthetic data and the split
    (``split_seed``) and seeds the training (``seed``); data of another seed in the work folder is replaced.
    """
    workdir = Path(workdir).resolve()
    overrides_all = overrides
    rows = []
    for name in bundles:
        try:
            spec = get_recipe(name)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        bwork = workdir / name
        (bwork / "logs").mkdir(parents=True, exist_ok=True)
        data_root = bwork / "data"
        marker = data_root / ".seed"
        if data_root.exists() and (not marker.is_file() or marker.read_text().strip() != str(seed)):
            shutil.rmtree(data_root)  # data of another seed (or of an unknown one): draw it again
        echo(f"== {name}: generating synthetic data in {data_root} (seed {seed})")
        t0 = time.perf_counter()
        overrides = {**spec.demo_data(data_root, seed), "seed": seed, "split_seed": seed}
        marker.write_text(str(seed))
        # the demo trains a new model each time: its inference redoes every item instead of resuming
        infer_over = {**overrides.pop("inference", {}), "overwrite": True}
        times = {"data": time.perf_counter() - t0}
        for step in ("training", "evaluating", "inference"):
            echo(f"== {name}: {step}")
            over = {**(infer_over if step == "inference" else overrides), **(overrides_all or {})}
            times[step] = run_bundle_step(name, step, bwork, over, log=bwork / "logs" / f"{step}.log",
                                          echo=echo, verbose=verbose)
        with open(bwork / "eval" / "metrics.json") as f:
            metrics = json.load(f)
        key, label = spec.headline
        row = {
            "bundle": name,
            "seed": seed,
            "metric": label,
            "value": _lookup(metrics, key),
            "target": spec.target,
            "minutes": sum(times.values()) / 60,
            "times_s": {k: round(v, 1) for k, v in times.items()},
            "workdir": str(bwork),
        }
        for k, lab in spec.extra:
            row[lab] = _lookup(metrics, k)
        rows.append(row)
    return rows
