"""Resumable training (``--resume True``) and TensorBoard logs of every bundle, through ``python -m monai.bundle``.

The chest X-ray runs: an uninterrupted 4-epoch training, and the same command (with ``--resume True`` from the
start, as a user who always passes it) killed with SIGKILL right after epoch 2 then resumed. The kill comes
from a handler added to the ``training`` expression list, after the bundle's own handlers, at the end of epoch
2: the process has written epoch 2's ``last_epoch.pt`` and dies before epoch 3, as it would if it were killed at any
moment of epoch 3 (an unfinished epoch leaves nothing behind; the write is atomic). Stopping with
``--num_epochs 2`` instead would not be the same run: the cosine LR schedule's ``T_max`` is ``num_epochs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES, config_list

from medbundle.handlers.checkpoint import (
    CHECKPOINT_FORMAT,
    ResumeCheckpoint,
    capture_rng_states,
    restore_rng_states,
)
from medbundle.io.files import to_weights_only

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def _meta(name: str) -> list[str]:
    cfg = BUNDLES / name / "configs"
    return ["--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf")]


def _configs(name: str, *extra: str) -> str:
    cfg = BUNDLES / name / "configs"
    return config_list(cfg / "train.json", *(cfg / e for e in extra), cfg / "demo.json")


def _kill_after(epoch: int, rank0_only: bool = False) -> list[str]:
    """Override of ``training``: SIGKILL this process at the end of ``epoch``, after the bundle's handlers."""
    cond = " if torch.distributed.get_rank() == 0 else None" if rank0_only else ""
    event = f"ignite.engine.Events.EPOCH_COMPLETED(once={epoch})"
    kill = f"lambda e: os.kill(os.getpid(), 9){cond}"
    return ["--training", repr(["$import ignite", f"$@train#trainer.add_event_handler({event}, {kill})",
                                "$@train#trainer.run()"])]


def _train(name: str, work: Path, args: list[str], kill_after: int | None = None) -> str:
    """Train or, with ``kill_after``, train until killed; returns stdout + stderr.

    Every run gets one torch thread: runs to be compared must use the same number of threads (float sums
    are ordered by the thread split), and one thread keeps them fast on a small shared machine.
    """
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", _configs(name), *_meta(name),
           "--bundle_root", str(work), *args, *(_kill_after(kill_after) if kill_after else [])]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    expected = 0 if kill_after is None else -9
    assert proc.returncode == expected, (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc.stdout + proc.stderr


def _load(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    return ckpt


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------- unit tests
def _draws(transform, sampler) -> list:
    """One draw from every random source a training epoch uses."""
    out = transform({"image": torch.arange(64.0).reshape(1, 8, 8)})["image"]
    legacy_numpy = float(np.random.rand())  # noqa: NPY002 (the global generator is one of the sources)
    return [out.sum().item(), random.random(), legacy_numpy, torch.rand(1).item(), list(iter(sampler))]


def _transform_and_sampler():
    from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised

    from medbundle.sampling import ClassBalancedSampler

    t = Compose([RandAffined(keys="image", prob=0.9, rotate_range=0.3, translate_range=2),
                 RandGaussianNoised(keys="image", prob=0.7), RandFlipd(keys="image", prob=0.5)])
    t.set_random_state(7)
    return t, ClassBalancedSampler([0, 0, 0, 1, 1, 2], seed=3)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    t, sampler = _transform_and_sampler()
    for _ in range(2):  # move every source away from its seed
        _draws(t, sampler)
    path = tmp_path / "rng.pt"
    torch.save(to_weights_only(capture_rng_states(t, sampler)), path)
    expected = [_draws(t, sampler) for _ in range(3)]
    saved = torch.load(path, weights_only=True)
    assert set(saved["transforms"]) >= {"transforms.0.rand_affine.rand_affine_grid", "transforms.1"}
    fresh = _draws(*_transform_and_sampler())  # a new process without the restore: every source differs
    assert all(f != e for f, e in zip(fresh, expected[0]))
    t2, sampler2 = _transform_and_sampler()
    assert restore_rng_states(saved, t2, sampler2) == []
    assert [_draws(t2, sampler2) for _ in range(3)] == expected


def test_rng_restore_reports_transforms_that_do_not_match():
    from monai.transforms import Compose, RandFlipd

    t, sampler = _transform_and_sampler()
    notes = restore_rng_states(capture_rng_states(t, sampler), Compose([RandFlipd(keys="image", prob=0.5)]))
    assert len(notes) == 1 and "differ" in notes[0]


def test_to_weights_only_converts_numpy_and_names_what_it_cannot_store():
    out = to_weights_only({"a": np.float64(0.5), "b": [np.arange(3)], "c": (np.int32(2), None)})
    assert type(out["a"]) is float and isinstance(out["b"][0], torch.Tensor) and out["c"] == (2, None)
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]\[1\].*object"):
        to_weights_only({"x": [1, object()]})


def _tiny_trainer(tmp_path: Path, net: torch.nn.Module, resume: bool, epochs: int = 2):
    from monai.engines import SupervisedTrainer

    data = [{"image": torch.randn(4), "label": torch.randn(2)} for _ in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handler = ResumeCheckpoint(tmp_path / "last_epoch.pt", resume=resume)
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                             optimizer=opt, loss_function=torch.nn.MSELoss(), train_handlers=[handler])


def test_resume_without_checkpoint_starts_afresh_and_another_network_is_one_clear_error(tmp_path, caplog):
    trainer = _tiny_trainer(tmp_path, torch.nn.Linear(4, 2), resume=True)
    with caplog.at_level("WARNING"):
        trainer.run()
    assert "no checkpoint at" in caplog.text and str(tmp_path / "last_epoch.pt") in caplog.text
    ckpt = _load(tmp_path / "last_epoch.pt")
    assert ckpt["epoch"] == 2 and ckpt["network_class"] == "Linear" and set(ckpt["network"]) == {"weight", "bias"}
    other = _tiny_trainer(tmp_path, torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)), True, 3)
    expected = (r"last_epoch\.pt: this resume checkpoint was written for a Linear network, not this Sequential: "
                r"4 of this network's 4 tensors are missing from the file")
    with pytest.raises(ValueError, match=expected):
        other.run()


