"""The trained demo bundles served by a real MONAI Label (0.8.5) server, ``monaibundle`` app, over HTTP.

MONAI Label pins packages that the main environment cannot share (pydicom 2.4, numpy < 2, ...), so it
lives in its own virtual environment: ``MEDBUNDLE_LABEL_VENV`` (default ``.venv-label`` in the
repository), made by ``medbundle label-env .venv-label`` (the README's test command does this); see
``docs/monailabel.md``. Without it these tests are skipped. The four bundles are trained here (main
environment, ``python -m monai.bundle run training`` with the demo recipes), laid out in the app's
``model/`` folder by :func:`medbundle.monailabel.app.demo_app`, and the server is started on 127.0.0.1 on a free
port. The tests call ``/info``, ``/infer`` for every bundle, ``PUT /datastore/label`` and ``/train``.

A second server serves the chest and CT classifiers from a real Orthanc (``--studies http://127.0.0.1:PORT/dicom-web``,
``tests/orthanc_server.py``): its datastore lists the series Orthanc holds, and ``/infer`` on a Series Instance UID
answers the probabilities of the bundle's own inference on the same DICOM files. Skipped without Orthanc.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO
from orthanc_server import ORTHANC, dicomweb_plugin, free_port, running_orthanc, stop_process

from medbundle.io.class_labels import read_class_label
from medbundle.monailabel.app import demo_app, server_command
from medbundle.xray.adapters import CHESTXRAY14_FINDINGS

VENV = Path(os.environ.get("MEDBUNDLE_LABEL_VENV", REPO / ".venv-label"))
if not (VENV / "bin" / "monailabel").is_file():
    pytest.skip(f"MONAI Label is not installed in {VENV} (medbundle label-env {VENV}; see docs/monailabel.md)",
                allow_module_level=True)

CXR = "chest_xray_classification"
CT = "ct_volume_classification"
DET = "lung_nodule_retinanet_detection"
WSI = "wsi_mil_classification"
CXR_DET = "chest_xray_lesion_detection"
MODELS = [CXR, CT, DET, WSI, CXR_DET]
N_TRAIN = 12  # labelled chest X-rays uploaded to the datastore for /train


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, params: dict | None = None, timeout: float = 600.0) -> dict:
    body = f"params={urllib.parse.quote(json.dumps(params or {}))}".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _put_label(url: str, image: str, path: Path) -> dict:
    """``PUT /datastore/label`` (multipart upload of one file), as the MONAI Label clients save a label."""
    boundary = "medbundle-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/json\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/datastore/label?image={image}&tag=final", data=body, method="PUT",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo bundles trained and laid out as a MONAI Label app with a studies folder (``demo_app``)."""
    root = tmp_path_factory.mktemp("label")
    return root, demo_app(root, VENV, MODELS, n_labelled=N_TRAIN)


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path) -> dict:
    """``/info/`` of a starting MONAI Label server; fails the test with its log if it exits or does not answer."""
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"MONAI Label exited ({proc.returncode}):\n{log.read_text()[-6000:]}")
        try:
            return _get(url + "/info/")
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.time() > deadline:
                pytest.fail(f"MONAI Label did not answer:\n{log.read_text()[-6000:]}")
            time.sleep(2)


def _server_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def server(trained):
    root, demo = trained
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(server_command(VENV, demo["app"], demo["studies"], MODELS, port=port),
                            stdout=log, stderr=subprocess.STDOUT, env=_server_env(), cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, _wait_for_server(proc, url, root / "server.log"), demo["ids"], root
    finally:
        stop_process(proc)
        log.close()


def _own_predictions(bundle: Path, source: Path, out: Path, *extra: str) -> dict[str, str]:
    """The row of ``predictions.csv`` that ``python -m monai.bundle run`` of the served bundle folder writes for
    ``source`` (main environment)."""
    import csv
    import sys

    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle), "--input", str(source),
                    "--output_dir", str(out), *extra], check=True, capture_output=True, timeout=600)
    (row,) = list(csv.DictReader(open(out / "predictions.csv")))
    return row


def test_info_lists_each_bundle_with_task_and_labels(server):
    _, info, _, _ = server
    models = info["models"]
    assert set(MODELS) <= set(models)
    assert models[CXR]["type"] == "classification"
    assert models[CXR]["dimension"] == 2
    assert len(models[CXR]["labels"]) == 14 and "cardiomegaly" in models[CXR]["labels"]
    assert models[CT]["type"] == "classification" and models[CT]["dimension"] == 3
    assert set(models[CT]["labels"]) == {"normal", "consolidation"}
    assert models[DET]["type"] == "detection" and models[DET]["labels"] == {"nodule": 0}
    assert CXR in info["trainers"]


