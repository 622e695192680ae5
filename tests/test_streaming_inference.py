"""Streaming, resumable, failure-isolating and sharded inference of every bundle.

The first tests run the pieces in process (plan, dataset, collate, engine, writer). The others run the
bundles' own ``inference.json`` through ``python -m monai.bundle`` (and ``torchrun``) as a user would, on tiny
synthetic data with a freshly initialised network saved as ``models/model.pt`` (the streaming mechanics do
not need a trained model, only results that are the same from run to run). Every subprocess runs with one
torch thread and batch size 1 where outputs are compared, so an interrupted, resumed or sharded run gives
byte-identical tables.

Test-only inferers (a slow one, so that a run can be killed part-way; one that fails on a blank image, as a
network running out of memory would) come from a small module written into the test folder and put on
``PYTHONPATH``; the bundles take them through a plain ``--inferer`` override.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES, config_list, fresh_model

from medbundle.data.streaming import FailedItem, InferencePlan, SafeDataset, SkipFailedCollate
from medbundle.engines.streaming import StreamingEvaluator
from medbundle.handlers.inference import PredictionsWriter
from medbundle.io.results import read_rows

HELPERS = '''
import time

import torch
from monai.inferers import SimpleInferer


class SlowInferer(SimpleInferer):
    """SimpleInferer that takes delay_s per item, so a test can kill the run part-way."""

    def __init__(self, delay_s=0.3):
        super().__init__()
        self.delay_s = float(delay_s)

    def __call__(self, inputs, network, *args, **kwargs):
        time.sleep(self.delay_s * int(inputs.shape[0]))
        return super().__call__(inputs, network, *args, **kwargs)


class FailOnBlank(SimpleInferer):
    """Raises for a batch holding a blank (all-zero) image, as a network running out of memory would."""

    def __call__(self, inputs, network, *args, **kwargs):
        if bool((inputs.flatten(1).amax(1) <= 0).any()):
            raise RuntimeError("injected failure: blank image")
        return super().__call__(inputs, network, *args, **kwargs)
'''


# --------------------------------------------------------------------------------------------------------------
# in process
# --------------------------------------------------------------------------------------------------------------
class _Load:
    """Items ``{"filename": "<n>"}`` -> image tensor of value n; "bad" cannot be read."""

    def __call__(self, item):
        if item["filename"] == "bad":
            raise OSError("bad: not an image")
        return {**item, "image": torch.full((1, 4, 4), float(item["filename"]))}


class _Net(torch.nn.Module):
    """Two outputs; raises when a batch holds the image of value 13 (an item that fails in the network)."""

    def forward(self, x):
        if bool((x.flatten(1)[:, 0] == 13).any()):
            raise RuntimeError("out of memory (simulated)")
        v = x.flatten(1)[:, :1] / 100.0
        return torch.cat([v, 1 - v], 1)


def _run_in_process(out: Path, names: list[str], batch_size: int = 4, overwrite: bool = False, **share) -> tuple:
    items = [{"filename": n} for n in names]
    plan = InferencePlan(items, out, overwrite=overwrite, **share)
    loader = torch.utils.data.DataLoader(SafeDataset(plan.items, _Load()), batch_size=batch_size,
                                         collate_fn=SkipFailedCollate())
    writer = PredictionsWriter(out, ["a", "b"], plan=plan, progress=False)
    evaluator = StreamingEvaluator("cpu", loader, _Net(), val_handlers=[writer])
    evaluator.run()
    return plan, evaluator


def test_engine_isolates_read_and_network_failures_and_resumes(tmp_path, caplog):
    out = tmp_path / "out"
    names = ["1", "bad", "13", "2", "3", "4", "5"]
    with caplog.at_level("INFO"):
        plan, _ = _run_in_process(out, names)
    rows = list(csv.reader(open(out / "predictions.csv")))
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]  # the batch [1, bad, 13, 2] lost only 13
    assert [r[1] for r in rows[1:]] == ["0.010000", "0.020000", "0.030000", "0.040000", "0.050000"]
    skipped = {r[0]: r[1] for r in list(csv.reader(open(out / "skipped.csv")))[1:]}
    assert skipped == {"bad": "OSError: bad: not an image", "13": "RuntimeError: out of memory (simulated)"}
    assert [m for m in caplog.messages if m.startswith("skipping")] == [
        "skipping bad (read): OSError: bad: not an image",
        "skipping 13 (inference): RuntimeError: out of memory (simulated)",
    ]
    assert "running them one at a time" in caplog.text
    js = json.loads((out / "predictions.json").read_text())
    assert [p["file"] for p in js["predictions"]] == ["1", "2", "3", "4", "5"] and len(js["skipped"]) == 2
    # a re-run reads only the failed items again; a run with nothing to do still merges and completes
    plan, ev = _run_in_process(out, names)
    assert (plan.n_done, [it["filename"] for it in plan.items]) == (5, ["bad", "13"])
    (out / "predictions.csv").write_text("file,a,b,a_positive,b_positive\n1,0.010000,0.990000,0,1\n")
    plan, ev = _run_in_process(out, ["1"])
    assert plan.items == [] and ev.state.epoch_length == 0
    assert json.loads((out / "predictions.json").read_text())["predictions"][0]["file"] == "1"
    assert not (out / "skipped.csv").exists()  # the items that failed are no longer in the input


def test_part_of_an_interrupted_two_process_run_is_resumed_by_one_process(tmp_path):
    out, names = tmp_path / "out", [str(i) for i in range(1, 8)]
    _run_in_process(out, names, rank=1, world_size=2)  # rank 1 finished its share; rank 0 never merged
    assert [r[0] for r in csv.reader(open(out / "predictions.rank1.csv"))] == ["file", "2", "4", "6"]
    plan, _ = _run_in_process(out, names)
    assert (plan.n_done, [it["filename"] for it in plan.items]) == (3, ["1", "3", "5", "7"])
    assert [r[0] for r in csv.reader(open(out / "predictions.csv"))] == ["file", *names]
    assert not list(out.glob("*.rank*.csv"))


def test_plan_splits_pending_items_across_ranks_without_overlap(tmp_path):
    items = [{"image": f"/d/{i}.png", "filename": f"/d/{i}.png"} for i in range(11)]
    out = tmp_path / "o"
    out.mkdir()
    (out / "predictions.csv").write_text("file,p\n/d/0.png,1\n/d/5.png,1\n/d/5.png,1\n/d/99.png,1\n/d/7.p")
    shares = [InferencePlan(items, out, rank=r, world_size=3) for r in range(3)]
    got = [it["filename"] for s in shares for it in s.items]
    assert sorted(got) == sorted(f"/d/{i}.png" for i in range(11) if i not in (0, 5)) and len(set(got)) == len(got)
    assert all(s.n_done == 2 and s.n_pending == 9 and s.n_total == 11 for s in shares)
    assert [len(s.items) for s in shares] == [3, 3, 3]
    assert InferencePlan(items, out, overwrite="True").n_pending == 11
    uid = InferencePlan([{"filename": "/x/1.2.3.mhd"}], out, done_table="seriesuids.csv", key="seriesuid",
                        has_header=False, default_key=lambda it: Path(it["filename"]).stem)
    assert uid.items[0]["seriesuid"] == "1.2.3"
    with pytest.raises(ValueError, match="has no 'seriesuid'"):
        InferencePlan([{"filename": "/x/a.mhd"}], out, key="seriesuid")


def test_plan_refuses_to_resume_results_of_another_model(tmp_path):
    model, out = tmp_path / "model.pt", tmp_path / "out"
    model.write_bytes(b"weights one")
    items = [{"filename": "a"}, {"filename": "b"}]
    InferencePlan(items, out, model_files=[model]).save_state()
    (out / "predictions.csv").write_text("file,p\na,1\n")
    assert InferencePlan(items, out, model_files=[model]).n_done == 1
    model.write_bytes(b"weights two")
    with pytest.raises(ValueError, match=r"1 items made with other model files \(model.pt changed\); pass --overwrite"):
        InferencePlan(items, out, model_files=[model])
    assert InferencePlan(items, out, model_files=[model], overwrite=True).n_pending == 2


def test_safe_dataset_reads_each_item_once_and_marks_failures():
    calls = []

    def load(item):
        calls.append(item["filename"])
        if item["filename"] == "b":
            raise ValueError("b: wrong dimensionality")
        return item

    ds = SafeDataset([{"filename": "a"}, {"filename": "b"}], load)
    batch = SkipFailedCollate()([ds[0], ds[1]])
    assert calls == ["a", "b"]
    assert isinstance(ds[1], FailedItem) and ds[1].stage == "read" and ds[1].name() == "b"
    assert batch.data == {"filename": ["a"]} and [f.item for f in batch.failed] == [{"filename": "b"}]


# --------------------------------------------------------------------------------------------------------------
# through python -m monai.bundle
# --------------------------------------------------------------------------------------------------------------
def _env(helpers: Path) -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")]),
                MEDBUNDLE_PROGRESS="log")


def _cmd(bundle: str, work: Path, source: Path, out: Path, extra: list[str]) -> list[str]:
    cfg = BUNDLES / bundle / "configs"
    return ["-m", "monai.bundle", "run", "--config_file", config_list(cfg / "inference.json", cfg / "demo.json"),
            "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
            "--bundle_root", str(work), "--input", str(source), "--output_dir", str(out), *extra]


def _infer(env: dict, bundle: str, work: Path, source: Path, out: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, *_cmd(bundle, work, source, out, list(extra))], env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def _skip_lines(log: str) -> list[str]:
    """The lines that report a skipped item (``... - WARNING - skipping <file> (<stage>): <reason>``)."""
    return [line for line in log.splitlines() if " - WARNING - skipping " in line]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _corrupt(paths) -> None:
    """Make inputs unreadable: a run that read them again would report them as skipped."""
    for p in paths:
        Path(p).write_bytes(b"not an image any more")


def _interrupt(ledger: Path, keep: int, header: bool = True) -> list[str]:
    """Leave the first ``keep`` items of a finished ledger and half of the next line (a kill mid-write);
    returns the kept keys."""
    lines = ledger.read_text().splitlines(keepends=True)
    head = lines[:1] if header else []
    body = lines[len(head):]
    ledger.write_text("".join(head + body[:keep]) + body[keep][: len(body[keep]) // 2])
    return [line.split(",")[0].strip() for line in body[:keep]]


@pytest.fixture(scope="module")
def helpers(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("helpers")
    (folder / "streaming_helpers.py").write_text(HELPERS)
    return folder


@pytest.fixture(scope="module")
def cxr(tmp_path_factory, helpers):
    """Chest data (PNG and DICOM, 18 images at 48 px), a fresh DenseNet121, the subprocess environment."""
    from medbundle.xray.synthetic import generate_chestxray14

    root = tmp_path_factory.mktemp("cxr_stream")
    generate_chestxray14(root / "data", n_patients=8, size=48, n_dicom=2, seed=1, min_pos_per_split=0)
    work = root / "bundle"
    fresh_model("chest_xray_classification", work, {})
    return root, work, _env(helpers)


CXR = ["--image_size", "48", "--save_gradcam", "False", "--batch_size", "1"]


def test_chest_killed_run_keeps_its_rows_and_the_rerun_does_only_the_rest(cxr):
    root, work, env = cxr
    images = root / "kill_in"
    shutil.copytree(root / "data" / "images", images)
    n = len(list(images.iterdir()))
    ref = root / "kill_ref"
    _infer(env, "chest_xray_classification", work, images, ref, *CXR)
    out = root / "kill_out"
    slow = ["--inferer", "{'_target_': 'streaming_helpers.SlowInferer', 'delay_s': 0.3}"]
    proc = subprocess.Popen([sys.executable, *_cmd("chest_xray_classification", work, images, out, CXR + slow)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = out / "predictions.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if table.is_file() and table.read_text().count("\n") >= 1 + 4:  # header + 4 images done
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    rows = read_rows(table, has_header=True)  # complete lines only
    done = [r[0] for r in rows]
    assert 4 <= len(done) < n
    ref_rows = {r[0]: r for r in _rows(ref / "predictions.csv")[1:]}
    assert all(r == ref_rows[r[0]] for r in rows)  # what is on disk is final
    # a partly written line, as a kill in the middle of a write leaves it
    with open(table, "a") as fh:
        fh.write(next(iter(v for k, v in ref_rows.items() if k not in done))[0][:20])
    _corrupt(done)  # the re-run must not read the done images: they would be reported as skipped
    log = _infer(env, "chest_xray_classification", work, images, out, *CXR)
    assert f"inference over {n} items: {len(done)} done earlier in {out}, {n - len(done)} to do" in log
    assert not _skip_lines(log) and f"inference: {n}/{n} done, 0 skipped" in log
    assert table.read_text() == (ref / "predictions.csv").read_text()  # every image once, in input order
    assert json.loads((out / "predictions.json").read_text()) == json.loads((ref / "predictions.json").read_text())
    assert not (out / "skipped.csv").exists()


def test_chest_two_process_torchrun_equals_single_process_and_overwrite_redoes(cxr):
    root, work, env = cxr
    images = root / "data" / "images"
    out = root / "ddp_out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *_cmd("chest_xray_classification", work, images, out, CXR)],
                          env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    n = len(list(images.iterdir()))
    assert f"inference over {n} items: 0 done earlier in {out}, {n} to do; 2 processes, this one {(n + 1) // 2}" in log
    # the parts are merged away
    assert sorted(p.name for p in out.iterdir()) == [".inference_state.json", "predictions.csv", "predictions.json"]
    ddp = (out / "predictions.csv").read_text()
    assert [r[0] for r in _rows(out / "predictions.csv")[1:]] == sorted(str(p) for p in images.iterdir())
    # the same command without torchrun finds everything done, reads nothing and leaves the tables as they are
    log = _infer(env, "chest_xray_classification", work, images, out, *CXR)
    assert f"{n} done earlier in {out}, 0 to do" in log and (out / "predictions.csv").read_text() == ddp
    # --overwrite True redoes every image, in one process: the same table as the two processes wrote
    stamp = (out / "predictions.csv").stat().st_mtime_ns
    log = _infer(env, "chest_xray_classification", work, images, out, *CXR, "--overwrite", "True")
    assert "(overwrite: earlier results in" in log and f"inference: {n}/{n} done, 0 skipped" in log
    assert (out / "predictions.csv").stat().st_mtime_ns != stamp
    assert (out / "predictions.csv").read_text() == ddp


def test_chest_item_failing_in_the_network_is_skipped_and_the_batch_survives(cxr):
    from PIL import Image

    root, work, env = cxr
    folder = root / "faulty_in"
    shutil.copytree(root / "data" / "images", folder)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "blank.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a picture")
    n = len(list(folder.iterdir()))
    out = root / "faulty_out"
    log = _infer(env, "chest_xray_classification", work, folder, out, "--image_size", "48", "--save_gradcam", "False",
                 "--batch_size", "8", "--inferer", "{'_target_': 'streaming_helpers.FailOnBlank'}")
    assert "running them one at a time" in log
    lines = _skip_lines(log)
    assert len(lines) == 2 and "blank.png (inference)" in lines[-1] and "broken.png (read)" in lines[0], lines
    assert log.count("blank.png") == 1  # logged once (MONAI's reader also reports what it cannot load)
    skipped = {Path(r[0]).name: r[1] for r in _rows(out / "skipped.csv")[1:]}
    assert skipped["blank.png"] == "RuntimeError: injected failure: blank image"
    assert set(skipped) == {"blank.png", "broken.png"}
    rows = _rows(out / "predictions.csv")[1:]
    assert len(rows) == n - 2 and {Path(r[0]).name for r in rows}.isdisjoint(skipped)
    assert f"inference: {n - 2}/{n} done, 2 skipped" in log


# --------------------------------------------------------------------------------------------------------------
# resume of the other bundles: an interrupted run (ledger cut after one item, a torn line, orphan rows), re-run
# --------------------------------------------------------------------------------------------------------------
def _resume_check(env, bundle: str, work: Path, source: Path, root: Path, ledger: str, extra: list[str],
                  header: bool = True, key_of=lambda line_key: line_key) -> tuple[Path, str]:
    first = root / "first"
    _infer(env, bundle, work, source, first, *extra)
    finished = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    out = root / "resumed"
    shutil.copytree(first, out)
    kept = _interrupt(out / ledger, 1, header)
    n = len(_rows(first / ledger)) - (1 if header else 0)
    assert n >= 3
    _corrupt([key_of(k) for k in kept])
    log = _infer(env, bundle, work, source, out, *extra)
    assert f"inference over {n} items: 1 done earlier in {out}, {n - 1} to do" in log, log[-3000:]
    assert not _skip_lines(log)
    got = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in finished}
    for name in finished:
        if name.endswith(".csv"):
            assert got[name] == finished[name], name  # each item once, in input order, as the first run
    return out, log


def test_ct_resume_skips_done_volumes(tmp_path, helpers):
    from medbundle.ct.synthetic import generate_ct_dataset

    classes = ["normal", "consolidation"]
    generate_ct_dataset(tmp_path / "ct", n_volumes=4, shape=(40, 40, 24), class_names=tuple(classes),
                        prevalences={"normal": 0.5, "consolidation": 0.5}, n_dicom_series=0, seed=3,
                        min_per_class=0, test_fraction=0.5, write_masks=False)
    work = tmp_path / "bundle"
    fresh_model("ct_volume_classification", work, {"class_names": classes})
    extra = ["--class_names", repr(classes), "--save_gradcam", "False"]
    _resume_check(_env(helpers), "ct_volume_classification", work, tmp_path / "ct" / "volumes", tmp_path,
                  "predictions.csv", extra)


def test_detection_resume_skips_done_scans_and_keeps_marks_once(tmp_path, helpers):
    from medbundle.detection.synthetic import generate_luna16

    summary = generate_luna16(tmp_path / "LUNA16", n_scans=3, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0),
                              n_subsets=1, seed=1, nodules_per_scan=(1, 1), diameter_range=(8.0, 12.0),
                              excluded_per_scan=(0, 0))
    work = tmp_path / "bundle"
    anchors = [[3, 3, 2], [5, 5, 3]]
    fresh_model("lung_nodule_retinanet_detection", work, {"base_anchor_shapes": anchors})
    extra = ["--spacing", "[2.0, 2.0, 3.0]", "--val_patch_size", "[64, 64, 48]", "--base_anchor_shapes",
             repr(anchors), "--box_selector", "{'score_thresh': 0.0, 'topk_candidates_per_level': 20, "
             "'nms_thresh': 0.22, 'detections_per_img': 4}"]
    subset = tmp_path / "LUNA16" / "subset0"
    by_uid = {s["seriesuid"]: tmp_path / "LUNA16" / s["image"] for s in summary["scans"]}
    out, _ = _resume_check(_env(helpers), "lung_nodule_retinanet_detection", work, subset, tmp_path, "seriesuids.csv",
                           extra, header=False, key_of=lambda uid: by_uid[uid].with_suffix(".raw"))
    marks = _rows(out / "results.csv")[1:]
    assert len(marks) == 3 * 4 and [r[0] for r in marks[::4]] == (out / "seriesuids.csv").read_text().split()
    assert len(list(out.glob("*_boxes.json"))) == 3


def test_wsi_resume_skips_done_slides_and_keeps_top_patches_once(tmp_path, helpers):
    pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    from medbundle.pathology.synthetic import generate_camelyon16

    generate_camelyon16(tmp_path / "cam", n_train_normal=0, n_train_tumor=0, n_test_normal=2, n_test_tumor=1,
                        size=1024, mpp=1.0, seed=5, tumour_radius_um=(150.0, 250.0))
    work = tmp_path / "bundle"
    fresh_model("wsi_mil_classification", work, {"patch_size": 32})
    out, _ = _resume_check(_env(helpers), "wsi_mil_classification", work, tmp_path / "cam" / "testing" / "images",
                           tmp_path, "predictions.csv", ["--patch_size", "32", "--save_maps", "False"])
    top = _rows(out / "top_patches.csv")[1:]
    assert [r[0] for r in top[::8]] == [r[0] for r in _rows(out / "predictions.csv")[1:]]
