"""Model-zoo checks, packaging and safe extraction of MONAI bundles.

``verify_bundle`` runs the checks the MONAI model zoo's CI runs on a bundle: required files, ``version`` listed
in ``changelog``, metadata against a JSON schema shipped with this package (written from the MONAI Bundle
specification, so nothing is downloaded), the network's input/output shapes (``verify_net_in_out``; detectors,
whose outputs are dicts of per-level lists, get an equivalent forward check), TorchScript export and reload, and
MONAI's property checks of the train and inference configs on tiny synthetic data.

``package_bundles`` writes ``<name>_v<version>.zip`` per bundle and a ``model_info.json`` index with SHA-256
checksums; ``check_package`` verifies a zip against that index and ``safe_extract`` unpacks it without path
traversal.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from medbundle.bundle import RUN_STATE_FILES
from medbundle.recipes import VerifyProfile, get_recipe

__all__ = [
    "CheckResult",
    "ChecksumError",
    "UnsafeArchiveError",
    "check_changelog",
    "check_package",
    "check_required_files",
    "load_metadata_schema",
    "package_bundles",
    "safe_extract",
    "sha256sum",
    "validate_metadata",
    "verify_bundle",
]

REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md")
PREFERRED_FILES = ("models/model.pt",)
# what a package carries: the bundle's own content, never caches or run outputs
PACKAGE_ITEMS = ("configs", "docs", "LICENSE", "models", "scripts")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed member timestamps: the same bundle gives the same zip and checksum


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder (or is a link / device)."""


class ChecksumError(ValueError):
    """A package's SHA-256 does not match its ``model_info.json`` entry."""


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str = ""
    seconds: float = 0.0




# ---------------------------------------------------------------------------------------------------- utilities


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_metadata_schema() -> dict:
    """The bundle metadata JSON schema shipped in ``medbundle/schemas``."""
    text = resources.files("medbundle").joinpath("schemas/metadata_schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _member_target(name: str, root: Path) -> Path:
    """Where member ``name`` would land under ``root``; raise for absolute, drive-letter or ``..`` paths."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"unsafe archive member name {name!r}")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]) or ".." in posix.parts:
        raise UnsafeArchiveError(f"unsafe archive member {name!r}: absolute path or '..' would leave {root}")
    target = (root / Path(*posix.parts)).resolve() if posix.parts else root
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"unsafe archive member {name!r} resolves outside {root}")
    return target


def safe_extract(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract zip ``archive`` into ``dest``; every member is checked before anything is written.

    Absolute paths, drive letters, ``..`` components and symbolic links are rejected with
    :class:`UnsafeArchiveError`, and nothing is extracted from such an archive.
    """
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        plan = []
        for m in members:
            mode = m.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"archive {archive} contains a symbolic link: {m.filename!r}")
            plan.append((m, _member_target(m.filename, root)))
        for m, target in plan:
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    return written


# -------------------------------------------------------------------------------------------- static checks


def _load_meta(bundle: Path) -> dict:
    with open(bundle / "configs" / "metadata.json") as f:
        return json.load(f)


def check_required_files(bundle: Path) -> CheckResult:
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    if missing:
        return CheckResult("required files", False, f"missing in {bundle}: {', '.join(missing)}")
    absent = [f for f in PREFERRED_FILES if not (bundle / f).is_file()]
    msg = ", ".join(REQUIRED_FILES)
    if absent:
        msg += f" (preferred, not present: {', '.join(absent)}; training writes it, package --with-weights adds it)"
    return CheckResult("required files", True, msg)


def check_changelog(meta: dict) -> CheckResult:
    version = meta.get("version")
    changelog = meta.get("changelog")
    if not isinstance(version, str) or not version:
        return CheckResult("version in changelog", False, "metadata.json has no 'version'")
    if not isinstance(changelog, dict) or version not in changelog:
        listed = ", ".join(changelog) if isinstance(changelog, dict) else "no changelog"
        return CheckResult("version in changelog", False,
                           f"version {version!r} is not listed in 'changelog' (listed: {listed})")
    return CheckResult("version in changelog", True, f"version {version}")


