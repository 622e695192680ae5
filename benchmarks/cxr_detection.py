"""Chest X-ray lesion detection: training images/s and single-image latency of the bundle's detectors.

For each image size (512 and 1024 px by default) and each model (the bundle's Faster R-CNN and a one-stage
torchvision detector, RetinaNet by default), built from the bundle's own ``train.json`` (the published ResNet-50-FPN,
or the demo overlay's small backbone with ``--overlay demo``), in the same run:

- training: images per second of full optimiser steps (forward with losses, backward, SGD step) on batches of
  ``--batch`` synthetic radiographs with one lesion box each;
- inference: seconds per image of one eval-mode forward (box decoding and NMS included), batch 1.

The report gives each one-stage figure as a ratio to Faster R-CNN's at the same size (times on a shared machine
drift; ratios much less). ``--write`` puts the table into ``benchmarks/RESULTS.md``.

    python benchmarks/cxr_detection.py [--sizes 512 1024] [--models faster_rcnn retinanet] [--overlay demo] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import device_label, machine_info, replace_section

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "chest_xray_lesion_detection"


def build(model: str, overlay: str | None, device: torch.device) -> Any:
    """The bundle's detector (``model`` switch) as ``train.json`` (+ overlay) builds it, on ``device``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [str(BUNDLE / "configs" / "train.json")]
    if overlay:
        files.append(str(BUNDLE / "configs" / f"{overlay}.json"))
    parser.read_config(files)
    parser.update({"model": model, "datalist": {"classes": ["nodule"], "training": [], "validation": [],
                                                "testing": []}})
    detector = parser.get_parsed_content("detector")
    return detector.to(device)


def _images(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, size, size, generator=g) for _ in range(n)]


def _targets(n: int, size: int) -> list[dict[str, torch.Tensor]]:
    box = torch.tensor([[0.4 * size, 0.4 * size, 0.45 * size, 0.45 * size]])
    return [{"boxes": box.clone(), "labels": torch.zeros(1, dtype=torch.long)} for _ in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(model: str, size: int, overlay: str | None, device: torch.device, batch: int, iters: int) -> dict:
    det = build(model, overlay, device)
    opt = torch.optim.SGD([p for p in det.network.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images = [x.to(device) for x in _images(batch, size)]
    targets = [{k: v.to(device) for k, v in t.items()} for t in _targets(batch, size)]
    det.train()
    times = []
    for i in range(iters + 1):  # the first step warms up
        _sync(device)
        t = time.perf_counter()
        losses = det(images, targets)
        loss = losses[det.cls_key] + losses[det.box_reg_key]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    det.eval()
    latency = []
    with torch.no_grad():
        for i in range(iters + 1):
            _sync(device)
            t = time.perf_counter()
            det(images[:1])
            _sync(device)
            if i:
                latency.append(time.perf_counter() - t)
    step = sorted(times)[len(times) // 2]
    return {"model": model, "size": size, "batch": batch, "train_step_s": step, "train_images_per_s": batch / step,
            "latency_s": sorted(latency)[len(latency) // 2], "iters": iters,
            "parameters_m": sum(p.numel() for p in det.network.parameters()) / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--models", nargs="+", default=["faster_rcnn", "retinanet"])
    ap.add_argument("--overlay", default=None, help="configs/<overlay>.json on top of train.json (e.g. demo)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = machine_info()
    rows = [bench(m, s, args.overlay, device, args.batch, args.iters) for s in args.sizes for m in args.models]
    for r in rows:
        base = next(b for b in rows if b["size"] == r["size"] and b["model"] == args.models[0])
        r["train_ratio_to_" + args.models[0]] = r["train_images_per_s"] / base["train_images_per_s"]
        r["latency_ratio_to_" + args.models[0]] = r["latency_s"] / base["latency_s"]
    report = {"machine": info, "device": device_label(info), "overlay": args.overlay, "results": rows}
    print(json.dumps(report, indent=1))
    if args.write:
        net = "demo overlay (ResNet-18-FPN-64)" if args.overlay == "demo" else "published (ResNet-50-FPN-256)"
        lines = ["## Chest X-ray lesion detection (benchmarks/cxr_detection.py)", "",
                 f"{report['device']}, torch {info.get('torch')}, {net}, batch {args.batch}, median of "
                 f"{args.iters} steps after one warm-up; synthetic 1-channel images with one box each.", "",
                 "| model | size (px) | train images/s | ratio | latency per image (s) | ratio | parameters (M) |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['size']} | {r['train_images_per_s']:.3g} | "
                         f"{r['train_ratio_to_' + args.models[0]]:.2f} | {r['latency_s']:.3g} | "
                         f"{r['latency_ratio_to_' + args.models[0]]:.2f} | {r['parameters_m']:.1f} |")
        replace_section(lines[0], "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
