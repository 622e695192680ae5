"""Benchmark the lung nodule detection bundle against MONAI's published LUNA16 recipe settings.

Both settings are built by the bundle's own configs (``configs/train.json`` through ``monai.bundle``'s
``ConfigParser``), so the same ``RetinaNetDetector`` code path is timed:

- ``bundle``: ``train.json`` plus an overlay (default: ``configs/demo.json`` on CPU, none on a GPU);
- ``recipe``: ``train.json`` as published (ResNet50-FPN with 256 channels, anchors (6,8,4)/(8,6,5)/(10,10,6),
  192 x 192 x 80 training crops, 4 crops per scan, 512 x 512 x 192 inference windows with overlap 0.25; MONAI
  model zoo ``lung_nodule_retinanet_detection``).

Reported for each, in one run, and as bundle / recipe ratios:

- whole-scan inference: seconds for one ``512 x 512 x 300`` scan (``--shape``), already at the network's
  spacing, through ``DetectorInferer`` = the detector's sliding window, box decoding, score threshold and NMS;
- training: optimiser steps/s on synthetic crops with two boxes each (ATSS matching, hard-negative
  sampling, focal + box losses, backward, SGD step), AMP on a GPU.

On a CPU the recipe network on 512 x 512 x 192 windows (and on four 192 x 192 x 80 crops per step) needs tens
of GB and minutes per step; there the recipe runs on ``--recipe-shape`` (default on CPU: 192 x 192 x 80, one
window of that size) and ``--recipe-crops`` (default on CPU: 1 crop per step), the report states what was
used, and the ratios are per voxel (inference) and per crop (training). Run::

    python benchmarks/nodule_detection.py [--overlay configs/demo.json | --overlay none] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_label, machine_info, replace_section  # noqa: E402

BUNDLE = REPO / "bundles" / "lung_nodule_retinanet_detection"


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (rates here span 0.01 to 100 per second)."""
    return float(f"{x:.{digits}g}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(overlay: str | None, device: torch.device, amp: bool, extra: dict | None = None) -> dict[str, Any]:
    """Parse the bundle's train config (+ overlay, + ``extra`` values) and return its detector, optimiser
    and settings."""
    from monai.bundle import ConfigParser

    files = [str(BUNDLE / "configs" / "train.json")]
    if overlay:
        files.append(str(BUNDLE / overlay) if not Path(overlay).is_absolute() else overlay)
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"device": f"$torch.device('{device}')", "amp": amp, "sw_device": str(device), **(extra or {})})
    detector = parser.get_parsed_content("detector")
    parser.get_parsed_content("detector_ops")
    get = parser.get_parsed_content
    return {
        "detector": detector,
        "optimizer": get("optimizer"),
        "inferer": get("validate#inferer"),
        "settings": {k: get(k) for k in ("resnet_depth", "widen_factor", "fpn_channels", "conv1_t_stride",
                                         "base_anchor_shapes", "patch_size", "crops_per_scan", "val_patch_size",
                                         "sw_overlap")},
        "n_parameters": sum(p.numel() for p in detector.network.parameters()),
    }


