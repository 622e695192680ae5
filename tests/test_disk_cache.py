"""DiskCacheDataset, its fingerprints and compact entries: what is cached, when it is recomputed, what is lost."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, RandFlipd, Resized, Transform
from PIL import Image

from medbundle.data import DiskCacheDataset
from medbundle.data.cache import cached_prefix_length
from medbundle.data.compact import pack, read_entry, unpack, write_entry
from medbundle.data.fingerprint import item_fingerprint, transform_fingerprint

REPO = Path(__file__).resolve().parent.parent


class Counting(Transform):
    """Counts its calls (how often the cached part really ran)."""

    calls = 0

    def __call__(self, data):
        type(self).calls += 1
        return data


def _pngs(folder: Path, n: int, size: int = 16) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(p)
        items.append({"image": str(p), "label": [float(i % 2)]})
    return items


def _chain(size: int = 8, random: bool = True) -> Compose:
    ts = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Counting(),
          Resized("image", (size, size), mode="area"), EnsureTyped("image", dtype=torch.float32)]
    if random:
        ts += [EnsureTyped(["image"], device="cpu", track_meta=False), RandFlipd("image", prob=0.5)]
    return Compose(ts)


def test_cached_prefix_stops_at_random_or_device_transform():
    assert cached_prefix_length(_chain()) == 5  # before EnsureTyped(device=...)
    assert cached_prefix_length(_chain(random=False)) == 5
    assert cached_prefix_length(Compose([RandFlipd("image", prob=0.5), Resized("image", (4, 4))])) == 0


def test_fingerprint_is_the_same_in_other_processes_and_follows_parameters():
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, %r)
        from monai.bundle import ConfigParser
        from medbundle.data.cache import DiskCacheDataset, cached_prefix_length
        from medbundle.data.fingerprint import transform_fingerprint
        p = ConfigParser(); p.read_config(%r)
        p["image_size"] = int(sys.argv[1])
        c = p.get_parsed_content("validate#preprocessing")
        print(transform_fingerprint(c.transforms[:cached_prefix_length(c)]))
    """) % (str(REPO), str(REPO / "bundles/chest_xray_classification/configs/train.json"))
    out = []
    for seed, size in (("1", "512"), ("2", "512"), ("3", "256")):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code, size], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out.append(res.stdout.strip().splitlines()[-1])
    assert out[0] == out[1], "the same config must give the same fingerprint in every process"
    assert out[0] != out[2], "a changed image size must give another fingerprint"


def test_entries_are_written_once_and_read_back_and_follow_file_changes(tmp_path):
    items = _pngs(tmp_path / "img", 6)
    Counting.calls = 0
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "cache", ram_cache_mb=0)
    first = [ds[i]["image"] for i in range(6)]
    assert Counting.calls == 6
    entries = sorted((tmp_path / "cache" / ds.fingerprint).glob("*/*.pt"))
    assert len(entries) == 6
    assert (tmp_path / "cache" / ds.fingerprint / "transforms.json").is_file()
    # a new dataset (a new run) reads the entries: no preprocessing runs again, same tensors up to the flip
    Counting.calls = 0
    ds2 = DiskCacheDataset(items, _chain(random=False), cache_dir=tmp_path / "cache", ram_cache_mb=0)
    assert ds2.fingerprint == ds.fingerprint
    again = [ds2[i]["image"] for i in range(6)]
    assert Counting.calls == 0
    for a, b in zip(first, again):
        assert torch.equal(a, b) or torch.equal(a, torch.flip(b, dims=[1, 2]))
    # a file replaced under the same name is prepared again; the others are not
    time.sleep(0.01)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(items[2]["image"])
    Counting.calls = 0
    out = ds2[2]["image"]
    assert Counting.calls == 1 and float(out.abs().sum()) == 0.0
    # another image size is another folder; nothing stale is read
    ds3 = DiskCacheDataset(items, _chain(size=4, random=False), cache_dir=tmp_path / "cache", ram_cache_mb=0)
    assert ds3.fingerprint != ds.fingerprint and tuple(ds3[0]["image"].shape) == (1, 4, 4)


