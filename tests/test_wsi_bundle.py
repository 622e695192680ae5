"""End-to-end tests of bundles/wsi_mil_classification through ``python -m monai.bundle``.

Tiny synthetic Camelyon16- and PANDA-layout slides (1 mm, 1 um/px), 32-px patches at 2 um/px, the demo's
small ResNet backbone: a few CPU epochs separate tumour from normal slides.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("tifffile")
pytest.importorskip("openslide")

from conftest import BUNDLES, config_list, missing_properties, run_bundle  # noqa: E402

from medbundle.io.datalist import write_datalist
from medbundle.pathology.adapters import camelyon16_datalist, panda_datalist
from medbundle.pathology.synthetic import generate_camelyon16, generate_panda, make_slide, write_synthetic_slide

BUNDLE = BUNDLES / "wsi_mil_classification"
CFG = BUNDLE / "configs"
META = ["--meta_file", str(CFG / "metadata.json"), "--logging_file", str(CFG / "logging.conf")]
SMALL = ["--patch_size", "32", "--bag_size", "16", "--patch_mpp", "2.0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi_bundle")
    data = root / "camelyon16"
    # the easy layout (large tumours, no tumour-coloured lymphoid areas): this tests the pipeline in six CPU
    # epochs; the demo (`medbundle demo`, benchmarks/demo_seeds.py) measures the hard task
    generate_camelyon16(data, n_train_normal=8, n_train_tumor=8, n_test_normal=4, n_test_tumor=4, size=1024,
                        mpp=1.0, seed=5, tumour_radius_um=(150.0, 250.0), atypia_range=(0.8, 1.0),
                        lymphoid=(0.0, 0.0))
    datalist = write_datalist(camelyon16_datalist(data, val_fraction=0.25, seed=0), root / "datalist.json")
    work = root / "bundle"
    proc = run_bundle(
        ["run", "training", "--config_file", config_list(CFG / "train.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), "--datalist_file", str(datalist), *SMALL,
         "--num_epochs", "6", "--val_interval", "2"]
    )
    return data, datalist, work, proc.stdout + proc.stderr


def test_training_checkpoints_best_slide_auroc_and_thresholds(trained):
    _, _, work, log = trained
    assert (work / "models" / "model.pt").is_file()
    assert "val_slide_auroc" in log
    thr = json.loads((work / "models" / "thresholds.json").read_text())
    assert list(thr["thresholds"]) == ["normal", "tumor"] and "middle of the score gap" in thr["method"]
    assert len(list((work / "cache" / "coords").glob("*.npz"))) == 16  # one coordinate cache entry per slide


def test_evaluation_reports_slide_auroc_and_attention_in_tumour(trained):
    data, datalist, work, _ = trained
    run_bundle(["run", "evaluating", "--config_file",
                config_list(CFG / "train.json", CFG / "evaluate.json", CFG / "demo.json"), *META,
                "--bundle_root", str(work), "--dataset_dir", str(data), "--datalist_file", str(datalist), *SMALL])
    m = json.loads((work / "eval" / "metrics.json").read_text())
    assert m["n_images"] == 8 and m["label_mode"] == "binary" and m["positive_class"] == "tumor"
    assert m["slide_auroc_ci_low"] <= m["slide_auroc"] <= m["slide_auroc_ci_high"]
    assert m["slide_auroc"] == m["per_class"]["tumor"]["auroc"]
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == 8 and cm.sum(1).tolist() == [4, 4]
    assert m["sensitivity"] == pytest.approx(cm[1, 1] / 4) and m["specificity"] == pytest.approx(cm[0, 0] / 4)
    # six CPU epochs separate the synthetic tumour slides (AUROC 1.0 when written); a broken pipeline
    # (labels not aligned with slides, patches off the tissue, attention not pooling) stays near 0.5
    assert m["slide_auroc"] >= 0.85, m
    loc = m["attention_localisation"]
    assert m["attention_localisation_slides"] == 4 == len(loc)
    hits = sum(r["top_k_in_tumour"] for r in loc)
    assert m["attention_top_k_in_tumour_fraction"] == pytest.approx(hits / sum(r["top_k"] for r in loc))
    # the most attended patches are in the tumour far more often than a random tissue patch is
    assert m["attention_top_k_in_tumour_fraction"] >= max(0.6, m["attention_chance_fraction"] + 0.2), m


def _infer(work, source, out, *extra):
    return run_bundle(["run", "--config_file", config_list(CFG / "inference.json", CFG / "demo.json"), *META,
                       "--bundle_root", str(work), "--input", str(source), "--output_dir", str(out), *SMALL, *extra])


def test_inference_writes_maps_and_reports_bad_and_empty_slides(trained, tmp_path):
    data, _, work, _ = trained
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("test_001", "test_002"):
        shutil.copy(data / "testing" / "images" / f"{name}.tif", folder / f"{name}.tif")
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a slide")
    write_synthetic_slide(make_slide(512, 512, mpp=1.0, seed=3, tissue=False, pen_marks=1), folder / "blank.tif")
    out = tmp_path / "pred"
    proc = _infer(work, folder, out)
    log = proc.stdout + proc.stderr
    assert "broken.tif" in log and "blank.tif" in log
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["test_001.tif", "test_002.tif"]
    for r in rows:
        assert float(r["normal"]) + float(r["tumor"]) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted"] in ("normal", "tumor") and int(r["n_patches"]) > 10
    skipped = {r["file"].rsplit("/", 1)[-1]: r["reason"] for r in csv.DictReader(open(out / "skipped.csv"))}
    assert set(skipped) == {"broken.tif", "blank.tif"}
    assert "Unsupported or missing image file" in skipped["broken.tif"]  # OpenSlide's own reason
    assert "no tissue found" in skipped["blank.tif"] and "bag is empty" in skipped["blank.tif"]
    from PIL import Image

    for r in rows:
        stem = r["file"].rsplit("/", 1)[-1][:-4]
        geo = json.loads((out / f"{stem}_attention.geojson").read_text())
        assert len(geo["features"]) == int(r["n_patches"])
        att = np.array([f["properties"]["measurements"]["attention"] for f in geo["features"]])
        assert att.sum() == pytest.approx(1.0, abs=1e-4)
        assert Image.open(out / f"{stem}_heatmap.png").size[0] > 0
        assert Image.open(out / f"{stem}_top_patches.png").size[0] > 0
    top = list(csv.DictReader(open(out / "top_patches.csv")))
    assert len(top) == 2 * 8 and top[0]["rank"] == "1"
    # the tifffile backend reads the same patches: the same slide probabilities
    out_t = tmp_path / "pred_tifffile"
    _infer(work, folder, out_t, "--wsi_backend", "tifffile", "--save_maps", "False")
    rows_t = list(csv.DictReader(open(out_t / "predictions.csv")))
    for a, b in zip(rows, rows_t):
        assert a["n_patches"] == b["n_patches"]
        assert float(a["tumor"]) == pytest.approx(float(b["tumor"]), abs=1e-5)
    assert not list(out_t.glob("*_heatmap.png"))


def test_feature_mode_trains_the_head_on_cached_features(trained, tmp_path):
    data, datalist, _, _ = trained
    work = tmp_path / "features"
    proc = run_bundle(
        ["run", "training", "--config_file", config_list(CFG / "train.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), "--datalist_file", str(datalist), *SMALL,
         "--feature_mode", "True", "--num_epochs", "4", "--val_interval", "2", "--bag_size", "32"]
    )
    assert "val_slide_auroc" in proc.stdout + proc.stderr
    n_slides = len(json.loads(datalist.read_text())["training"]) + len(json.loads(datalist.read_text())["validation"])
    feats = list((work / "cache" / "features").glob("*.pt"))
    assert len(feats) == n_slides
    f = torch.load(feats[0], weights_only=True)
    assert f.ndim == 2 and f.shape[1] == 128  # ResNet10 at width 0.25: 512 x 0.25 features
    state = torch.load(work / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("backbone.") for k in state)  # the frozen backbone is saved with the head


def test_graded_panda_layout_reports_quadratic_kappa(tmp_path):
    from medbundle.metrics import cohen_kappa_quadratic

    data = tmp_path / "panda"
    generate_panda(data, n_slides=18, size=(768, 1536), mpp=1.0, seed=2)
    datalist = write_datalist(panda_datalist(data, val_fraction=0.15, test_fraction=0.3, seed=0),
                              tmp_path / "datalist.json")
    work = tmp_path / "bundle"
    cfgs = [CFG / "train.json", CFG / "demo.json", CFG / "panda.json"]
    common = [*META, "--bundle_root", str(work), "--dataset_dir", str(data), "--datalist_file", str(datalist),
              *SMALL]
    proc = run_bundle(["run", "training", "--config_file", config_list(*cfgs), *common, "--num_epochs", "4"])
    assert "val_kappa" in proc.stdout + proc.stderr
    run_bundle(["run", "evaluating", "--config_file", config_list(cfgs[0], CFG / "evaluate.json", *cfgs[1:]),
                *common])
    m = json.loads((work / "eval" / "metrics.json").read_text())
    n_test = len(json.loads(datalist.read_text())["testing"])
    assert m["label_mode"] == "graded" and m["n_images"] == n_test
    cm = np.asarray(m["grade_confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == n_test
    truth = np.repeat(np.arange(6), cm.sum(1))
    pred = np.concatenate([np.repeat(np.arange(6), cm[i]) for i in range(6)])
    assert m["quadratic_kappa"] == pytest.approx(cohen_kappa_quadratic(truth, pred, 6))
    assert list(m["per_class"]) == [f"ISUP {g}" for g in range(6)]


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "infer")])
def test_config_properties(config, kind, trained, tmp_path):
    data, datalist, _, _ = trained
    assert missing_properties(
        CFG, config, kind, tmp_path,
        dataset_dir=str(data if kind == "train" else data / "testing" / "images"), datalist_file=str(datalist),
        cache_rate=0.0,
    ) == []


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    _, _, work, _ = trained
    proc = run_bundle(["verify_net_in_out", "network_def", "--config_file", str(CFG / "inference.json"),
                       "--meta_file", str(CFG / "metadata.json"), "--device", "cpu"])  # ResNet18, 224 px, as published
    assert "verified with no error" in proc.stdout + proc.stderr
    ts = tmp_path / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"),
                "--config_file", config_list(CFG / "inference.json", CFG / "demo.json"), *SMALL])
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CFG / "inference.json"), str(CFG / "demo.json")])
    parser["patch_size"] = 32
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    x = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-5)
        la, aa = scripted.forward_with_attention(x.unsqueeze(0))
        assert aa.shape == (1, 9) and float(aa.sum()) == pytest.approx(1.0, abs=1e-5)
