"""The trained demo bundles served by a real MONAI Label (0.8.5) server, ``monaibundle`` app, over HTTP.

MONAI Label pins packages that the main environment does not use (pydicom 2.4, ...), so it lives in its
own virtual environment: ``MEDBUNDLE_LABEL_VENV`` (default ``.venv-label`` in the repository); see
``docs/monailabel.md``. Without it these tests are skipped. The bundles are trained here (main
environment, ``python -m monai.bundle run training`` with the demo overlay), copied into the app's
``model/`` folder by :func:`medbundle.label.prepare_app`, and the server is started on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

from medbundle.label import make_demo_data, prepare_app, train_demo_bundle

VENV = Path(os.environ.get("MEDBUNDLE_LABEL_VENV", REPO / ".venv-label"))
PYTHON = VENV / "bin" / "python"
if not (VENV / "bin" / "monailabel").is_file():
    pytest.skip(f"MONAI Label is not installed in {VENV} (set MEDBUNDLE_LABEL_VENV; see docs/monailabel.md)",
                allow_module_level=True)

CXR = "chest_xray_classification"
CT = "ct_volume_classification"
DET = "lung_nodule_ct_detection"
MODELS = [CXR, CT, DET]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, params: dict | None = None, timeout: float = 600.0) -> dict:
    body = f"params={urllib.parse.quote(json.dumps(params or {}))}".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _studies(root: Path, data: dict[str, dict[str, Path]]) -> dict[str, str]:
    """A studies folder with one image per model; returns model -> image id."""
    import nibabel as nib

    studies = root / "studies"
    studies.mkdir()
    ids = {}
    png = sorted((data[CXR]["dataset_dir"] / "images").glob("*.png"))[0]
    (studies / "cxr_case.png").write_bytes(png.read_bytes())
    ids[CXR] = "cxr_case"
    vol = sorted((data[CT]["dataset_dir"] / "volumes").glob("*.nii.gz"))[0]
    (studies / "ct_case.nii.gz").write_bytes(vol.read_bytes())
    ids[CT] = "ct_case"
    mhd = sorted(data[DET]["dataset_dir"].rglob("*.mhd"))[0]
    from monai.transforms import LoadImage

    from medbundle.data.metaimage import luna16_readers

    img = LoadImage(image_only=True, reader=luna16_readers())(str(mhd))
    nib.save(nib.Nifti1Image(img.numpy(), img.affine.numpy()), studies / "det_case.nii.gz")
    ids[DET] = "det_case"
    return ids


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    data, works = {}, {}
    for name in MODELS:
        data[name] = make_demo_data(name, root / "data")
        works[name] = root / "work" / name
        train_demo_bundle(name, data[name], works[name])
    prefix = subprocess.run([str(PYTHON), "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    app = prepare_app(root / "app", prefix, works)
    ids = _studies(root, data)
    port = _free_port()
    log = open(root / "server.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        # the bin/monailabel wrapper runs whichever ``python`` is first on PATH: call the module instead
        [str(PYTHON), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(root / "studies"),
         "--conf", "models", ",".join(MODELS), "--conf", "sam2", "false", "--conf", "zoo_source", "local",
         "--conf", "preload", "false", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-6000:]}")
            try:
                info = _get(url + "/info/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    pytest.fail(f"MONAI Label did not answer:\n{(root / 'server.log').read_text()[-6000:]}")
                time.sleep(2)
        yield url, info, ids, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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
