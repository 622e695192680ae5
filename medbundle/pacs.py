"""``medbundle pacs-infer``: a study from a DICOMweb archive through a bundle's inference, the SRs stored back.

1. QIDO-RS: list the study's series and keep those of the bundle's input modality (``metadata.json``,
   ``network_data_format.inputs.image.modality``; CR and DX are both projection radiographs);
2. WADO-RS: write them to ``<workdir>/study/series_000/00000.dcm``, ... (:mod:`medbundle.io.dicomweb`): the
   chest bundles read every file as one radiograph, the CT bundles every series folder as one volume;
3. ``python -m monai.bundle run`` of the bundle's ``inference.json`` (plus any overlays) with ``--input`` on that
   folder and ``--write_sr True``: predictions go to ``<workdir>/output`` and one DICOM SR per image or volume to
   ``<workdir>/output/sr/``, each in the source study;
4. STOW-RS: every SR goes back to the archive, which files it under the study.

Only series counts, modalities and the new SR's SOP Instance UIDs are reported; no patient or study
identifier is printed or logged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medbundle.bundle import bundle_dir
from medbundle.demo import run_bundle_step

__all__ = ["bundle_modalities", "pacs_infer"]

#: modalities of projection radiographs: a bundle made for one reads the other alike
_RADIOGRAPH = {"CR", "DX"}


def bundle_modalities(bundle: str | os.PathLike) -> set[str]:
    """The DICOM modalities a bundle takes, from ``network_data_format.inputs.<first>.modality`` of its metadata
    (``"CR/DX"`` -> ``{"CR", "DX"}``; CR or DX alone stands for both).

    Raises:
        ValueError: the metadata names no modality.
    """
    meta_path = bundle_dir(str(bundle)) / "configs" / "metadata.json"
    inputs = json.loads(meta_path.read_text()).get("network_data_format", {}).get("inputs", {})
    text = str(next(iter(inputs.values()), {}).get("modality", ""))
    found = {m.strip().upper() for m in text.split("/") if m.strip()}
    if not found:
        raise ValueError(f"{meta_path}: network_data_format.inputs names no modality; pass the modalities")
    return found | _RADIOGRAPH if found & _RADIOGRAPH else found


def pacs_infer(
    bundle: str | os.PathLike,
    dicomweb: str,
    study_uid: str,
    workdir: str | os.PathLike | None = None,
    bundle_root: str | os.PathLike | None = None,
    configs: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
    modalities: Iterable[str] | None = None,
    store: bool = True,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Infer one study held in a DICOMweb archive with a bundle and store the bundle's SRs back into the study.

    Args:
        bundle: bundle name or folder.
        dicomweb: the archive's DICOMweb root URL (e.g. ``http://127.0.0.1:8042/dicom-web``).
        study_uid: Study Instance UID of the study to infer.
        workdir: where the retrieved study (``study/``) and the outputs (``output/``) go, kept afterwards; None: a
            temporary folder, removed at the end (the returned paths then no longer exist).
        bundle_root: the trained bundle's root (``models/model.pt`` under it); default: the bundle folder.
        configs: config files layered after the bundle's ``inference.json`` (e.g. its ``demo.json``).
        overrides: further ``monai.bundle`` overrides (``{"image_size": 64}``).
        modalities: series modalities to infer; default :func:`bundle_modalities`.
        store: send the SRs back with STOW-RS (False: only write them).
        echo: where progress lines go (None: silent).

    Returns:
        ``{"series": [{"modality", "instances", "folder"}, ...], "output_dir", "sr_files", "stored"}``, ``stored``
        being the SOP Instance UIDs the archive accepted (empty when ``store`` is False).

    Raises:
        LookupError: the archive has no series of the study, or none of the wanted modalities.
        ConnectionError: a DICOMweb request failed (the message names the server and the HTTP status).
        RuntimeError: the inference failed (the message holds its last log lines), wrote no SR, wrote an SR of
            another study, or the archive refused an SR.
    """
    from medbundle.io.dicomweb import connect, retrieve_study, store_instances

    bdir = bundle_dir(str(bundle))
    wanted = {m.upper() for m in modalities} if modalities is not None else bundle_modalities(bdir)
    say = echo or (lambda _line: None)
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="medbundle_pacs_") if temporary else workdir).resolve()
    try:
        client = connect(dicomweb)
        study_dir, out_dir = work / "study", work / "output"
        for old in (study_dir, out_dir):  # a rerun starts from what the archive holds now
            if old.exists():
                shutil.rmtree(old)
        series = retrieve_study(client, study_uid, study_dir, modalities=wanted)
        if not series:
            raise LookupError(f"{dicomweb}: the study has no series of modality {'/'.join(sorted(wanted))} "
                              f"for {bdir.name}")
        for info, folder in series:
            say(f"retrieved {folder.name}: {info.modality}, {sum(1 for _ in folder.iterdir())} instance(s)")
        args = {"dataset_dir": str(study_dir), "input": str(study_dir), "output_dir": str(out_dir),
                "write_sr": True, **(overrides or {})}
        root = Path(bundle_root).resolve() if bundle_root is not None else bdir
        out_dir.mkdir(parents=True)
        run_bundle_step(bdir, "inference", root, overrides=args,
                        configs=["inference.json", *[str(Path(c).resolve()) for c in configs]],
                        log=work / "inference.log", echo=echo)
        sr_files = sorted((out_dir / "sr").glob("*.dcm"))
        if not sr_files:
            log = "pass --workdir to keep its log" if temporary else f"see {work / 'inference.log'}"
            raise RuntimeError(f"{bdir.name} wrote no DICOM SR under {out_dir / 'sr'} ({log}); its inference.json "
                               "needs a write_sr option and DICOM input")
        _check_study(sr_files, study_uid)
        stored = store_instances(client, sr_files) if store else []
        for path, uid in zip(sr_files, stored):
            say(f"stored {path.name}: SOP Instance UID {uid}")
        return {"series": [{"modality": i.modality, "instances": sum(1 for _ in f.iterdir()), "folder": str(f)}
                           for i, f in series],
                "output_dir": str(out_dir), "sr_files": [str(p) for p in sr_files], "stored": stored}
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _check_study(sr_files: Sequence[Path], study_uid: str) -> None:
    """Every SR must belong to the inferred study, or the archive would file it elsewhere."""
    import pydicom

    for path in sr_files:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if str(ds.get("StudyInstanceUID", "")) != study_uid:
            raise RuntimeError(f"{path}: the SR belongs to another study than the one inferred; not stored")
