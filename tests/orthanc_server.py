"""A real Orthanc PACS with its DICOMweb plugin, started by the tests on 127.0.0.1 (system packages ``orthanc`` and
``orthanc-dicomweb``; the README's test command installs them).

:func:`running_orthanc` writes a configuration with free HTTP and DICOM ports and the storage and index in a
temporary folder, starts ``/usr/sbin/Orthanc``, waits until ``/system`` answers, and stops it afterwards, also when
the test fails. A test module starts one per module::

    @pytest.fixture(scope="module")
    def orthanc(tmp_path_factory):
        with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
            yield server

Call :func:`require_orthanc` first: it skips the module, with the reason, when Orthanc or the plugin is absent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC = Path(os.environ.get("MEDBUNDLE_ORTHANC", "/usr/sbin/Orthanc"))
#: where Debian's orthanc-dicomweb package puts the plugin (older packages: /usr/lib/orthanc)
DICOMWEB_PLUGINS = (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"))


def dicomweb_plugin() -> Path | None:
    return next((p for p in DICOMWEB_PLUGINS if p.is_file()), None)


def require_orthanc() -> None:
    """Skip the calling test module when Orthanc or its DICOMweb plugin is not installed."""
    if not ORTHANC.is_file():
        pytest.skip(f"Orthanc is not installed ({ORTHANC} absent; apt-get install orthanc orthanc-dicomweb)",
                    allow_module_level=True)
    if dicomweb_plugin() is None:
        pytest.skip(f"the Orthanc DICOMweb plugin is not installed (none of {[str(p) for p in DICOMWEB_PLUGINS]}; "
                    "apt-get install orthanc-dicomweb)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a server the test started: SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class OrthancServer:
    """A started Orthanc: ``url`` (REST API), ``dicomweb`` (DICOMweb root), ``log`` (its output)."""

    url: str
    dicomweb: str
    log: Path
    root: Path

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, paths: Iterable[str | os.PathLike]) -> list[dict]:
        """``POST /instances`` of each DICOM file; returns Orthanc's answers (``ID``, ``ParentStudy``, ``Status``)."""
        out = []
        for path in paths:
            req = urllib.request.Request(self.url + "/instances", data=Path(path).read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"{path}: Orthanc did not store it: {answer}")
            out.append(answer)
        return out

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.is_file() else ""


@contextmanager
def running_orthanc(root: str | os.PathLike, timeout: float = 60.0) -> Iterator[OrthancServer]:
    """Start Orthanc with its storage under ``root`` on free ports; stop it when the block ends."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plugin = dicomweb_plugin()
    if plugin is None:
        raise FileNotFoundError(f"no Orthanc DICOMweb plugin in {[str(p) for p in DICOMWEB_PLUGINS]}")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "medbundle-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "MEDBUNDLE",
        "RemoteAccessAllowed": False,  # 127.0.0.1 only
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=root)
    url = f"http://127.0.0.1:{http_port}"
    server = OrthancServer(url=url, dicomweb=url + "/dicom-web", log=log_path, root=root)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({proc.returncode}):\n{server.log_tail()}")
            try:
                server.get("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    raise RuntimeError(f"Orthanc did not answer on {url} within {timeout:.0f} s:\n"
                                       f"{server.log_tail()}") from None
                time.sleep(0.3)
        plugins = server.get("/plugins")
        if "dicom-web" not in plugins:
            raise RuntimeError(f"Orthanc started without its DICOMweb plugin (plugins: {plugins}):\n"
                               f"{server.log_tail()}")
        yield server
    finally:
        stop_process(proc)
        log.close()
