"""Benchmark the CT volume classification bundle.

Reports, in one run:

- whole-volume sliding-window inference time for a 512 x 512 x 300 volume (the bundle's
  ``SlidingWindowClassifier`` with its configured window, overlap and aggregation);
- training patches/s and peak memory of a training step with and without gradient checkpointing of the
  ResNet stages (ratio of the two, same run). Each training mode runs in a fresh child process so its
  peak is its own: CUDA ``max_memory_allocated`` on a GPU, peak resident set size (``ru_maxrss``) on CPU.

Network settings default to the bundle's demo overlay on CPU (ResNet10, width 0.5, 32^3 windows) and to
the GPU recipe (ResNet50, 96^3) on CUDA; override with ``--depth --widen --patch``. Run::

    python benchmarks/ct_classification.py [--depth 10 --widen 0.5 --patch 32] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_label, machine_info, replace_section  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _network(depth: int, widen: float, checkpointing: bool, device: torch.device):
    from medbundle.networks import ResNetClassifier

    return ResNetClassifier(depth=depth, num_classes=3, widen_factor=widen,
                            gradient_checkpointing=checkpointing).to(device)


def train_worker(depth: int, widen: float, patch: int, batch: int, iters: int, checkpointing: bool) -> dict:
    """One training mode, meant to run in its own process."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = _network(depth, widen, checkpointing, device).train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.rand(batch, 1, patch, patch, patch, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    amp = device.type == "cuda"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"checkpointing": checkpointing, "patches_per_s": round(batch * iters / dt, 2)}
    if device.type == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["memory_kind"] = "CUDA max_memory_allocated"
    else:
        out["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        out["peak_memory_growth_mb"] = round(growth / 1024, 1)
        out["memory_kind"] = "process peak RSS (ru_maxrss)"
    return out


def bench_inference(depth: int, widen: float, patch: int, shape: tuple[int, int, int], overlap: float,
                    sw_batch: int, aggregation: str) -> dict:
    from medbundle.inferers import SlidingWindowClassifier, window_starts

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    net = _network(depth, widen, False, device).eval()
    inferer = SlidingWindowClassifier(patch, sw_batch_size=sw_batch, overlap=overlap, aggregation=aggregation)
    vol = torch.rand(1, 1, *shape, device=device)
    n_windows = 1
    for s in shape:
        n_windows *= len(window_starts(s, patch, overlap))
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        inferer(vol[..., :patch, :patch, :patch], net)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        pred = inferer(vol, net)
        _sync(device)
    dt = time.perf_counter() - t0
    return {"volume_shape": list(shape), "window": patch, "overlap": overlap, "windows": n_windows,
            "seconds": round(dt, 2), "windows_per_s": round(n_windows / dt, 1), "output_shape": list(pred.shape)}


def write_results(report: dict, path: Path) -> None:
    head = "## CT volume classification (benchmarks/ct_classification.py)"
    dev = device_label(report["machine"])
    inf, tr = report["inference"], report["training"]
    net = report["network"]
    lines = [head, "", f"Measured {time.strftime('%Y-%m-%d')} on {dev} ({report['machine']['platform']}, "
             f"torch {report['machine']['torch']}); ResNet{net['depth']} width {net['widen']}, "
             f"{net['patch']}^3 windows.", "",
             "| measure | value |", "|---|---|",
             f"| sliding-window inference, {'x'.join(map(str, inf['volume_shape']))} volume | {inf['seconds']} s "
             f"({inf['windows']} windows, {inf['windows_per_s']} windows/s) |"]
    for r in tr["runs"]:
        lines.append(f"| training, checkpointing {'on' if r['checkpointing'] else 'off'} | "
                     f"{r['patches_per_s']} patches/s, peak {r['peak_memory_mb']} MB ({r['memory_kind']}) |")
    growth = tr.get("memory_growth_ratio_on_over_off")
    lines += [f"| checkpointing on / off | peak memory x{tr['memory_ratio_on_over_off']}"
              + (f" (growth above the process baseline x{growth})" if growth is not None else "")
              + f", speed x{tr['speed_ratio_on_over_off']} |", ""]
    replace_section(head, "\n".join(lines), path)


def main(argv: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=50 if gpu else 10)
    ap.add_argument("--widen", type=float, default=1.0 if gpu else 0.5)
    ap.add_argument("--patch", type=int, default=96 if gpu else 32)
    ap.add_argument("--batch", type=int, default=4 if gpu else 8, help="training patches per step")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--sw-batch", type=int, default=8)
    ap.add_argument("--aggregation", default="topk_mean")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--worker", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(train_worker(args.depth, args.widen, args.patch, args.batch, args.iters,
                                      args.worker == "on")))
        return 0
    runs = []
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--worker", mode, "--depth", str(args.depth), "--widen", str(args.widen),
               "--patch", str(args.patch), "--batch", str(args.batch), "--iters", str(args.iters)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        runs.append(json.loads(out))
    off, on = runs
    training = {"runs": runs, "batch": args.batch,
                "memory_ratio_on_over_off": round(on["peak_memory_mb"] / off["peak_memory_mb"], 3),
                "speed_ratio_on_over_off": round(on["patches_per_s"] / off["patches_per_s"], 3)}
    if "peak_memory_growth_mb" in off and off["peak_memory_growth_mb"] > 0:
        growth_ratio = on["peak_memory_growth_mb"] / off["peak_memory_growth_mb"]
        training["memory_growth_ratio_on_over_off"] = round(growth_ratio, 3)
    report = {"benchmark": "ct_classification", "machine": machine_info(),
              "network": {"depth": args.depth, "widen": args.widen, "patch": args.patch},
              "inference": bench_inference(args.depth, args.widen, args.patch, tuple(args.shape), args.overlap,
                                           args.sw_batch, args.aggregation),
              "training": training}
    print(json.dumps(report, indent=2))
    if args.write_results:
        write_results(report, REPO / "benchmarks" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
