"""Benchmark the chest X-ray bundle: training images/s and single-image inference latency.

Two input pipelines feed the same DenseNet121 training step, in the same run:

- ``bundle``: the bundle's own ``train.json`` pipeline, built from its config: deterministic transforms
  cached once (DiskCacheDataset), then ``EnsureTyped(device=...)`` and the random augmentation on the
  device, through a ThreadDataLoader.
- ``plain``: the usual baseline: a non-cached Dataset that decodes and transforms every image on the CPU
  each epoch in DataLoader worker processes, then copies the batch to the device.

The report gives images/s of each and their ratio, plus single-image inference latency (load +
preprocess + forward, median) at each size. Run::

    python benchmarks/chest_xray.py [--sizes 224 512] [--iters 4] [--batch 8] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_label, machine_info, replace_section  # noqa: E402

CFG = REPO / "bundles" / "chest_xray_classification" / "configs"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parser(config: str, **over) -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(CFG / config)])
    p.read_meta(str(CFG / "metadata.json"))
    for k, v in over.items():
        p[k] = v
    return p


def _train_images_per_s(loader, network, loss_fn, optimizer, device, iters: int, amp: bool) -> float:
    network.train()
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(network(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return x.shape[0]

    step()  # warm-up (first batch, allocator, cudnn autotune)
    _sync(device)
    t0 = time.perf_counter()
    n = sum(step() for _ in range(iters))
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_training(data_dir: Path, size: int, batch: int, iters: int, workers: int) -> dict:
    over = {"dataset_dir": str(data_dir), "image_size": size, "batch_size": batch, "num_workers": workers,
            "val_fraction": 0.1}
    p = _parser("train.json", **over)
    device = p.get_parsed_content("device")
    amp = bool(p.get_parsed_content("amp"))
    t0 = time.perf_counter()
    p.get_parsed_content("train#dataset")  # fills the cache (the loss reads its label counts)
    cache_s = time.perf_counter() - t0
    network = p.get_parsed_content("network")
    loss_fn = p.get_parsed_content("loss")
    optimizer = p.get_parsed_content("optimizer")
    loader = p.get_parsed_content("train#dataloader")
    bundle_ips = _train_images_per_s(loader, network, loss_fn, optimizer, device, iters, amp)

    # plain baseline: same transforms, all on the CPU, no cache, decoded every time in worker processes
    det = p.get_parsed_content("deterministic_transforms")
    rnd = [t for t in p.get_parsed_content("train#random_transforms")][1:]  # drop the EnsureTyped(device)
    plain_ds = Dataset(p.get_parsed_content("train_datalist"), transform=Compose([*det, *rnd]))
    plain_loader = DataLoader(plain_ds, batch_size=batch, shuffle=True, num_workers=workers,
                              persistent_workers=workers > 0)
    plain_ips = _train_images_per_s(plain_loader, network, loss_fn, optimizer, device, iters, amp)
    return {"size": size, "batch": batch, "bundle_images_per_s": round(bundle_ips, 2),
            "plain_images_per_s": round(plain_ips, 2), "ratio_bundle_over_plain": round(bundle_ips / plain_ips, 2),
            "cache_fill_s": round(cache_s, 2), "amp": amp}


def bench_inference(image: Path, size: int, repeats: int) -> dict:
    p = _parser("inference.json", image_size=size, input=str(image))
    device = p.get_parsed_content("device")
    network = p.get_parsed_content("network").eval()
    pre = p.get_parsed_content("preprocessing")
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        x = pre({"image": str(image)})["image"].unsqueeze(0).to(device)
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            prob = torch.sigmoid(network(x))
        _ = prob.cpu()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {"size": size, "latency_ms_median": round(1000 * statistics.median(times), 1),
            "latency_ms_min": round(1000 * min(times), 1), "repeats": repeats}


def write_results(report: dict, path: Path) -> None:
    """Replace (or add) this benchmark's section in benchmarks/RESULTS.md."""
    head = "## Chest X-ray bundle (benchmarks/chest_xray.py)"
    dev = device_label(report["machine"])
    lines = [head, "", f"Measured {time.strftime('%Y-%m-%d')} on {dev} ({report['machine']['platform']}, "
             f"torch {report['machine']['torch']}).", "",
             "| size | batch | bundle pipeline img/s | plain CPU pipeline img/s | ratio "
             "| inference latency (ms, median) |",
             "|---|---|---|---|---|---|"]
    lat = {r["size"]: r for r in report["inference"]}
    for r in report["training"]:
        lines.append(f"| {r['size']} | {r['batch']} | {r['bundle_images_per_s']} | {r['plain_images_per_s']} | "
                     f"{r['ratio_bundle_over_plain']} | {lat.get(r['size'], {}).get('latency_ms_median', '-')} |")
    lines += ["", "bundle = the train.json pipeline (cached deterministic transforms, augmentation after "
              "EnsureTyped(device), ThreadDataLoader); plain = the same transforms uncached in DataLoader "
              "workers on the CPU. Training step = forward, weighted BCE, backward, AdamW.", ""]
    replace_section(head, "\n".join(lines), path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--iters", type=int, default=4, help="timed training steps per pipeline and size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=48, help="synthetic images to generate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10, help="timed single-image inferences per size")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    from medbundle.xray.synthetic import generate_chestxray14

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ChestXray14"
        generate_chestxray14(data, n_patients=max(8, args.images // 2), images_per_patient=(2, 2),
                             size=max(args.sizes), n_dicom=4, seed=0, min_pos_per_split=1)
        report = {"benchmark": "chest_xray", "machine": machine_info(), "training": [], "inference": []}
        image = sorted((data / "images").glob("*.png"))[0]
        for size in args.sizes:
            report["training"].append(bench_training(data, size, args.batch, args.iters, args.workers))
            report["inference"].append(bench_inference(image, size, args.repeats))
            print(json.dumps(report["training"][-1]), json.dumps(report["inference"][-1]), file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.write_results:
        write_results(report, REPO / "benchmarks" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