def validate_metadata(meta: dict) -> CheckResult:
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(load_metadata_schema())
    validator = validator_cls(load_metadata_schema())
    errors = sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors[:8]]
        return CheckResult("metadata schema", False, "; ".join(lines))
    return CheckResult("metadata schema", True,
                       "configs/metadata.json is valid (medbundle/schemas/metadata_schema.json)")




def _profile(bundle: Path) -> VerifyProfile:
    """The bundle's verify profile from its recipe; a bundle without a recipe is checked as published, without
    the data-dependent checks."""
    try:
        return get_recipe(bundle.name).verify_profile()
    except KeyError:
        return VerifyProfile()


# ----------------------------------------------------------------------------------------------- net checks


@contextlib.contextmanager
def _quiet():
    """Silence MONAI's console logging and prints during a check (errors still propagate)."""
    buf = io.StringIO()
    old = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        logging.disable(old)


def _is_detector(meta: dict, bundle: Path) -> bool:
    outs = meta.get("network_data_format", {}).get("outputs", {})
    return "detection" in bundle.name or any(v.get("type") == "object" for v in outs.values())


def _parse_net(bundle: Path, overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    for k, v in overrides.items():
        parser[k] = v
    return parser.get_parsed_content("network_def")


def _check_net_in_out(bundle: Path, meta: dict, prof: VerifyProfile) -> CheckResult:
    import torch

    if not _is_detector(meta, bundle):
        from monai.bundle import verify_net_in_out

        with _quiet():
            verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                              config_file=str(bundle / "configs" / "inference.json"), device="cpu",
                              **{"bundle_root": str(bundle), **prof.net_overrides})
        return CheckResult("verify_net_in_out", True, f"monai.bundle verify_net_in_out passed ({prof.note})")
    # a detector returns {head: [one tensor per pyramid level]}: MONAI's check expects a tensor, so check the
    # same things by hand against network_data_format's input (shape, dtype) and the head layout
    spec = next(iter(meta["network_data_format"]["inputs"].values()))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    shape = [int(s) for s in spec["spatial_shape"]]
    net = _parse_net(bundle, prof.net_overrides).eval()
    x = torch.rand(1, int(spec["num_channels"]), *shape, dtype=dtype)
    if _is_torchvision_detector(net):
        return _check_torchvision_detector(net, x, spec, prof)
    with torch.no_grad():
        out = net(x)
    if not isinstance(out, dict):
        raise AssertionError(f"detector network returned {type(out).__name__}, expected a dict of per-level lists")
    cls_key = getattr(net, "cls_key", "classification")
    box_key = getattr(net, "box_reg_key", "box_regression")
    if set(out) != {cls_key, box_key}:
        raise AssertionError(f"detector outputs {sorted(out)}, expected {sorted({cls_key, box_key})}")
    levels = len(out[cls_key])
    if levels == 0 or len(out[box_key]) != levels:
        raise AssertionError(f"{levels} classification levels but {len(out[box_key])} box-regression levels")
    num_anchors, num_classes = getattr(net, "num_anchors", None), getattr(net, "num_classes", None)
    spatial_dims = len(shape)
    for lvl, (c, b) in enumerate(zip(out[cls_key], out[box_key])):
        if c.ndim != 2 + spatial_dims or c.shape[0] != 1 or c.shape[2:] != b.shape[2:] or c.dtype != dtype:
            raise AssertionError(f"level {lvl}: classification {tuple(c.shape)}, box regression {tuple(b.shape)}")
        if num_anchors and num_classes and (c.shape[1] != num_anchors * num_classes
                                            or b.shape[1] != num_anchors * 2 * spatial_dims):
            raise AssertionError(f"level {lvl}: channels {c.shape[1]}/{b.shape[1]} do not match "
                                 f"{num_anchors} anchors x {num_classes} classes / {2 * spatial_dims} box values")
    return CheckResult("verify_net_in_out", True,
                       f"detector forward check instead of MONAI's verify_net_in_out (outputs are per-level lists): "
                       f"input 1x{spec['num_channels']}x{'x'.join(map(str, shape))} {spec.get('dtype')}, outputs "
                       f"{cls_key}/{box_key} with {levels} pyramid levels ({prof.note})")


