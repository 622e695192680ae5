"""End-to-end tests of bundles/lung_nodule_retinanet_detection through ``python -m monai.bundle``.

A tiny synthetic LUNA16 folder (coarse voxels, nodules of 8-20 mm) is trained for a few CPU epochs with the
demo overlay; the tests then check what the bundle writes, that its coordinates are right (ground-truth boxes
land on the nodules after the bundle's own preprocessing; detections in world mm are the same for MetaImage,
NIfTI and DICOM input; the evaluation's CPM equals ``medbundle froc`` on the CSV it writes), the MONAI
property checks and the TorchScript export of the network.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import BUNDLES, config_list, missing_properties, run_bundle
from monai.bundle import ConfigParser
from monai.transforms import Compose

from medbundle.cli import main as cli_main
from medbundle.ct.synthetic import write_ct_dicom_series, write_nifti
from medbundle.detection.boxes import corner_boxes_to_world
from medbundle.detection.luna16 import luna16_datalist
from medbundle.detection.networks import retinanet_resnet_fpn
from medbundle.detection.synthetic import generate_luna16
from medbundle.detection.transforms import VOXEL_REGION_SHIFT, shift_boxes
from medbundle.io.metaimage import read_mhd

BUNDLE = BUNDLES / "lung_nodule_retinanet_detection"
CFG = BUNDLE / "configs"
META = ["--meta_file", str(CFG / "metadata.json"), "--logging_file", str(CFG / "logging.conf")]
SPACING = [2.0, 2.0, 3.0]
TINY = [
    "--spacing", repr(SPACING), "--patch_size", "[48, 48, 32]", "--val_patch_size", "[64, 64, 48]",
    "--crops_per_scan", "2", "--num_epochs", "3", "--val_interval", "1", "--warmup_epochs", "1",
    "--base_anchor_shapes", "[[3, 3, 2], [5, 5, 3]]", "--num_workers", "0",
]
DEMO = json.loads((CFG / "demo.json").read_text())
NET = {"depth": DEMO["resnet_depth"], "widen_factor": DEMO["widen_factor"], "fpn_channels": DEMO["fpn_channels"],
       "conv1_t_size": DEMO["conv1_t_size"], "conv1_t_stride": DEMO["conv1_t_stride"]}


def _cfgs(*names: str) -> str:
    return config_list(*(CFG / n for n in names))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    data = root / "LUNA16"
    summary = generate_luna16(data, n_scans=10, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0), n_subsets=5, seed=1,
                              nodules_per_scan=(1, 2), diameter_range=(8.0, 20.0), excluded_per_scan=(0, 1))
    work = root / "bundle"
    proc = run_bundle(["run", "training", "--config_file", _cfgs("train.json", "demo.json"), *META,
                       "--bundle_root", str(work), "--dataset_dir", str(data), *TINY])
    return data, work, summary, proc.stdout + proc.stderr


def test_training_logs_cpm_and_checkpoints(trained):
    _, work, _, log = trained
    assert (work / "models" / "model.pt").is_file()
    assert "val_cpm" in log and "val_map" in log
    report = json.loads((work / "eval" / "metrics.json").read_text())
    assert report["froc"]["fp_rates"] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert 0.0 <= report["cpm"] <= 1.0


def test_ground_truth_boxes_land_on_nodules_after_bundle_preprocessing(trained):
    """Orientation + resampling + HU window + world->voxel boxes, exactly as the train config runs them; the
    boxes come out in voxel-region coordinates (voxel i spans [i, i + 1))."""
    data, _, _, _ = trained
    parser = ConfigParser()
    parser.read_config([str(CFG / "train.json"), str(CFG / "demo.json")])
    parser.update({"dataset_dir": str(data), "spacing": SPACING, "device": "cpu"})
    pre = Compose(parser.get_parsed_content("deterministic_transforms"))
    items = luna16_datalist(data, val_fold=3, test_fold=4)
    checked = 0
    for item in items["training"] + items["validation"] + items["testing"]:
        if not item["box"]:
            continue
        out = pre(dict(item))
        img, boxes = out["image"], np.asarray(out["box"], dtype=np.float64)
        np.testing.assert_allclose(img.pixdim.numpy(), SPACING, atol=1e-4)
        for box in boxes:
            centre = np.floor((box[:3] + box[3:]) / 2).astype(int)  # the voxel whose region holds the centre
            # solid nodules are 0..50 HU (>= 0.77 after the -1024..300 window); lung is ~-850 HU (~0.13)
            assert float(img[0][tuple(centre)]) > 0.5, (item["seriesuid"], box)
        world = corner_boxes_to_world(shift_boxes(boxes, -VOXEL_REGION_SHIFT), img.affine)
        np.testing.assert_allclose(world, np.asarray(item["box"]), atol=1e-3)
        checked += len(boxes)
    assert checked >= 10


def test_evaluation_metrics_match_medbundle_froc_on_written_csv(trained, tmp_path):
    data, work, summary, _ = trained
    run_bundle(["run", "evaluating", "--config_file", _cfgs("train.json", "evaluate.json", "demo.json"), *META,
                "--bundle_root", str(work), "--dataset_dir", str(data), "--n_bootstraps", "200", *TINY])
    report = json.loads((work / "eval" / "metrics.json").read_text())
    assert (work / "eval" / "froc.png").stat().st_size > 1000
    assert set(report["coco"]["ap_per_iou"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
    froc = report["froc"]
    assert len(froc["sensitivities"]) == 7 and len(froc["cpm_ci"]) == 2
    assert froc["n_bootstraps"] == 200
    test_uids = summary["subsets"][4]
    assert froc["n_scans"] == len(test_uids)
    results = work / "eval" / "detections" / "results.csv"
    header = next(csv.reader(open(results)))
    assert header == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    uids = work / "eval" / "detections" / "seriesuids.csv"
    assert sorted(uids.read_text().split()) == sorted(test_uids)
    out = tmp_path / "froc"
    assert cli_main(["froc", "--annotations", str(data / "annotations.csv"), "--results", str(results),
                         "--excluded", str(data / "annotations_excluded.csv"), "--seriesuids", str(uids),
                         "--out", str(out)]) == 0
    cli = json.loads((out / "froc.json").read_text())
    assert cli["cpm"] == pytest.approx(report["cpm"], abs=1e-9)
    assert cli["sensitivities"] == pytest.approx(froc["sensitivities"], abs=1e-9)


def _as_ras(vol_lps: np.ndarray, spacing, origin) -> tuple[np.ndarray, np.ndarray]:
    """The LUNA16 array (LPS index order) as a RAS-ordered array with its RAS affine."""
    shape = np.asarray(vol_lps.shape)
    ras_origin = [-(origin[0] + (shape[0] - 1) * spacing[0]), -(origin[1] + (shape[1] - 1) * spacing[1]), origin[2]]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = ras_origin
    return np.ascontiguousarray(vol_lps[::-1, ::-1, :]), affine


def test_inference_same_world_boxes_for_metaimage_nifti_and_dicom(trained, tmp_path):
    data, work, summary, _ = trained
    scan = summary["scans"][0]
    vol, meta = read_mhd(data / scan["image"])
    ras, affine = _as_ras(vol, scan["spacing"], scan["origin"])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    uid = scan["seriesuid"]
    (inputs / f"{uid}.mhd").symlink_to(data / scan["image"])
    (inputs / f"{uid}.raw").symlink_to((data / scan["image"]).with_suffix(".raw"))
    write_nifti(inputs / "as_nifti.nii.gz", ras, affine)
    write_ct_dicom_series(inputs / "as_dicom", ras, affine, "case", np.random.default_rng(0))
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "pred"
    proc = run_bundle(["run", "--config_file", _cfgs("inference.json", "demo.json"), *META,
                       "--bundle_root", str(work), "--input", str(inputs), "--output_dir", str(out), *TINY,
                       "--box_selector", "{'score_thresh': 0.0, 'topk_candidates_per_level': 100, "
                       "'nms_thresh': 0.22, 'detections_per_img': 20}"])
    assert "broken.nii.gz" in proc.stdout + proc.stderr
    results = {name: json.loads((out / f"{name}_boxes.json").read_text()) for name in (uid, "as_nifti", "as_dicom")}
    ref = results[uid]
    assert ref["box_mode"] == "cccwhd" and "LPS" in ref["coordinate_system"] and len(ref["boxes"]) == 20
    for name in ("as_nifti", "as_dicom"):
        np.testing.assert_allclose(results[name]["scores"], ref["scores"], atol=2e-3, err_msg=name)
        np.testing.assert_allclose(results[name]["boxes"][:5], ref["boxes"][:5], atol=0.05, err_msg=name)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["seriesuid"] for r in rows} == {uid, "as_nifti", "as_dicom"}


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "infer")])
def test_config_properties(config, kind, trained, tmp_path):
    data, _, summary, _ = trained
    assert missing_properties(
        CFG, config, kind, tmp_path,
        dataset_dir=str(data if kind == "train" else data / "subset0"), cache_rate=0.0,
        resnet_depth=NET["depth"], widen_factor=NET["widen_factor"], fpn_channels=NET["fpn_channels"],
    ) == []


def test_torchscript_export_matches_eager(trained, tmp_path):
    _, work, _, _ = trained
    ts = tmp_path / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"), "--config_file", _cfgs("inference.json", "demo.json"),
                *TINY])
    eager = retinanet_resnet_fpn(num_anchors=2, **NET)
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    x = torch.rand(1, 1, 64, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = scripted(x), eager(x)
    assert set(a) == set(b) == {"classification", "box_regression"}
    for key in a:
        assert len(a[key]) == len(b[key]) == 3
        for u, v in zip(a[key], b[key]):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
