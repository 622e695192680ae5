"""End-to-end tests of bundles/ct_volume_classification through ``python -m monai.bundle``.

The tests train a binary normal-vs-nodule model (a 3-30 mm nodule somewhere in a chest volume, the hard part of
volume classification) with the bundle's demo overlay and ``--class_names``; the three-class task is the demo's.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, config_list, missing_properties, run_bundle

from medbundle.ct.adapters import synthetic_ct_datalist
from medbundle.ct.synthetic import generate_ct_dataset
from medbundle.io.datalist import write_datalist
from medbundle.networks import ResNetClassifier

BUNDLE = BUNDLES / "ct_volume_classification"
CFG = BUNDLE / "configs"
META = ["--meta_file", str(CFG / "metadata.json"), "--logging_file", str(CFG / "logging.conf")]
CLASSES = ["normal", "nodule"]
NAMES = ["--class_names", repr(CLASSES)]
SEED = 2
TINY = ["--num_epochs", "16", "--val_interval", "2", "--patches_per_volume", "4", "--seed", str(SEED), *NAMES]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    data = root / "ct_volumes"
    summary = generate_ct_dataset(data, n_volumes=64, shape=(72, 72, 48), class_names=tuple(CLASSES),
                                  prevalences={"normal": 0.5, "nodule": 0.5}, n_dicom_series=3, seed=SEED,
                                  min_per_class=3)
    datalist = write_datalist(synthetic_ct_datalist(data, val_fraction=0.2, seed=SEED), root / "datalist.json")
    work = root / "bundle"
    proc = run_bundle(
        ["run", "training", "--config_file", config_list(CFG / "train.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), "--datalist_file", str(datalist), *TINY]
    )
    return data, datalist, work, summary, proc.stdout + proc.stderr


def test_training_checkpoints_best_auroc(trained):
    _, _, work, _, log = trained
    assert (work / "models" / "model.pt").is_file()
    assert "val_mean_auroc" in log
    thr = json.loads((work / "models" / "thresholds.json").read_text())
    assert list(thr["thresholds"]) == CLASSES


def test_evaluation_reports_auroc_ci_confusion_matrix(trained):
    data, datalist, work, _, _ = trained
    run_bundle(
        ["run", "evaluating", "--config_file",
         config_list(CFG / "train.json", CFG / "evaluate.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), "--datalist_file", str(datalist), *NAMES]
    )
    m = json.loads((work / "eval" / "metrics.json").read_text())
    n_test = len(json.loads(datalist.read_text())["testing"])
    assert m["n_images"] == n_test
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == n_test
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n_test)
    for name in CLASSES:
        c = m["per_class"][name]
        assert c["auroc_ci_low"] <= c["auroc"] <= c["auroc_ci_high"]
        assert 0 <= c["sensitivity"] <= 1 and 0 <= c["specificity"] <= 1
    # sixteen CPU epochs find the nodules: test nodule AUROC 0.983 on this seed when this test was written (0.927,
    # 0.950, 0.983 on data/training seeds 0, 1, 2). The recipe before 0.3.0 (training patches centred on the
    # nodule, lesion_margin 0, and the strictly best validation epoch kept) scored 0.850 here (0.909, 0.917 on
    # seeds 0, 1), and a broken pipeline (labels not aligned with volumes, patches outside the body, wrong
    # aggregation) stays near 0.5.
    assert m["per_class"]["nodule"]["auroc"] >= 0.93, m["per_class"]


def _infer(work, source, out, extra=()):
    return run_bundle(
        ["run", "--config_file", config_list(CFG / "inference.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--input", str(source), "--output_dir", str(out), *NAMES, *extra]
    )


def test_inference_dicom_series_equals_nifti_and_gradcam_is_aligned(trained, tmp_path):
    data, _, work, summary, _ = trained
    case = summary["dicom_cases"][0]
    series = data / "dicom" / case
    nifti = data / "volumes" / f"{case}.nii.gz"
    out_d, out_n = tmp_path / "dicom", tmp_path / "nifti"
    _infer(work, series, out_d, ["--save_gradcam", "False"])
    _infer(work, nifti, out_n, ["--save_gradcam", "True"])
    row_d = next(csv.DictReader(open(out_d / "predictions.csv")))
    row_n = next(csv.DictReader(open(out_n / "predictions.csv")))
    probs_d = np.array([float(row_d[c]) for c in CLASSES])
    probs_n = np.array([float(row_n[c]) for c in CLASSES])
    assert probs_d.sum() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(probs_d, probs_n, atol=2e-3)
    assert row_d["predicted"] == row_n["predicted"]
    cams = list((out_n / "gradcam").glob("*.nii.gz"))
    assert len(cams) == 1 and row_n["predicted"] in cams[0].name
    cam, src = nib.load(cams[0]), nib.load(nifti)
    assert cam.shape[:3] == src.shape[:3]
    np.testing.assert_allclose(cam.affine, src.affine, atol=1e-3)
    values = np.asarray(cam.dataobj)
    assert values.min() >= -1e-4 and values.max() <= 1 + 1e-4 and values.std() > 0


def test_metaimage_input_equals_nifti(trained, tmp_path):
    """The same scan as MetaImage (LPS header, as LUNA16 writes it) and as NIfTI gives the same prediction."""
    from medbundle.io.metaimage import write_mhd

    data, _, work, summary, _ = trained
    case = summary["dicom_cases"][0]
    img = nib.load(data / "volumes" / f"{case}.nii.gz")
    aff = img.affine
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
    folder = tmp_path / "mhd"
    folder.mkdir()
    write_mhd(folder / f"{case}.mhd", np.asarray(img.dataobj), spacing, flip @ aff[:3, 3],
              direction=flip @ (aff[:3, :3] / spacing))
    out_m, out_n = tmp_path / "pm", tmp_path / "pn"
    _infer(work, folder, out_m, ["--save_gradcam", "False"])
    _infer(work, data / "volumes" / f"{case}.nii.gz", out_n, ["--save_gradcam", "False"])
    row_m = next(csv.DictReader(open(out_m / "predictions.csv")))
    row_n = next(csv.DictReader(open(out_n / "predictions.csv")))
    assert row_m["file"].endswith(".mhd")
    np.testing.assert_allclose([float(row_m[c]) for c in CLASSES], [float(row_n[c]) for c in CLASSES], atol=2e-3)


def test_small_volume_is_padded_and_classified_and_bad_file_is_skipped(trained, tmp_path):
    _, _, work, _, _ = trained
    folder = tmp_path / "in"
    folder.mkdir()
    small = np.full((12, 10, 6), -1000, dtype=np.int16)
    small[3:9, 3:8, 1:5] = 40
    nib.save(nib.Nifti1Image(small, np.diag([2.0, 2.0, 2.0, 1.0])), folder / "small.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    proc = _infer(work, folder, out, ["--save_gradcam", "False"])
    assert "broken.nii.gz" in proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["small.nii.gz"]
    assert rows[0]["predicted"] in CLASSES
    assert list(csv.DictReader(open(out / "skipped.csv")))[0]["file"].endswith("broken.nii.gz")


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "infer")])
def test_config_properties(config, kind, trained, tmp_path):
    data, datalist, _, _, _ = trained
    assert missing_properties(
        CFG, config, kind, tmp_path,
        dataset_dir=str(data if kind == "train" else data / "volumes"), datalist_file=str(datalist),
        cache_rate=0.0, class_names=CLASSES,
    ) == []


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    _, _, work, _, _ = trained
    over = ["--resnet_depth", "10", "--widen_factor", "0.5"]
    proc = run_bundle(["verify_net_in_out", "network_def", "--config_file", str(CFG / "inference.json"),
                       "--meta_file", str(CFG / "metadata.json"), "--device", "cpu", *over])  # 3 classes, as published
    assert "verified with no error" in proc.stdout + proc.stderr
    ts = tmp_path / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"), "--config_file", str(CFG / "inference.json"), *over, *NAMES])
    eager = ResNetClassifier(depth=10, num_classes=len(CLASSES), widen_factor=0.5)
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-5)


def test_onnx_export_matches_eager_with_dynamic_batch(trained, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9):
        pytest.importorskip("onnxscript")  # torch.onnx.export's default (dynamo) exporter needs it
    _, _, work, _, _ = trained
    path = tmp_path / "model.onnx"
    # gradient checkpointing (a training-only path) is switched on to show it does not get in the way of export
    run_bundle(["onnx_export", "network_def", "--filepath", str(path), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"), "--config_file", str(CFG / "inference.json"),
                "--resnet_depth", "10", "--widen_factor", "0.5", *NAMES, "--network_def#gradient_checkpointing", "True",
                "--input_shape", "[2, 1, 32, 32, 32]", "--converter_kwargs",
                "{'input_names': ['image'], 'output_names': ['logits'], "
                "'dynamic_axes': {'image': {0: 'batch'}, 'logits': {0: 'batch'}}}"])
    eager = ResNetClassifier(depth=10, num_classes=len(CLASSES), widen_factor=0.5)
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # exported at batch 2: the batch axis is dynamic
        x = torch.rand(batch, 1, 32, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = eager(x).numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        assert got.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        assert np.abs(expected).max() > 1e-3


@pytest.mark.parametrize("depth", [10, 18, 50])
def test_gradient_checkpointing_gives_same_loss_and_gradients(depth):
    torch.manual_seed(0)
    plain = ResNetClassifier(depth=depth, num_classes=3, widen_factor=0.25)
    ckpt = ResNetClassifier(depth=depth, num_classes=3, widen_factor=0.25, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 32, 32, 32)
    y = torch.tensor([0, 2])
    losses, grads = [], []
    for net in (plain, ckpt):
        net.train()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)
    assert any(g.abs().sum() > 0 for g in grads[1].values())
