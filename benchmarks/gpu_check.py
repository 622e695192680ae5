"""GPU check: every bundle's training, inference and data loader at the published recipe sizes, in minutes.

For each bundle, from its own ``train.json`` / ``inference.json`` (the recipe defaults: chest X-rays at
512 px and batch 32; CT patches of 96^3 on a ResNet50; nodule crops of 192 x 192 x 80 on a ResNet50-FPN;
slides in bags of 64 patches of 224 px on a ResNet18), with the random transforms after
``EnsureTyped(device=...)`` and AMP as the configs set them on CUDA:

- ``loader``: the training data loader alone over the prepared disk cache (items/s), beside
- ``train``: ``train#trainer`` run for a few iterations (items/s after warm-up, peak GPU memory), and
- ``infer``: one whole image / volume / slide through ``inference.json``'s preprocessing, network (freshly
  initialised: only the speed is checked) and inferer (seconds, peak GPU memory).

Synthetic data in each bundle's public layout is written first (a few items of real size). It prints one
JSON report; ``--write-results`` puts a table into RESULTS.md. On a CPU, ``--tiny`` runs the same path at
demo sizes in about a minute (the test suite does, so the script cannot rot)::

    pip install -e ".[wsi]" && python benchmarks/gpu_check.py --write-results      # on a GPU machine, < 8 min
    python benchmarks/gpu_check.py --tiny                                          # anywhere
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_label, machine_info, replace_section  # noqa: E402

BUNDLES = REPO / "bundles"


# ------------------------------------------------------------------------------------------------ data
def _chest_data(root: Path, tiny: bool) -> tuple[dict, dict, str]:
    from medbundle.xray.synthetic import generate_chestxray14

    generate_chestxray14(root, n_patients=24 if tiny else 96, size=64 if tiny else 1024, n_dicom=2, seed=0,
                         min_pos_per_split=1)
    image = next(iter(sorted((root / "images").glob("*.png"))))
    train = {"dataset_dir": str(root)}
    if tiny:
        train.update(image_size=48, batch_size=4)
    return train, ({"image_size": 48} if tiny else {}), str(image)


def _ct_data(root: Path, tiny: bool) -> tuple[dict, dict, str]:
    from medbundle.ct.adapters import synthetic_ct_datalist
    from medbundle.ct.synthetic import generate_ct_dataset
    from medbundle.io.datalist import write_datalist

    shape, spacing = ((48, 48, 40), (3.0, 3.0, 3.0)) if tiny else ((224, 224, 160), (1.5, 1.5, 1.5))
    generate_ct_dataset(root, n_volumes=12, shape=shape, spacing=spacing, n_dicom_series=0, seed=0,
                        test_fraction=0.25, min_per_class=1)
    dl = write_datalist(synthetic_ct_datalist(root, val_fraction=0.1, seed=0), root / "datalist.json")
    volume = json.loads(dl.read_text())["testing"][0]["image"]
    return {"datalist_file": str(dl)}, {}, str(volume if Path(volume).is_absolute() else root / volume)


def _luna_data(root: Path, tiny: bool) -> tuple[dict, dict, str]:
    from medbundle.detection.synthetic import generate_luna16

    shape, spacing = ((96, 96, 64), (1.4, 1.4, 2.5)) if tiny else ((384, 384, 192), (0.8, 0.8, 1.6))
    generate_luna16(root, n_scans=4, shape=shape, spacing=spacing, n_subsets=2, seed=0, nodules_per_scan=(1, 3))
    scan = next(iter(sorted((root / "subset1").glob("*.mhd"))))
    return {"dataset_dir": str(root), "val_fold": 1, "test_fold": None}, {}, str(scan)


def _wsi_data(root: Path, tiny: bool) -> tuple[dict, dict, str]:
    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    generate_camelyon16(root, n_train_normal=2, n_train_tumor=2, n_test_normal=1, n_test_tumor=1,
                        size=2048 if tiny else 8192, mpp=1.0 if tiny else 0.5, seed=0)
    dl = write_datalist(camelyon16_datalist(root, val_fraction=0.25, seed=0), root / "datalist.json")
    slide = next(iter(sorted((root / "testing" / "images").glob("*.tif"))))
    return {"datalist_file": str(dl)}, {}, str(slide)


@dataclass
class Check:
    """What the check needs of one bundle."""

    make_data: Callable[[Path, bool], tuple[dict, dict, str]]
    """(root, tiny) -> (training overrides, inference overrides, one inference input)."""
    unit: str
    """What one training item is."""
    tiny_overlays: list[str] = field(default_factory=lambda: ["demo.json"])


CHECKS: dict[str, Check] = {
    "chest_xray_classification": Check(_chest_data, "image"),
    "ct_volume_classification": Check(_ct_data, "patch"),
    "lung_nodule_retinanet_detection": Check(_luna_data, "crop"),
    "wsi_mil_classification": Check(_wsi_data, "slide bag"),
}


# ------------------------------------------------------------------------------------------------ measuring
def _parser(bundle: str, config: str, overlays: list[str], overrides: dict[str, Any]) -> ConfigParser:
    cfg = BUNDLES / bundle / "configs"
    p = ConfigParser()
    p.read_config([str(cfg / config), *[str(cfg / o) for o in overlays]])
    p.read_meta(str(cfg / "metadata.json"))
    for k, v in overrides.items():
        p[k] = v
    return p


def count_items(batch: Any) -> int:
    """Items (images, patches, crops or slides) in a batch: the batch dimension of a collated dict, or the
    number of item dicts in a (nested) list batch (decollated, or ``no_collation``)."""
    if isinstance(batch, dict):
        image = batch.get("image")
        return int(image.shape[0]) if hasattr(image, "shape") else 1
    if isinstance(batch, (list, tuple)):
        return sum(1 if isinstance(b, dict) else count_items(b) for b in batch)
    return 1


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def loader_rate(loader: Any, n_batches: int, warmup: int = 1) -> float:
    """Items/s of iterating ``loader`` (cycling) for ``n_batches`` after ``warmup`` batches."""
    items, done, start = 0, 0, None
    while True:
        for batch in loader:
            done += 1
            if done == warmup:
                _sync()
                start = time.perf_counter()
            elif done > warmup:
                items += count_items(batch)
            if done >= warmup + n_batches:
                _sync()
                return items / (time.perf_counter() - start)


def training_rate(trainer: Any, warmup: int) -> float:
    """Items/s of ``trainer.run()`` after ``warmup`` iterations (its epoch_length bounds the run)."""
    from ignite.engine import Events

    marks: dict[str, Any] = {"items": 0, "start": None}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _count(engine: Any) -> None:
        if engine.state.iteration == warmup:
            _sync()
            marks["start"] = time.perf_counter()
        elif engine.state.iteration > warmup:
            marks["items"] += count_items(engine.state.batch)

    trainer.run()
    _sync()
    return marks["items"] / (time.perf_counter() - marks["start"])


def check_bundle(name: str, root: Path, tiny: bool, iters: int, warmup: int = 2) -> dict[str, Any]:
    spec = CHECKS[name]
    t0 = time.perf_counter()
    train_over, infer_over, input_path = spec.make_data(root / "data", tiny)
    out: dict[str, Any] = {"unit": spec.unit, "data_s": round(time.perf_counter() - t0, 1)}
    overlays = spec.tiny_overlays if tiny else []
    common = {"bundle_root": str(root / "work"), **({"device": "$torch.device('cpu')", "amp": False} if tiny else {})}
    p = _parser(name, "train.json", overlays, {**common, **train_over, "num_epochs": 1, "train#handlers": [],
                                                "train#trainer#epoch_length": warmup + iters})
    dataset = p.get_parsed_content("train#dataset")
    t0 = time.perf_counter()
    dataset.prepare(progress=False)
    out["prepare_s"] = round(time.perf_counter() - t0, 1)
    out["train_items"] = len(dataset)
    _reset_peak()
    out["loader_items_per_s"] = round(loader_rate(p.get_parsed_content("train#dataloader"), iters, warmup), 2)
    out["loader_peak_gpu_mb"] = _peak_mb()
    _reset_peak()
    out["train_items_per_s"] = round(training_rate(p.get_parsed_content("train#trainer"), warmup), 2)
    out["train_peak_gpu_mb"] = _peak_mb()
    out["loader_over_train"] = round(out["loader_items_per_s"] / out["train_items_per_s"], 2)
    out["amp"] = bool(p.get_parsed_content("amp"))
    del p, dataset
    q = _parser(name, "inference.json", overlays, {**common, **infer_over})
    network = q.get_parsed_content("network")
    network.eval()
    if "detector_ops" in q:
        q.get_parsed_content("detector_ops")
    preprocessing, inferer = q.get_parsed_content("preprocessing"), q.get_parsed_content("inferer")
    device = q.get_parsed_content("device")
    _reset_peak()
    t0 = time.perf_counter()
    item = preprocessing({"image": input_path})
    t_pre = time.perf_counter() - t0
    image = item["image"]
    shape = list(getattr(image, "shape", []))
    with torch.no_grad(), torch.autocast(device.type, enabled=bool(q.get_parsed_content("amp"))):
        t0 = time.perf_counter()
        detector = "detection" in name
        inferer([image.to(device)] if detector else torch.as_tensor(image)[None].to(device), network)
        _sync()
    out["infer"] = {"input": Path(input_path).name, "input_shape": shape, "preprocess_s": round(t_pre, 2),
                    "network_s": round(time.perf_counter() - t0, 2), "peak_gpu_mb": _peak_mb()}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medbundle_gpu_check_"))
    report: dict[str, Any] = {"machine": machine_info(), "tiny": bool(args.tiny), "iterations": args.iters,
                              "bundles": {}}
    report["device"] = device_label(report["machine"])
    start = time.perf_counter()
    for name in args.bundles or list(CHECKS):
        t0 = time.perf_counter()
        try:
            res = check_bundle(name, work / name, args.tiny, args.iters)
        except Exception as e:  # noqa: BLE001 - one bundle's failure is reported, the others still run
            res = {"error": f"{type(e).__name__}: {e}"[:500]}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        report["bundles"][name] = res
        print(f"{name}: {json.dumps(res)}", file=sys.stderr, flush=True)
        shutil.rmtree(work / name, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = ["## GPU check (benchmarks/gpu_check.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {report['device']} (torch {report['machine'].get('torch')}), "
             f"{report['iterations']} timed iterations after 2 of warm-up; total {report['total_s']:.0f} s"
             + (" (tiny sizes)" if report["tiny"] else " (recipe sizes)") + ".", "",
             "| bundle | loader items/s | training items/s | loader / training | training peak GPU MB | "
             "whole-input inference s | inference peak GPU MB |", "|---|---|---|---|---|---|---|"]
    for name, r in report["bundles"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | | | | |")
            continue
        i = r["infer"]
        lines.append(f"| {name} ({r['unit']}s) | {r['loader_items_per_s']} | {r['train_items_per_s']} | "
                     f"{r['loader_over_train']} | "
                     f"{r['train_peak_gpu_mb']} | {i['network_s']} ({'x'.join(map(str, i['input_shape']))}) | "
                     f"{i['peak_gpu_mb']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="*", help="bundles to check (default: all)")
    ap.add_argument("--tiny", action="store_true", help="demo sizes on the CPU (what the test suite runs)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 10; 2 with --tiny)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    args.iters = args.iters or (2 if args.tiny else 10)
    report = run(args)
    print(json.dumps(report, indent=1))
    if args.write_results:
        replace_section("## GPU check (benchmarks/gpu_check.py)", markdown(report))
    failed = [n for n, r in report["bundles"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
