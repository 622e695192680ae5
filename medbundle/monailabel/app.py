"""Serve the bundles with MONAI Label: lay out a ``monaibundle``-style app's ``model/`` folder.

MONAI Label's bundle tasks read only ``<app>/model/<name>/configs/inference.json`` and
``models/model.pt``; they do not know about overlays such as ``configs/demo.json`` or command-line
overrides. :func:`prepare_model_dir` therefore copies a bundle and writes a *merged* inference config
(``inference.json`` + overlays + overrides) so that the network it builds matches the trained weights.

Each bundle's :class:`~medbundle.recipes.LabelDemo` (in :mod:`medbundle.recipes`) holds its small
synthetic-data settings; :func:`train_demo_bundle` trains one with ``python -m monai.bundle run training`` as a
user would; :func:`demo_studies` writes a MONAI Label studies folder with an image for each bundle.

MONAI Label 0.8.5 pins packages the main environment cannot share (``pydicom-seg`` needs
``jsonschema<4`` and ``numpy<2``; MONAI Label needs ``pydicom==2.4.4``), so it runs in a separate virtual
environment. :func:`create_label_env` (``medbundle label-env VENV``) builds one *layered* on the current
environment: a ``.pth`` file makes the main environment's packages (torch, MONAI, medbundle) importable
behind the new one's own, and only MONAI Label and what the main environment lacks or pins differently are
installed into it (ITK is the largest part; no second PyTorch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medbundle.bundle import RUN_STATE_FILES, bundle_dir
from medbundle.recipes import LabelDemo, get_recipe, recipe_names

__all__ = [
    "LABEL_EXTRAS", "LABEL_PINS", "MONAILABEL_VERSION", "create_label_env", "demo_app",
    "demo_studies", "env_prefix", "make_demo_data", "merged_config", "monaibundle_app_source", "prepare_app",
    "prepare_model_dir", "server_command", "train_demo_bundle",
]

MONAILABEL_VERSION = "0.8.5"
#: installed next to MONAI Label's own requirements: the versions MONAI Label 0.8.5 starts with
#: (its pydicom-seg import breaks on pydicom 3), and a pandas that runs on the numpy < 2 that
#: pydicom-seg pins (pandas 3.1 needs numpy 2)
LABEL_PINS = ("pydicom==2.4.4", "dicomweb-client==0.59.3", "pynetdicom==2.0.2", "pandas<3.1")
#: installed with them: dcmqi (MIT; its ``itkimage2segimage`` writes DICOM SEG), which MONAI Label's DICOMweb
#: datastore would otherwise download from GitHub when it starts
LABEL_EXTRAS = ("dcmqi>=1.3",)
#: requirements of the monailabel wheel left out of a layered environment: SAM2 (built from source, with
#: its own PyTorch pins; its models are off with ``--conf sam2 false``). MONAI and its extras stay: pip
#: finds MONAI in the main environment and adds the extras MONAI Label imports (ITK, ...)
_SKIPPED_REQUIREMENTS = ("sam2",)



def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a#b#c`` in a nested dict (list indices allowed), like MONAI's config overrides."""
    parts = key.split("#")
    node: Any = cfg
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def merged_config(
    config: str | os.PathLike, overlays: Sequence[str | os.PathLike] = (), overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` updated with each overlay file (top-level or ``a#b`` keys) and then ``overrides``."""
    cfg = json.loads(Path(config).read_text())
    for overlay in overlays:
        for k, v in json.loads(Path(overlay).read_text()).items():
            _set(cfg, k, v)
    for k, v in (overrides or {}).items():
        _set(cfg, k, v)
    return cfg


def prepare_model_dir(
    bundle_work: str | os.PathLike,
    model_root: str | os.PathLike,
    name: str,
    overlays: Sequence[str] = ("demo.json",),
    overrides: Mapping[str, Any] | None = None,
    bundle_src: str | os.PathLike | None = None,
) -> Path:
    """Write ``<model_root>/<name>/`` for MONAI Label from a bundle and its trained ``bundle_work`` folder.

    Copies the bundle (``configs``, ``docs``, ``LICENSE``) from ``bundle_src`` (default
    ``bundles/<name>``), the trained ``models/`` files (``model.pt``, ``thresholds.json``, ...) from
    ``bundle_work``, and rewrites ``configs/inference.json`` (and ``train.json``) merged with the
    overlay files named in ``overlays`` (looked up in the bundle's ``configs/``) and ``overrides``.
    Returns the new bundle folder.
    """
    src = Path(bundle_src) if bundle_src is not None else bundle_dir(name)
    dest = Path(model_root) / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("models", "eval", "data", "cache", "predictions",
                                                              "__pycache__"))
    models = dest / "models"
    models.mkdir()
    trained = Path(bundle_work) / "models"
    if not (trained / "model.pt").is_file():
        raise FileNotFoundError(f"{trained / 'model.pt'}: no trained checkpoint; train the bundle first")
    for f in trained.iterdir():
        if f.is_file() and f.name not in RUN_STATE_FILES:
            shutil.copy2(f, models / f.name)
    cfg_dir = dest / "configs"
    overlay_paths = [src / "configs" / o for o in overlays]
    for config in ("inference.json", "train.json"):
        if (src / "configs" / config).is_file():
            merged = merged_config(src / "configs" / config, overlay_paths, overrides)
            if config == "inference.json":
                _read_series_folders(merged)
            (cfg_dir / config).write_text(json.dumps(merged, indent=4) + "\n")
    for o in overlays:  # the overlays are now part of the configs; MONAI Label would not read them anyway
        if (cfg_dir / o).is_file():
            (cfg_dir / o).unlink()
    classes = merged_config(src / "configs" / "inference.json", overlay_paths, overrides).get("class_names")
    meta_path = cfg_dir / "metadata.json"
    if isinstance(classes, list) and meta_path.is_file():
        # MONAI Label takes the labels from the first output's channel_def: keep it in step with class_names
        # (a detector's channel_def describes its box columns; MONAI Label wants the classes there too)
        meta = json.loads(meta_path.read_text())
        out = next(iter(meta["network_data_format"]["outputs"].values()))
        if len(out.get("channel_def", {})) != len(classes) or "detection" in name:
            out["channel_def"] = {str(i): c for i, c in enumerate(classes)}
            meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return dest


def _read_series_folders(cfg: dict[str, Any]) -> None:
    """Put a config's ``readers`` expression inside :func:`medbundle.monailabel.dicomweb.series_folder_readers`, so
    the bundle also reads the one-file series folders of MONAI Label's DICOMweb datastore."""
    readers = cfg.get("readers")
    if not (isinstance(readers, str) and readers.startswith("$")) or "series_folder_readers" in readers:
        return
    cfg["readers"] = f"$medbundle.monailabel.dicomweb.series_folder_readers({readers[1:]})"
    imports = cfg.setdefault("imports", [])
    if "$import medbundle.monailabel.dicomweb" not in imports:
        imports.append("$import medbundle.monailabel.dicomweb")


#: dcmqi's tool that MONAI Label's DICOMweb datastore downloads from GitHub unless ``<app>/bin`` or ``PATH`` has it
_DCMQI_TOOL = "itkimage2segimage"


def monaibundle_app_source(prefix: str | os.PathLike = sys.prefix) -> Path:
    """The ``monaibundle`` sample app that the MONAI Label wheel installs under ``<prefix>/monailabel/``."""
    app = Path(prefix) / "monailabel" / "sample-apps" / "monaibundle"
    if not (app / "main.py").is_file():
        raise FileNotFoundError(f"{app}: no monaibundle sample app; install monailabel into {prefix}")
    return app


def prepare_app(
    app_dir: str | os.PathLike, prefix: str | os.PathLike, bundles: Mapping[str, str | os.PathLike],
) -> Path:
    """Copy MONAI Label's ``monaibundle`` app from the environment at ``prefix`` to ``app_dir`` and fill its
    ``model/`` folder: ``bundles`` maps a bundle name to its trained work folder (demo recipe overrides)."""
    app_dir = Path(app_dir)
    if app_dir.exists():
        shutil.rmtree(app_dir)
    shutil.copytree(monaibundle_app_source(prefix), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    tool = Path(prefix) / "bin" / _DCMQI_TOOL
    if tool.is_file():  # the dcmqi wheel of the label environment (medbundle label-env installs it)
        (app_dir / "bin").mkdir(exist_ok=True)
        (app_dir / "bin" / _DCMQI_TOOL).symlink_to(tool.resolve())
    for name, work in bundles.items():
        demo = _label_demo(name, required=False)
        prepare_model_dir(work, app_dir / "model", name, overrides=demo.common if demo else None)
    return app_dir


def _label_demo(name: str, required: bool = True) -> LabelDemo | None:
    """The bundle's MONAI Label demo recipe; KeyError (or None) when it has none."""
    try:
        demo = get_recipe(name).label
    except KeyError:
        demo = None
    if demo is None and required:
        known = [n for n in recipe_names() if get_recipe(n).label is not None]
        raise KeyError(f"no MONAI Label demo recipe for bundle {name!r}; known: {sorted(known)}")
    return demo


def make_demo_data(name: str, root: str | os.PathLike) -> dict[str, Path]:
    """Write a small synthetic data set for bundle ``name``; returns ``dataset_dir`` (and ``datalist_file``)."""
    return _label_demo(name).make_data(Path(root))


def train_demo_bundle(
    name: str, data: Mapping[str, str | os.PathLike], work: str | os.PathLike, python: str = sys.executable,
    timeout: int = 1800,
) -> subprocess.CompletedProcess:
    """Train bundle ``name`` with its demo overlay and its recipe's label-demo overrides into ``work`` via
    ``monai.bundle``."""
    cfg = bundle_dir(name) / "configs"
    recipe = _label_demo(name)
    args = [python, "-m", "monai.bundle", "run", "training",
            "--config_file", "[" + ",".join(repr(str(cfg / f)) for f in ("train.json", "demo.json")) + "]",
            "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
            "--bundle_root", str(work)]
    for k, v in data.items():
        args += [f"--{k}", str(v)]
    for k, v in {**recipe.common, **recipe.train}.items():
        args += [f"--{k}", repr(v)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _requirement_name(req: str) -> str:
    name = req
    for sep in "[<>=!~; ":
        name = name.split(sep, 1)[0]
    return name.strip().lower().replace("_", "-")


def _run(cmd: Sequence[str], what: str) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def create_label_env(
    venv: str | os.PathLike, monailabel_version: str = MONAILABEL_VERSION, pins: Sequence[str] = LABEL_PINS,
    pip_args: Sequence[str] = (),
) -> Path:
    """Create a MONAI Label environment at ``venv`` layered on the running Python environment.

    Steps: ``python -m venv`` with the base interpreter of this environment; a ``.pth`` file that adds this
    environment's site-packages *after* the new one's (so the new environment's pins win); ``pip install
    --no-deps monailabel==<version>``; then ``pip install`` of MONAI Label's requirements (read from the
    installed wheel, less :data:`_SKIPPED_REQUIREMENTS`), ``pins`` and :data:`LABEL_EXTRAS`. pip sees the main
    environment's packages through the ``.pth`` file and installs only what is missing or conflicting; it never
    changes the main environment. Finally imports ``monailabel``, ``monai``, ``torch`` and ``medbundle`` in the new
    environment and checks the pinned pydicom.

    Returns the environment's folder. Raises ``RuntimeError`` with pip's output when a step fails.
    """
    import site
    import sysconfig

    venv = Path(venv).resolve()
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    _run([base_python, "-m", "venv", venv], "creating the virtual environment")
    python = venv / "bin" / "python"
    new_site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"],
                                      sysconfig.get_paths()["platlib"]]) if Path(p).is_dir()]
    # addsitedir (not a bare path line) so the main environment's own .pth files (editable installs) apply
    (new_site / "_medbundle_main_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *pip_args]
    _run([*pip, "--no-deps", f"monailabel=={monailabel_version}"], "installing monailabel")
    reqs = subprocess.run([python, "-c", "import importlib.metadata as m, json; print(json.dumps(m.requires("
                                         "'monailabel') or []))"], capture_output=True, text=True, check=True)
    pinned = {_requirement_name(p) for p in pins}
    wanted = [r for r in json.loads(reqs.stdout)
              if _requirement_name(r) not in (*_SKIPPED_REQUIREMENTS, *pinned) and "extra ==" not in r]
    _run([*pip, *wanted, *pins, *LABEL_EXTRAS], "installing MONAI Label's requirements")
    check = ("import monailabel, monai, torch, medbundle, pydicom, numpy; "
             f"assert pydicom.__version__ == {[p for p in pins if p.startswith('pydicom==')][0][9:]!r}, "
             "pydicom.__version__; print(monailabel.__version__, monai.__version__, torch.__version__)")
    _run([python, "-c", check], "importing MONAI Label in the new environment")
    return venv


def demo_studies(root: str | os.PathLike, data: Mapping[str, Mapping[str, str | os.PathLike]],
                 n_labelled: int = 0) -> dict[str, Any]:
    """A MONAI Label studies folder ``root`` with one demo image per bundle in ``data`` (as written by
    :func:`make_demo_data`); returns bundle name -> image id.

    With ``n_labelled`` > 0, bundles whose recipe has labelled studies add that many further images, and
    ``ids["<bundle>:labelled"]`` lists ``(image id, [class names])`` for them, to save as labels for ``/train``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids: dict[str, Any] = {}
    for name, bundle_data in data.items():
        demo = _label_demo(name)
        ids[name] = demo.study(root, bundle_data)
        if n_labelled > 0 and demo.labelled is not None:
            ids[f"{name}:labelled"] = demo.labelled(root, bundle_data, n_labelled)
    return ids


def env_prefix(venv: str | os.PathLike) -> Path:
    """``sys.prefix`` of the virtual environment at ``venv`` (where the monailabel wheel put its sample apps)."""
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(f"{python} does not exist: create the MONAI Label environment first "
                                f"(medbundle label-env {venv})")
    out = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                         check=True)
    return Path(out.stdout.strip())


def demo_app(
    workdir: str | os.PathLike, venv: str | os.PathLike, names: Sequence[str] | None = None, retrain: bool = False,
    n_labelled: int = 0,
) -> dict[str, Any]:
    """Everything a MONAI Label demo needs under ``workdir``: synthetic data (``data/``), each bundle trained
    with its demo recipe (``work/<name>``, kept when already trained unless ``retrain``), the ``monaibundle``
    app from the environment ``venv`` with those bundles in ``app/model/``, ``studies/``, and with
    ``n_labelled`` > 0 (chest X-ray bundle) the class-label files of that many further studies images in
    ``labels/<image id>.json``, ready for ``PUT /datastore/label`` and ``/train``.

    Returns ``{"app", "studies", "labels", "models", "ids"}`` (``ids`` as :func:`demo_studies`)."""
    workdir = Path(workdir).resolve()
    names = list(names or [n for n in recipe_names() if get_recipe(n).label is not None])
    for name in names:
        _label_demo(name)  # KeyError naming the known ones before anything is written
    prefix = env_prefix(venv)
    data, works = {}, {}
    for name in names:
        data[name] = make_demo_data(name, workdir / "data")
        works[name] = workdir / "work" / name
        if retrain or not (works[name] / "models" / "model.pt").is_file():
            train_demo_bundle(name, data[name], works[name])
    app = prepare_app(workdir / "app", prefix, works)
    studies = workdir / "studies"
    if studies.exists():
        shutil.rmtree(studies)
    ids = demo_studies(studies, data, n_labelled=n_labelled)
    labels = workdir / "labels"
    if labels.exists():
        shutil.rmtree(labels)
    from medbundle.io.class_labels import write_class_label

    for key, value in ids.items():
        if key.endswith(":labelled"):
            for image_id, findings in value:
                write_class_label(labels / f"{image_id}.json", findings)
    return {"app": app, "studies": studies, "labels": labels, "models": names, "ids": ids}


def server_command(venv: str | os.PathLike, app: str | os.PathLike, studies: str | os.PathLike,
                   models: Sequence[str], host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """The command that starts MONAI Label on ``app`` serving ``models`` from its local ``model/`` folder.

    ``python -m monailabel.main`` rather than the ``monailabel`` script (a shell wrapper that runs whichever
    ``python`` is first on ``PATH``); ``--conf zoo_source local``: load ``model/<name>`` instead of
    downloading from MONAI's model hosting; ``--conf sam2 false``: no SAM2 models."""
    return [str(Path(venv) / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app", str(app),
            "--studies", str(studies), "--conf", "models", ",".join(models), "--conf", "sam2", "false",
            "--conf", "zoo_source", "local", "--conf", "preload", "false", "--host", host, "--port", str(port)]