def test_memory_share_is_bounded_in_megabytes_and_by_cache_rate(tmp_path):
    items = _pngs(tmp_path / "img", 20)
    probe = DiskCacheDataset(items[:1], _chain(), cache_dir=tmp_path / "c", ram_cache_mb=1)
    probe[0]
    one = probe.ram_bytes  # 8x8 float32 pixels plus the metadata tensors (affine, shape)
    assert one >= 8 * 8 * 4
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", ram_cache_mb=5 * one / 2**20)
    for i in range(20):
        ds[i]
    assert ds.ram_bytes == 5 * one
    Counting.calls = 0
    for i in range(5):  # the first five are served from memory
        ds[i]
    assert Counting.calls == 0
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", ram_cache_mb=100, cache_rate=0.25)
    for i in range(20):
        ds[i]
    assert ds.ram_bytes == 5 * one
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", ram_cache_mb=100, cache_rate=0.0)
    ds[0]
    assert ds.ram_bytes == 0


def test_compact_storage_round_trip_and_weights_only_load(tmp_path):
    img = MetaTensor(torch.rand(1, 32, 32), affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64)),
                     meta={"filename_or_obj": "a.png", "spatial_shape": np.array([32, 32])})
    weight = torch.tensor([0.0, 1.0, 6.0, 1e6 + 6.0])
    item = {"image": img, "weight": weight, "label": torch.tensor(2), "box": np.zeros((0, 6), np.float32),
            "name": "a", "pair": (1, 2.5), "n": None}
    packed = pack(item, {"image": "uint8", "weight": "bfloat16"})
    write_entry(tmp_path / "e.pt", packed)
    back = unpack(read_entry(tmp_path / "e.pt"))  # read_entry loads with weights_only=True
    assert isinstance(back["image"], MetaTensor) and back["image"].dtype == torch.float32
    assert float((back["image"] - img.as_tensor()).abs().max()) <= 0.5 / 255 + 1e-7
    assert torch.equal(back["image"].affine, img.affine) and back["image"].meta["filename_or_obj"] == "a.png"
    assert back["weight"].dtype == torch.float32
    assert torch.allclose(back["weight"], weight, rtol=1e-2) and float(back["weight"][1]) == 1.0
    assert back["label"].dtype == torch.int64 and int(back["label"]) == 2
    assert isinstance(back["box"], np.ndarray) and back["box"].shape == (0, 6)
    assert back["pair"] == (1, 2.5) and back["name"] == "a" and back["n"] is None
    assert packed["image"]["data"].dtype == torch.uint8
    # values outside [0, 1] cannot be quantised: float16 instead
    out = pack({"image": torch.tensor([-2.0, 3.0])}, {"image": "uint8"})
    assert out["image"]["data"].dtype == torch.float16
    assert torch.equal(unpack(out)["image"], torch.tensor([-2.0, 3.0]))
    with pytest.raises(TypeError, match="'grid'.*cannot be stored"):
        pack({"grid": object()})