def _is_torchvision_detector(net: Any) -> bool:
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return isinstance(net, (GeneralizedRCNN, RetinaNet, FCOS))


def _check_torchvision_detector(net: Any, x: Any, spec: Mapping[str, Any], prof: VerifyProfile) -> CheckResult:
    """A torchvision detector takes a list of ``(C, H, W)`` images and returns one dict of boxes per image."""
    import torch

    with torch.no_grad():
        out = net(list(x))
    if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
        raise AssertionError(f"torchvision detector returned {type(out).__name__}, expected a list of one dict")
    det = out[0]
    if set(det) != {"boxes", "labels", "scores"}:
        raise AssertionError(f"detections hold {sorted(det)}, expected boxes, labels and scores")
    k = det["boxes"].shape[0]
    if det["boxes"].shape != (k, 4) or det["labels"].shape != (k,) or det["scores"].shape != (k,):
        raise AssertionError(f"boxes {tuple(det['boxes'].shape)}, labels {tuple(det['labels'].shape)}, "
                             f"scores {tuple(det['scores'].shape)}: expected (K, 4), (K,), (K,)")
    h, w = x.shape[-2:]
    if k and (det["boxes"].min() < 0 or det["boxes"][:, 2].max() > w or det["boxes"][:, 3].max() > h):
        raise AssertionError("boxes reach outside the image")
    return CheckResult("verify_net_in_out", True,
                       f"detector forward check instead of MONAI's verify_net_in_out (a torchvision detector takes a "
                       f"list of images and returns boxes): input {spec['num_channels']}x"
                       f"{'x'.join(map(str, x.shape[2:]))} {spec.get('dtype')}, {k} boxes (K, 4) with labels and "
                       f"scores inside the image ({prof.note})")


