"""Memory and loader speed of the bundles' training data path at the size of the public datasets.

Prints one JSON report (and with ``--write-results`` a section of RESULTS.md) with:

1. ``chest_112k``: resident memory growth of instantiating the chest bundle's ``train#dataset`` from the
   unmodified ``train.json`` (image size 512) over a ChestX-ray14-layout folder of 112,120 images, and the
   time to read its first 64 items (decode, resize, cache entry written, augmentation). The folder's PNG
   files are hard links to 16 distinct synthetic 1024 x 1024 radiographs, so every read decodes a real-size
   image while the folder costs a few MB of disk. Beside it, the in-memory cache that main used
   (MONAI ``CacheDataset``, ``cache_rate`` 1.0, float32) over a few hundred of the same images, per image,
   extrapolated to the training split.
2. ``volumes``: for the CT and nodule bundles, peak resident memory while iterating the training data loader
   of the unmodified ``train.json`` twice (first pass fills the disk cache, second reads it) over 20 and over
   100 synthetic volumes, and the ratio.
3. ``loader_demo``: loader items/s of the chest demo (``train.json`` + ``demo.json``, 64 px) from the disk
   cache (memory share off: every item read from disk; and the default share) against the in-memory
   ``CacheDataset``, in the same run (goal: at least 0.8x).
4. ``loader_512``: at 512 px from a prepared cache on this machine's cores: ``medbundle prepare`` items/s,
   items/s of the cached part alone (read + restore: what a GPU running the augmentation is fed at), and of
   the whole CPU pipeline with augmentation.

Each measurement runs in its own process (so resident memory is that of one job). Run::

    python benchmarks/data_scale.py [--images 112120] [--volumes 20 100] [--workdir DIR] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_label, machine_info, replace_section  # noqa: E402

BUNDLES = REPO / "bundles"


# ------------------------------------------------------------------------------------------------ helpers
def rss_mb() -> float:
    """Resident memory of this process now (MB), from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Sample this process's resident memory every 0.1 s in a thread; keep the peak."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def _parser(bundle: str, overrides: dict[str, Any], extra: tuple[str, ...] = ()):
    from monai.bundle import ConfigParser

    cfg = BUNDLES / bundle / "configs"
    p = ConfigParser()
    p.read_config([str(cfg / "train.json"), *[str(cfg / e) for e in extra]])
    for k, v in overrides.items():
        p[k] = v
    return p