def test_unreadable_item_is_reported_once_replaced_and_recorded(tmp_path, caplog):
    items = _pngs(tmp_path / "img", 5)
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"not a png")
    items.insert(2, {"image": str(bad), "label": [1.0]})
    with caplog.at_level(logging.WARNING, logger="medbundle.data"):
        ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c")
        assert len(ds) == 6  # lazy: nothing read yet
        got = [ds[i]["image"] for i in range(6)] + [ds[2]["image"]]
    assert len(got) == 7
    lines = [r.getMessage() for r in caplog.records if "broken.png" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("skipping ") and str(bad) in lines[0]
    assert ds.skipped and ds.skipped[0][0] == str(bad)
    record = json.loads((tmp_path / "c" / ds.fingerprint / "failed.jsonl").read_text().splitlines()[0])
    assert record["name"] == str(bad)
    # the next run drops it up front, saying so once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medbundle.data"):
        ds2 = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c")
    assert len(ds2) == 5 and str(bad) not in [it["image"] for it in ds2.data]
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1
    # fixed file: tried again
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(bad)
    assert len(DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c")) == 6


def test_precheck_prepares_everything_and_drops_unreadable(tmp_path):
    items = _pngs(tmp_path / "img", 4)
    (tmp_path / "img" / "bad.png").write_bytes(b"")
    items.append({"image": str(tmp_path / "img" / "bad.png"), "label": [0.0]})
    Counting.calls = 0
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", precheck=True, num_workers=2)
    assert len(ds) == 4 and Counting.calls == 4 and len(ds.skipped) == 1  # the bad one fails in LoadImaged
    assert ds.ram_bytes >= 4 * 8 * 8 * 4  # every readable item is held (the budget is large)
    with pytest.raises(ValueError, match="none of the 1 items could be read"):
        DiskCacheDataset(items[-1:], _chain(), cache_dir=tmp_path / "d", precheck=True)


def test_prepare_reports_counts_and_bytes(tmp_path):
    items = _pngs(tmp_path / "img", 8)
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", storage_dtypes={"image": "uint8"})
    r = ds.prepare(num_workers=2, progress=False)
    assert (r["items"], r["prepared"], r["already_cached"], r["failed"]) == (8, 8, 0, 0)
    assert r["bytes_written"] == r["cache_bytes"] > 8 * 64  # uint8 pixels plus the entry's structure
    r2 = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", storage_dtypes={"image": "uint8"}).prepare(
        progress=False)
    assert (r2["prepared"], r2["already_cached"], r2["bytes_written"]) == (0, 8, 0)


def test_corrupt_entry_is_recomputed_and_stale_temporaries_removed(tmp_path):
    items = _pngs(tmp_path / "img", 2)
    ds = DiskCacheDataset(items, _chain(), cache_dir=tmp_path / "c", ram_cache_mb=0)
    ds[0]
    entry = next((tmp_path / "c" / ds.fingerprint).glob("*/*.pt"))
    entry.write_bytes(entry.read_bytes()[:40])  # what a non-atomic writer killed midway would leave
    stale = entry.parent / ".x.pt.123.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    Counting.calls = 0
    assert ds[0]["image"].shape == (1, 8, 8) and Counting.calls == 1
    read_entry(entry)  # rewritten whole
    ds.prepare(progress=False)
    assert not stale.exists()


def test_entries_survive_a_writer_killed_midway(tmp_path):
    """SIGKILL a process writing 40 MB entries in a loop: every entry left under its final name loads."""
    code = textwrap.dedent("""
        import sys, torch; sys.path.insert(0, %r)
        from medbundle.data.compact import pack, write_entry
        big = pack({"image": torch.rand(10_000_000)})
        i = 0
        while True:
            write_entry(f"%s/e{i %% 50}.pt", big); i += 1
            print(i, flush=True)
    """) % (str(REPO), str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # wait until a few entries are done, then kill mid-write
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finals = sorted(tmp_path.glob("e*.pt"))
    assert finals
    for f in finals:
        assert read_entry(f)["image"]["data"].numel() == 10_000_000


def test_item_fingerprint_includes_file_identity(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("x")
    k1 = item_fingerprint({"image": str(p), "label": 1})
    assert k1 == item_fingerprint({"label": 1, "image": str(p)})
    assert k1 != item_fingerprint({"image": str(p), "label": 0})
    p.write_text("xy")
    assert k1 != item_fingerprint({"image": str(p), "label": 1})
    assert transform_fingerprint([Resized("image", (4, 4))]) != transform_fingerprint([Resized("image", (5, 5))])


def test_prepare_command_fills_the_cache_training_reads(tmp_path, capsys):
    from monai.bundle import ConfigParser

    from medbundle.cli import main as cli_main
    from medbundle.xray.synthetic import generate_chestxray14

    data = tmp_path / "cxr"
    generate_chestxray14(data, n_patients=20, size=32, n_dicom=2, seed=0, min_pos_per_split=1)
    broken = sorted((data / "images").glob("*.png"))[3]
    broken.write_bytes(b"truncated")
    work = tmp_path / "work"
    args = ["prepare", "chest_xray_classification", "--dataset_dir", str(data), "--bundle_root", str(work),
            "--set", "image_size=32", "--workers", "2"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "training" in out and "validation" in out and "testing" in out and "disk used by the cache" in out
    folders = list((work / "cache" / "items").iterdir())
    assert len(folders) == 1  # train, validation and test share the preprocessing, so one fingerprint
    n_entries = len(list(folders[0].glob("*/*.pt")))
    n_images = len(list((data / "images").iterdir()))
    assert n_entries == n_images - 1
    assert str(broken) in (folders[0] / "failed.jsonl").read_text()
    # the training config finds every entry: its dataset drops the broken image up front and computes nothing
    p = ConfigParser()
    p.read_config(str(REPO / "bundles/chest_xray_classification/configs/train.json"))
    p.update({"dataset_dir": str(data), "bundle_root": str(work), "image_size": 32})
    ds = p.get_parsed_content("train#dataset")
    assert ds.fingerprint == folders[0].name and str(broken) not in [it["image"] for it in ds.data]
    for i in range(len(ds)):
        ds.cached_item(i)
    assert len(list(folders[0].glob("*/*.pt"))) == n_entries
    assert cli_main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] in (["training"], ["validation"], ["testing"])]
    assert len(rows) == 3 and all(r[2] == "0" and int(r[3]) > 0 for r in rows)  # prepared 0, all cached before
