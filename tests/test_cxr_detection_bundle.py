"""End-to-end tests of bundles/chest_xray_lesion_detection through ``python -m monai.bundle``.

Tiny synthetic NODE21 and VinDr-CXR folders (64-96 px) are trained for two CPU epochs with the demo overlay;
the tests check what the bundle writes, that boxes stay on their lesions through the bundle's own resize,
that the COCO files it writes re-score to its own AP with pycocotools, that inference gives the same boxes for
MetaImage, DICOM and PNG input of one image (in mm where the file says its spacing), the MONAI property checks
and the TorchScript export.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest
import torch
from conftest import BUNDLES, config_list, missing_properties, run_bundle
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from medbundle.detection.cxr_datasets import node21_datalist
from medbundle.detection.synthetic_cxr import generate_node21, generate_vindr
from medbundle.io.metaimage import read_mhd
from medbundle.xray.synthetic import write_xray_dicom

BUNDLE = BUNDLES / "chest_xray_lesion_detection"
CFG = BUNDLE / "configs"
META = ["--meta_file", str(CFG / "metadata.json"), "--logging_file", str(CFG / "logging.conf")]
TINY = ["--image_size", "64", "--patch_size", "[48, 48]", "--anchor_sizes", "[[4], [8], [16], [32], [64]]",
        "--num_epochs", "2", "--val_interval", "1", "--num_workers", "0", "--batch_size", "2"]
DEMO = json.loads((CFG / "demo.json").read_text())


def _cfgs(*names: str) -> str:
    return config_list(*(CFG / n for n in names))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxrdet")
    data = root / "NODE21"
    summary = generate_node21(data, n_images=24, image_size=64, positive_fraction=0.5, seed=1,
                              nodule_contrast=(60.0, 90.0))
    work = root / "bundle"
    proc = run_bundle(["run", "training", "--config_file", _cfgs("train.json", "demo.json"), *META,
                       "--bundle_root", str(work), "--dataset_dir", str(data), *TINY])
    return data, work, summary, proc.stdout + proc.stderr


def test_training_logs_froc_and_checkpoints(trained):
    _, work, _, log = trained
    assert (work / "models" / "model.pt").is_file() and (work / "models" / "last_epoch.pt").is_file()
    assert "val_froc" in log and "val_auroc" in log
    report = json.loads((work / "eval" / "metrics.json").read_text())
    assert report["froc_result"]["fp_rates"] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert 0.0 <= report["froc"] <= 1.0
    assert report["froc_result"]["hit_criterion"] == "IoU > 0.2"


def test_boxes_follow_the_resize_onto_their_lesions(tmp_path):
    """A non-square DICOM radiograph through the bundle's own deterministic transforms: the box of a bright
    square must enclose exactly the bright pixels of the resized image."""
    rows, cols = 150, 120
    img = np.full((rows, cols), 40, dtype=np.uint8)
    img[30:54, 70:94] = 250  # rows 30-53 (y), columns 70-93 (x)
    path = write_xray_dicom(tmp_path / "sq.dcm", img, pixel_spacing=0.5)
    parser = ConfigParser()
    parser.read_config([str(CFG / "train.json"), str(CFG / "demo.json")])
    parser.update({"device": "cpu", "image_size": 75})
    pre = Compose(parser.get_parsed_content("deterministic_transforms"))
    out = pre({"image": str(path), "box": [[70.0, 30.0, 94.0, 54.0]], "label": [0]})
    image, box = out["image"][0].numpy(), out["box"].numpy()[0]
    assert image.shape == (60, 75)  # (x, y): the longer side (rows) to 75, the columns by the same factor
    np.testing.assert_allclose(box, [35.0, 15.0, 47.0, 27.0], atol=1e-4)
    xs, ys = np.nonzero(image > 0.75)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (35, 47, 15, 27)


def test_evaluation_writes_coco_files_that_pycocotools_rescores(trained):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data, work, _, _ = trained
    run_bundle(["run", "evaluating", "--config_file", _cfgs("train.json", "evaluate.json", "demo.json"), *META,
                "--bundle_root", str(work), "--dataset_dir", str(data), "--n_bootstraps", "200", *TINY])
    out = work / "eval"
    report = json.loads((out / "metrics.json").read_text())
    for name in ("froc.png", "pr_curves.png"):
        assert (out / name).stat().st_size > 1000
    test = node21_datalist(data, seed=0)["testing"]
    assert report["n_images"] == len(test)
    assert report["n_lesions"] == sum(len(it["box"]) for it in test)
    froc = report["froc_result"]
    assert froc["n_bootstraps"] == 200 and len(froc["sensitivities_ci"]) == 7
    assert report["image_level"]["auroc_ci"] is None or len(report["image_level"]["auroc_ci"]) >= 2
    gt = COCO(str(out / "coco_ground_truth.json"))
    assert len(gt.getImgIds()) == len(test)
    dets = json.loads((out / "coco_detections.json").read_text())
    if not dets:
        pytest.skip("the two-epoch model kept no box above the score threshold")
    ev = COCOeval(gt, gt.loadRes(str(out / "coco_detections.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(report["map"], abs=1e-6)
    assert ev.stats[1] == pytest.approx(report["ap50"], abs=1e-6)
    rows = list(csv.DictReader(open(out / "detections" / "detections.csv")))
    assert set(rows[0]) >= {"image_id", "class", "score", "x_min", "y_min", "x_max", "y_max", "x_min_mm"}


def test_inference_same_boxes_for_metaimage_dicom_and_png(trained, tmp_path):
    data, work, _, _ = trained
    mha = sorted((data / "images").glob("*.mha"))[0]
    arr, header = read_mhd(mha)  # (x, y)
    spacing = float(header["spacing"][0])
    picture = np.clip(arr.T, 0, None).astype(np.float64)  # rows = y
    picture = np.round(255 * picture / picture.max()).astype(np.uint8)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    # the same picture three ways: 8-bit PNG (no spacing), DICOM with the spacing, MetaImage of the same 8-bit values
    Image.fromarray(picture).save(inputs / "as_png.png")
    write_xray_dicom(inputs / "as_dicom.dcm", picture, pixel_spacing=spacing)
    # a colour secondary capture of the same grey picture: read as its luminance, with a note in the image's JSON
    rgb = pydicom.dcmread(inputs / "as_dicom.dcm")
    rgb.PhotometricInterpretation, rgb.SamplesPerPixel, rgb.PlanarConfiguration = "RGB", 3, 0
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit = 8, 8, 7
    rgb.PixelData = np.repeat(picture[..., None], 3, axis=2).tobytes()
    rgb.save_as(inputs / "as_rgb.dcm")
    (inputs / "as_mha.mha").write_bytes(
        (f"ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
         f"ElementSpacing = {spacing} {spacing}\nDimSize = {picture.shape[1]} {picture.shape[0]}\n"
         f"ElementType = MET_UCHAR\nElementDataFile = LOCAL\n").encode() + picture.tobytes())
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred"
    args = ["run", "--config_file", _cfgs("inference.json", "demo.json"), *META, "--bundle_root", str(work),
            "--input", str(inputs), "--output_dir", str(out), "--image_size", "64", "--overlays", "True",
            "--box_selector", "{'score_thresh': 0.0, 'nms_thresh': 0.3, 'detections_per_img': 10}"]
    proc = run_bundle(args)
    assert "broken.png" in proc.stdout + proc.stderr
    res = {n: json.loads((out / f"{n}_boxes.json").read_text()) for n in ("as_png", "as_dicom", "as_mha", "as_rgb")}
    assert res["as_rgb"]["note"] == "RGB->luminance" and "note" not in res["as_dicom"]
    ref = res["as_mha"]
    assert ref["size"] == [picture.shape[1], picture.shape[0]]
    assert ref["spacing_mm"] == pytest.approx([spacing, spacing])
    assert res["as_png"]["spacing_mm"] is None
    assert len(ref["detections"]) == 10
    for name in ("as_png", "as_dicom", "as_rgb"):
        got = res[name]["detections"]
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in ref["detections"]], atol=1e-3)
        np.testing.assert_allclose([d["box"] for d in got[:5]], [d["box"] for d in ref["detections"][:5]], atol=0.05)
    top = ref["detections"][0]
    np.testing.assert_allclose(top["box_mm"], np.asarray(top["box"]) * spacing, rtol=1e-6)
    assert res["as_png"]["detections"][0]["box_mm"] is None
    assert (out / "overlays" / "as_mha.png").is_file()
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert [r["image_id"] for r in skipped] == ["broken"]
    ledger = (out / "images.csv").read_text().split()
    assert sorted(ledger) == ["as_dicom", "as_mha", "as_png", "as_rgb"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_boxes.json")}
    run_bundle(args)  # a re-run skips what is done
    assert (out / "images.csv").read_text().split() == ledger
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_boxes.json")} == stamps


def test_vindr_layout_trains_multiclass_from_dicom(tmp_path):
    data = tmp_path / "VinDr"
    generate_vindr(data, n_images=16, image_size=(96, 80), seed=2, prevalence=0.5)
    work = tmp_path / "bundle"
    run_bundle(["run", "training", "--config_file", _cfgs("train.json", "demo.json"), *META,
                "--bundle_root", str(work), "--dataset_dir", str(data), "--dataset_format", "vindr",
                "--val_fraction", "0.25", "--test_fraction", "0.0", *TINY, "--num_epochs", "1"])
    report = json.loads((work / "eval" / "metrics.json").read_text())
    assert len(report["classes"]) == 14 and report["classes"][8] == "Nodule/Mass"
    assert set(report["coco"]["ap_per_class"]) == set(report["classes"])


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "infer")])
def test_config_properties(config, kind, trained, tmp_path):
    data, _, _, _ = trained
    assert missing_properties(
        CFG, config, kind, tmp_path,
        dataset_dir=str(data if kind == "train" else data / "images"), cache_rate=0.0,
        backbone=DEMO["backbone"], fpn_channels=DEMO["fpn_channels"],
    ) == []


def test_torchscript_export_matches_eager(trained, tmp_path):
    _, work, _, _ = trained
    ts = tmp_path / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"), "--config_file", _cfgs("inference.json", "demo.json"),
                "--image_size", "64"])
    parser = ConfigParser()
    parser.read_config([str(CFG / "inference.json"), str(CFG / "demo.json")])
    parser.update({"device": "cpu", "image_size": 64})
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    x = [torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        a = eager(x)[0]
        b = scripted(x)[1][0]  # a scripted torchvision detector returns (losses, detections)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
