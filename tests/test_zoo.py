"""Model-zoo checks (``medbundle verify``), packaging (``medbundle package``), download and safe extraction."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import shutil
import threading
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, run_bundle

from medbundle.cli import main as cli_main
from medbundle.zoo import (
    ChecksumError,
    UnsafeArchiveError,
    check_changelog,
    check_package,
    check_required_files,
    safe_extract,
    validate_metadata,
    verify_bundle,
)

ALL = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))
CT = "ct_volume_classification"
CT_VERSION = json.loads((BUNDLES / CT / "configs" / "metadata.json").read_text())["version"]
SMALL_CT = {"resnet_depth": 10, "widen_factor": 0.5}


@pytest.mark.parametrize("name", ALL)
def test_verify_passes_for_every_bundle(name, tmp_path):
    results = verify_bundle(BUNDLES / name, workdir=tmp_path)
    names = [r.name for r in results]
    assert names == ["required files", "version in changelog", "metadata schema", "verify_net_in_out",
                     "TorchScript export", "properties (train)", "properties (infer)"]
    assert all(r.ok for r in results), [(r.name, r.message) for r in results if not r.ok]
    if "detection" in name:
        assert "detector forward check" in results[3].message


def _broken_copy(tmp_path):
    dst = tmp_path / CT
    shutil.copytree(BUNDLES / CT, dst, ignore=shutil.ignore_patterns("models", "__pycache__"))
    return dst, json.loads((dst / "configs" / "metadata.json").read_text())


def test_verify_reports_broken_bundles(tmp_path, capsys):
    bundle, meta = _broken_copy(tmp_path)
    res = check_changelog({**meta, "version": "9.9.0"})
    assert not res.ok and "'9.9.0' is not listed in 'changelog'" in res.message
    (bundle / "LICENSE").unlink()
    res = check_required_files(bundle)
    assert not res.ok and "LICENSE" in res.message
    bad = json.loads(json.dumps(meta))
    bad["network_data_format"]["inputs"]["image"]["dtype"] = "float31"
    del bad["copyright"]
    res = validate_metadata(bad)
    assert not res.ok
    assert "network_data_format/inputs/image/dtype" in res.message and "'copyright' is a required" in res.message
    # through the command: the version bump without a changelog entry fails the run with a clear line
    meta["version"] = "9.9.0"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert cli_main(["verify", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  required files" in out and "FAIL  version in changelog" in out and "FAILED:" in out


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    from medbundle.networks import ResNetClassifier

    root = tmp_path_factory.mktemp("zoo")
    weights = root / "weights" / CT
    weights.mkdir(parents=True)
    torch.manual_seed(0)
    net = ResNetClassifier(depth=10, num_classes=3, widen_factor=0.5)
    torch.save(net.state_dict(), weights / "model.pt")
    out = root / "zoo"
    assert cli_main(["package", *ALL, "--out", str(out),
                     "--with-weights", str(root / "weights")]) == 0
    return root, out


def test_package_writes_zips_and_model_info_with_sha256(packaged):
    _, out = packaged
    info = json.loads((out / "model_info.json").read_text())
    versions = {n: json.loads((BUNDLES / n / "configs" / "metadata.json").read_text())["version"] for n in ALL}
    assert set(info) == {f"{n}_v{v}" for n, v in versions.items()}  # every bundle, detectors included
    for key, entry in info.items():
        z = out / f"{key}.zip"
        assert entry["source"] == z.name and entry["hash_type"] == "sha256"
        assert entry["checksum"] == hashlib.sha256(z.read_bytes()).hexdigest()
        names = zipfile.ZipFile(z).namelist()
        top = key.rsplit("_v", 1)[0]
        assert all(n.startswith(f"{top}/") for n in names)
        for need in ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE"):
            assert f"{top}/{need}" in names
    assert f"{CT}/models/model.pt" in zipfile.ZipFile(out / f"{CT}_v{CT_VERSION}.zip").namelist()


@pytest.fixture
def server(packaged):
    _, out = packaged
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_checksum_and_inference(packaged, server, tmp_path):
    _, out = packaged
    dl = tmp_path / "downloaded"
    run_bundle(["download", "--name", CT, "--url", f"{server}/{CT}_v{CT_VERSION}.zip", "--bundle_dir", str(dl),
                "--progress", "False"])
    bundle = dl / CT
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "configs" / "inference.json").is_file()
    # monai.bundle download keeps the zip as <name>.zip: check it against the index before use
    assert check_package(dl / f"{CT}.zip", out / "model_info.json") == f"{CT}_v{CT_VERSION}"
    # a corrupted copy is rejected
    bad = tmp_path / f"{CT}_v{CT_VERSION}.zip"
    data = bytearray((out / bad.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match"):
        check_package(bad, out / "model_info.json")
    assert cli_main(["verify", str(bad), "--model-info", str(out / "model_info.json")]) == 1
    # the downloaded bundle runs inference on a tiny synthetic CT
    vol = np.full((40, 40, 30), -1000, dtype=np.int16)
    vol[8:32, 8:32, 5:25] = -800
    vol[14:20, 14:20, 12:18] = 40
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), src)
    pred = tmp_path / "pred"
    cfg = bundle / "configs"
    run_bundle(["run", "--config_file", str(cfg / "inference.json"), "--meta_file", str(cfg / "metadata.json"),
                "--logging_file", str(cfg / "logging.conf"), "--bundle_root", str(bundle), "--input", str(src),
                "--output_dir", str(pred), "--resnet_depth", "10", "--widen_factor", "0.5",
                "--patch_size", "[32, 32, 32]", "--save_gradcam", "False"])
    rows = list(csv.DictReader(open(pred / "predictions.csv")))
    assert len(rows) == 1 and rows[0]["file"].endswith("scan.nii.gz")
    probs = [float(rows[0][c]) for c in ("normal", "nodule", "consolidation")]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)


def _evil_zip(path, member):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil_bundle/configs/metadata.json", "{}")
        zf.writestr(member, "owned")
    return path


@pytest.mark.parametrize("member", ["../escaped.txt", "evil_bundle/../../escaped.txt", "/tmp/abs_escaped.txt",
                                    "C:/escaped.txt"])
def test_path_traversal_is_rejected(member, tmp_path):
    from monai.apps.utils import extractall

    archive = _evil_zip(tmp_path / "evil.zip", member)
    dest = tmp_path / "a" / "b"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not any(dest.rglob("*.json"))  # nothing is written from a bad archive
    if member.startswith("C:"):
        return  # a drive letter is an ordinary name on POSIX for MONAI; ours rejects it everywhere
    # what `monai.bundle download` uses (monai.apps.utils.extractall) rejects it as well
    with pytest.raises(ValueError, match="[Uu]nsafe"):
        extractall(archive, tmp_path / "m" / "n", has_base=True)
    assert not (tmp_path / "m" / "escaped.txt").exists()


def test_safe_extract_extracts_a_package(packaged, tmp_path):
    _, out = packaged
    written = safe_extract(out / f"{CT}_v{CT_VERSION}.zip", tmp_path)
    assert (tmp_path / CT / "configs" / "metadata.json") in written


def test_package_leaves_out_the_resume_checkpoint(tmp_path):
    """models/last_epoch.pt (optimizer, random states) belongs to one training run, not to a shared bundle."""
    bundle = tmp_path / CT
    shutil.copytree(BUNDLES / CT, bundle, ignore=shutil.ignore_patterns("models", "__pycache__", "cache", "eval"))
    (bundle / "models").mkdir()
    torch.save({"w": torch.zeros(1)}, bundle / "models" / "model.pt")
    torch.save({"epoch": 3}, bundle / "models" / "last_epoch.pt")
    assert cli_main(["package", str(bundle), "--out", str(tmp_path / "zoo")]) == 0
    names = zipfile.ZipFile(tmp_path / "zoo" / f"{CT}_v{CT_VERSION}.zip").namelist()
    assert f"{CT}/models/model.pt" in names and f"{CT}/models/last_epoch.pt" not in names