def _scan(shape: tuple[int, ...], device: torch.device, seed: int = 0) -> torch.Tensor:
    """A (1, X, Y, Z) image in [0, 1] with a few bright blobs, so the box selector has candidates."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand((1, *shape), generator=g) * 0.2
    for _ in range(8):
        c = [int(torch.randint(8, s - 8, (1,), generator=g)) for s in shape]
        img[0, c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 2:c[2] + 2] = 0.8
    return img.to(device)


def bench_inference(built: dict, shape: tuple[int, ...], device: torch.device, amp: bool) -> dict:
    inferer = built["inferer"]
    scan = _scan(shape, device)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        inferer([scan[:, :64, :64, :32]])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        out = inferer([scan])
        _sync(device)
    dt = time.perf_counter() - t0
    return {"scan_shape": list(shape), "seconds": _sig(dt), "boxes": int(out[0]["box"].shape[0])}


def bench_training(built: dict, device: torch.device, amp: bool, iters: int) -> dict:
    det, opt = built["detector"], built["optimizer"]
    patch = built["settings"]["patch_size"]
    n = int(built["settings"]["crops_per_scan"])
    images = [_scan(tuple(patch), device, seed=i) for i in range(n)]
    lo = torch.tensor([p // 4 for p in patch], dtype=torch.float32)
    boxes = torch.stack([torch.cat([lo, lo + torch.tensor([8.0, 8.0, 4.0])]),
                         torch.cat([lo * 2, lo * 2 + torch.tensor([12.0, 12.0, 6.0])])]).to(device)
    targets = [{"box": boxes, "label": torch.zeros(2, dtype=torch.long, device=device)} for _ in range(n)]
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    det.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            losses = det(images, targets)
            loss = losses[det.cls_key] + losses[det.box_reg_key]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"crop": list(patch), "crops_per_step": n, "steps_per_s": _sig(iters / dt),
           "crops_per_s": _sig(n * iters / dt)}
    if device.type == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def run_setting(name: str, overlay: str | None, shape: tuple[int, ...], device: torch.device, amp: bool,
                iters: int, extra: dict | None = None) -> dict:
    built = build(overlay, device, amp, extra)
    res = {"name": name, "overlay": overlay, "overrides": extra or {}, "settings": built["settings"],
           "n_parameters": built["n_parameters"]}
    res["training"] = bench_training(built, device, amp, iters)
    res["inference"] = bench_inference(built, shape, device, amp)
    del built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def write_results(report: dict, path: Path) -> None:
    head = "## Lung nodule detection (benchmarks/nodule_detection.py)"
    dev = device_label(report["machine"])
    b, r = report["bundle"], report["recipe"]
    lines = [head, "", f"Measured {time.strftime('%Y-%m-%d')} on {dev} ({report['machine']['platform']}, "
             f"torch {report['machine']['torch']}). `bundle`: train.json + {b['overlay'] or 'no overlay'}; "
             "`recipe`: MONAI's published LUNA16 settings (train.json as shipped).", "",
             "| measure | bundle | recipe | bundle / recipe |", "|---|---|---|---|"]
    for s in (b, r):
        st = s["settings"]
        s["desc"] = (f"ResNet{st['resnet_depth']} w{st['widen_factor']} FPN{st['fpn_channels']}, "
                     f"{s['n_parameters'] / 1e6:.2f} M params")
    lines.append(f"| network | {b['desc']} | {r['desc']} | |")
    shape_b, shape_r = ("x".join(map(str, s["inference"]["scan_shape"])) for s in (b, r))
    lines.append(f"| whole-scan inference | {b['inference']['seconds']} s ({shape_b}) "
                 f"| {r['inference']['seconds']} s ({shape_r}) "
                 f"| time x{report['ratios']['inference_time']} |")
    lines.append(f"| training | {b['training']['steps_per_s']} steps/s ({b['training']['crops_per_step']} x "
                 f"{'x'.join(map(str, b['training']['crop']))}) | {r['training']['steps_per_s']} steps/s "
                 f"({r['training']['crops_per_step']} x {'x'.join(map(str, r['training']['crop']))}) "
                 f"| steps/s x{report['ratios']['training_steps_per_s']} |")
    if report.get("note"):
        lines += ["", report["note"]]
    lines.append("")
    replace_section(head, "\n".join(lines), path)


def main(argv: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--overlay", default="none" if gpu else "configs/demo.json",
                    help="overlay for the 'bundle' setting, relative to the bundle ('none': train.json alone)")
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="scan for the bundle setting")
    ap.add_argument("--recipe-shape", type=int, nargs=3, default=None,
                    help="scan for the recipe setting (default: --shape on a GPU, 192 192 80 on CPU, one window)")
    ap.add_argument("--recipe-crops", type=int, default=None,
                    help="training crops per step for the recipe (default: its 4 on a GPU, 1 on CPU)")
    ap.add_argument("--iters", type=int, default=5 if gpu else 3)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda:0" if gpu else "cpu")
    overlay = None if args.overlay == "none" else args.overlay
    recipe_shape = tuple(args.recipe_shape or (args.shape if gpu else [192, 192, 80]))
    recipe_extra: dict[str, Any] = {}
    if not gpu and args.recipe_shape is None:
        recipe_extra["val_patch_size"] = list(recipe_shape)
    if args.recipe_crops is not None or not gpu:
        recipe_extra["crops_per_scan"] = args.recipe_crops or 1
    bundle = run_setting("bundle", overlay, tuple(args.shape), device, gpu, args.iters)
    recipe = run_setting("recipe", None, recipe_shape, device, gpu, max(1, args.iters - 1) if not gpu else args.iters,
                         recipe_extra)
    vox_b = torch.tensor(bundle["inference"]["scan_shape"]).prod().item()
    vox_r = torch.tensor(recipe["inference"]["scan_shape"]).prod().item()
    report = {
        "benchmark": "nodule_detection",
        "machine": machine_info(),
        "bundle": bundle,
        "recipe": recipe,
        "ratios": {
            "inference_time": _sig(bundle["inference"]["seconds"] / recipe["inference"]["seconds"]),
            "inference_seconds_per_voxel": _sig((bundle["inference"]["seconds"] / vox_b)
                                                / (recipe["inference"]["seconds"] / vox_r)),
            "training_steps_per_s": _sig(bundle["training"]["steps_per_s"] / recipe["training"]["steps_per_s"]),
            "training_crops_per_s": _sig(bundle["training"]["crops_per_s"] / recipe["training"]["crops_per_s"]),
        },
    }
    if recipe_extra or tuple(recipe_shape) != tuple(args.shape):
        per_voxel = report["ratios"]["inference_seconds_per_voxel"]
        report["note"] = (f"Recipe run reduced for CPU memory and time: scan {'x'.join(map(str, recipe_shape))}, "
                          f"overrides {recipe_extra}. Per voxel, bundle / recipe inference time is x{per_voxel}; "
                          f"per crop, bundle / recipe training throughput is "
                          f"x{report['ratios']['training_crops_per_s']}.")
    print(json.dumps(report, indent=2))
    if args.write_results:
        write_results(report, REPO / "benchmarks" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
