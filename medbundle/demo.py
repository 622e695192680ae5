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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbundle.bundle import bundle_dir

__all__ = ["DEMOS", "DemoSpec", "run_bundle_step", "run_demo"]


@dataclass
class DemoSpec:
    """How the demo prepares data and reads results for one bundle."""

    prepare: Callable[[Path, int], dict[str, Any]]
    """``(folder, seed)``: writes synthetic data under the folder, drawn with the seed; returns config
    overrides (e.g. ``dataset_dir``) for training/evaluation and, under the key ``"inference"``, overrides
    for inference."""
    headline: tuple[str, str]
    """(metrics.json key, label) of the figure shown in the results table."""
    threshold: float
    """The value the headline figure should reach on the demo (shown in the table)."""
    extra: list[tuple[str, str]] = field(default_factory=list)


def _prepare_chest_xray(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.data.chestxray import chestxray14_datalist, write_datalist
    from medbundle.data.synthetic_xray import generate_chestxray14

    ds = data_root / "ChestXray14"
    if not (ds / "Data_Entry_2017.csv").is_file():
        generate_chestxray14(ds, seed=seed, min_pos_per_split=8)
    datalist = chestxray14_datalist(ds, val_fraction=0.15, seed=seed)
    test_list = write_datalist(datalist, data_root / "datalist.json")
    return {"dataset_dir": str(ds), "val_fraction": 0.15, "inference": {"input": str(test_list)}}


def _prepare_ct(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.data.ct import synthetic_ct_datalist, write_datalist
    from medbundle.data.synthetic_ct import generate_ct_dataset

    ds = data_root / "ct_volumes"
    if not (ds / "labels.csv").is_file():
        generate_ct_dataset(ds, n_volumes=160, seed=seed)
    datalist = write_datalist(synthetic_ct_datalist(ds, val_fraction=0.2, seed=seed), data_root / "datalist.json")
    return {"dataset_dir": str(ds), "datalist_file": str(datalist), "inference": {"input": str(datalist)}}


def _prepare_luna16(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.data.synthetic_luna16 import generate_luna16

    ds = data_root / "LUNA16"
    if not (ds / "seriesuids.csv").is_file():
        # 5 subsets: 3 train, 1 validation (fold 3), 1 test (fold 4), as configs/demo.json says; scans of
        # 144 x 144 x 96 voxels at about 1.0 x 1.0 x 1.5 mm, the demo's resampling target
        generate_luna16(ds, n_scans=40, shape=(144, 144, 96), spacing=(1.0, 1.0, 1.5), n_subsets=5, seed=seed,
                        nodules_per_scan=(1, 3), diameter_range=(3.0, 30.0), diameter_distribution="luna16")
    return {"dataset_dir": str(ds), "inference": {"input": str(ds / "subset4")}}


def _prepare_wsi(data_root: Path, seed: int = 0) -> dict[str, Any]:
    try:
        import openslide  # noqa: F401
        import tifffile  # noqa: F401
    except (ImportError, OSError) as e:
        raise RuntimeError(f'the whole-slide demo needs the wsi extra ({e}); pip install -e ".[wsi]"') from e
    from medbundle.data.pathology import camelyon16_datalist, write_datalist
    from medbundle.data.synthetic_wsi import generate_camelyon16

    ds = data_root / "camelyon16"
    if not (ds / "testing" / "reference.csv").is_file():
        # 32 training slides (6 of them become validation), 20 held-out test slides, 1.0 um/px at level 0
        generate_camelyon16(ds, n_train_normal=16, n_train_tumor=16, n_test_normal=10, n_test_tumor=10, size=2560,
                            mpp=1.0, seed=seed)
    datalist = write_datalist(camelyon16_datalist(ds, val_fraction=0.2, seed=seed), data_root / "datalist.json")
    return {"dataset_dir": str(ds), "datalist_file": str(datalist), "inference": {"input": str(datalist)}}


DEMOS: dict[str, DemoSpec] = {
    "chest_xray_classification": DemoSpec(
        prepare=_prepare_chest_xray,
        headline=("mean_auroc", "mean AUROC (test)"),
        threshold=0.90,
        extra=[("macro.sensitivity", "sensitivity"), ("macro.specificity", "specificity")],
    ),
    "ct_volume_classification": DemoSpec(
        prepare=_prepare_ct,
        headline=("mean_auroc", "mean AUROC (test)"),
        threshold=0.90,
        extra=[("per_class.nodule.auroc", "nodule AUROC"), ("macro.sensitivity", "sensitivity"),
               ("macro.specificity", "specificity")],
    ),
    "lung_nodule_ct_detection": DemoSpec(
        prepare=_prepare_luna16,
        headline=("cpm", "LUNA16 CPM (test)"),
        threshold=0.80,
        extra=[("sensitivity_at_1fp_by_size.under_10mm", "sens. 1 FP/scan <10 mm"),
               ("sensitivity_at_1fp_by_size.10mm_or_more", "sens. 1 FP/scan >=10 mm"),
               ("map", "mAP IoU 0.1-0.5"), ("mar", "mAR")],
    ),
    "wsi_mil_classification": DemoSpec(
        prepare=_prepare_wsi,
        headline=("slide_auroc", "slide AUROC (test)"),
        threshold=0.90,
        extra=[("sensitivity", "sensitivity"), ("specificity", "specificity"),
               ("attention_top_k_in_tumour_fraction", "top-k attention in tumour"),
               ("attention_chance_fraction", "chance (tumour share of patches)")],
    ),
}

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
        if name not in DEMOS:
            raise ValueError(f"no demo for bundle {name!r}; bundles with a demo: {', '.join(DEMOS)}")
        spec = DEMOS[name]
        bwork = workdir / name
        (bwork / "logs").mkdir(parents=True, exist_ok=True)
        data_root = bwork / "data"
        marker = data_root / ".seed"
        if data_root.exists() and (not marker.is_file() or marker.read_text().strip() != str(seed)):
            shutil.rmtree(data_root)  # data of another seed (or of an unknown one): draw it again
        echo(f"== {name}: generating synthetic data in {data_root} (seed {seed})")
        t0 = time.perf_counter()
        overrides = {**spec.prepare(data_root, seed), "seed": seed, "split_seed": seed}
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
            "target": spec.threshold,
            "minutes": sum(times.values()) / 60,
            "times_s": {k: round(v, 1) for k, v in times.items()},
            "workdir": str(bwork),
        }
        for k, lab in spec.extra:
            row[lab] = _lookup(metrics, k)
        rows.append(row)
    return rows