def test_progress_log_lines_and_a_lazy_tensorboard_writer(tmp_path, caplog):
    from medbundle.handlers import LazySummaryWriter, TrainingProgress

    writer = LazySummaryWriter(tmp_path / "tb")
    trainer = _tiny_trainer(tmp_path, torch.nn.Linear(4, 2), resume=False)
    TrainingProgress(log_every_s=0.0, mode="log").attach(trainer)
    with caplog.at_level("INFO"):
        trainer.run()
    assert "Epoch 1/2: 1/2 iterations" in caplog.text and "Epoch 2/2: 2/2 iterations" in caplog.text
    assert "training left" in caplog.text and "loss " in caplog.text
    assert not (tmp_path / "tb").exists() and not writer.opened  # a rank that never writes leaves no event file
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# ----------------------------------------------------------------------------------------------- chest X-ray
CXR = "chest_xray_classification"
CXR_ARGS = ["--image_size", "48", "--num_epochs", "4", "--batch_size", "16", "--num_workers", "0",
            "--val_fraction", "0.3"]


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> dict:
    """Both runs: ``data``, work dirs ``full`` / ``resumed``, logs ``killed_log`` / ``log``, ``model_sha_after_kill``
    and the final ``last_epoch.pt`` contents ``ckpt_full`` / ``ckpt_resumed``."""
    from medbundle.xray.synthetic import generate_chestxray14

    root = tmp_path_factory.mktemp("cxr_resume")
    data = root / "ChestXray14"
    generate_chestxray14(data, n_patients=50, size=48, n_dicom=0, seed=1, min_pos_per_split=2, test_fraction=0.1)
    args = [*CXR_ARGS, "--dataset_dir", str(data)]
    full, resumed = root / "full", root / "resumed"
    _train(CXR, full, args)
    killed_log = _train(CXR, resumed, [*args, "--resume", "True"], kill_after=2)
    model_sha = _sha(resumed / "models" / "model.pt")
    resumed_log = _train(CXR, resumed, [*args, "--resume", "True"])
    return {"data": data, "full": full, "resumed": resumed, "killed_log": killed_log, "log": resumed_log,
            "model_sha_after_kill": model_sha, "ckpt_full": _load(full / "models" / "last_epoch.pt"),
            "ckpt_resumed": _load(resumed / "models" / "last_epoch.pt")}


def test_chest_resume_continues_at_epoch_3_with_the_weights_of_an_uninterrupted_run(chest):
    log = chest["log"]
    assert "no checkpoint at" in chest["killed_log"]  # --resume True on a fresh bundle_root: a fresh start
    assert "training continues at epoch 3 of 4" in log, log[-3000:]
    assert "SupervisedTrainer - INFO - Epoch[3] Complete" in log and "Epoch[4] Complete" in log
    assert "SupervisedTrainer - INFO - Epoch[1] Complete" not in log and "Epoch[2] Complete" not in log
    a, b = chest["ckpt_full"], chest["ckpt_resumed"]
    assert a["epoch"] == b["epoch"] == 4 and a["iteration"] == b["iteration"]
    assert _max_diff(a["network"], b["network"]) < 1e-5
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 4


