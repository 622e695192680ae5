"""Every bundle's ``multi_gpu_train.json`` under ``torchrun`` with two gloo processes on CPU.

Each run gives every rank its own ``bundle_root`` (``<work>/rank<k>``), so a file written by rank 1 cannot hide
behind rank 0's copy; torchrun writes each rank's stdout to its own log file. The bundle's opt-in
``shard_record_dir`` adds :class:`medbundle.handlers.distributed.ShardRecorder`, which records the training items
each rank drew in epoch 1.

Sharding with ``DistributedSampler(even_divisible=True)``: each rank gets ``ceil(N / 2)`` items; when ``N`` is odd
the sampler pads by repeating one item, so exactly ``2 * ceil(N / 2) - N`` items appear on both ranks and every
other item on exactly one. The test asserts exactly that (no overlap at all when ``N`` is even).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import BUNDLES, config_list

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)

WRITTEN_BY_RANK0 = ("models", "eval")  # bundle_root folders only rank 0 may write


def _torchrun(name: str, work: Path, overrides: list[str], timeout: int = 300) -> tuple[str, str]:
    """Run the bundle's training under torchrun (2 processes); return (rank 0 stdout, rank 1 stdout)."""
    cfg = BUNDLES / name / "configs"
    logs = work / "torchrun_logs"
    # PYTHONFAULTHANDLER: a rank killed by a native abort (SIGABRT/SIGSEGV) prints every thread's Python stack into
    # its log: a teardown crash (once in CI on the slide bundle, not reproduced in 8 runs alone) then shows where
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    root = f"$os.path.join({str(work)!r}, 'rank' + os.environ['RANK'])"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--redirects", "3", "--log-dir", str(logs),
           "-m", "monai.bundle", "run", "training", "--config_file",
           config_list(cfg / "train.json", cfg / "multi_gpu_train.json", cfg / "demo.json"),
           "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
           "--bundle_root", root, "--shard_record_dir", str(work / "shards"), "--num_workers", "0", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    outs = []
    for rank in (0, 1):
        found = sorted(logs.glob(f"*/attempt_0/{rank}/stdout.log"))
        err = sorted(logs.glob(f"*/attempt_0/{rank}/stderr.log"))
        outs.append((found[-1].read_text() if found else "") + (err[-1].read_text() if err else ""))
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n--- rank 0 ---\n{outs[0][-5000:]}"
        f"\n--- rank 1 ---\n{outs[1][-5000:]}"
    )
    return outs[0], outs[1]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _check_rank0_only(work: Path, log0: str, log1: str, metric: str, extra: tuple[str, ...] = ()) -> dict:
    """Checkpoint and reports written by rank 0 only; metrics logged by rank 0 only. Returns the state dict."""
    model = work / "rank0" / "models" / "model.pt"
    assert model.is_file(), _files(work / "rank0")
    state = torch.load(model, map_location="cpu", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # DDP wrapper stripped
    for rel in extra:
        assert (work / "rank0" / rel).is_file(), (rel, _files(work / "rank0"))
    for sub in WRITTEN_BY_RANK0:
        assert _files(work / "rank1" / sub) == [], f"rank 1 wrote into {sub}/: {_files(work / 'rank1' / sub)}"
    # metrics and engine progress are logged by rank 0 only (StatsHandler there; other ranks log warnings only)
    assert metric in log0 and "Epoch[1] Complete" in log0 and "Metrics --" in log0, log0[-3000:]
    engine_lines = [line for line in log1.splitlines() if " - ignite.engine" in line or " - medbundle" in line]
    assert not [line for line in engine_lines if " - INFO - " in line], log1[-3000:]
    assert metric not in log1 and "train_loss" not in log1, log1[-3000:]
    return state


def _check_shards(work: Path, n_train: int, ids: set[str] | None = None) -> None:
    """The two ranks' epoch-1 draws are disjoint up to DistributedSampler's padding and cover the training set."""
    shards = [json.loads((work / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in shards] == [0, 1] and all(s["world_size"] == 2 for s in shards)
    assert all(s["dataset_size"] == n_train for s in shards)
    per_rank = math.ceil(n_train / 2)
    assert [len(s["ids"]) for s in shards] == [per_rank, per_rank]
    for s in shards:  # no item twice within a rank
        assert len(set(s["ids"])) == len(s["ids"])
    a, b = set(shards[0]["ids"]), set(shards[1]["ids"])
    assert len(a & b) == 2 * per_rank - n_train  # 0 when n_train is even, the one padded item otherwise
    union = a | b
    assert len(union) == n_train
    if ids is not None:
        assert union == ids
    counts = Counter(shards[0]["ids"] + shards[1]["ids"])
    assert sum(c == 2 for c in counts.values()) == 2 * per_rank - n_train


# ---------------------------------------------------------------------------------------------------------------
def test_chest_xray_two_process_training(tmp_path):
    from medbundle.xray.adapters import chestxray14_datalist
    from medbundle.xray.synthetic import generate_chestxray14

    data = tmp_path / "ChestXray14"
    generate_chestxray14(data, n_patients=40, size=48, n_dicom=2, seed=1, min_pos_per_split=1)
    train = chestxray14_datalist(data, val_fraction=0.1, seed=0)["training"]
    work = tmp_path / "ddp"
    log0, log1 = _torchrun("chest_xray_classification", work, [
        "--dataset_dir", str(data), "--image_size", "32", "--num_epochs", "1", "--batch_size", "8",
        "--balanced_sampler", "False", "--save_gradcam", "False",
    ])
    state = _check_rank0_only(work, log0, log1, "val_mean_auroc", extra=("models/thresholds.json",))
    from monai.networks.nets import DenseNet121

    DenseNet121(spatial_dims=2, in_channels=1, out_channels=14).load_state_dict(state)
    _check_shards(work, len(train), {str(d["image"]) for d in train})


def test_chest_xray_balanced_sampler_splits_one_global_draw(tmp_path):
    """The demo's class-balanced sampler (draws with replacement): the ranks take alternate positions of one draw."""
    from medbundle.sampling import ClassBalancedSampler
    from medbundle.xray.adapters import chestxray14_datalist
    from medbundle.xray.synthetic import generate_chestxray14

    data = tmp_path / "ChestXray14"
    generate_chestxray14(data, n_patients=30, size=48, n_dicom=0, seed=2, min_pos_per_split=1)
    train = chestxray14_datalist(data, val_fraction=0.1, seed=0)["training"]
    work = tmp_path / "ddp"
    _torchrun("chest_xray_classification", work, [
        "--dataset_dir", str(data), "--image_size", "32", "--num_epochs", "1", "--batch_size", "8",
        "--balanced_sampler", "True", "--save_gradcam", "False",
    ])
    shards = [json.loads((work / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["dataset_size"] == len(train) for s in shards)
    # the first epoch's draw (the sampler advances its epoch per iteration; nothing calls set_epoch on it)
    draw = ClassBalancedSampler([d["label"] for d in train], num_replicas=2, rank=0, seed=0).global_indices(0)
    assert shards[0]["indices"] == draw[0::2].tolist() and shards[1]["indices"] == draw[1::2].tolist()
    assert len(shards[0]["indices"]) == len(shards[1]["indices"]) == math.ceil(len(train) / 2)


def test_ct_volume_two_process_training(tmp_path):
    from medbundle.ct.adapters import synthetic_ct_datalist
    from medbundle.ct.synthetic import generate_ct_dataset
    from medbundle.io.datalist import write_datalist
    from medbundle.networks import ResNetClassifier

    classes = ["normal", "consolidation"]
    data = tmp_path / "ct_volumes"
    generate_ct_dataset(data, n_volumes=16, shape=(40, 40, 24), class_names=tuple(classes),
                        prevalences={"normal": 0.5, "consolidation": 0.5}, n_dicom_series=1, seed=3, min_per_class=2)
    datalist = synthetic_ct_datalist(data, val_fraction=0.3, seed=0)
    dl_file = write_datalist(datalist, tmp_path / "datalist.json")
    work = tmp_path / "ddp"
    log0, log1 = _torchrun("ct_volume_classification", work, [
        "--dataset_dir", str(data), "--datalist_file", str(dl_file), "--class_names", repr(classes),
        "--num_epochs", "1", "--val_interval", "1", "--patch_size", "[24, 24, 24]", "--patches_per_volume", "2",
        "--batch_size", "2", "--save_gradcam", "False",
    ])
    state = _check_rank0_only(work, log0, log1, "val_mean_auroc", extra=("models/thresholds.json",))
    demo = json.loads((BUNDLES / "ct_volume_classification" / "configs" / "demo.json").read_text())
    ResNetClassifier(depth=demo["resnet_depth"], spatial_dims=3, in_channels=1, num_classes=2,
                     widen_factor=demo["widen_factor"]).load_state_dict(state)
    _check_shards(work, len(datalist["training"]), {str(d["image"]) for d in datalist["training"]})


def test_lung_nodule_detection_two_process_training(tmp_path):
    from medbundle.detection.luna16 import luna16_datalist
    from medbundle.detection.networks import retinanet_resnet_fpn
    from medbundle.detection.synthetic import generate_luna16

    data = tmp_path / "LUNA16"
    generate_luna16(data, n_scans=10, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0), n_subsets=5, seed=1,
                    nodules_per_scan=(1, 2), diameter_range=(8.0, 20.0), excluded_per_scan=(0, 1))
    demo = json.loads((BUNDLES / "lung_nodule_retinanet_detection" / "configs" / "demo.json").read_text())
    train = luna16_datalist(data, val_fold=demo["val_fold"], test_fold=demo["test_fold"])["training"]
    work = tmp_path / "ddp"
    log0, log1 = _torchrun("lung_nodule_retinanet_detection", work, [
        "--dataset_dir", str(data), "--spacing", "[2.0, 2.0, 3.0]", "--patch_size", "[48, 48, 32]",
        "--val_patch_size", "[64, 64, 48]", "--crops_per_scan", "2", "--num_epochs", "1", "--val_interval", "1",
        "--warmup_epochs", "1", "--base_anchor_shapes", "[[3, 3, 2], [5, 5, 3]]",
    ])
    state = _check_rank0_only(work, log0, log1, "val_cpm", extra=("eval/metrics.json",))
    net = retinanet_resnet_fpn(depth=demo["resnet_depth"], num_classes=1, num_anchors=2, spatial_dims=3,
                               n_input_channels=1, returned_layers=[1, 2], fpn_channels=demo["fpn_channels"],
                               conv1_t_size=demo["conv1_t_size"], conv1_t_stride=demo["conv1_t_stride"],
                               widen_factor=demo["widen_factor"])
    net.load_state_dict(state)
    _check_shards(work, len(train), {str(d["image"]) for d in train})


def test_chest_xray_lesion_detection_two_process_training(tmp_path):
    from medbundle.detection.cxr_datasets import node21_datalist
    from medbundle.detection.synthetic_cxr import generate_node21
    from medbundle.detection.torchvision_detectors import faster_rcnn

    data = tmp_path / "NODE21"
    generate_node21(data, n_images=20, image_size=64, positive_fraction=0.5, seed=1)
    demo = json.loads((BUNDLES / "chest_xray_lesion_detection" / "configs" / "demo.json").read_text())
    train = node21_datalist(data, seed=0)["training"]
    work = tmp_path / "ddp"
    log0, log1 = _torchrun("chest_xray_lesion_detection", work, [
        "--dataset_dir", str(data), "--image_size", "64", "--anchor_sizes", "[[4], [8], [16], [32], [64]]",
        "--num_epochs", "1", "--val_interval", "1", "--batch_size", "2", "--balanced_sampler", "False",
    ])
    state = _check_rank0_only(work, log0, log1, "val_froc", extra=("eval/metrics.json", "eval/froc.png"))
    net = faster_rcnn(1, backbone=demo["backbone"], fpn_channels=demo["fpn_channels"],
                      anchor_sizes=[[4], [8], [16], [32], [64]], aspect_ratios=demo["aspect_ratios"],
                      **demo["detector_kwargs"]["faster_rcnn"])
    net.load_state_dict(state)
    _check_shards(work, len(train), {str(d["image"]) for d in train})


def test_wsi_mil_two_process_training(tmp_path):
    pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    data = tmp_path / "camelyon16"
    generate_camelyon16(data, n_train_normal=5, n_train_tumor=5, n_test_normal=1, n_test_tumor=1, size=1024,
                        mpp=1.0, seed=5, tumour_radius_um=(100.0, 150.0), atypia_range=(0.8, 1.0))
    datalist = camelyon16_datalist(data, val_fraction=0.3, seed=0)
    dl_file = write_datalist(datalist, tmp_path / "datalist.json")
    work = tmp_path / "ddp"
    log0, log1 = _torchrun("wsi_mil_classification", work, [
        "--dataset_dir", str(data), "--datalist_file", str(dl_file), "--patch_size", "32", "--bag_size", "8",
        "--num_epochs", "1", "--val_interval", "1",
    ])
    state = _check_rank0_only(work, log0, log1, "val_slide_auroc", extra=("models/thresholds.json",))
    assert any(k.startswith("attention") or "attention" in k for k in state)
    _check_shards(work, len(datalist["training"]), {str(d["image"]) for d in datalist["training"]})


def test_rank_handlers_select_by_type_not_position(tmp_path):
    """MONAI Label inserts a CheckpointLoader at the front of train#handlers: the other ranks must still run
    the validation handler (it takes part in collective communication) and skip only the writers."""
    import torch
    from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler, StatsHandler, ValidationHandler

    from medbundle.handlers import ClassificationReport, rank_handlers

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = CheckpointLoader(load_path=str(tmp_path / "model.pt"), load_dict={"model": net})
    lr = LrScheduleHandler(torch.optim.lr_scheduler.StepLR(opt, 1))
    val = ValidationHandler(interval=1, validator=None)
    stats = StatsHandler()
    train = [loader, lr, val, stats]
    assert rank_handlers(train, is_rank0=True) == train
    assert rank_handlers(train, is_rank0=False) == [loader, lr, val]
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net})
    report = ClassificationReport.__new__(ClassificationReport)  # a metric report: runs on every rank
    assert rank_handlers([stats, saver, report], is_rank0=False) == [report]
    assert rank_handlers(None, is_rank0=False) == []
