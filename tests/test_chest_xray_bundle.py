"""End-to-end tests of bundles/chest_xray_classification through ``python -m monai.bundle``.

A tiny synthetic ChestX-ray14 set (PNG + DICOM, including MONOCHROME1) is trained for a few epochs at
a small size with the bundle's own demo overlay; evaluation and inference then run on the result.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import BUNDLES, config_list, missing_properties, run_bundle

from medbundle.io.datalist import write_datalist
from medbundle.xray.adapters import CHESTXRAY14_FINDINGS, chestxray14_datalist
from medbundle.xray.synthetic import generate_chestxray14

BUNDLE = BUNDLES / "chest_xray_classification"
CFG = BUNDLE / "configs"
META = ["--meta_file", str(CFG / "metadata.json"), "--logging_file", str(CFG / "logging.conf")]
TINY = ["--image_size", "48", "--num_epochs", "5", "--batch_size", "16", "--cache_rate", "1.0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Generate data, train, and return (data dir, bundle work dir, training stdout)."""
    root = tmp_path_factory.mktemp("cxr")
    data = root / "ChestXray14"
    generate_chestxray14(data, n_patients=270, size=96, n_dicom=10, seed=1, min_pos_per_split=3,
                         test_fraction=0.4)
    work = root / "bundle"
    proc = run_bundle(
        ["run", "training", "--config_file", config_list(CFG / "train.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), *TINY]
    )
    return data, work, proc.stdout + proc.stderr


def test_training_writes_best_checkpoint_and_validation_thresholds(trained):
    _, work, log = trained
    assert (work / "models" / "model.pt").is_file()
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("class_layers") for k in state)
    thr = json.loads((work / "models" / "thresholds.json").read_text())
    assert list(thr["thresholds"]) == CHESTXRAY14_FINDINGS
    assert "Youden" in thr["method"]
    assert "val_mean_auroc" in log


def test_evaluation_reports_auroc_with_ci_and_operating_points(trained):
    data, work, _ = trained
    run_bundle(
        ["run", "evaluating", "--config_file",
         config_list(CFG / "train.json", CFG / "evaluate.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), *TINY]
    )
    m = json.loads((work / "eval" / "metrics.json").read_text())
    assert m["split"] == "test"
    assert set(m["per_class"]) == set(CHESTXRAY14_FINDINGS)
    test_ids = set((data / "test_list.txt").read_text().split())
    assert m["n_images"] == len(test_ids)
    for name, c in m["per_class"].items():
        assert c["n_pos"] >= 3, name  # the generator guarantees positives in the test split
        assert c["auroc_ci_low"] <= c["auroc"] <= c["auroc_ci_high"], name
        assert 0.0 <= c["sensitivity"] <= 1.0 and 0.0 <= c["specificity"] <= 1.0
    assert m["thresholds_source"].endswith("thresholds.json")
    # a few CPU epochs at 48 px learn the synthetic findings well above chance; a broken pipeline
    # (labels misaligned with images, wrong activation, no learning) stays near 0.5
    assert m["mean_auroc"] > 0.7, m["mean_auroc"]
    assert (work / "eval" / "roc.png").stat().st_size > 10_000


def test_inference_writes_predictions_skips_unreadable_and_saves_gradcam(trained, tmp_path):
    data, work, _ = trained
    test_ids = sorted((data / "test_list.txt").read_text().split())[:6]
    folder = tmp_path / "incoming"
    folder.mkdir()
    n_ok = 0
    for name in test_ids:
        for src in (data / "images" / name, (data / "images" / name).with_suffix(".dcm")):
            if src.is_file():
                (folder / src.name).write_bytes(src.read_bytes())
                n_ok += 1
    assert any(p.suffix == ".dcm" for p in folder.iterdir()) or n_ok == 6
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a picture")
    (folder / "notdicom.dcm").write_text("plain text, no DICOM preamble")
    out = tmp_path / "pred"
    proc = run_bundle(
        ["run", "--config_file", config_list(CFG / "inference.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--input", str(folder), "--output_dir", str(out),
         "--image_size", "48", "--save_gradcam", "True"]
    )
    log = proc.stdout + proc.stderr
    assert "broken.png" in log and "notdicom.dcm" in log
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == n_ok
    assert {r["file"].rsplit("/", 1)[-1] for r in rows}.isdisjoint({"broken.png", "notdicom.dcm"})
    thr = json.loads((work / "models" / "thresholds.json").read_text())["thresholds"]
    for r in rows:
        for c in CHESTXRAY14_FINDINGS:
            p = float(r[c])
            assert 0.0 <= p <= 1.0
            assert int(r[f"{c}_positive"]) == int(p >= thr[c])
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert {s["file"].rsplit("/", 1)[-1] for s in skipped} == {"broken.png", "notdicom.dcm"}
    assert all(s["reason"] for s in skipped)
    assert len(list((out / "gradcam").glob("*.png"))) >= n_ok


def test_inference_from_datalist_matches_folder_order(trained, tmp_path):
    data, work, _ = trained
    dl = chestxray14_datalist(data, val_fraction=0.1, seed=0)
    dl["testing"] = dl["testing"][:4]
    path = write_datalist(dl, tmp_path / "datalist.json")
    out = tmp_path / "pred"
    run_bundle(
        ["run", "--config_file", config_list(CFG / "inference.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--input", str(path), "--output_dir", str(out), "--image_size", "48",
         "--save_gradcam", "False"]
    )
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"] for r in rows] == [d["image"] for d in dl["testing"]]
    assert not (out / "gradcam").exists()


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "infer")])
def test_config_properties(config, kind, trained, tmp_path):
    data, work, _ = trained
    assert missing_properties(
        CFG, config, kind, tmp_path,
        dataset_dir=str(data if kind == "train" else data / "images"), image_size=48, cache_rate=0.0,
    ) == []


def test_verify_net_in_out():
    proc = run_bundle(["verify_net_in_out", "network_def", "--config_file", str(CFG / "inference.json"),
                       "--meta_file", str(CFG / "metadata.json"), "--device", "cpu"])
    assert "verified with no error" in proc.stdout + proc.stderr


def test_torchscript_export_matches_eager(trained, tmp_path):
    _, work, _ = trained
    ts = tmp_path / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"), "--config_file", str(CFG / "inference.json")])
    from monai.networks.nets import DenseNet121

    eager = DenseNet121(spatial_dims=2, in_channels=1, out_channels=14)
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = eager(x), scripted(x)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.allclose(a, torch.zeros_like(a))


def test_onnx_export_matches_eager_with_dynamic_batch(trained, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9):
        pytest.importorskip("onnxscript")  # torch.onnx.export's default (dynamo) exporter needs it
    _, work, _ = trained
    path = tmp_path / "model.onnx"
    run_bundle(["onnx_export", "network_def", "--filepath", str(path), "--ckpt_file", str(work / "models" / "model.pt"),
                "--meta_file", str(CFG / "metadata.json"), "--config_file", str(CFG / "inference.json"),
                "--input_shape", "[2, 1, 48, 48]", "--converter_kwargs",
                "{'input_names': ['image'], 'output_names': ['logits'], "
                "'dynamic_axes': {'image': {0: 'batch'}, 'logits': {0: 'batch'}}}"])
    from monai.networks.nets import DenseNet121

    eager = DenseNet121(spatial_dims=2, in_channels=1, out_channels=14)
    eager.load_state_dict(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch in (1, 3):  # exported at batch 2: the batch axis is dynamic
        x = torch.rand(batch, 1, 48, 48, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = eager(x).numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        assert got.shape == (batch, 14)
        assert abs(got - expected).max() < 1e-4, abs(got - expected).max()
        assert abs(expected).max() > 1e-3


def test_training_with_mlflow_tracking_records_a_finished_run(trained, tmp_path):
    """``--tracking mlflow`` with a local SQLite store (no server); MLflow 3.13+ refuses ``file://`` stores."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    data, _, _ = trained
    work = tmp_path / "tracked"
    store = tmp_path / "store" / "mlruns.db"
    store.parent.mkdir()
    uri = "sqlite:///" + store.as_posix()  # sqlite:////abs/path/mlruns.db
    run_bundle(
        ["run", "training", "--config_file", config_list(CFG / "train.json", CFG / "demo.json"), *META,
         "--bundle_root", str(work), "--dataset_dir", str(data), "--image_size", "32", "--num_epochs", "1",
         "--batch_size", "16", "--cache_rate", "1.0", "--tracking", "mlflow", "--tracking_uri", uri,
         "--experiment_name", "cxr_tiny"],
        cwd=tmp_path,  # older MONAI keeps artifacts under ./mlruns
    )
    assert store.is_file()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cxr_tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"train_loss", "val_mean_auroc"} <= set(run.data.metrics)
    assert 0.0 <= run.data.metrics["val_mean_auroc"] <= 1.0
    assert run.data.metrics["train_loss"] > 0
    assert run.data.params["max_epochs"] == "1"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) >= 2  # logged every iteration
    # the executed config is kept as an artifact of the run
    assert any(a.path.startswith("config_") for a in client.list_artifacts(run.info.run_id))