def _run_child(kind: str, *args: str, timeout: int = 7200) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, MEDBUNDLE_PROGRESS="off", PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ data
def write_chestxray14_links(root: Path, n_images: int, distinct: int = 16, size: int = 1024) -> Path:
    """A ChestX-ray14 layout of ``n_images`` PNGs: hard links to ``distinct`` rendered radiographs."""
    import csv

    import numpy as np
    from PIL import Image

    from medbundle.xray.adapters import CHESTXRAY14_FINDINGS
    from medbundle.xray.synthetic import CHESTXRAY14_HEADER, render_chest_image

    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n_images):
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    src = root / "sources"
    src.mkdir()
    rng = np.random.default_rng(0)
    labels = (rng.random((distinct, len(CHESTXRAY14_FINDINGS))) < 0.15).astype(int)
    for k in range(distinct):
        img = render_chest_image(labels[k], size, np.random.default_rng([0, k]))
        Image.fromarray(img).save(src / f"{k}.png", compress_level=6)
    rows, names, is_test = [], [], []
    pid, follow = 1, 0
    for i in range(n_images):
        name = f"{pid:08d}_{follow:03d}.png"
        os.link(src / f"{i % distinct}.png", root / "images" / name)
        found = [n for n, v in zip(CHESTXRAY14_FINDINGS, labels[i % distinct]) if v]
        rows.append([name, "|".join(found) or "No Finding", str(follow), str(pid), "50", "M", "PA",
                     str(size), str(size), "0.143", "0.143", ""])
        names.append(name)
        is_test.append(pid % 5 == 0)
        follow += 1
        if follow == 2:
            pid, follow = pid + 1, 0
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        f.write(CHESTXRAY14_HEADER + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    (root / "train_val_list.txt").write_text("".join(n + "\n" for n, t in zip(names, is_test) if not t))
    (root / "test_list.txt").write_text("".join(n + "\n" for n, t in zip(names, is_test) if t))
    done.write_text(str(n_images))
    return root


def write_volumes(kind: str, root: Path, n: int) -> Path:
    """``n`` synthetic CT volumes (CT classifier) or LUNA16 scans (nodule detector) of chest-CT size."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    if kind == "ct":
        from medbundle.ct.synthetic import generate_ct_dataset

        # about 340 x 340 x 240 mm at the recipe's 1.5 mm: 11.6 M voxels after resampling
        generate_ct_dataset(root, n_volumes=n, shape=(224, 224, 160), spacing=(1.5, 1.5, 1.5), n_dicom_series=0,
                            seed=0, test_fraction=6 / n, min_per_class=1)
    else:
        from medbundle.detection.synthetic import generate_luna16

        # 269 x 269 x 240 mm; resampled to the recipe's 0.703 x 0.703 x 1.25 mm: 382 x 382 x 192 voxels
        generate_luna16(root, n_scans=n, shape=(192, 192, 96), spacing=(1.4, 1.4, 2.5), n_subsets=5, seed=0)
    done.write_text(str(n))
    return root


# ------------------------------------------------------------------------------------------------ children
def child_chest_memory(dataset_dir: str, work: str) -> dict[str, Any]:
    import torch  # noqa: F401 - imported before the baseline reading, as training would have it
    from monai.bundle import ConfigParser  # noqa: F401

    import medbundle.data  # noqa: F401

    p = _parser("chest_xray_classification", {"dataset_dir": dataset_dir, "bundle_root": work})
    before = rss_mb()
    t0 = time.monotonic()
    ds = p.get_parsed_content("train#dataset")
    t_init = time.monotonic() - t0
    after_init = rss_mb()
    t0 = time.monotonic()
    for i in range(64):
        ds[i]
    t64 = time.monotonic() - t0
    return {"n_train_items": len(ds), "rss_before_mb": round(before, 1), "rss_after_init_mb": round(after_init, 1),
            "rss_growth_init_mb": round(after_init - before, 1), "init_s": round(t_init, 2),
            "first_64_items_s": round(t64, 2), "rss_after_64_mb": round(rss_mb(), 1),
            "image_size": p.get_parsed_content("image_size"), "ram_cache_mb": p.get_parsed_content("ram_cache_mb")}


def child_chest_memory_incore(dataset_dir: str, n: str) -> dict[str, Any]:
    """main's data path: MONAI CacheDataset (cache_rate 1.0) of the same transforms over n images."""
    from monai.data import CacheDataset

    p = _parser("chest_xray_classification", {"dataset_dir": dataset_dir})
    data = p.get_parsed_content("train_datalist")[: int(n)]
    transform = p.get_parsed_content("train#preprocessing")
    before = rss_mb()
    t0 = time.monotonic()
    CacheDataset(data, transform, cache_rate=1.0, num_workers=2, progress=False)
    return {"n": len(data), "rss_growth_mb": round(rss_mb() - before, 1), "seconds": round(time.monotonic() - t0, 1),
            "n_train_items_full": len(p.get_parsed_content("train_datalist"))}


def child_volume_memory(bundle: str, dataset_dir: str, work: str, n: str) -> dict[str, Any]:
    key = "datalist_file" if bundle == "ct_volume_classification" else "dataset_dir"
    over = {"bundle_root": work, "device": "$torch.device('cpu')",
            "train_datalist": f"$@datalist['training'][:{int(n)}]"}
    if bundle == "ct_volume_classification":
        from medbundle.ct.adapters import synthetic_ct_datalist
        from medbundle.io.datalist import write_datalist

        over[key] = str(write_datalist(synthetic_ct_datalist(dataset_dir, val_fraction=0.05), Path(work) / "dl.json"))
    else:
        over[key] = dataset_dir
        over["val_fold"] = 4  # five subsets: 0-3 train
    p = _parser(bundle, over)
    loader = p.get_parsed_content("train#dataloader")
    ds = p.get_parsed_content("train#dataset")
    start = rss_mb()
    passes = []
    with PeakRSS() as peak:
        for _ in range(2):
            t0 = time.monotonic()
            for _batch in loader:
                pass
            passes.append({"seconds": round(time.monotonic() - t0, 1), "rss_mb": round(rss_mb(), 1)})
    return {"n_volumes": len(ds), "rss_start_mb": round(start, 1), "peak_rss_mb": round(peak.peak, 1),
            "passes": passes, "cache_gb": round(ds.cache_bytes() / 2**30, 2), "ram_cache_mb": ds.ram_budget / 2**20}


def _items_per_s(loader, epochs: int = 2) -> float:
    n, t0 = 0, time.monotonic()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["image"])
    return n / (time.monotonic() - t0)