def _check_export(bundle: Path, meta: dict, prof: VerifyProfile, tmp: Path) -> CheckResult:
    import torch
    from monai.bundle import ckpt_export

    torch.manual_seed(0)
    eager = _parse_net(bundle, prof.export_overrides).eval()
    ckpt = tmp / "fresh_model.pt"
    torch.save(eager.state_dict(), ckpt)  # freshly initialised weights: export needs a checkpoint, not training
    ts = tmp / "model.ts"
    with _quiet():
        ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt),
                    meta_file=str(bundle / "configs" / "metadata.json"),
                    config_file=str(bundle / "configs" / "inference.json"),
                    **{"bundle_root": str(bundle), **prof.export_overrides})
    scripted = torch.jit.load(str(ts), map_location="cpu")
    scripted.eval()
    if prof.example_shape is not None:
        x = torch.rand(*prof.example_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            if _is_torchvision_detector(eager):  # a list of images in; scripted, it returns (losses, detections)
                a, b = eager(list(x))[0], scripted(list(x))[1][0]
            else:
                a, b = eager(x), scripted(x)
        if isinstance(a, dict) and all(torch.is_tensor(v) for v in a.values()):
            pairs = [(a[k], b[k]) for k in a]
        elif isinstance(a, dict):
            pairs = [(a[k][i], b[k][i]) for k in a for i in range(len(a[k]))]
        else:
            pairs = [(a, b)]
        for u, v in pairs:
            torch.testing.assert_close(v, u, atol=1e-4, rtol=1e-4)
    return CheckResult("TorchScript export", True,
                       f"ckpt_export -> model.ts ({ts.stat().st_size / 1e6:.1f} MB) reloaded with torch.jit.load, "
                       f"outputs equal eager on a random input (freshly initialised weights; {prof.note})")


def _check_properties(bundle: Path, kind: str, prof: VerifyProfile, tmp: Path, data: dict) -> CheckResult:
    from monai.bundle import ConfigWorkflow

    config = "train.json" if kind == "train" else "inference.json"
    cfg = bundle / "configs"
    if not (cfg / config).is_file():
        return CheckResult(f"properties ({kind})", False, f"configs/{config} is missing")
    with _quiet():
        wf = ConfigWorkflow(config_file=str(cfg / config), meta_file=str(cfg / "metadata.json"),
                            logging_file=str(cfg / "logging.conf") if (cfg / "logging.conf").is_file() else None,
                            workflow_type=kind, bundle_root=str(tmp / f"root_{kind}"),
                            **{**prof.workflow_overrides, **data})
        wf.initialize()
        missing = wf.check_properties()
    if missing:
        return CheckResult(f"properties ({kind})", False, f"configs/{config} lacks required properties: {missing}")
    return CheckResult(f"properties ({kind})", True,
                       f"ConfigWorkflow({config}, workflow_type={kind!r}).check_properties() found nothing missing")


def verify_bundle(bundle: str | Path, workdir: str | Path | None = None,
                  report: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run the model-zoo checks on a bundle folder; return one :class:`CheckResult` per check.

    A check that raises is recorded as failed with the error; the later checks still run (except that the
    network checks need a readable metadata.json).
    """
    bundle = Path(bundle).resolve()
    results: list[CheckResult] = []

    def add(res: CheckResult) -> None:
        results.append(res)
        if report is not None:
            report(res)

    def run(name: str, fn: Callable[[], CheckResult]) -> None:
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - a failing check is reported, not raised
            msg = str(e).strip().splitlines()
            res = CheckResult(name, False, f"{type(e).__name__}: {msg[-1] if msg else ''}"[:600])
        res.seconds = time.perf_counter() - t0
        add(res)

    run("required files", lambda: check_required_files(bundle))
    try:
        meta = _load_meta(bundle)
    except (OSError, json.JSONDecodeError) as e:
        add(CheckResult("metadata", False, f"cannot read configs/metadata.json: {e}"))
        return results
    run("version in changelog", lambda: check_changelog(meta))
    run("metadata schema", lambda: validate_metadata(meta))
    prof = _profile(bundle)
    with tempfile.TemporaryDirectory(prefix="medbundle_verify_", dir=workdir) as tmp_s:
        tmp = Path(tmp_s)
        run("verify_net_in_out", lambda: _check_net_in_out(bundle, meta, prof))
        run("TorchScript export", lambda: _check_export(bundle, meta, prof, tmp))
        if prof.make_data is None:
            add(CheckResult("properties", False, f"no synthetic-data profile for bundle {bundle.name!r}"))
            return results
        try:
            train_data, infer_data = prof.make_data(tmp / "data")
        except Exception as e:  # noqa: BLE001
            add(CheckResult("properties", False, f"could not write synthetic data: {type(e).__name__}: {e}"))
            return results
        run("properties (train)", lambda: _check_properties(bundle, "train", prof, tmp, train_data))
        run("properties (infer)", lambda: _check_properties(bundle, "infer", prof, tmp, infer_data))
    return results


# ------------------------------------------------------------------------------------------------ packaging


def _weights_for(name: str, with_weights: Path | None) -> Path | None:
    if with_weights is None:
        return None
    for cand in (with_weights / name / "models" / "model.pt", with_weights / name / "model.pt"):
        if cand.is_file():
            return cand
    return None


def _zip_add(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def package_bundles(bundles: Iterable[str | Path], out: str | Path, base_url: str | None = None,
                    with_weights: str | Path | None = None) -> dict[str, dict[str, str]]:
    """Write ``<name>_v<version>.zip`` per bundle into ``out`` and update ``out/model_info.json``.

    Each zip holds one top folder ``<name>/`` (what ``monai.bundle download`` extracts into ``bundle_dir``)
    with configs/, docs/, LICENSE, scripts/ and models/ when present. ``with_weights`` is a folder with
    ``<name>/model.pt`` (or ``<name>/models/model.pt``) to put in as ``models/model.pt``; a bundle without
    one there is packaged with whatever its own ``models/`` holds. The index follows the
    model zoo's ``model_info.json``: ``{"<name>_v<version>": {"checksum": ..., "source": ...}}``, here with the
    SHA-256 checksum and ``"hash_type": "sha256"`` spelled out.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    weights_root = Path(with_weights).resolve() if with_weights else None
    index_path = out / "model_info.json"
    index: dict[str, dict[str, str]] = json.loads(index_path.read_text()) if index_path.is_file() else {}
    written: dict[str, dict[str, str]] = {}
    for b in bundles:
        bundle = Path(b).resolve()
        meta = _load_meta(bundle)
        res = check_changelog(meta)
        if not res.ok:
            raise ValueError(f"{bundle.name}: {res.message}")
        name, version = bundle.name, meta["version"]
        key = f"{name}_v{version}"
        zip_path = out / f"{key}.zip"
        weights = _weights_for(name, weights_root)
        files = []
        for item in PACKAGE_ITEMS:
            p = bundle / item
            if p.is_file():
                files.append(p)
            elif p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                                and not f.name.startswith(".")
                                and not (item == "models" and f.name in RUN_STATE_FILES))
        tmp_zip = zip_path.with_suffix(".zip.part")
        with zipfile.ZipFile(tmp_zip, "w") as zf:
            for f in files:
                rel = f.relative_to(bundle).as_posix()
                if weights is not None and rel == "models/model.pt":
                    continue
                _zip_add(zf, f"{name}/{rel}", f.read_bytes())
            if weights is not None:
                _zip_add(zf, f"{name}/models/model.pt", weights.read_bytes())
        tmp_zip.replace(zip_path)
        source = f"{base_url.rstrip('/')}/{zip_path.name}" if base_url else zip_path.name
        entry = {"checksum": sha256sum(zip_path), "hash_type": "sha256", "source": source}
        index[key] = entry
        written[key] = entry
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=4) + "\n")
    return written