def test_chest_resume_keeps_the_best_metric_and_the_best_model(chest):
    full, resumed = chest["full"], chest["resumed"]
    a, b = chest["ckpt_full"], chest["ckpt_resumed"]
    assert b["key_metric_name"] == "val_mean_auroc"
    assert (a["best_metric"], a["best_metric_epoch"]) == pytest.approx((b["best_metric"], b["best_metric_epoch"]))
    best = torch.load(full / "models" / "model.pt", weights_only=True)
    assert _max_diff(best, torch.load(resumed / "models" / "model.pt", weights_only=True)) < 1e-5
    thr_a = json.loads((full / "models" / "thresholds.json").read_text())
    assert thr_a == json.loads((resumed / "models" / "thresholds.json").read_text())
    if a["best_metric_epoch"] <= 2:  # epochs 3 and 4 were worse: the resumed run left model.pt alone
        assert _sha(resumed / "models" / "model.pt") == chest["model_sha_after_kill"]


def test_chest_larger_num_epochs_extends_training_and_a_better_best_is_not_overwritten(chest, tmp_path):
    """An unbeatable best (AUROC 1.0) in the checkpoint: the 5th epoch must not replace model.pt."""
    data, resumed = chest["data"], chest["resumed"]
    work = tmp_path / "extended"
    (work / "models").mkdir(parents=True)
    for f in ("model.pt", "thresholds.json"):
        (work / "models" / f).write_bytes((resumed / "models" / f).read_bytes())
    ckpt = dict(chest["ckpt_resumed"])
    ckpt["best_metric"], ckpt["best_metric_epoch"] = 1.0, 4
    ckpt["key_metric_savers"] = [{"_saved": [(1.0, "model_key_metric=1.0000.pt")]}]
    torch.save(ckpt, work / "models" / "last_epoch.pt")
    sha_model, sha_thr = _sha(work / "models" / "model.pt"), _sha(work / "models" / "thresholds.json")
    log = _train(CXR, work, [*CXR_ARGS, "--dataset_dir", str(data), "--resume", "True", "--num_epochs", "5"])
    assert "training continues at epoch 5 of 5" in log and "Epoch[5] Complete" in log
    assert _sha(work / "models" / "model.pt") == sha_model
    assert _sha(work / "models" / "thresholds.json") == sha_thr
    after = _load(work / "models" / "last_epoch.pt")
    assert after["epoch"] == 5 and (after["best_metric"], after["best_metric_epoch"]) == (1.0, 4)


def test_tensorboard_logs_loss_learning_rate_and_validation_metric(chest):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(chest["full"] / "eval" / "tensorboard"))
    ea.Reload()
    assert {"train_loss", "learning_rate", "val_mean_auroc"} <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Scalars("train_loss")] == list(range(1, chest["ckpt_full"]["iteration"] + 1))
    lr = ea.Scalars("learning_rate")
    demo = json.loads((BUNDLES / CXR / "configs" / "demo.json").read_text())
    assert [e.step for e in lr] == [1, 2, 3, 4] and lr[0].value == pytest.approx(demo["learning_rate"])
    assert lr[1].value < lr[0].value  # the cosine schedule: each epoch's own rate, logged before the step
    assert [e.step for e in ea.Scalars("val_mean_auroc")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------- other bundles
def _ct_args(root: Path) -> list[str]:
    from medbundle.ct.adapters import synthetic_ct_datalist
    from medbundle.ct.synthetic import generate_ct_dataset
    from medbundle.io.datalist import write_datalist

    classes = ["normal", "consolidation"]
    data = root / "ct"
    generate_ct_dataset(data, n_volumes=12, shape=(40, 40, 24), class_names=tuple(classes),
                        prevalences={"normal": 0.5, "consolidation": 0.5}, n_dicom_series=0, seed=3, min_per_class=1,
                        write_masks=False)
    dl = write_datalist(synthetic_ct_datalist(data, val_fraction=0.3, seed=0), root / "ct.json")
    return ["--dataset_dir", str(data), "--datalist_file", str(dl), "--class_names", repr(classes),
            "--val_interval", "1", "--patch_size", "[24, 24, 24]", "--patches_per_volume", "2", "--batch_size", "2",
            "--save_gradcam", "False"]


def _detection_args(root: Path) -> list[str]:
    from medbundle.detection.synthetic import generate_luna16

    data = root / "LUNA16"
    generate_luna16(data, n_scans=10, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0), n_subsets=5, seed=1,
                    nodules_per_scan=(1, 2), diameter_range=(8.0, 20.0), excluded_per_scan=(0, 1))
    return ["--dataset_dir", str(data), "--spacing", "[2.0, 2.0, 3.0]", "--patch_size", "[48, 48, 32]",
            "--val_patch_size", "[64, 64, 48]", "--crops_per_scan", "2", "--val_interval", "1",
            "--warmup_epochs", "1", "--base_anchor_shapes", "[[3, 3, 2], [5, 5, 3]]", "--num_workers", "0"]