def child_loader_demo(dataset_dir: str, work: str) -> dict[str, Any]:
    import torch
    from monai.data import CacheDataset, ThreadDataLoader

    over = {"dataset_dir": dataset_dir, "bundle_root": work, "val_fraction": 0.15, "device": "$torch.device('cpu')"}
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    out: dict[str, Any] = {}
    p = _parser("chest_xray_classification", over, ("demo.json",))
    data = p.get_parsed_content("train_datalist")
    batch = p.get_parsed_content("batch_size")
    transform = p.get_parsed_content("train#preprocessing")
    incore = CacheDataset(data, transform, cache_rate=1.0, num_workers=2, progress=False)
    variants = {"in_memory_cachedataset": incore}
    for name, mb in (("disk_cache_no_memory_share", 0), ("disk_cache_default_share", None)):
        q = _parser("chest_xray_classification", {**over, **({"ram_cache_mb": mb} if mb is not None else {})},
                    ("demo.json",))
        ds = q.get_parsed_content("train#dataset")
        ds.prepare(progress=False)
        variants[name] = ds
    for name, ds in variants.items():
        loader = ThreadDataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
        _items_per_s(loader, 1)  # warm-up: fills the memory share, the page cache
        out[name] = round(_items_per_s(loader, 3), 1)
    out["n_items"] = len(data)
    out["ratio_disk_no_share"] = round(out["disk_cache_no_memory_share"] / out["in_memory_cachedataset"], 3)
    out["ratio_disk_default"] = round(out["disk_cache_default_share"] / out["in_memory_cachedataset"], 3)
    return out


def child_loader_512(dataset_dir: str, work: str, n: str) -> dict[str, Any]:
    import torch
    from monai.data import ThreadDataLoader

    over = {"dataset_dir": dataset_dir, "bundle_root": work, "device": "$torch.device('cpu')",
            "train_datalist": f"$@datalist['training'][:{int(n)}]", "ram_cache_mb": 0}
    p = _parser("chest_xray_classification", over)
    ds = p.get_parsed_content("train#dataset")
    rep = ds.prepare(num_workers=os.cpu_count(), progress=False)
    rate = rep["prepared"] / max(rep["seconds"], 1e-9)
    out: dict[str, Any] = {"n_items": len(ds), "prepare_items_per_s": round(rate, 2),
                           "entry_kb": round(rep["cache_bytes"] / len(ds) / 1024, 1), "cpus": os.cpu_count()}
    t0 = time.monotonic()
    for i in range(len(ds)):  # the cached part only: read the entry, restore float32 (the GPU does the rest)
        ds.cached_item(i)
    out["cached_part_items_per_s"] = round(len(ds) / (time.monotonic() - t0), 1)
    loader = ThreadDataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
    out["cpu_pipeline_with_augmentation_items_per_s"] = round(_items_per_s(loader, 1), 2)
    out["torch_threads"] = torch.get_num_threads()
    return out


CHILDREN = {
    "chest_memory": child_chest_memory, "chest_memory_incore": child_chest_memory_incore,
    "volume_memory": child_volume_memory, "loader_demo": child_loader_demo, "loader_512": child_loader_512,
}