def _zip_metadata(zip_path: Path) -> tuple[str, dict]:
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if n.endswith("/configs/metadata.json") and n.count("/") == 2]
        if len(names) != 1:
            raise ValueError(f"{zip_path} is not a packaged bundle (expected one <name>/configs/metadata.json)")
        return names[0].split("/", 1)[0], json.loads(zf.read(names[0]))


def check_package(zip_path: str | Path, model_info: str | Path | dict, key: str | None = None) -> str:
    """Verify ``zip_path`` against its ``model_info.json`` entry; return the entry key.

    The key defaults to ``<name>_v<version>`` read from the zip's own metadata (a file downloaded by
    ``monai.bundle download`` is called ``<name>.zip``). Raises :class:`ChecksumError` on a mismatch.
    """
    zip_path = Path(zip_path)
    index = model_info if isinstance(model_info, dict) else json.loads(Path(model_info).read_text())
    if key is None:
        stem = zip_path.name.removesuffix(".zip")
        if stem in index:
            key = stem
        else:
            try:
                name, meta = _zip_metadata(zip_path)
            except zipfile.BadZipFile as e:
                raise ChecksumError(f"{zip_path} is not a readable zip ({e}); it does not match model_info") from e
            key = f"{name}_v{meta.get('version')}"
    if key not in index:
        raise KeyError(f"{key} is not listed in model_info.json (listed: {', '.join(index) or 'none'})")
    entry = index[key]
    hash_type = entry.get("hash_type", "sha256").lower()
    if hash_type != "sha256":
        raise ValueError(f"{key}: unsupported hash_type {hash_type!r} (medbundle writes sha256)")
    actual = sha256sum(zip_path)
    if actual != entry["checksum"].lower():
        raise ChecksumError(f"{zip_path}: SHA-256 {actual} does not match model_info.json {key} "
                            f"({entry['checksum']}); the file is corrupted or not the published package")
    return key