def _wsi_args(root: Path) -> list[str]:
    pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    data = root / "camelyon16"
    generate_camelyon16(data, n_train_normal=3, n_train_tumor=3, n_test_normal=1, n_test_tumor=1, size=1024,
                        mpp=1.0, seed=5, tumour_radius_um=(100.0, 150.0), atypia_range=(0.8, 1.0))
    dl = write_datalist(camelyon16_datalist(data, val_fraction=0.3, seed=0), root / "wsi.json")
    return ["--dataset_dir", str(data), "--datalist_file", str(dl), "--patch_size", "32", "--bag_size", "8",
            "--val_interval", "1"]


@pytest.mark.parametrize(("name", "make_args", "metric"), [
    ("ct_volume_classification", _ct_args, "val_mean_auroc"),
    ("lung_nodule_retinanet_detection", _detection_args, "val_cpm"),
    ("wsi_mil_classification", _wsi_args, "val_slide_auroc"),
])
def test_bundle_resumes_at_the_next_epoch(name, make_args, metric, tmp_path):
    args = make_args(tmp_path)
    work = tmp_path / "work"
    _train(name, work, [*args, "--num_epochs", "1"])
    first = _load(work / "models" / "last_epoch.pt")
    assert first["epoch"] == 1 and first["world_size"] == 1 and first["key_metric_name"] == metric
    for key in ("network", "optimizer", "lr_scheduler", "trainer", "key_metric_savers"):
        assert first[key], key
    rng = first["rng"][0]
    assert rng["transforms"] and isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["key"],
                                                                                          torch.Tensor)
    if name == "lung_nodule_retinanet_detection":
        assert set(first["extra"]) == {"validation_report"}
    log = _train(name, work, [*args, "--num_epochs", "2", "--resume", "True"])
    assert "training continues at epoch 2 of 2" in log and "Epoch[2] Complete" in log, log[-3000:]
    assert "Trainer - INFO - Epoch[1] Complete" not in log
    assert _load(work / "models" / "last_epoch.pt")["epoch"] == 2
    assert list((work / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    torch.load(work / "models" / "model.pt", weights_only=True)  # the best model stays a plain state dict


# ----------------------------------------------------------------------------------------------- torchrun
def _torchrun(work: Path, args: list[str], kill_after: int | None = None) -> list[str]:
    """Two gloo processes sharing ``bundle_root``; returns the ranks' logs."""
    cfg = BUNDLES / CXR / "configs"
    logs = work.parent / f"{work.name}_logs_{kill_after}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--redirects", "3", "--log-dir", str(logs), "-m", "monai.bundle", "run", "training",
           "--config_file", config_list(cfg / "train.json", cfg / "multi_gpu_train.json", cfg / "demo.json"),
           *_meta(CXR), "--bundle_root", str(work), *args, *(_kill_after(kill_after, True) if kill_after else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    outs = []
    for rank in (0, 1):
        found = sorted(logs.glob(f"*/attempt_0/{rank}/std*.log"))
        outs.append("".join(p.read_text() for p in found))
    assert (proc.returncode != 0) == (kill_after is not None), (proc.returncode, proc.stderr[-3000:], outs)
    return outs


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
def test_two_process_resume_equals_the_uninterrupted_run(tmp_path):
    from medbundle.xray.synthetic import generate_chestxray14

    data = tmp_path / "ChestXray14"
    generate_chestxray14(data, n_patients=20, size=32, n_dicom=0, seed=2, min_pos_per_split=1)
    args = ["--dataset_dir", str(data), "--image_size", "32", "--num_epochs", "2", "--batch_size", "8",
            "--balanced_sampler", "False", "--num_workers", "0"]
    _torchrun(tmp_path / "full", args)
    _torchrun(tmp_path / "resumed", [*args, "--resume", "True"], kill_after=1)
    assert _load(tmp_path / "resumed" / "models" / "last_epoch.pt")["epoch"] == 1
    log0, log1 = _torchrun(tmp_path / "resumed", [*args, "--resume", "True"])
    assert "training continues at epoch 2 of 2" in log0, log0[-3000:]
    assert "Error" not in log1, log1[-3000:]
    a = _load(tmp_path / "full" / "models" / "last_epoch.pt")
    b = _load(tmp_path / "resumed" / "models" / "last_epoch.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2 and b["epoch"] == 2
    assert _max_diff(a["network"], b["network"]) < 1e-5
    assert not any(k.startswith("module.") for k in b["network"])