# ------------------------------------------------------------------------------------------------ report
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch  # noqa: F401 - machine_info reads its version

    work = Path(args.workdir or tempfile.mkdtemp(prefix="medbundle_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info()}
    if not args.skip_chest:
        t0 = time.monotonic()
        cxr = write_chestxray14_links(work / f"cxr14_{args.images}", args.images)
        write_s = round(time.monotonic() - t0, 1)
        shutil.rmtree(work / "chest_run", ignore_errors=True)
        mem = _run_child("chest_memory", str(cxr), str(work / "chest_run"))
        old = _run_child("chest_memory_incore", str(cxr), str(args.incore_images))
        per_image = old["rss_growth_mb"] / old["n"]
        report["chest_112k"] = {
            "n_images": args.images, "write_s": write_s, **mem,
            "main_cachedataset_mb_per_image": round(per_image, 3),
            "main_cachedataset_measured_on": old["n"],
            "main_cachedataset_extrapolated_gb": round(per_image * mem["n_train_items"] / 1024, 1),
            "pass_rss_under_2gb": mem["rss_growth_init_mb"] < 2048, "pass_64_under_60s": mem["first_64_items_s"] < 60,
        }
        shutil.rmtree(work / "chest512", ignore_errors=True)
        report["loader_512"] = _run_child("loader_512", str(cxr), str(work / "chest512"), str(args.items_512))
        shutil.rmtree(work / "chest512", ignore_errors=True)
        from medbundle.xray.synthetic import generate_chestxray14

        demo = work / "cxr_demo"
        if not (demo / "Data_Entry_2017.csv").is_file():
            generate_chestxray14(demo, seed=0, min_pos_per_split=8)
        shutil.rmtree(work / "demo_run", ignore_errors=True)
        report["loader_demo"] = _run_child("loader_demo", str(demo), str(work / "demo_run"))
    if not args.skip_volumes:
        lo, hi = args.volumes
        report["volumes"] = {}
        for bundle, kind in (("ct_volume_classification", "ct"), ("lung_nodule_retinanet_detection", "luna16")):
            n_make = hi + 16 if kind == "ct" else -(-hi * 5 // 4)  # LUNA16: 5 subsets, 4 of them training
            data = write_volumes(kind, work / f"{kind}_{n_make}", n_make)
            runs = {}
            for n in (lo, hi):
                run_dir = work / f"{kind}_run_{n}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir()
                runs[n] = _run_child("volume_memory", bundle, str(data), str(run_dir), str(n))
                shutil.rmtree(run_dir, ignore_errors=True)
            report["volumes"][bundle] = {
                "runs": {str(k): v for k, v in runs.items()},
                "peak_rss_ratio": round(runs[hi]["peak_rss_mb"] / runs[lo]["peak_rss_mb"], 3),
                "pass_under_30pct": runs[hi]["peak_rss_mb"] < 1.3 * runs[lo]["peak_rss_mb"],
            }
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    lines = ["## Data at dataset scale (benchmarks/data_scale.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {device_label(info)} ({info['platform']}, "
             f"torch {info.get('torch')}). Each figure from its own process; resident memory from /proc (VmRSS).", ""]
    c = report.get("chest_112k")
    if c:
        lines += [
            "| chest bundle, unmodified train.json (512 px) | value |", "|---|---|",
            f"| ChestX-ray14-layout folder | {c['n_images']:,} images ({c['n_train_items']:,} training items) |",
            f"| resident memory growth, instantiating `train#dataset` | **{c['rss_growth_init_mb']:.0f} MB** "
            f"in {c['init_s']:.1f} s (goal < 2 GB) |",
            "| first 64 items (decode 1024 px, resize, write cache entry, augment) | "
            f"**{c['first_64_items_s']:.1f} s** (goal < 60 s) |",
            f"| main's in-memory CacheDataset, same transforms | {c['main_cachedataset_mb_per_image']:.2f} MB "
            f"per image (measured on {c['main_cachedataset_measured_on']}): "
            f"~{c['main_cachedataset_extrapolated_gb']:.0f} GB for the training split |", ""]
    v = report.get("volumes")
    if v:
        lines += ["| bundle (unmodified train.json) | volumes | peak RSS (MB) | pass 1 / pass 2 (s) | cache (GB) |",
                  "|---|---|---|---|---|"]
        for bundle, r in v.items():
            for n, run in r["runs"].items():
                p1, p2 = run["passes"][0]["seconds"], run["passes"][1]["seconds"]
                peak, gb = run["peak_rss_mb"], run["cache_gb"]
                lines.append(f"| {bundle} | {n} | {peak:.0f} | {p1:.0f} / {p2:.0f} | {gb:.2f} |")
            lines.append(f"| {bundle} | ratio | **x{r['peak_rss_ratio']:.2f}** (goal < 1.30) | | |")
        lines.append("")
    d = report.get("loader_demo")
    if d:
        lines += ["| chest demo loader (64 px, augmentation on CPU) | items/s | vs in-memory |", "|---|---|---|",
                  f"| in-memory CacheDataset (main) | {d['in_memory_cachedataset']} | 1.00 |",
                  f"| disk cache, no memory share | {d['disk_cache_no_memory_share']} | "
                  f"**{d['ratio_disk_no_share']:.2f}** |",
                  f"| disk cache, default memory share | {d['disk_cache_default_share']} | "
                  f"**{d['ratio_disk_default']:.2f}** |", ""]
    e = report.get("loader_512")
    if e:
        lines += [f"| chest at 512 px from the prepared cache ({e['n_items']} items, {e['cpus']} CPUs) | value |",
                  "|---|---|",
                  f"| `medbundle prepare` (decode 1024 px PNG, resize, write) | {e['prepare_items_per_s']} items/s, "
                  f"{e['entry_kb']} KB per entry |",
                  "| cached part (read entry, restore float32): what a GPU is fed at | "
                  f"**{e['cached_part_items_per_s']} items/s** |",
                  "| whole pipeline with augmentation on the CPU | "
                  f"{e['cpu_pipeline_with_augmentation_items_per_s']} items/s |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, default=112_120)
    ap.add_argument("--incore-images", type=int, default=300, help="images for main's in-memory cache figure")
    ap.add_argument("--items-512", type=int, default=256, help="items prepared and read at 512 px")
    ap.add_argument("--volumes", type=int, nargs=2, default=(20, 100))
    ap.add_argument("--skip-chest", action="store_true")
    ap.add_argument("--skip-volumes", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep generated data here (default: a temporary folder)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](*args.child[1:])))
        return 0
    report = run(args)
    print(json.dumps(report, indent=1))
    if args.write_results:
        replace_section("## Data at dataset scale (benchmarks/data_scale.py)", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