@pytest.mark.parametrize(("model", "n_classes"), [(CXR, 14), (CT, 2)])
def test_infer_returns_class_scores(server, model, n_classes):
    url, _, ids, _ = server
    res = _post(f"{url}/infer/{model}?image={ids[model]}&output=json")
    scores = res["prediction"]
    assert len(scores) == n_classes
    assert all(0.0 <= s["score"] <= 1.0 for s in scores)
    if model == CT:  # softmax over the classes
        assert abs(sum(s["score"] for s in scores) - 1.0) < 1e-4


def test_infer_returns_nodule_boxes_with_scores(server):
    url, _, ids, _ = server
    # default answer (MONAI Label's detection writer): voxel boxes and labels
    res = _post(f"{url}/infer/{DET}?image={ids[DET]}&output=json")
    assert len(res["box"]) == len(res["label"]) > 0
    # with result_write_to_file false: the bundle's DetectionResultd answer, scores included
    res = _post(f"{url}/infer/{DET}?image={ids[DET]}&output=json", {"result_write_to_file": False})
    n = len(res["box"])
    assert 0 < n <= 20  # detections_per_img of the demo recipe
    assert len(res["score"]) == len(res["box_world"]) == len(res["label"]) == n
    assert all(0.0 <= s <= 1.0 for s in res["score"]) and res["score"] == sorted(res["score"], reverse=True)
    assert all(len(b) == 6 and b[3] > 0 and b[4] > 0 and b[5] > 0 for b in res["box_world"])


def test_infer_returns_radiograph_lesion_boxes_with_scores(server):
    url, _, ids, _ = server
    res = _post(f"{url}/infer/{CXR_DET}?image={ids[CXR_DET]}&output=json", {"result_write_to_file": False})
    n = len(res["box"])
    assert 0 < n <= 20  # detections_per_img of the demo recipe
    assert len(res["score"]) == len(res["box_image"]) == len(res["label"]) == n
    assert res["box_mm"] is None  # a PNG study says nothing about its pixel spacing
    assert all(0.0 <= s <= 1.0 for s in res["score"]) and res["score"] == sorted(res["score"], reverse=True)
    assert all(len(b) == 4 and b[2] > b[0] and b[3] > b[1] for b in res["box_image"])
    assert set(res["label"]) <= {0}


def test_infer_returns_the_slide_score_of_the_bundles_own_inference(server, tmp_path):
    url, _, ids, root = server
    res = _post(f"{url}/infer/{WSI}?image={ids[WSI]}&output=json")
    scores = {s["label"]: s["score"] for s in res["prediction"]}
    assert set(scores) == {"normal", "tumor"}
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    # the same slide through the same model folder with `python -m monai.bundle run` (main environment):
    # MONAI Label must answer what the bundle itself writes to predictions.csv
    row = _own_predictions(root / "app" / "model" / WSI, root / "studies" / "wsi_case.tif", tmp_path / "pred",
                           "--save_maps", "false")
    assert scores["tumor"] == pytest.approx(float(row["tumor"]), abs=1e-4)
    assert scores["normal"] == pytest.approx(float(row["normal"]), abs=1e-4)


def test_train_runs_the_bundle_trainer_on_labels_saved_in_the_datastore(server):
    url, info, ids, root = server
    assert CXR in info["trainers"]
    assert len(ids[f"{CXR}:labelled"]) == N_TRAIN
    for image, findings in ids[f"{CXR}:labelled"]:
        label = root / "labels" / f"{image}.json"  # written by demo_app with write_class_label
        assert read_class_label(label, CHESTXRAY14_FINDINGS) == [float(f in findings) for f in CHESTXRAY14_FINDINGS]
        assert _put_label(url, image, label)["label"] == image
    ckpt = root / "app" / "model" / CXR / "models" / "model.pt"
    before = ckpt.stat().st_mtime_ns
    params = {"max_epochs": 2, "device": "cpu", "val_split": 0.25, "multi_gpu": False, "pretrained": True}
    req = urllib.request.Request(f"{url}/train/{CXR}", data=json.dumps(params).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["status"] in ("SUBMITTED", "RUNNING", "DONE")
    deadline = time.time() + 900
    while True:  # GET /train/ reports the last training task; it runs in a subprocess of the server
        task = _get(f"{url}/train/")
        if task["status"] in ("DONE", "ERROR", "STOPPED") or time.time() > deadline:
            break
        time.sleep(3)
    log = "\n".join(task.get("details", []))
    assert task["status"] == "DONE", log
    train_log = (root / "server.log").read_text()
    assert f"Total Records in Dataset: {N_TRAIN}" in train_log
    assert "Total Records for Training: 9" in train_log  # val_split 0.25 of 12 labelled images
    # MONAI's trainer ran 2 epochs on them and the checkpoint saver rewrote the served model
    # ("train_loss" used to be read from monai.bundle's echo of the train#handlers override, which it now
    # shortens; the demo recipe does not log per-iteration losses)
    assert "SupervisedTrainer - INFO - Epoch[2] Complete" in train_log
    assert ckpt.stat().st_mtime_ns > before
    # and the server answers with the retrained weights
    res = _post(f"{url}/infer/{CXR}?image={ids[CXR]}&output=json")
    assert len(res["prediction"]) == 14


# ------------------------------------------------------------------------------ studies held in a PACS (DICOMweb)
DICOMWEB_MODELS = [CXR, CT]


@pytest.fixture(scope="module")
def dicomweb_server(trained, tmp_path_factory):
    """MONAI Label with ``--studies http://127.0.0.1:PORT/dicom-web`` of a real Orthanc holding a DX radiograph
    (MONOCHROME1, windowed: one of the chest demo data's DICOM files) and the CT study volume written as a CT
    series; the chest and CT classifiers trained for the module's other server, served by one more server."""
    import nibabel as nib
    import numpy as np
    import pydicom

    from medbundle.ct.synthetic import write_ct_dicom_series
    from medbundle.monailabel.app import env_prefix, prepare_app
    from medbundle.monailabel.dicomweb import dicomweb_server_env

    if not ORTHANC.is_file() or dicomweb_plugin() is None:
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed ({ORTHANC}; apt-get install orthanc "
                    "orthanc-dicomweb)")
    if not (VENV / "bin" / "itkimage2segimage").is_file():  # else MONAI Label downloads dcmqi when it starts
        pytest.skip(f"dcmqi is not installed in {VENV} (medbundle label-env installs it; or {VENV}/bin/pip install "
                    "dcmqi)")
    root, demo = trained
    base = tmp_path_factory.mktemp("label_dicomweb")
    dicoms = sorted((root / "data" / "ChestXray14" / "images").glob("*.dcm"))
    dx = next(p for p in dicoms if pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation
              == "MONOCHROME1")
    volume = nib.load(demo["studies"] / f"{demo['ids'][CT]}.nii.gz")
    ct = write_ct_dicom_series(base / "ct", np.asarray(volume.dataobj).astype(np.int16), volume.affine, "label-ct",
                               np.random.default_rng(0))
    series = {CXR: str(pydicom.dcmread(dx).SeriesInstanceUID), CT: str(pydicom.dcmread(ct[0]).SeriesInstanceUID)}
    with running_orthanc(base / "orthanc") as orthanc:
        orthanc.upload([dx, *ct])
        app = prepare_app(base / "app", env_prefix(VENV), {n: root / "work" / n for n in DICOMWEB_MODELS})
        port = free_port()
        log = open(base / "server.log", "w")
        proc = subprocess.Popen(server_command(VENV, app, orthanc.dicomweb, DICOMWEB_MODELS, port=port),
                                stdout=log, stderr=subprocess.STDOUT,
                                env=dicomweb_server_env(base / "cache", base=_server_env()), cwd=base)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_server(proc, url, base / "server.log")
            yield url, series, {CXR: dx, CT: base / "ct"}, base
        finally:
            stop_process(proc)
            log.close()


def test_dicomweb_datastore_lists_the_series_held_in_orthanc(dicomweb_server):
    url, _, _, _ = dicomweb_server
    assert _get(f"{url}/datastore/?output=stats", timeout=60)["total"] == 2  # the DX and the CT series


@pytest.mark.parametrize("model", DICOMWEB_MODELS)
def test_dicomweb_infer_answers_the_bundles_own_probabilities(dicomweb_server, tmp_path, model):
    """``/infer`` on a Series Instance UID: MONAI Label retrieves the series from Orthanc and answers the class
    probabilities that the bundle's own inference writes for the same DICOM files (the radiograph read through
    its VOI window and MONOCHROME1 inversion, the CT series as one volume)."""
    url, series, sources, base = dicomweb_server
    res = _post(f"{url}/infer/{model}?image={series[model]}&output=json")
    scores = {s["label"]: s["score"] for s in res["prediction"]}
    row = _own_predictions(base / "app" / "model" / model, sources[model], tmp_path / "pred")
    own = {k.lower(): float(v) for k, v in row.items() if k not in ("file", "note", "predicted")
           and not k.endswith("_positive")}
    assert set(scores) == set(own) and len(scores) == (14 if model == CXR else 2)
    for name, value in own.items():
        assert scores[name] == pytest.approx(value, abs=2e-6), name  # the CSV holds 6 decimals
